#!/usr/bin/env bash
# Installs what skein's scripts need on a Debian machine, skipping what is already there: Debian
# packages with apt-get (as root, and only those whose program is missing), the cargo packaging
# subcommands for the full test run, and a check for Go (the lab's control plane needs a newer one
# than Debian ships).
#
#   tests/install-deps.sh [SET...]          default: tests
#
#   lab             what tests/lab.sh needs: iproute2, nftables, wireguard-tools; Go
#   tests           the full test run (tests/run.sh, CI): the lab's set, plus Chromium, rpm,
#                   systemd-analyze, curl, wireguard-go, tcpdump, iperf3, cargo-deb and
#                   cargo-generate-rpm
#   bench-overlay   bench/overlay/run.sh: iproute2, iperf3, iputils-ping, wireguard-tools,
#                   wireguard-go, python3, procps
#   bench-cni       bench/cni/run.sh: iproute2, bc, the reference CNI plugins
set -euo pipefail

# What each set runs: a program on PATH (or an absolute path) -> the Debian package with it.
declare -A lab=(
    [ip]=iproute2
    [nft]=nftables
    [wg]=wireguard-tools
)
declare -A tests=(
    [chromium]=chromium
    [rpm]=rpm
    [systemd-analyze]=systemd
    [curl]=curl
    # the overlay tests: a hand-configured wireguard-go peer, and a capture of the underlay
    [wireguard-go]=wireguard-go
    [tcpdump]=tcpdump
    [iperf3]=iperf3
)
declare -A bench_overlay=(
    [ip]=iproute2
    [ss]=iproute2
    [iperf3]=iperf3
    [ping]=iputils-ping
    [wg]=wireguard-tools
    [wireguard-go]=wireguard-go
    [python3]=python3
    [sysctl]=procps
    [awk]=mawk
)
declare -A bench_cni=(
    [ip]=iproute2
    [bc]=bc
    [xargs]=findutils
    [/usr/lib/cni/bridge]=containernetworking-plugins
    [/usr/lib/cni/host-local]=containernetworking-plugins
)

sets=("$@")
((${#sets[@]})) || sets=(tests)
declare -A wanted=()
need_go="" need_cargo_tools=""
add() {
    local -n set=$1
    local program
    for program in "${!set[@]}"; do wanted[$program]=${set[$program]}; done
}
for s in "${sets[@]}"; do
    case $s in
        lab) add lab; need_go=1 ;;
        tests) add lab; add tests; need_go=1; need_cargo_tools=1 ;;
        bench-overlay) add bench_overlay ;;
        bench-cni) add bench_cni ;;
        *) echo "install-deps.sh: unknown set $s (lab, tests, bench-overlay, bench-cni)" >&2; exit 2 ;;
    esac
done
echo "==> dependencies of: ${sets[*]}" >&2

missing=()
for program in "${!wanted[@]}"; do
    if [[ $program = /* ]]; then
        [[ -x $program ]] && continue
    else
        command -v "$program" >/dev/null 2>&1 && continue
    fi
    [[ " ${missing[*]} " = *" ${wanted[$program]} "* ]] || missing+=("${wanted[$program]}")
done
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
if [[ -n $need_go ]] && ! command -v go >/dev/null 2>&1; then
    echo "Go (1.26 or newer) is needed to build the lab's control plane: https://go.dev/doc/install" >&2
    exit 1
fi

# Only the full run builds the .deb and .rpm.
if [[ -n $need_cargo_tools ]]; then
    for tool in cargo-deb cargo-generate-rpm; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "==> cargo install $tool (once)" >&2
            cargo install --locked --quiet "$tool"
        fi
    done
fi
