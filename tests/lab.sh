#!/usr/bin/env bash
# The main job: a 3-node skein cluster on this machine. Builds skein and skein-lab, builds the
# Kubernetes control plane the first time (with progress; cached afterwards), brings up the lab
# and prints each node's status page address. Needs root (network namespaces).
#   tests/lab.sh [NODES]        then: target/debug/skein-lab status | down
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-3}"
# Only what the lab runs: no packaging tools, no browser (tests/run.sh installs those).
tests/install-deps.sh lab
cargo build --locked -p skein -p skein-lab
lab="${CARGO_TARGET_DIR:-target}/debug/skein-lab"
"$lab" down >/dev/null 2>&1 || true
# `up` returns once every node's status page says ok, or fails naming the node that is not.
"$lab" up --nodes "$nodes"
echo
"$lab" status
echo
echo "kubectl: export KUBECONFIG=$("$lab" kubeconfig)"
echo "remove the lab: $lab down"
