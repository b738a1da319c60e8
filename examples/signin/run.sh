#!/usr/bin/env bash
# The sign-in demo in one command: builds codewatch, makes a venv with the example's Python packages
# (target/signin-venv), and starts everything (see run.py). Open the URL it prints.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --locked --bin codewatch
venv=target/signin-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/signin/requirements.txt
exec "$venv/bin/python" examples/signin/run.py --codewatch target/release/codewatch "$@"
