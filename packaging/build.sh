#!/usr/bin/env bash
# Builds skein's .deb and .rpm from one release build, into target/packages/ (or $1).
# Installs cargo-deb and cargo-generate-rpm first if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-target/packages}"
mkdir -p "$out"

for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "==> installing $tool (once)" >&2
        cargo install --locked --quiet "$tool"
    fi
done

echo "==> release build" >&2
cargo build --release --locked -p skein
echo "==> .deb" >&2
cargo deb --no-build --locked -p skein --output "$out/" >/dev/null
echo "==> .rpm" >&2
cargo generate-rpm -p cmd/skein --output "$out/" >/dev/null
# The newest of each, for scripts; older builds of other versions may sit beside them.
ls -t "$out"/*.deb | head -1
ls -t "$out"/*.rpm | head -1
