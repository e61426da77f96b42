#!/usr/bin/env bash
# The main job: a 3-node skein cluster on this machine. Builds skein and skein-lab, builds the
# Kubernetes control plane the first time (with progress; cached afterwards), brings up the lab
# and prints each node's status page address. Needs root (network namespaces).
#   tests/lab.sh [NODES]        then: target/debug/skein-lab status | down
set -euo pipefail
cd "$(dirname "$0")/.."
nodes="${1:-3}"
tests/install-deps.sh
cargo build --locked --bins
target/debug/skein-lab down >/dev/null 2>&1 || true
target/debug/skein-lab up --nodes "$nodes"
echo
target/debug/skein-lab status
echo
echo "kubectl: export KUBECONFIG=$(target/debug/skein-lab kubeconfig)"
echo "remove the lab: target/debug/skein-lab down"
