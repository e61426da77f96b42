#!/usr/bin/env bash
# Installs what skein's tests need on a Debian machine, skipping what is already there:
# Debian packages (with apt, as root) and the cargo packaging subcommands.
set -euo pipefail

# program on PATH -> Debian package that provides it
declare -A wanted=(
    [nft]=nftables
    [ip]=iproute2
    [wg]=wireguard-tools
    [chromium]=chromium
    [rpm]=rpm
    [systemd-analyze]=systemd
    [curl]=curl
    # the overlay tests: a hand-configured wireguard-go peer, and a capture of the underlay
    [wireguard-go]=wireguard-go
    [tcpdump]=tcpdump
    # bench/overlay
    [iperf3]=iperf3
)
missing=()
for program in "${!wanted[@]}"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("${wanted[$program]}")
done
# the metrics test parses /metrics with the Prometheus project's own parser, in Debian's Python
/usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null || missing+=(python3-prometheus-client)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "==> apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The lab's control plane is built from Kubernetes' Go modules; Debian's Go is too old for it.
if ! command -v go >/dev/null 2>&1; then
    echo "Go (1.26 or newer) is needed to build the lab's control plane: https://go.dev/doc/install" >&2
    exit 1
fi

for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "==> cargo install $tool (once)" >&2
        cargo install --locked --quiet "$tool"
    fi
done
