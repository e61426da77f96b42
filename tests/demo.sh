#!/usr/bin/env bash
# Runs one skein daemon in the foreground on a scratch state directory and prints its status
# page address. Ctrl-C stops it. (No cluster is needed for the page; parts that need one say so.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p skein
state="${SKEIN_DEMO_DIR:-$PWD/target/demo}"
mkdir -p "$state"
export SKEIN_STORE__PATH="$state/state.db"
export SKEIN_DASHBOARD__LISTEN="${SKEIN_DASHBOARD__LISTEN:-127.0.0.1:9610}"
echo "status page: http://$SKEIN_DASHBOARD__LISTEN/  (Ctrl-C to stop)" >&2
exec target/release/skein run --config /dev/null
