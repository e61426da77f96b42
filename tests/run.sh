#!/usr/bin/env bash
# skein's whole test suite: formatting, lints, unit tests, black-box tests of the binary, the
# packages and the status page in a real Chromium. Installs what it needs first.
#
# As root with SKEIN_TEST_ALL=1 (what CI does) every test must run; otherwise tests that need
# root or a missing tool say SKIPPED and pass.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { echo "==> [$((SECONDS - started))s] $*" >&2; }

step "installing test dependencies (the full set)"
tests/install-deps.sh tests
step "cargo fmt --check"
cargo fmt --all --check
step "building (debug)"
cargo build --locked --workspace --bins
step "building the .deb and .rpm (release)"
packaging/build.sh target/packages
step "the lab's Kubernetes control plane (built once, then cached)"
cmd/skein-lab/controlplane/build.sh >/dev/null
step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
step "cargo test"
cargo test --locked --workspace --no-fail-fast
step "all tests passed"
