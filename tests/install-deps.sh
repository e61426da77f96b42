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
#                   systemd-analyze, curl, wireguard-go, tcpdump, iperf3, dnsutils, cargo-deb and
#                   cargo-generate-rpm
#   bench-overlay   bench/overlay/run.sh: iproute2, iperf3, iputils-ping, wireguard-tools,
#                   wireguard-go, python3, procps
#   bench-cni       bench/cni/run.sh: iproute2, bc, the reference CNI plugins
#   bench-proxy     bench/proxy/run.sh: the lab's set (kube-proxy is built with the control
#                   plane, so Go), curl, python3, procps, coreutils' timeout, util-linux'
#                   taskset and chrt
set -euo pipefail

# Every program a set runs (on PATH, or an absolute path) -> the Debian package with it.
declare -A package=(
    [ip]=iproute2 [ss]=iproute2 [nft]=nftables [wg]=wireguard-tools
    [chromium]=chromium [rpm]=rpm [systemd-analyze]=systemd [curl]=curl
    [wireguard-go]=wireguard-go [tcpdump]=tcpdump [iperf3]=iperf3 [ping]=iputils-ping
    [dig]=dnsutils [getent]=libc-bin
    [python3]=python3 [sysctl]=procps [awk]=mawk [bc]=bc [xargs]=findutils [timeout]=coreutils [taskset]=util-linux [chrt]=util-linux
    [/usr/lib/cni/bridge]=containernetworking-plugins
    [/usr/lib/cni/host-local]=containernetworking-plugins
)
# What each set runs. The full run adds to the lab's: the overlay tests' hand-configured
# wireguard-go peer and capture of the underlay, the page test's browser, the packages' checks,
# the DNS test's dig.
lab=(ip nft wg)
tests=(chromium rpm systemd-analyze curl wireguard-go tcpdump iperf3 dig getent)
bench_overlay=(ip ss iperf3 ping wg wireguard-go python3 sysctl awk)
bench_cni=(ip bc xargs /usr/lib/cni/bridge /usr/lib/cni/host-local)
# kube-proxy's nftables mode runs nft itself; the script reads metrics with curl and python3.
bench_proxy=(ip nft wg curl python3 awk sysctl timeout taskset chrt)

sets=("$@")
((${#sets[@]})) || sets=(tests)
wanted=()
need_go="" need_cargo_tools=""
for s in "${sets[@]}"; do
    case $s in
        lab) wanted+=("${lab[@]}"); need_go=1 ;;
        tests) wanted+=("${lab[@]}" "${tests[@]}"); need_go=1; need_cargo_tools=1 ;;
        bench-overlay) wanted+=("${bench_overlay[@]}") ;;
        bench-cni) wanted+=("${bench_cni[@]}") ;;
        bench-proxy) wanted+=("${bench_proxy[@]}"); need_go=1 ;;
        *) echo "install-deps.sh: unknown set $s (lab, tests, bench-overlay, bench-cni, bench-proxy)" >&2; exit 2 ;;
    esac
done
echo "==> dependencies of: ${sets[*]}" >&2

missing=()
for program in "${wanted[@]}"; do
    if [[ $program = /* ]]; then
        [[ -x $program ]] && continue
    else
        command -v "$program" >/dev/null 2>&1 && continue
    fi
    [[ " ${missing[*]} " = *" ${package[$program]} "* ]] || missing+=("${package[$program]}")
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
