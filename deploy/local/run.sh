#!/usr/bin/env bash
# A working local fleet on the embedded store: one control plane, one agent, the example
# resources; shows the agent converging on each new configuration version.
# Everything lives in a temporary directory and stops on exit (Ctrl-C, or at the end unless
# KEEP=1 keeps the fleet running).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --quiet --workspace --bins
bin=target/debug
work=$(mktemp -d -t warden-local.XXXXXX)
cp_port=${CP_PORT:-17443}
status_port=${STATUS_PORT:-17480}
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
"$bin/warden-cp" --data-dir "$work/cp" --listen "127.0.0.1:$cp_port" 2>"$work/cp.log" &
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
"$bin/warden-agent" --id demo-agent --label role=github --data-dir "$work/agent" \
  --control-plane "127.0.0.1:$cp_port" --join-token "$token" \
  --status-listen "127.0.0.1:$status_port" "${gateway_tls[@]}" 2>"$work/agent.log" &
pids+=($!)

wait_version() {
  for _ in $(seq 100); do
    if "$bin/wardenctl" get agents -o json | grep -q "\"appliedVersion\": $1"; then return 0; fi
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

if [ "${KEEP:-0}" = 1 ]; then
  step "fleet running (WARDEN_ADMIN_SOCKET=$WARDEN_ADMIN_SOCKET); Ctrl-C stops it"
  wait
fi
step "done; stopping the fleet"
