#!/usr/bin/env bash
# A working local fleet on the embedded store: one control plane, one agent, the example
# resources; shows the agent converging on each new configuration version; the main job (a
# workload with no secret gets an identity token, exchanges it for a task token, calls the tools
# it grants, is refused the others, and is refused everywhere once the token is revoked); then
# the road from static secrets: a planted (fake) key found on the host, a legacy client using it through a
# credential bridge within its policy, a shadow policy's flips, and the scorecard.
# Everything lives in a temporary directory and stops on exit (Ctrl-C, or at the end unless
# KEEP=1 keeps the fleet running).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --quiet --workspace --bins
bin=target/debug
work=$(mktemp -d -t warden-local.XXXXXX)
cp_port=${CP_PORT:-17443}
status_port=${STATUS_PORT:-17480}
notes_port=${NOTES_PORT:-18444}
mcp_port=${MCP_PORT:-13001}
token_port=${TOKEN_PORT:-17444}
issuer_port=${ISSUER_PORT:-17600}
export WARDEN_ADMIN_SOCKET="$work/cp/admin.sock"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "control plane on 127.0.0.1:$cp_port (data in $work/cp)"
"$bin/warden-cp" --data-dir "$work/cp" --listen "127.0.0.1:$cp_port" \
  --token-listen "127.0.0.1:$token_port" --signing-key-publish-delay 0s 2>"$work/cp.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$WARDEN_ADMIN_SOCKET" ] && break; sleep 0.1; done
[ -S "$WARDEN_ADMIN_SOCKET" ] || { echo "the control plane did not start:" >&2; cat "$work/cp.log" >&2; exit 1; }

step "wardenctl apply -f deploy/examples/"
"$bin/wardenctl" apply -f deploy/examples/
"$bin/wardenctl" get all

step "join an agent with a one-time token"
token=$("$bin/wardenctl" join-token create --ttl 10m --agent demo-agent 2>/dev/null)
# The example server's resource is https: its gateway listener needs a certificate. A
# self-signed one for 127.0.0.1 does for the demo (skipped where openssl is missing).
gateway_tls=()
if command -v openssl >/dev/null 2>&1; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$work/gateway.key" -out "$work/gateway.crt" 2>/dev/null
  gateway_tls=(--gateway-tls-cert "$work/gateway.crt" --gateway-tls-key "$work/gateway.key")
fi
# A project on this host whose MCP client configuration holds a static key (a fake one, made
# here): the agent scans it (and not your home directory: --no-scan-homes).
mkdir -p "$work/project/.cursor"
legacy_key=$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')
cat >"$work/project/.cursor/mcp.json" <<JSON
{"mcpServers": {"notes": {"url": "http://127.0.0.1:$notes_port/mcp", "headers": {"X-Api-Key": "$legacy_key"}}}}
JSON
"$bin/warden-agent" --id demo-agent --label role=github --data-dir "$work/agent" \
  --control-plane "127.0.0.1:$cp_port" --join-token "$token" \
  --status-listen "127.0.0.1:$status_port" "${gateway_tls[@]}" \
  --no-scan-homes --scan-path "$work/project" 2>"$work/agent.log" &
pids+=($!)

wait_version() {
  for _ in $(seq 100); do
    applied=$("$bin/wardenctl" get agents -o json | sed -n 's/.*"appliedVersion": \([0-9]*\).*/\1/p' | head -1)
    if [ -n "$applied" ] && [ "$applied" -ge "$1" ]; then return 0; fi
    sleep 0.1
  done
  echo "the agent did not converge on version $1; logs in $work" >&2
  cat "$work/agent.log" >&2
  return 1
}
wait_version 1
"$bin/wardenctl" get agents
echo "agent status: $(curl -s "127.0.0.1:$status_port/status" 2>/dev/null || echo unavailable)"

if [ ${#gateway_tls[@]} -gt 0 ]; then
  step "the gateway for server github on https://127.0.0.1:8443/github"
  for _ in $(seq 50); do curl -sk -o /dev/null https://127.0.0.1:8443/ && break; sleep 0.1; done
  echo "protected resource metadata (RFC 9728):"
  curl -sk https://127.0.0.1:8443/.well-known/oauth-protected-resource/github; echo
  echo "a request without a token:"
  curl -sk -o /dev/null -D - -X POST https://127.0.0.1:8443/github | grep -iE '^(HTTP|www-authenticate)'
  echo "a request with a forged token:"
  curl -sk -o /dev/null -D - -X POST -H 'authorization: Bearer eyJhbGciOiJub25lIn0.e30.' \
    https://127.0.0.1:8443/github | grep -iE '^(HTTP|www-authenticate)'
  step "wardenctl decisions: both refusals, recorded by the agent and sent to the control plane"
  for _ in $(seq 50); do
    [ "$("$bin/wardenctl" decisions -o json | wc -l)" -ge 2 ] && break
    sleep 0.1
  done
  "$bin/wardenctl" decisions
fi

step "change a policy: the agent converges on version 2"
sed 's/"search_repositories", //' deploy/examples/fleet.yaml > "$work/changed.yaml"
"$bin/wardenctl" diff -f "$work/changed.yaml" || true
"$bin/wardenctl" apply -f "$work/changed.yaml"
wait_version 2
"$bin/wardenctl" get agents

step "an invalid resource is refused and changes nothing"
sed 's/maxTokenLifetime/maxTokenLifeTime/' deploy/examples/fleet.yaml > "$work/bad.yaml"
"$bin/wardenctl" apply -f "$work/bad.yaml" || true
"$bin/wardenctl" history

step "the main job: a workload with no secret calls a tool with a short-lived, task-scoped token"
"$bin/warden-demo-mcp" --listen "127.0.0.1:$mcp_port" 2>"$work/mcp.log" &
pids+=($!)
# What a platform gives its workloads (a service-account token, an instance identity), played
# by a development issuer on loopback.
"$bin/warden-dev-issuer" --listen "127.0.0.1:$issuer_port" 2>"$work/issuer.log" &
pids+=($!)
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$issuer_port/jwks.json" && break; sleep 0.1; done
head -1 "$work/issuer.log"
service="https://127.0.0.1:$token_port"
cat >"$work/tasks.yaml" <<YAML
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: dev-idp}
spec:
  issuer: https://dev-issuer.warden.invalid
  keys: {jwks: $(curl -s "http://127.0.0.1:$issuer_port/jwks.json")}
  allowedAlgorithms: [ES256]
  maxTokenLifetime: 10m
---
apiVersion: warden.dev/v1
kind: TrustedIssuer
metadata: {name: warden}
spec:
  issuer: $service
  keys: {controlPlane: true}
  allowedAlgorithms: [EdDSA]
  maxTokenLifetime: 10m
---
apiVersion: warden.dev/v1
kind: McpServer
metadata: {name: notes}
spec:
  resource: http://127.0.0.1:$notes_port/mcp
  issuers: [warden]
  upstream: http://127.0.0.1:$mcp_port/mcp
  listen: 127.0.0.1:$notes_port
  maxTaskTokenLifetime: 5m
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: notes-tasks}
spec:
  servers: [notes]
  cedar: |
    // Workloads of the development issuer may get task tokens for the harmless tools, and use
    // what their task token grants (a task token opens its granted tools only).
    permit(principal in Issuer::"dev-idp", action == Action::"token/exchange", resource)
    when { ["echo", "whoami"].contains(resource.name) };
    permit(principal in Issuer::"dev-idp", action in [Action::"tools/list", Action::"tools/call"], resource);
YAML
applied=$("$bin/wardenctl" apply -f "$work/tasks.yaml")
echo "$applied"
wait_version "$(echo "$applied" | sed -n 's/^configuration version //p')"
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$notes_port/.well-known/oauth-protected-resource/mcp" && break; sleep 0.1; done
json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
echo "the workload asks the platform for its identity token (it stores nothing):"
identity=$(curl -s "http://127.0.0.1:$issuer_port/token" -d "{\"sub\":\"report-builder\",\"aud\":\"$service\"}" | json_field access_token)
echo "  ${identity:0:24}… (5 minutes)"
echo "and exchanges it at the control plane's token service (RFC 8693) for a task token for echo and whoami:"
exchange() {
  curl -s --cacert "$work/cp/ca.crt" "$service/token" \
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d "subject_token=$identity" \
    -d subject_token_type=urn:ietf:params:oauth:token-type:jwt -d "resource=http://127.0.0.1:$notes_port/mcp" \
    --data-urlencode "scope=tool:echo tool:whoami"
}
task=""
for _ in $(seq 100); do
  task=$(exchange | json_field access_token)
  [ -n "$task" ] && break
  sleep 0.1 # the token service signs once the agents hold its key
done
[ -n "$task" ] || { echo "no task token: $(exchange)" >&2; exit 1; }
echo "  ${task:0:24}…"
# The workload's requests carry W3C trace context, as an instrumented client's do: each
# decision record keeps its trace id, so a trace in a tracing backend finds its decision.
trace=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
call() {
  curl -s "http://127.0.0.1:$notes_port/mcp" -H "authorization: Bearer $1" -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' -H "traceparent: 00-$trace-$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')-01" \
    -w ' [HTTP %{http_code}]' -d "$2"
  echo
}
echo "lists tools (only those its task grants):"
call "$task" '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
echo "calls whoami (allowed; the server learns who, never the token):"
call "$task" '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
echo "calls delete_repository (not in its task: refused):"
call "$task" '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"delete_repository","arguments":{"name":"notes"}}}'
echo "the task token is revoked (RFC 7009 at the token service); the whole fleet refuses it within:"
start=$(date +%s%N)
curl -s --cacert "$work/cp/ca.crt" "$service/revoke" -d "token=$task" -o /dev/null
for _ in $(seq 200); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$notes_port/mcp" -H "authorization: Bearer $task" \
    -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":4,"method":"tools/list"}')
  [ "$code" = 401 ] && break
  sleep 0.01
done
echo "  $(( ($(date +%s%N) - start) / 1000000 )) ms: HTTP $code"
for _ in $(seq 50); do
  [ "$("$bin/wardenctl" decisions --server notes -o json | wc -l)" -ge 4 ] && break
  sleep 0.1
done
"$bin/wardenctl" decisions --server notes
echo "the workload's trace ($trace) holds its decisions:"
"$bin/wardenctl" decisions --server notes -o json | grep "\"traceId\":\"$trace\"" |
  sed -n 's/.*"method":"\([^"]*\)".*"target":"\([^"]*\)".*"decision":"\([^"]*\)".*"traceId":"\([^"]*\)".*/  \4  \1 \2: \3/p'

step "the road from static secrets, 1: the agent found the key in the project's MCP configuration"
for _ in $(seq 100); do
  "$bin/wardenctl" get findings -o json | grep -q '"kind"' && break
  sleep 0.1
done
"$bin/wardenctl" get findings
echo "(where the key is and a keyed fingerprint of it; its value never leaves the host)"

step "2: the notes server still takes that static key: a credential bridge lets its client in, within a policy"
echo "$legacy_key" >"$work/legacy.key"
expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
cat >"$work/notes.yaml" <<YAML
apiVersion: warden.dev/v1
kind: CredentialBridge
metadata: {name: notes-bridge}
spec:
  server: notes
  header: X-Api-Key
  keyFile: legacy.key
  principal: legacy-notes-client
  owner: team-notes
  exitPlan: the notes client moves to token exchange by the end of the quarter
  expires: "$expires"
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: notes-legacy}
spec:
  servers: [notes]
  cedar: |
    permit(principal in Issuer::"notes-bridge", action == Action::"tools/list", resource);
    permit(principal in Issuer::"notes-bridge", action == Action::"tools/call", resource)
    when { ["echo", "whoami"].contains(resource.name) };
---
apiVersion: warden.dev/v1
kind: Policy
metadata: {name: notes-next}
spec:
  servers: [notes]
  mode: shadow
  cedar: |
    // Tried on live traffic before it is enforced: the bridged client loses whoami.
    forbid(principal in Issuer::"notes-bridge", action == Action::"tools/call", resource)
    when { resource.name == "whoami" };
YAML
applied=$("$bin/wardenctl" apply -f "$work/notes.yaml")
echo "$applied"
wait_version "$(echo "$applied" | sed -n 's/^configuration version //p')"
"$bin/wardenctl" get bridges
legacy() {
  curl -s "http://127.0.0.1:$notes_port/mcp" -H "x-api-key: $legacy_key" -H 'content-type: application/json' \
    -H 'accept: application/json, text/event-stream' -d "$1"
  echo
}
echo "the legacy client (its static key, no token) lists tools: only those its policy allows"
legacy '{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
echo "calls whoami: the server learns who called; the key stayed at the gateway"
legacy '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}'
echo "calls echo, then the dangerous delete_repository (refused by policy)"
legacy '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
legacy '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_repository","arguments":{"name":"notes"}}}'

step "3: what the shadow policy would change, before anyone enforces it"
for _ in $(seq 50); do
  "$bin/wardenctl" decisions --server notes --tool delete_repository --subject legacy-notes-client -o json | grep -q . && break
  sleep 0.1
done
"$bin/wardenctl" decisions --server notes --shadow-diff

step "4: the secretless scorecard"
"$bin/wardenctl" scorecard

if [ "${KEEP:-0}" = 1 ]; then
  step "fleet running (WARDEN_ADMIN_SOCKET=$WARDEN_ADMIN_SOCKET); Ctrl-C stops it"
  wait
fi
step "done; stopping the fleet"
