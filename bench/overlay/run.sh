#!/usr/bin/env bash
# Overlay throughput: skein's userspace WireGuard device against wireguard-go (Debian's packaged
# build and the current upstream), plus unencrypted routing as the ceiling, in the same run, on the
# same machine. Two "nodes" joined by a bridged underlay, one "pod" behind each node, all in
# network namespaces of this run's own; iperf3 from pod-a to pod-b. Needs root.
#
#   bench/overlay/run.sh [RESULT.md]
#
# Environment:
#   DURATION=10          seconds per iperf3 run
#   SKEIN=path           skein binary; default: `cargo build --release -p skein` here, taken from
#                        $CARGO_TARGET_DIR or <repo>/target
#   CASES="plain wireguard-go-debian wireguard-go-current skein"   which cases, in this order
#   UDP_RATE=500M        offered UDP load (iperf3 -b)
#   UDP_BUFFER=          socket buffer for the UDP run (iperf3 -w, e.g. 4M; capped by the host's
#                        net.core.rmem_max); default: the system's, as a pod would have
#   WIREGUARD_GO_VERSION=latest   module version of golang.zx2c4.com/wireguard to build
#
# The Markdown table goes to stdout (and to RESULT.md when given); progress goes to stderr.
set -euo pipefail
shopt -s inherit_errexit   # a failure inside $(...) must stop the run too

repo=$(cd "$(dirname "$0")/../.." && pwd)
DURATION=${DURATION:-10}
CASES=${CASES:-plain wireguard-go-debian wireguard-go-current skein}
UDP_RATE=${UDP_RATE:-500M}
UDP_BUFFER=${UDP_BUFFER:-}
WIREGUARD_GO_VERSION=${WIREGUARD_GO_VERSION:-latest}
result_file=${1:-}
cache_root=/var/cache/skein-bench

# wireguard-go sizes its workers by GOMAXPROCS (= the number of CPUs); skein caps its own at 4, so
# ask for the same count explicitly and both run with equal parallelism up to 4 CPUs.
cpus=$(nproc)
threads=${SKEIN_THREADS:-$((cpus < 4 ? cpus : 4))}

# Inner MTU of every tunnel, and of the pods in every case (as a CNI sets it on a WireGuard
# overlay), so each case moves the same packets and `plain` differs only by the missing tunnel.
wg_mtu=1420
# UDP payload that fills one inner packet without IP fragmentation (20 IP + 8 UDP header bytes).
udp_len=$((wg_mtu - 28))

log() { echo "[overlay-bench] $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a whole number of seconds"
# Everything this script runs (ping, iperf3, wg, wireguard-go, ss, python3, ...), installed with
# apt-get when missing.
"$repo/tests/install-deps.sh" bench-overlay

# Everything this run creates carries the prefix, so concurrent runs and leftovers of other
# software never collide with it, and cleanup touches nothing else. Interface names stay within
# 15 characters: "sbo" + up to 7 pid digits + 2 letters.
prefix="sbo$$"
ns_ul="$prefix-ul" ns_na="$prefix-na" ns_nb="$prefix-nb" ns_pa="$prefix-pa" ns_pb="$prefix-pb"
all_ns=("$ns_pa" "$ns_pb" "$ns_na" "$ns_nb" "$ns_ul")
ul_a=198.19.0.11 ul_b=198.19.0.12
cidr_a=10.244.1.0/24 cidr_b=10.244.2.0/24
pod_a=10.244.1.2 pod_b=10.244.2.2
wg_port=51820

work=$(mktemp -d "/tmp/$prefix.XXXXXX")
tunnel_pids=()   # tunnel processes of the current case
wg_names=()      # userspace WireGuard interfaces of the current case

# Stops a process we started: SIGTERM first, so userspace WireGuard removes its control socket
# and TUN, then SIGKILL if it does not go.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_case() {
    local pid ns name
    for pid in "${tunnel_pids[@]}"; do stop_pid "$pid"; done
    if [[ -s $work/iperf3.pid ]]; then
        stop_pid "$(tr -dc 0-9 <"$work/iperf3.pid")"
        rm -f "$work/iperf3.pid"
    fi
    # Anything still running inside our namespaces was started by this run (a namespace keeps no
    # process alive, so deleting it would orphan them).
    for ns in "${all_ns[@]}"; do
        if [[ -e /run/netns/$ns ]]; then
            for pid in $(ip netns pids "$ns" 2>/dev/null); do stop_pid "$pid"; done
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    # /var/run/wireguard is shared by every namespace; a SIGKILLed device leaves its socket there.
    for name in "${wg_names[@]}"; do rm -f "/var/run/wireguard/$name.sock"; done
    tunnel_pids=() wg_names=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_case
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- Binaries --------------------------------------------------------------------------------

if [[ -z ${SKEIN:-} ]]; then
    command -v cargo >/dev/null || die "cargo not found; build skein elsewhere and pass SKEIN=path"
    target_dir=${CARGO_TARGET_DIR:-$repo/target}
    [[ $target_dir = /* ]] || target_dir="$PWD/$target_dir"   # cargo runs from the repo root below
    log "building skein (release)"
    (cd "$repo" && CARGO_TARGET_DIR="$target_dir" cargo build --release -p skein -q)
    SKEIN="$target_dir/release/skein"
fi
[[ -x $SKEIN ]] || die "SKEIN=$SKEIN is not an executable"

# The current upstream wireguard-go, built once per module version: the module's root package is
# the wireguard-go command. Sets wg_go_current (the binary), wg_go_version and wg_go_build_seconds.
wg_go_current="" wg_go_version="" wg_go_build_seconds=""
build_wireguard_go() {
    command -v go >/dev/null || die "go is not installed (needed for wireguard-go-current)"
    local dir
    dir=$(mktemp -d "$work/wggo.XXXXXX")
    (cd "$dir" && go mod init skein-bench/wireguard-go >/dev/null 2>&1)
    # The module has no release tags, so "latest" is a pseudo-version of the newest commit.
    wg_go_version=$(cd "$dir" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' \
        "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION" 2>"$dir/list.err") || {
        # Offline: fall back to the newest build already cached.
        local cached
        cached=$(ls -1dt "$cache_root"/wireguard-go-*/wireguard-go 2>/dev/null | head -n 1)
        [[ -n $cached ]] || { cat "$dir/list.err" >&2; die "cannot resolve golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION"; }
        wg_go_version=$(basename "$(dirname "$cached")"); wg_go_version=${wg_go_version#wireguard-go-}
        log "module proxy unreachable; using cached wireguard-go $wg_go_version"
        wg_go_current=$cached
        return
    }
    local out="$cache_root/wireguard-go-$wg_go_version"
    if [[ ! -x $out/wireguard-go ]]; then
        log "building wireguard-go $wg_go_version (cached in $out)"
        mkdir -p "$out"
        local start end
        start=$(date +%s.%N)
        (cd "$dir" && go get "golang.zx2c4.com/wireguard@$wg_go_version" >&2 &&
            go build -trimpath -o "$out/wireguard-go.tmp" golang.zx2c4.com/wireguard >&2)
        end=$(date +%s.%N)
        mv "$out/wireguard-go.tmp" "$out/wireguard-go"
        wg_go_build_seconds=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
        log "built wireguard-go in ${wg_go_build_seconds} s"
    else
        log "using cached wireguard-go $wg_go_version"
    fi
    wg_go_current="$out/wireguard-go"
}

wg_go_debian=/usr/bin/wireguard-go
for c in $CASES; do
    case $c in
        plain | skein) ;;
        wireguard-go-debian) [[ -x $wg_go_debian ]] || die "$wg_go_debian missing (apt-get install wireguard-go)" ;;
        wireguard-go-current) build_wireguard_go ;;
        *) die "unknown case $c" ;;
    esac
done

# --- Topology --------------------------------------------------------------------------------

# Fresh namespaces for every case, so no state (neighbours, conntrack, a lingering TUN) carries
# from one implementation to the next. Veths are created directly inside the namespaces, so their
# short names never meet the host's interfaces.
make_topology() {
    local ns
    for ns in "${all_ns[@]}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ip -n "$ns_ul" link add br0 type bridge
    ip -n "$ns_ul" link set br0 up
    local side node pod ul cidr podip
    for side in a b; do
        if [[ $side = a ]]; then node=$ns_na pod=$ns_pa ul=$ul_a cidr=$cidr_a podip=$pod_a
        else node=$ns_nb pod=$ns_pb ul=$ul_b cidr=$cidr_b podip=$pod_b; fi
        local gw=${cidr%.0/24}.1
        ip -n "$ns_ul" link add "n$side" mtu 1500 type veth peer name ul netns "$node" mtu 1500
        ip -n "$ns_ul" link set "n$side" master br0 up
        ip -n "$node" addr add "$ul/24" dev ul
        ip -n "$node" link set ul up
        ip -n "$node" link add pod mtu "$wg_mtu" type veth peer name eth0 netns "$pod" mtu "$wg_mtu"
        ip -n "$node" addr add "$gw/24" dev pod
        ip -n "$node" link set pod up
        ip netns exec "$node" sysctl -qw net.ipv4.ip_forward=1
        ip -n "$pod" addr add "$podip/24" dev eth0
        ip -n "$pod" link set eth0 up
        ip -n "$pod" route add default via "$gw"
    done
}

# CPU seconds (user + system, all threads) a process has used so far.
cpu_seconds() {
    local stat rest f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }                   # the command name may hold spaces and parentheses
    read -ra f <<<"$rest"
    awk -v u="${f[11]}" -v s="${f[12]}" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (u + s) / hz }'
}

tunnel_cpu() {
    local total=0 pid
    for pid in "${tunnel_pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || die "tunnel process $pid died; see logs above"
        total=$(awk -v a="$total" -v b="$(cpu_seconds "$pid")" 'BEGIN { printf "%.3f", a + b }')
    done
    echo "$total"
}

# Starts a userspace WireGuard device in each node and configures it as a two-node overlay.
# $1 = case letter for the interface names; the rest = the command that runs one device in the
# foreground, given the interface name as its last argument.
start_tunnels() {
    local letter=$1; shift
    local keys="$work/keys"
    mkdir -p "$keys"
    (umask 077; for s in a b; do wg genkey >"$keys/$s.key"; wg pubkey <"$keys/$s.key" >"$keys/$s.pub"; done)
    local side node name peer peer_ul peer_cidr
    for side in a b; do
        name="$prefix$letter$side"
        [[ ! -e /var/run/wireguard/$name.sock ]] || die "/var/run/wireguard/$name.sock already exists"
        if [[ $side = a ]]; then node=$ns_na; else node=$ns_nb; fi
        # The device must live in the node's namespace: its TUN and UDP socket are created there.
        ip netns exec "$node" "$@" "$name" >"$work/$name.log" 2>&1 &
        tunnel_pids+=("$!")
        wg_names+=("$name")
    done
    for side in a b; do
        name="$prefix$letter$side"
        if [[ $side = a ]]; then node=$ns_na peer=b peer_ul=$ul_b peer_cidr=$cidr_b
        else node=$ns_nb peer=a peer_ul=$ul_a peer_cidr=$cidr_a; fi
        for _ in $(seq 1 100); do
            ip netns exec "$node" wg show "$name" >/dev/null 2>&1 && break
            sleep 0.1
        done
        ip netns exec "$node" wg show "$name" >/dev/null 2>&1 || {
            cat "$work/$name.log" >&2; die "$name did not come up"; }
        ip netns exec "$node" wg set "$name" private-key "$keys/$side.key" listen-port "$wg_port" \
            peer "$(<"$keys/$peer.pub")" endpoint "$peer_ul:$wg_port" allowed-ips "$peer_cidr"
        ip -n "$node" link set "$name" mtu "$wg_mtu" up
        ip -n "$node" route add "$peer_cidr" dev "$name"
    done
}

# --- Measurements ----------------------------------------------------------------------------

# Reads an iperf3 -J result; prints "receiver_bits_per_second bytes_received lost_percent
# datagrams_sent" (0 datagrams for TCP).
parse_iperf() {
    python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    sys.exit("iperf3: " + r["error"])
end = r["end"]
if "sum_received" in end:                      # TCP (and UDP on newer iperf3)
    s = end["sum_received"]
    lost = s.get("lost_percent", end.get("sum", {}).get("lost_percent", 0.0))
    sent = end.get("sum_sent", end.get("sum", {})).get("packets", 0)
    print(s["bits_per_second"], s["bytes"], lost, sent)
else:                                          # UDP: "sum" is the sender's, minus the loss
    s = end["sum"]
    keep = 1 - s["lost_percent"] / 100
    print(s["bits_per_second"] * keep, s["bytes"] * keep, s["lost_percent"], s["packets"])
PY
}

# Datagrams namespace $1's kernel dropped because a receiving socket's buffer was full.
rcvbuf_errors() {
    ip netns exec "$1" awk '/^Udp:/ { if (n++) print $col; else for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") col = i }' /proc/net/snmp
}

# Packets lost inside the tunnel: node-a's kernel dropping what its tunnel process did not read
# from the TUN queue in time, plus node-b's kernel dropping encrypted datagrams its tunnel process
# did not read from its UDP socket in time. 0 without a tunnel.
tun_drops() {
    if [[ ${#wg_names[@]} -gt 0 ]]; then
        echo $(($(ip netns exec "$ns_na" cat "/sys/class/net/${wg_names[0]}/statistics/tx_dropped") +
            $(rcvbuf_errors "$ns_nb")))
    else
        echo 0
    fi
}

# One iperf3 run pod-a -> pod-b. $1 = test id, the rest = extra iperf3 options.
# Prints "bits_per_second bytes lost_percent cpu_seconds receiver_drop_percent tun_drop_percent".
run_iperf() {
    local test=$1; shift
    local json="$work/$test.json" before after drops_before drops_after tun_before tun_after
    # Loss at pod-b's socket happened after the tunnel had delivered the datagram: the receiver
    # fell behind (a tunnel that hands over packets in large batches makes bursts that overflow a
    # default-sized buffer).
    drops_before=$(rcvbuf_errors "$ns_pb")
    tun_before=$(tun_drops)
    before=$(tunnel_cpu)
    # iperf3's stderr only warns that the UDP payload exceeds the control connection's MSS (that
    # MSS leaves room for TCP options; the datagrams still fit the MTU); kept for failures.
    ip netns exec "$ns_pa" iperf3 -c "$pod_b" -t "$DURATION" -J --connect-timeout 5000 "$@" \
        >"$json" 2>"$work/$test.err" || true
    after=$(tunnel_cpu)
    drops_after=$(rcvbuf_errors "$ns_pb")
    tun_after=$(tun_drops)
    local parsed bps bytes loss sent
    parsed=$(parse_iperf "$json") || { cat "$work/$test.err" >&2; die "iperf3 $test failed"; }
    read -r bps bytes loss sent <<<"$parsed"
    awk -v bps="$bps" -v bytes="$bytes" -v loss="$loss" -v sent="$sent" -v c0="$before" -v c1="$after" \
        -v d0="$drops_before" -v d1="$drops_after" -v t0="$tun_before" -v t1="$tun_after" \
        'BEGIN { printf "%s %s %s %.3f %.2f %.2f\n", bps, bytes, loss, c1 - c0,
            (sent > 0 ? 100 * (d1 - d0) / sent : 0), (sent > 0 ? 100 * (t1 - t0) / sent : 0) }'
}

declare -A res   # res[case,test] = the line run_iperf printed

# Waits until pod-b's iperf3 server listens and no connection of a previous run is left, without
# connecting to it (iperf3 would take a probe for a client).
iperf3_server_idle() {
    local _
    for _ in $(seq 1 100); do
        if [[ -n $(ip netns exec "$ns_pb" ss -Hltn "sport = :5201") &&
            -z $(ip netns exec "$ns_pb" ss -Htn state established "sport = :5201") ]]; then
            return 0
        fi
        sleep 0.1
    done
    die "pod-b's iperf3 server is not listening (see $work/iperf3-*.log)"
}

run_case() {
    local c=$1
    log "case $c: setting up"
    make_topology
    case $c in
        plain)
            ip -n "$ns_na" route add "$cidr_b" via "$ul_b"
            ip -n "$ns_nb" route add "$cidr_a" via "$ul_a"
            ;;
        skein) start_tunnels k "$SKEIN" wireguard --threads "$threads" --interface ;;
        wireguard-go-debian) start_tunnels d "$wg_go_debian" -f ;;
        wireguard-go-current) start_tunnels c "$wg_go_current" -f ;;
    esac

    # Pod-to-pod reachability; in the tunnel cases this also completes the handshake, so it
    # stays out of the timed runs.
    local ok=""
    for _ in $(seq 1 20); do
        ip netns exec "$ns_pa" ping -c 1 -W 1 "$pod_b" >/dev/null 2>&1 && { ok=1; break; }
    done
    [[ -n $ok ]] || die "case $c: pod-a cannot reach pod-b"

    ip netns exec "$ns_pb" iperf3 -s -D -B "$pod_b" -I "$work/iperf3.pid" --logfile "$work/iperf3-$c.log"
    iperf3_server_idle

    local test args
    for test in tcp1 tcp4 udp; do
        case $test in
            tcp1) args=() ;;
            tcp4) args=(-P 4) ;;
            udp) args=(-u -b "$UDP_RATE" -l "$udp_len" ${UDP_BUFFER:+-w "$UDP_BUFFER"}) ;;
        esac
        log "case $c: $test (${DURATION} s)"
        res[$c,$test]=$(run_iperf "$c-$test" "${args[@]}")
        read -r bps bytes loss cpu drops tdrops <<<"${res[$c,$test]}"
        log "case $c: $test $(awk -v b="$bps" 'BEGIN { printf "%.3f", b / 1e9 }') Gbit/s," \
            "loss $(printf %.2f "$loss") % (in the tunnel $tdrops %, at pod-b's socket $drops %)," \
            "tunnel CPU $cpu s"
        iperf3_server_idle   # the previous run's flows have drained
    done

    # Proof the traffic went through the tunnel and not around it.
    if [[ $c != plain ]]; then
        local name="${wg_names[0]}"
        log "case $c: $name transfer: $(ip netns exec "$ns_na" wg show "$name" transfer | awk '{ printf "rx %.2f GB, tx %.2f GB", $2 / 1e9, $3 / 1e9 }')"
    fi
    stop_case
}

run_meta() {
    skein_version=$("$SKEIN" --version 2>/dev/null | head -n 1 || echo unknown)
    debian_version=$("$wg_go_debian" --version 2>/dev/null | head -n 1 | awk '{ print $2 }' || echo unknown)
}

for c in $CASES; do run_case "$c"; done
run_meta

# --- Report ----------------------------------------------------------------------------------

report() {
    local ref=wireguard-go-current
    echo "## Overlay throughput, pod to pod across two nodes"
    echo
    echo "| case | TCP×1 Gbit/s | TCP×4 Gbit/s | UDP $UDP_RATE offered: Mbit/s (loss) | lost in the tunnel |" \
        "lost at pod-b's socket | tunnel CPU s/GB | TCP×1 ÷ current | TCP×4 ÷ current | UDP ÷ current | CPU/GB ÷ current |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    local c
    for c in $CASES; do
        awk -v c="$c" -v ref="$ref" -v is_plain="$([[ $c = plain ]] && echo 1 || echo 0)" \
            -v t1="${res[$c,tcp1]}" -v t4="${res[$c,tcp4]}" -v u="${res[$c,udp]}" \
            -v r1="${res[$ref,tcp1]:-}" -v r4="${res[$ref,tcp4]:-}" -v ru="${res[$ref,udp]:-}" '
        # CPU per GB over the two TCP runs: every byte of them was carried by the tunnel, unlike
        # UDP datagrams dropped before reaching it.
        function cpu_gb(a, b,   x, y) { split(a, x, " "); split(b, y, " ");
            return x[2] + y[2] > 0 ? (x[4] + y[4]) / ((x[2] + y[2]) / 1e9) : 0 }
        function field(s, i,   x) { split(s, x, " "); return x[i] }
        function ratio(a, b) { return (b == "" || b + 0 == 0) ? "—" : sprintf("%.2f", a / b) }
        BEGIN {
            cpu = is_plain ? "—" : sprintf("%.2f", cpu_gb(t1, t4))
            have_ref = (r1 != "")
            cpu_ratio = (is_plain || !have_ref) ? "—" : ratio(cpu_gb(t1, t4), cpu_gb(r1, r4))
            printf "| %s | %.2f | %.2f | %.0f (%.2f %%) | %s | %.2f %% | %s | %s | %s | %s | %s |\n", c,
                field(t1, 1) / 1e9, field(t4, 1) / 1e9, field(u, 1) / 1e6, field(u, 3),
                is_plain ? "—" : sprintf("%.2f %%", field(u, 6)), field(u, 5), cpu,
                have_ref ? ratio(field(t1, 1), field(r1, 1)) : "—",
                have_ref ? ratio(field(t4, 1), field(r4, 1)) : "—",
                have_ref ? ratio(field(u, 1), field(ru, 1)) : "—", cpu_ratio
        }'
    done
    if [[ " $CASES " != " plain " ]]; then
        echo
        echo "Per run, tunnel CPU (both nodes' processes, user + system) per GB received:"
        echo
        echo "| case | TCP×1 CPU s/GB | TCP×4 CPU s/GB | UDP CPU s/GB |"
        echo "|---|---|---|---|"
    fi
    for c in $CASES; do
        [[ $c = plain ]] && continue
        awk -v c="$c" -v t1="${res[$c,tcp1]}" -v t4="${res[$c,tcp4]}" -v u="${res[$c,udp]}" '
        function per_gb(s,   x) { split(s, x, " "); return x[2] > 0 ? sprintf("%.2f", x[4] / (x[2] / 1e9)) : "—" }
        BEGIN { printf "| %s | %s | %s | %s |\n", c, per_gb(t1), per_gb(t4), per_gb(u) }'
    done
    echo
    echo "- skein: \`$skein_version\` ($SKEIN), \`--threads $threads\`"
    if [[ " $CASES " = *" wireguard-go-debian "* ]]; then
        echo "- wireguard-go-debian: $debian_version ($wg_go_debian)"
    fi
    if [[ -n $wg_go_current ]]; then
        echo "- wireguard-go-current: golang.zx2c4.com/wireguard $wg_go_version ($wg_go_current), $(go version | awk '{ print $3 }')"
    fi
    echo "- iperf3 ${DURATION} s per run, pod-a → pod-b; inner MTU $wg_mtu (pods and tunnels), underlay MTU 1500; UDP payload $udp_len B, socket buffer ${UDP_BUFFER:-system default}"
    echo "- $cpus CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r), $(date -u +%Y-%m-%d)"
    echo "- lost in the tunnel: sent datagrams dropped because a tunnel process did not keep up: node-a's TUN queue (tx_dropped) plus node-b's tunnel UDP socket (RcvbufErrors)"
    echo "- lost at pod-b's socket: sent datagrams pod-b's kernel dropped for a full receive buffer (delivered by the tunnel, then lost to a receiver that fell behind)"
    echo "- tunnel CPU s/GB: both nodes' tunnel processes (user + system, from /proc/PID/stat) over the two TCP runs, per 10^9 bytes received"
    echo "- ÷ current: the case's figure divided by wireguard-go-current's (throughput: above 1 is faster; CPU/GB: below 1 is cheaper)"
}

if [[ -n $result_file ]]; then
    report | tee "$result_file"
else
    report
fi
log "done"
