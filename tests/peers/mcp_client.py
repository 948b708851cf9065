"""An MCP client written with the official Python SDK, for the gateway's end-to-end tests.

Reads a JSON list of steps on stdin, each {"token": T, "op": [OP, ARGS...]} and optionally
"ca" (PEM file trusted for https URLs), "cert"/"key" (a client certificate to present) and
"headers" (more request headers, e.g. a legacy client's static key); runs each as its own
connection to URL with `Authorization: Bearer T` (none when T is "-"), and
prints a JSON list of results, one per step: {"ok": true, "result": ...} or {"ok": false, ...}.

Usage: mcp_client.py URL MODE < steps.json
  MODE: legacy (initialize handshake, 2025-11-25), modern (2026-07-28, per-request envelope) or
        auto (probes server/discover first, as the SDK does by default)
  OP:   list-tools | call NAME JSON_ARGS | list-then-call NAME JSON_ARGS (one client: lists the
        tools first, so it knows which arguments to mirror into headers) | count N | list-prompts | get-prompt NAME |
        list-resources | read URI
"""

import asyncio
import json
import ssl
import sys

import httpx2

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


def http_client(headers, tls):
    if not tls.get("ca"):
        return create_mcp_http_client(headers=headers)
    context = ssl.create_default_context(cafile=tls["ca"])
    if tls.get("cert"):
        context.load_cert_chain(tls["cert"], tls["key"])
    return httpx2.AsyncClient(headers=headers, verify=context, timeout=httpx2.Timeout(30, read=300))


async def run(url, token, mode, op, args, tls):
    headers = {} if token == "-" else {"Authorization": f"Bearer {token}"}
    headers.update(tls.get("headers", {}))
    progress = []

    async def on_progress(p, total, message):
        progress.append(message)

    async with http_client(headers, tls) as http:
        transport = streamable_http_client(url, http_client=http)
        client_mode = {"legacy": "legacy", "auto": "auto"}.get(mode, "2026-07-28")
        async with Client(transport, mode=client_mode, cache=None) as client:
            if op == "list-tools":
                tools = await client.list_tools()
                return sorted(t.name for t in tools.tools)
            if op == "list-then-call":
                await client.list_tools()
                result = await client.call_tool(args[0], json.loads(args[1]))
                return {"is_error": result.is_error, "text": [c.text for c in result.content]}
            if op == "call":
                result = await client.call_tool(args[0], json.loads(args[1]))
                return {"is_error": result.is_error, "text": [c.text for c in result.content]}
            if op == "count":
                result = await client.call_tool("count", {"to": int(args[0])}, progress_callback=on_progress)
                return {"text": [c.text for c in result.content], "progress": progress}
            if op == "list-prompts":
                return sorted(p.name for p in (await client.list_prompts()).prompts)
            if op == "get-prompt":
                result = await client.get_prompt(args[0], {"code": "x"})
                return [m.content.text for m in result.messages]
            if op == "list-resources":
                return sorted(str(r.uri) for r in (await client.list_resources()).resources)
            if op == "read":
                result = await client.read_resource(args[0])
                return [c.text for c in result.contents]
            raise SystemExit(f"unknown operation {op}")


async def step(url, mode, token, op, args, tls):
    try:
        return {"ok": True, "result": await run(url, token, mode, op, args, tls)}
    except Exception as e:  # noqa: BLE001 - errors arrive wrapped in exception groups
        mcp_error = find_mcp_error(e)
        if mcp_error is not None:
            return {"ok": False, "error": {"code": mcp_error.error.code, "message": mcp_error.error.message}}
        return {"ok": False, "error": {"exception": describe(e)}}


async def steps(url, mode, script):
    return [await step(url, mode, s["token"], s["op"][0], s["op"][1:], s) for s in script]


def main():
    url, mode = sys.argv[1:]
    print(json.dumps(asyncio.run(steps(url, mode, json.load(sys.stdin)))))


def find_mcp_error(e):
    if isinstance(e, MCPError):
        return e
    for inner in getattr(e, "exceptions", ()):
        found = find_mcp_error(inner)
        if found is not None:
            return found
    return None


def describe(e):
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(x) for x in e.exceptions)
    return f"{type(e).__name__}: {e}"


if __name__ == "__main__":
    main()
