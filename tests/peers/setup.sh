#!/usr/bin/env bash
# Prepares the peers of the end-to-end suites: etcd, and the Python peers in target/pyenv (idempotent; reinstalls
# only when requirements.txt changes). Needs python3 with venv (Debian: python3-venv).
set -euo pipefail
# The replica suites run a real etcd: Debian's etcd-server, and etcdctl (etcd-client) to compact.
if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client
  else
    echo "etcd is missing: install etcd-server and etcd-client (Debian)" >&2
    exit 1
  fi
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
env="$root/target/pyenv"
requirements="$root/tests/peers/requirements.txt"
stamp="$env/.requirements"
if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
  exit 0
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq python3-venv
  else
    echo "python3 venv support is missing: install python3-venv" >&2
    exit 1
  fi
fi
rm -rf "$env"
python3 -m venv "$env"
"$env/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
