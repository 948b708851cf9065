"""Envoy's ext_authz v3 Check, called over gRPC with Envoy's own generated stubs (xds-protos),
as Envoy's ext_authz filter would call it.

Reads a JSON list of checks on stdin, each {"method", "path", "host", "headers": {...},
"body": str, "context_extensions": {...}, "source": ip}, and prints a JSON list of results:
{"code": CheckResponse.status.code, "allowed": bool, "headers": {...}, and for allowed
"headers_to_remove": [...], for denied "http_status" and "body"}.

Usage: ext_authz_client.py TARGET   (a gRPC target: unix:/path or host:port)
"""

import json
import sys

import grpc
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

Context = attribute_context_pb2.AttributeContext


def request(check):
    http = Context.HttpRequest(
        method=check.get("method", "POST"),
        path=check["path"],
        host=check["host"],
        headers=check.get("headers", {}),
        body=check.get("body", ""),
        protocol="HTTP/1.1",
    )
    address = address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=check.get("source", "127.0.0.1"), port_value=40000)
    )
    attributes = Context(
        source=Context.Peer(address=address),
        request=Context.Request(http=http),
        context_extensions=check.get("context_extensions", {}),
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


def result(response):
    out = {"code": response.status.code}
    if response.HasField("ok_response"):
        ok = response.ok_response
        out.update(
            allowed=True,
            headers={h.header.key: h.header.value for h in ok.headers},
            headers_to_remove=list(ok.headers_to_remove),
        )
    else:
        denied = response.denied_response
        out.update(
            allowed=False,
            http_status=denied.status.code,
            headers={h.header.key: h.header.value for h in denied.headers},
            body=denied.body,
        )
    return out


def main():
    target = sys.argv[1]
    checks = json.load(sys.stdin)
    # Over a Unix socket grpc-python would send the socket path as :authority, which is not a
    # valid authority and is refused by HTTP/2 servers; Envoy sends its cluster name instead.
    with grpc.insecure_channel(target, options=[("grpc.default_authority", "warden-agent")]) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        print(json.dumps([result(stub.Check(request(c), timeout=10)) for c in checks]))


if __name__ == "__main__":
    main()
