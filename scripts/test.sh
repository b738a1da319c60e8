#!/usr/bin/env bash
# codewatch's test command. Installs and starts what the tests need on loopback ports (Azurite, pinned in
# tools/azurite), runs the format and lint checks and the whole test suite, and stops everything after.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_for_port() { # port name log
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not start on port $1:" >&2
  cat "$3" >&2
  return 1
}

# --- Azurite (npm, version pinned by tools/azurite/package-lock.json) ---
pinned=$(python3 -c 'import json; print(json.load(open("tools/azurite/package.json"))["dependencies"]["azurite"])')
installed=$(node -p 'require("./tools/azurite/node_modules/azurite/package.json").version' 2>/dev/null || true)
if [ "$installed" != "$pinned" ]; then
  echo "== installing Azurite $pinned"
  npm ci --prefix tools/azurite --no-audit --no-fund --loglevel=error
fi
azurite_port=$(free_port)
mkdir -p "$work/azurite"
tools/azurite/node_modules/.bin/azurite-queue --queueHost 127.0.0.1 --queuePort "$azurite_port" \
  --location "$work/azurite" --disableTelemetry --skipApiVersionCheck --silent >"$work/azurite.log" 2>&1 &
pids+=("$!")
wait_for_port "$azurite_port" Azurite "$work/azurite.log"
export CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT="http://127.0.0.1:$azurite_port/devstoreaccount1"
echo "== Azurite $pinned on 127.0.0.1:$azurite_port"

# --- checks and tests ---
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
