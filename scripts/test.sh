#!/usr/bin/env bash
# codewatch's test command. Installs what the tests need (Azurite pinned in tools/azurite, PostgreSQL and
# promtool from Debian, the deploy linters and the OpenAPI tools in venvs) in the background while the code is
# checked and built, starts Azurite and PostgreSQL on loopback ports, runs the whole test suite (the
# guarantees scenarios and the deploy checks beside the other test binaries), and stops everything after.
# Modes: `scripts/test.sh chaos` runs only the long runs; `scripts/test.sh bench` only the benchmark
# (benches/codewatch: it starts its own Azurite and PostgreSQL); `scripts/test.sh slow` the two checks that
# run cargo themselves (the README's benchmark command as pasted, the image's build-context build).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-}"
work=$(mktemp -d)
pids=()
stop_pg() { :; }
# A process and everything it started (a background phase's cargo, its test binary, their Azurites).
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}
cleanup() {
  stop_pg
  for pid in "${pids[@]}"; do kill_tree "$pid"; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Each phase says how far into the run it starts, so that a slow phase shows in the CI log.
phase() { echo "== $* (at ${SECONDS} s)"; }

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

sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
apt_updated=""
apt_install() { # package…
  if [ -z "$apt_updated" ]; then $sudo_ apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
# Kept in target/ (ignored by git, removed by cargo clean) so that a second run reuses them.
venv="${CODEWATCH_VENV:-target/deploy-checks-venv}"
# The sign-in contract's tools (openapi-spec-validator, openapi-python-client and what the generated
# client imports), apart from the deploy linters so that their pins never have to agree.
export CODEWATCH_OPENAPI_VENV="${CODEWATCH_OPENAPI_VENV:-$PWD/target/openapi-venv}"

# The venv `venv` with the packages pinned in `requirements`; nothing to do when it was installed from
# exactly that file (a copy is kept in it).
venv_install() { # venv requirements what
  local installed="$1/installed-requirements.txt"
  if "$1/bin/python" -c 'import sys' 2>/dev/null; then
    cmp -s "$2" "$installed" && return 0
  else
    mkdir -p "$(dirname "$1")"
    python3 -m venv "$1"
  fi
  echo "== installing $3"
  "$1/bin/pip" install --quiet --no-compile --disable-pip-version-check -r "$2"
  cp "$2" "$installed"
}

# Everything the tests need that may be missing. Network and disk bound: it runs while cargo compiles.
install_tools() {
  local pinned installed
  pinned=$(python3 -c 'import json; print(json.load(open("tools/azurite/package.json"))["dependencies"]["azurite"])')
  installed=$(node -p 'require("./tools/azurite/node_modules/azurite/package.json").version' 2>/dev/null || true)
  if [ "$installed" != "$pinned" ]; then
    echo "== installing Azurite $pinned"
    npm ci --prefix tools/azurite --no-audit --no-fund --loglevel=error
  fi
  # Debian's packages in one apt-get run, so that dpkg's triggers (man-db and others) run once.
  local debs=()
  ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 || debs+=(postgresql)
  command -v openssl >/dev/null || debs+=(openssl)
  if [ "$mode" != chaos ] && [ "$mode" != bench ]; then
    command -v promtool >/dev/null || debs+=(prometheus) # promtool, for the alert rules
    # The sign-in example's browser test: Debian's Chromium and its WebDriver.
    [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || debs+=(chromium chromium-driver)
  fi
  if [ "${#debs[@]}" -gt 0 ]; then
    echo "== installing from Debian: ${debs[*]}"
    apt_install "${debs[@]}"
  fi
  [ "$mode" = chaos ] || [ "$mode" = bench ] && return 0
  # The deploy checks' tools and the OpenAPI tools: Python packages pinned in tools/, in venvs.
  venv_install "$venv" tools/deploy-checks/requirements.txt "the deploy checks (hadolint, kubernetes-validate, checkov)"
  venv_install "$CODEWATCH_OPENAPI_VENV" tools/openapi/requirements.txt \
    "the OpenAPI tools (openapi-spec-validator, openapi-python-client)"
}

phase "installing what the tests need, in the background"
install_tools >"$work/install.log" 2>&1 &
install_pid=$!

# --- checks and the build, meanwhile ---
# Clippy lints inside the build: clippy-driver compiles the workspace's own crates (code and lints, with
# warnings denied), rustc the dependencies, so the ~300 crates are compiled once, not checked by
# `cargo clippy` and then built again. Every cargo command below runs with the same wrapper, so none
# rebuilds what another built. A cold build runs faster without incremental compilation (nothing to
# reuse); set CARGO_INCREMENTAL=1 to keep it.
export RUSTC_WORKSPACE_WRAPPER="$PWD/scripts/clippy-deny-warnings"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
if [ "$mode" = "" ]; then
  phase "cargo fmt --check"
  cargo fmt --check
fi
if [ "$mode" != bench ]; then
  phase "building the tests, with clippy's lints (every target)"
  cargo test --locked --no-run --all-targets 2>&1 \
    | { grep -vE '^\s+(Compiling|Checking|Executable) ' || true; }
fi
phase "waiting for the installs"
wait "$install_pid" || { cat "$work/install.log" >&2; echo "installing the test tools failed" >&2; exit 1; }
cat "$work/install.log"

# `scripts/test.sh bench`: the benchmark, with RUST_BACKTRACE unset (an error built on a hot path would
# capture a backtrace); BENCH_N, BENCH_SECONDS, BENCH_ROWS, BENCH_ONLY pass through, and BENCH_PROFILE
# (the suite runs it in the dev profile, at a small scale, to check it works).
if [ "$mode" = bench ]; then
  phase "benchmark"
  env -u RUST_BACKTRACE cargo bench --locked --profile "${BENCH_PROFILE:-bench}" --bench codewatch
  exit
fi

# --- Azurite (npm, version pinned by tools/azurite/package-lock.json) ---
mkdir -p "$work/azurite"
# Port 0: Azurite binds a free port and says which (no window in which another process may take it).
tools/azurite/node_modules/.bin/azurite-queue --queueHost 127.0.0.1 --queuePort 0 \
  --location "$work/azurite" --disableTelemetry --skipApiVersionCheck --silent >"$work/azurite.log" 2>&1 &
pids+=("$!")
azurite_port=""
for _ in $(seq 1 300); do
  azurite_port=$(sed -n 's|.*successfully listens on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$work/azurite.log")
  [ -n "$azurite_port" ] && break
  sleep 0.2
done
[ -n "$azurite_port" ] || { echo "Azurite did not start:" >&2; cat "$work/azurite.log" >&2; exit 1; }
wait_for_port "$azurite_port" Azurite "$work/azurite.log"
export CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT="http://127.0.0.1:$azurite_port/devstoreaccount1"
echo "== Azurite $(node -p 'require("./tools/azurite/node_modules/azurite/package.json").version') on 127.0.0.1:$azurite_port"

# --- PostgreSQL (Debian's package; a throwaway cluster in the temporary folder, trust auth on loopback) ---
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: run it as Debian's postgres user.
  as_pg=(runuser -u postgres --)
  chmod 755 "$work"
fi
pg_port=$(free_port)
mkdir -p "$work/pg"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg"
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/pg/data" -U postgres --auth=trust -E UTF8 >"$work/initdb.log" 2>&1 \
  || { cat "$work/initdb.log" >&2; exit 1; }
# TLS on, with a throwaway self-signed certificate, so that `sslmode=require` (as Azure requires) is tested.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
  -keyout "$work/pg/server.key" -out "$work/pg/server.crt" >/dev/null 2>&1
chmod 600 "$work/pg/server.key"
[ "$(id -u)" = 0 ] && chown postgres "$work/pg/server.key" "$work/pg/server.crt"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -o \
  "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400 \
   -c ssl=on -c ssl_cert_file=$work/pg/server.crt -c ssl_key_file=$work/pg/server.key" start >/dev/null
stop_pg() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate stop >/dev/null 2>&1 || true; }
export CODEWATCH_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
echo "== PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"

# `scripts/test.sh chaos`: only the long runs: the chaos run (CHAOS_SECONDS, default 120;
# CHAOS_CODES_PER_SECOND, 5; CHAOS_TTL_SECONDS, 20; the workers' logs are kept in target/chaos/last-run) on an Azurite of its own, and the replica soak at
# full scale (CODEWATCH_REPLICAS_CODES, 3000).
if [ "$mode" = chaos ]; then
  phase "chaos run"
  env -u CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT \
    cargo test --locked --test guarantees -- --ignored --nocapture chaos
  phase "the quarantined scenarios"
  env -u CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT \
    cargo test --locked --test guarantees -- --ignored --nocapture postgres_quarantined
  phase "replica soak"
  CODEWATCH_REPLICAS_CODES="${CODEWATCH_REPLICAS_CODES:-3000}" cargo test --locked --test processes -- --nocapture replicas::
  exit
fi

if [ "$mode" = slow ]; then
  # The README's benchmark command, then the image's build (it rebuilds target/debug/codewatch).
  phase "the README's benchmark command"
  cargo test --locked --test processes -- --ignored --exact up::the_readmes_benchmark_runs_as_pasted
  phase "the image's build-context build"
  cargo test --locked --test processes -- --ignored --exact deploy::the_image_builds_from_exactly_its_build_context
  exit
fi

# --- tests ---
# The guarantees scenarios wait out real TTLs and the deploy linters are Python: both run beside the
# other test binaries. The guarantees on an Azurite of their own (started by the tests): Azurite slows
# with every message stored in it. Four scenarios at a time: they wait far more than they compute.
phase "guarantees and deploy checks (in the background)"
( set +e
  env -u CODEWATCH_TEST_AZURITE_QUEUE_ENDPOINT \
    cargo test --locked --test guarantees -- --nocapture --test-threads "${CODEWATCH_GUARANTEES_THREADS:-4}" >"$work/guarantees.log" 2>&1
  echo $? >"$work/guarantees.rc" ) &
guarantees_pid=$!
deploy_checks() {
  "$venv/bin/hadolint" deploy/Dockerfile
  "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version 1.35.0 deploy/k8s/*.yaml deploy/k8s/examples/*.yaml
  # Every finding fixed or skipped with a reason in the file itself; --skip-download keeps it offline.
  "$venv/bin/checkov" --directory deploy --compact --quiet --skip-download --output cli
  promtool check rules deploy/prometheus/alerts.yaml
  promtool test rules deploy/prometheus/alerts.test.yaml
}
( set +e; ( set -e; deploy_checks ) >"$work/deploy.log" 2>&1; echo $? >"$work/deploy.rc" ) &
deploy_pid=$!
pids+=("$guarantees_pid" "$deploy_pid")

phase "cargo test (the unit tests, the integration and processes binaries)"
cargo test --locked --lib --test integration --test processes -- --test-threads "${CODEWATCH_TEST_THREADS:-3}" 2>&1 | tee "$work/test.log"

phase "waiting for the guarantees (the checker's numbers per scenario) and the deploy checks"
wait "$guarantees_pid" || true
grep -E '^(test |sqlite |sqlite_only |postgres |processes |toggle|fault proxy|database faults|[0-9]+ workers)' "$work/guarantees.log" || true
[ "$(cat "$work/guarantees.rc")" = 0 ] || { cat "$work/guarantees.log"; echo "the guarantees failed" >&2; exit 1; }
cat "$work/guarantees.log" >>"$work/test.log"
wait "$deploy_pid" || true
cat "$work/deploy.log"
[ "$(cat "$work/deploy.rc")" = 0 ] || { echo "the deploy checks failed" >&2; exit 1; }

phase "summary"
awk '/^test result:/ { passed += $4; failed += $6 } END { print passed " passed, " failed " failed" }' "$work/test.log"
