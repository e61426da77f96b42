#!/usr/bin/env bash
# Service proxy: skein against the real kube-proxy (nftables mode, built from the same Kubernetes
# modules as the lab's control plane), on the same API objects, in one run. Needs root.
#
#   bench/proxy/run.sh [N...]          default: 1000 10000
#   RESULT=/path/to/result.json        where the raw figures go (default /tmp/skein-bench-proxy.json)
#
# One `skein-lab` node (a real `skein run` with its `proxy` part, the lab's kube-apiserver on
# kine). For each N, in ascending order: N ClusterIP Services without a selector (one TCP port)
# and one hand-made EndpointSlice of 5 endpoints each (namespace `bench`); then
#   - kube-proxy --proxy-mode=nftables in a network namespace of its own on the lab's underlay,
#     reading the same API: its first (full) sync, one endpoint changed, its partial sync and
#     network programming latency, from its own metrics; skein's node is stopped meanwhile;
#   - skein: its table removed and the daemon restarted, so its first sync also programs all N
#     from nothing; the same change; its metrics and `/api/v1/services`' last sync; then one
#     endpoint change every 10 ms for 20 s and its programming latency histogram;
#   - for each: kernel memory (/proc/meminfo Slab, the kmalloc caches of /proc/slabinfo, and the
#     kernel memory charged to a memory cgroup holding just that proxy), process RSS.
# Connection setup rate through a ClusterIP (skein's rules in the node's namespace, between a
# client and a server namespace) against a direct connection: with 1 Service before the
# others exist, and with 10,000 if 10000 is among the Ns; 5 alternating runs of 3 s each.
# Then the same rate with 1 and with N Services side by side (two routers programmed by skein's
# proxy in-process, one client connecting through both in turn), skein's proxy driven in-process in a fresh namespace (phases of a full sync, one-endpoint
# changes) and the two ClusterIP dispatch shapes (one hash map, 64 interval maps).
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("$@")
((${#counts[@]})) || counts=(1000 10000)
mapfile -t counts < <(printf '%s\n' "${counts[@]}" | sort -n)
lab=bprx
result=${RESULT:-/tmp/skein-bench-proxy.json}

[[ $EUID -eq 0 ]] || { echo "bench/proxy/run.sh needs root (network namespaces, nftables)" >&2; exit 1; }
tests/install-deps.sh bench-proxy
# NO_BUILD=1: the release binaries already in the target directory, as they are.
[[ -n ${NO_BUILD:-} ]] || cargo build --release --locked -p skein -p skein-lab -p skein-bench-proxy -q
rel="${CARGO_TARGET_DIR:-target}/release"
skein_lab=$rel/skein-lab
bench=$rel/skein-bench-proxy
metrics=bench/proxy/metrics.py
export SKEIN_LAB_BUILD_JOBS=${SKEIN_LAB_BUILD_JOBS:-1}
cp_bin=$(cmd/skein-lab/controlplane/build.sh | tail -n 1)
kube_proxy=$(cmd/skein-lab/controlplane/build.sh kube-proxy | tail -n 1)/kube-proxy

node_ns=skl-$lab-node-1
ul_ns=skl-$lab-ul
kp_ns=skl-$lab-kp
client_ns=skl-$lab-cc
server_ns=skl-$lab-cs
cgroups=/sys/fs/cgroup/memory/skein-bench-proxy
cluster_ip=10.43.250.250
server_ip=10.42.251.2
kp_pid=

log() { printf '==> [%4ds] %s\n' "$SECONDS" "$*" >&2; }
pair_pids=()
cleanup() {
    [[ -n $kp_pid ]] && kill "$kp_pid" 2>/dev/null || true
    pair_cleanup
    "$skein_lab" --name "$lab" down >/dev/null 2>&1 || true
    for cg in "$cgroups"/*/; do rmdir "$cg" 2>/dev/null || true; done
    rmdir "$cgroups" 2>/dev/null || true
}
"$skein_lab" --name "$lab" down >/dev/null 2>&1 || true
trap cleanup EXIT
# A listener of the nftables notifications anywhere on the machine makes every commit in every
# namespace build a notification per changed element: both proxies' figures would be slower.
if pgrep -x -a nft | grep -q monitor; then
    log "warning: an 'nft monitor' is running ($(pgrep -x nft | tr '\n' ' ')); commits are slower while it does"
fi

log "lab up (1 node)"
"$skein_lab" --name "$lab" up --nodes 1 --controlplane-bin "$cp_bin" >/dev/null
log "lab is up"
# Logs, scrapes and the raw results, kept after the lab is gone.
work=$result.d
rm -rf "$work"
mkdir -p "$work" "$cgroups"
status=$("$skein_lab" --name "$lab" status --json)
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" <<<"$status"; }
kubeconfig=$(field 'd["kubeconfig"]')
page="http://127.0.0.1:$(field 'd["nodes"][0]["page_port"]')"
# kube-proxy reaches the API on the underlay, as the node does (not through the host's forward).
sed -E 's#server: https://127\.0\.0\.1:[0-9]+#server: https://198.18.0.1:6443#' "$kubeconfig" >"$work/kube-proxy.kubeconfig"
results=$work/results.jsonl
: >"$results"
# record KIND N JSON: one line of the raw results.
record() { printf '{"kind":"%s","n":%s,"data":%s}\n' "$1" "$2" "$3" >>"$results"; }

node_pid() { python3 -c "import json; print(json.load(open('/run/skein-lab/$lab/lab.json'))['processes']['node-1']['pid'] or '')"; }
node_running() { local p; p=$(node_pid); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
node_stop() { if node_running; then "$skein_lab" --name "$lab" stop node-1 2>/dev/null; fi; }
slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
kmalloc_kb() { awk 'NR > 2 && $1 ~ /^kmalloc/ {s += $2 * $4} END {printf "%d\n", s / 1024}' /proc/slabinfo; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
kmem_kb() { echo $(($(cat "$1/memory.kmem.usage_in_bytes") / 1024)); }
mkcg() { local cg=$cgroups/$1; rmdir "$cg" 2>/dev/null || true; mkdir -p "$cg"; echo "$cg"; }
now() { date +%s.%N; }
# wait_for SECONDS CMD...: polls CMD every 50 ms until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
}
value() { python3 "$metrics" value "$1" "$2"; }
kp_scrape() { ip netns exec "$kp_ns" curl -sf --max-time 5 http://127.0.0.1:10249/metrics >"$1"; }
skein_scrape() { curl -sf --max-time 5 "$page/metrics" >"$1"; }
services_json() { curl -sf --max-time 5 "$page/api/v1/services?limit=1"; }
ge() { python3 -c "import sys; sys.exit(0 if float('$1') >= float('$2') else 1)"; }
# The address change number $1 gives an endpoint (objects::changed_ip).
changed_ip() { local g=$(($1 % 7500)); echo "10.42.$((210 + g / 250)).$((1 + g % 250))"; }
# change_e2e NS INDEX GENERATION OUT: changes one endpoint through the API and writes
# "trigger seen" (Unix times: the change's trigger time, and when its address first appeared
# in NS's ruleset, from nft monitor) to OUT.
change_e2e() {
    local ns=$1 index=$2 generation=$3 out=$4 watcher trigger
    ip netns exec "$ns" python3 bench/proxy/first_seen.py "$(changed_ip "$generation")" 150 >"$out.seen" 2>"$out.ready" &
    watcher=$!
    # nft 1.0.6's monitor reads the whole ruleset before it listens; with 10,000 Services'
    # tables that can take longer than the 30 s it was first given; after 120 s the change goes
    # ahead unmeasured.
    if ! wait_for 120 grep -qs ready "$out.ready"; then
        log "nft monitor in $ns is not listening after 120 s; no end-to-end figure"
        kill "$watcher" 2>/dev/null || true
    fi
    trigger=$("$bench" change --kubeconfig "$kubeconfig" --index "$index" --generation "$generation")
    wait "$watcher" 2>/dev/null || true
    echo "$trigger $(cat "$out.seen")" >"$out"
}

# --- connection setup: a client and a server namespace routed through the node's ----------------
# client_server ROUTER CLIENT SERVER: a client (10.42.250.2) and a server (10.42.251.2)
# namespace, each on a veth of its own into ROUTER, which routes between them.
client_server() {
    local router=$1 ns dev addr
    for spec in "$2 ${4:-b}c0 10.42.250" "$3 ${4:-b}s0 10.42.251"; do
        read -r ns dev addr <<<"$spec"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip -n "$router" link add "$dev" type veth peer name eth0 netns "$ns"
        ip -n "$router" addr add "$addr.1/24" dev "$dev"
        ip -n "$router" link set "$dev" up
        ip -n "$ns" addr add "$addr.2/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" route add default via "$addr.1"
    done
    ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
}
conn_setup() {
    client_server "$node_ns" "$client_ns" "$server_ns"
    # Client and server each on a CPU of its own, at a real-time priority: with other work on the
    # same 2 CPUs the rate otherwise swings several-fold between runs, and a server that shares
    # the client's CPU is starved until its accept queue overflows. The client's CPU does the
    # whole packet path (both veths and the node's rules run in its softirq context); the server
    # only empties its accept queue.
    ip netns exec "$server_ns" sysctl -qw net.core.somaxconn=4096
    taskset -c 1 chrt -f 10 ip netns exec "$server_ns" "$bench" serve --listen 0.0.0.0:8080 >"$work/server.log" 2>&1 &
    "$bench" target --kubeconfig "$kubeconfig" --cluster-ip "$cluster_ip" --endpoint "$server_ip"
}
conn_reaches() { timeout 3 ip netns exec "$client_ns" "$bench" rate "$1" --seconds 0.2 2>/dev/null | grep -q '"connections":[1-9]'; }
# conn_rounds N: 5 rounds of (direct, ClusterIP), 3 s each.
conn_rounds() {
    local n=$1 r kind target out
    wait_for 60 conn_reaches "$cluster_ip:80" || { log "the ClusterIP does not answer"; return 1; }
    wait_for 10 conn_reaches "$server_ip:8080" || { log "the server does not answer"; return 1; }
    for r in 1 2 3 4 5; do
        for kind in direct clusterip; do
            [[ $kind = direct ]] && target=$server_ip:8080 || target=$cluster_ip:80
            out=$(taskset -c 0 chrt -f 10 ip netns exec "$client_ns" "$bench" rate "$target" --seconds 3)
            log "connections, $n Services, $kind, round $r: $out"
            record "conn-$kind" "$n" "$out"
        done
    done
}

# --- connection setup, 1 against N Services side by side -----------------------------------------
# Two routers, each a namespace with a server behind it, programmed by skein's proxy in-process
# (`skein-bench-proxy program`: the daemon's planner and netlink writer): one with the target
# Service alone, one with N others too, each target at a ClusterIP of its own. One client
# namespace reaches both (a veth into each router) and connects to the two in turn, one
# connection at a time (`rate A B`): whatever drifts on the machine falls on both sizes alike,
# where runs seconds apart (the rates above) differ by up to 10 %. Then the routers swap their
# tables and it is measured again, so that what differs between the two paths themselves
# (their veths, their namespaces: identical rules give 0.96-1.00 through them) cancels too.
pair_client=skl-$lab-cpair
# pair_setup R CLIENT_NET SERVER_NET VIP: router R, its server at SERVER_NET.2, the client's
# routes to both through it.
pair_setup() {
    local r=$1 client_net=$2 server_net=$3 vip=$4 router=skl-$lab-r$1 server=skl-$lab-s$1
    ip netns add "$router"
    ip -n "$router" link set lo up
    ip netns exec "$router" sysctl -qw net.ipv4.ip_forward=1
    ip -n "$router" link add c0 type veth peer name "r$r" netns "$pair_client"
    ip -n "$router" addr add "$client_net.1/24" dev c0
    ip -n "$router" link set c0 up
    ip -n "$pair_client" addr add "$client_net.2/24" dev "r$r"
    ip -n "$pair_client" link set "r$r" up
    ip -n "$pair_client" route add "$server_net.0/24" via "$client_net.1"
    ip -n "$pair_client" route add "$vip/32" via "$client_net.1"
    ip netns add "$server"
    ip -n "$server" link set lo up
    ip -n "$router" link add s0 type veth peer name eth0 netns "$server"
    ip -n "$router" addr add "$server_net.1/24" dev s0
    ip -n "$router" link set s0 up
    ip -n "$server" addr add "$server_net.2/24" dev eth0
    ip -n "$server" link set eth0 up
    ip -n "$server" route add default via "$server_net.1"
    ip netns exec "$server" sysctl -qw net.core.somaxconn=4096
    taskset -c 1 chrt -f 10 ip netns exec "$server" "$bench" serve --listen 0.0.0.0:8080 >"$work/server-$r.log" 2>&1 &
    pair_pids+=($!)
}
# pair_program R COUNT VIP ENDPOINT: router R's table made that of COUNT Services and the target
# (a full sync: Services of an earlier program are removed).
pair_program() {
    record "pair-program" "$2" "$(ip netns exec "skl-$lab-r$1" "$bench" program --count "$2" --cluster-ip "$3" --endpoint "$4")"
}
pair_cleanup() {
    local r
    for pid in "${pair_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for r in 1 2; do
        for ns in r s; do ip netns del "skl-$lab-$ns$r" 2>/dev/null || true; done
    done
    ip netns del "$pair_client" 2>/dev/null || true
}
# conn_pair N: with router 1 holding 1 Service and router 2 N, then the other way round: 5 runs
# of 6 s each way, ClusterIP and direct, every result listed 1-Service side first.
conn_pair() {
    local n=$1 r out vip1=$cluster_ip vip2=10.43.250.251 s1=10.42.251.2 s2=10.42.252.2
    pair_pids=()
    ip netns add "$pair_client"
    ip -n "$pair_client" link set lo up
    pair_setup 1 10.42.250 10.42.251 "$vip1"
    pair_setup 2 10.42.249 10.42.252 "$vip2"
    pair_reaches() { timeout 3 ip netns exec "$pair_client" "$bench" rate "$1" --seconds 0.2 2>/dev/null | grep -q '"connections":[1-9]'; }
    local way one_vip many_vip one_server many_server
    for way in 1 2; do
        if ((way == 1)); then
            pair_program 1 0 "$vip1" "$s1"; pair_program 2 "$n" "$vip2" "$s2"
            one_vip=$vip1 many_vip=$vip2 one_server=$s1 many_server=$s2
        else
            pair_program 1 "$n" "$vip1" "$s1"; pair_program 2 0 "$vip2" "$s2"
            one_vip=$vip2 many_vip=$vip1 one_server=$s2 many_server=$s1
        fi
        log "router $way holds 1 Service, the other $((n + 1))"
        for target in "$one_vip:80" "$many_vip:80"; do
            wait_for 20 pair_reaches "$target" || { log "$target does not answer"; return 1; }
        done
        for r in 1 2 3 4 5; do
            out=$(taskset -c 0 chrt -f 10 ip netns exec "$pair_client" "$bench" rate "$one_vip:80" "$many_vip:80" --seconds 6)
            log "paired ClusterIP connections (1, then $n Services), run $r: $out"
            record pair-clusterip "$way" "$out"
            out=$(taskset -c 0 chrt -f 10 ip netns exec "$pair_client" "$bench" rate "$one_server:8080" "$many_server:8080" --seconds 6)
            log "paired direct connections (the same two routers' servers), run $r: $out"
            record pair-direct "$way" "$out"
        done
    done
    pair_cleanup
}

# --- kube-proxy ---------------------------------------------------------------------------------
kube_proxy_run() {
    local n=$1 cg s0 k0 t0 m0=$work/kp-$n-0.prom m1=$work/kp-$n-1.prom m2=$work/kp-$n-2.prom
    cg=$(mkcg "kube-proxy-$n")
    ip netns add "$kp_ns"
    ip -n "$kp_ns" link set lo up
    ip -n "$ul_ns" link add portkp type veth peer name eth0 netns "$kp_ns"
    ip -n "$ul_ns" link set portkp master br0 up
    ip -n "$kp_ns" addr add 198.18.0.200/24 dev eth0
    ip -n "$kp_ns" link set eth0 up
    s0=$(slab_kb) k0=$(kmalloc_kb) t0=$(now)
    # ip netns exec execs kube-proxy itself, so $! is kube-proxy, already in its cgroup.
    (
        echo "$BASHPID" >"$cg/cgroup.procs"
        exec ip netns exec "$kp_ns" "$kube_proxy" --proxy-mode=nftables \
            --kubeconfig="$work/kube-proxy.kubeconfig" --hostname-override=node-1 \
            --cluster-cidr=10.42.0.0/16 --metrics-bind-address=127.0.0.1:10249 \
            --healthz-bind-address=127.0.0.1:10256 --conntrack-max-per-core=0 \
            --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 --v=2
    ) >"$work/kube-proxy-$n.log" 2>&1 &
    kp_pid=$!
    kp_synced() { kp_scrape "$m0" && ge "$(value "$m0" kubeproxy_sync_full_proxy_rules_duration_seconds_count)" 1; }
    wait_for 600 kp_synced || { log "kube-proxy made no full sync; its log: $work/kube-proxy-$n.log"; return 1; }
    local first_sync_at; first_sync_at=$(now)
    local elements
    elements=$(ip netns exec "$kp_ns" nft -j list map ip kube-proxy service-ips |
        python3 -c 'import json,sys; print(sum(len(i["map"].get("elem", [])) for i in json.load(sys.stdin)["nftables"] if "map" in i))')
    # Past minSyncPeriod (1 s) since its last sync, so the change is not held back.
    sleep 3
    kp_scrape "$m1"
    local t_change; t_change=$(now)
    change_e2e "$kp_ns" $((n / 2)) "$n" "$work/kp-$n-e2e"
    local partial0; partial0=$(value "$m1" kubeproxy_sync_partial_proxy_rules_duration_seconds_count)
    kp_changed() { kp_scrape "$m2" && ! ge "$partial0" "$(value "$m2" kubeproxy_sync_partial_proxy_rules_duration_seconds_count)"; }
    wait_for 60 kp_changed || { log "kube-proxy made no partial sync"; return 1; }
    sleep 0.5
    kp_scrape "$m2"
    local rss hwm kmem s1 k1
    rss=$(rss_kb "$kp_pid") hwm=$(hwm_kb "$kp_pid") kmem=$(kmem_kb "$cg") s1=$(slab_kb) k1=$(kmalloc_kb)
    kill "$kp_pid"
    wait "$kp_pid" 2>/dev/null || true
    kp_pid=
    sleep 1
    local held; held=$(kmem_kb "$cg")
    record kube-proxy "$n" "$(python3 - "$metrics" "$m0" "$m1" "$m2" "$work/kube-proxy-$n.log" <<PY
import json, re, subprocess, sys
m, m0, m1, m2, kplog = sys.argv[1:]
def delta(a, b, name): return json.loads(subprocess.check_output(["python3", m, "delta", a, b, name]))
empty = "/dev/null"
# Every sync from kube-proxy's own log (--v=2): whether it was full, and how long it took.
units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
def seconds(go):
    return sum(float(v) * units[u] for v, u in re.findall(r"([0-9.]+)(ns|µs|us|ms|s|m|h)", go))
syncs, full = [], None
for line in open(kplog, errors="replace"):
    if '"Syncing nftables rules"' in line:
        full = "fullSync=true" in line
    elif '"SyncProxyRules complete"' in line:
        e = re.search(r'elapsed="([^"]+)"', line)
        if e:
            syncs.append([full, seconds(e.group(1))])
def e2e(path):
    v = open(path).read().split()
    return float(v[1]) - float(v[0]) if len(v) == 2 else None
print(json.dumps({
    "end_to_end_change_s": e2e("$work/kp-$n-e2e"),
    "syncs_from_log": syncs,
    "first_sync_after_start_s": $first_sync_at - $t0,
    "service_ips_elements": $elements,
    "full": delta(empty, m1, "kubeproxy_sync_full_proxy_rules_duration_seconds"),
    "first_full": delta(empty, m0, "kubeproxy_sync_full_proxy_rules_duration_seconds"),
    "all_syncs_before_change": delta(empty, m1, "kubeproxy_sync_proxy_rules_duration_seconds"),
    "partial": delta(m1, m2, "kubeproxy_sync_partial_proxy_rules_duration_seconds"),
    "programming": delta(m1, m2, "kubeproxy_network_programming_duration_seconds"),
    "rss_kb": $rss, "hwm_kb": $hwm,
    "slab_kb_before": $s0, "slab_kb_after": $s1,
    "kmalloc_kb_before": $k0, "kmalloc_kb_after": $k1,
    "cgroup_kmem_kb_running": $kmem, "cgroup_kmem_kb_after_exit": $held,
}))
PY
)"
    log "kube-proxy, $n Services: $(tail -n 1 "$results")"
    ip netns del "$kp_ns"
}

# --- skein --------------------------------------------------------------------------------------
skein_run() {
    local n=$1 last=$2 cg s0 k0 t0 pid m0=$work/sk-$n-0.prom m1=$work/sk-$n-1.prom m2=$work/sk-$n-2.prom
    cg=$(mkcg "skein-$n")
    node_stop
    # A first sync from nothing, as kube-proxy's in its fresh namespace: the daemon's other
    # parts put their chains back at start.
    ip netns exec "$node_ns" nft delete table inet skein 2>/dev/null || true
    s0=$(slab_kb) k0=$(kmalloc_kb) t0=$(now)
    # Each sync that changed something, in the daemon's debug log: how long, full or partial.
    local nodelog=/run/skein-lab/$lab/logs/node-1.log o0 o1 o2 o3
    o0=$(stat -c %s "$nodelog")
    RUST_LOG=info,skein_daemon::proxy_part=debug "$skein_lab" --name "$lab" start node-1 2>/dev/null
    pid=$(node_pid)
    echo "$pid" >"$cg/cgroup.procs"
    sk_synced() {
        skein_scrape "$m0" && ge "$(value "$m0" skein_sync_full_proxy_rules_duration_seconds_count)" 1 &&
            ge "$(services_json | python3 -c 'import json,sys; print(json.load(sys.stdin)["page"]["totals"]["services"])')" "$n"
    }
    wait_for 600 sk_synced || { log "skein made no full sync of $n Services; see its page $page"; return 1; }
    local first_sync_at; first_sync_at=$(now)
    sleep 3
    skein_scrape "$m1"
    services_json >"$work/sk-$n-before.json"
    local prog0; prog0=$(value "$m1" skein_network_programming_duration_seconds_count)
    o1=$(stat -c %s "$nodelog")
    change_e2e "$node_ns" $((n / 2)) "$((n + 1))" "$work/sk-$n-e2e"
    sk_changed() { skein_scrape "$m2" && ! ge "$prog0" "$(value "$m2" skein_network_programming_duration_seconds_count)"; }
    wait_for 60 sk_changed || { log "skein programmed no change"; return 1; }
    services_json >"$work/sk-$n-after.json"
    sleep 0.5
    skein_scrape "$m2"
    local rss hwm kmem s1 k1
    rss=$(rss_kb "$pid") hwm=$(hwm_kb "$pid") kmem=$(kmem_kb "$cg") s1=$(slab_kb) k1=$(kmalloc_kb)

    # 100 changes/s for 20 s.
    local c0=$work/sk-$n-c0.prom c1=$work/sk-$n-c1.prom
    skein_scrape "$c0"
    o2=$(stat -c %s "$nodelog")
    # PERF_DIR=DIR: a profile of the daemon during the first 15 s of the changes.
    if [[ -n ${PERF_DIR:-} ]]; then
        mkdir -p "$PERF_DIR"
        perf record -F 499 -g -p "$pid" -o "$PERF_DIR/skein-churn-$n.data" -- sleep 15 >/dev/null 2>&1 &
    fi
    "$bench" churn --kubeconfig "$kubeconfig" --count "$n" --every-ms 10 --seconds 20 \
        --first-generation $((n + 2)) >"$work/sk-$n-churn.json"
    sleep 2
    skein_scrape "$c1"
    o3=$(stat -c %s "$nodelog")
    local rss_churn; rss_churn=$(rss_kb "$pid")
    local chains
    chains=$(ip netns exec "$node_ns" nft list table inet skein | grep -c '^[[:space:]]*chain ')

    if [[ $last = yes && $n -ge 10000 ]]; then
        log "connection setup rate with $n Services"
        conn_rounds "$n"
    fi
    node_stop
    sleep 1
    local held; held=$(kmem_kb "$cg")
    cp "$nodelog" "$work/skein-$n.log"
    record skein "$n" "$(python3 - "$metrics" "$m0" "$m1" "$m2" "$c0" "$c1" "$work/sk-$n" "$nodelog" <<PY
import datetime, json, re, subprocess, sys
m, m0, m1, m2, c0, c1, files, nodelog = sys.argv[1:]
def delta(a, b, name): return json.loads(subprocess.check_output(["python3", m, "delta", a, b, name]))
empty = "/dev/null"
before = json.load(open(files + "-before.json"))
after = json.load(open(files + "-after.json"))
units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
text = open(nodelog, "rb").read()
def syncs(start, end):
    out = []
    for line in text[start:end].decode(errors="replace").splitlines():
        if "proxy: synced in" not in line:
            continue
        d = re.search(r"synced in ([0-9.]+)(ns|µs|us|ms|s)\\b", line)
        full = re.search(r"full=(true|false)", line)
        changed = re.search(r"changed=([0-9]+)", line)
        tx = re.search(r"transactions=([0-9]+)", line)
        at = re.match(r"(\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d(\\.\\d+)?)Z", line)
        when = datetime.datetime.fromisoformat(at.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() if at else None
        if d:
            out.append([full and full.group(1) == "true", int(changed.group(1)) if changed else None,
                        int(tx.group(1)) if tx else None, float(d.group(1)) * units[d.group(2)], when])
    return out
def e2e(path):
    v = open(path).read().split()
    return float(v[1]) - float(v[0]) if len(v) == 2 else None
print(json.dumps({
    "end_to_end_change_s": e2e(files + "-e2e"),
    "change_seen_at": (open(files + "-e2e").read().split() + [None, None])[1],
    "syncs_from_log": syncs($o0, $o1),
    "change_syncs_from_log": syncs($o1, $o2),
    "churn_syncs_from_log": syncs($o2, $o3),
    "first_sync_after_start_s": $first_sync_at - $t0,
    "service_ports": after["page"]["totals"]["services"],
    "chains": $chains,
    "full": delta(empty, m1, "skein_sync_full_proxy_rules_duration_seconds"),
    "first_full": delta(empty, m0, "skein_sync_full_proxy_rules_duration_seconds"),
    "all_syncs_before_change": delta(empty, m1, "skein_sync_proxy_rules_duration_seconds"),
    "partial": delta(m1, m2, "skein_sync_partial_proxy_rules_duration_seconds"),
    "last_sync_before_change": before.get("last_sync"),
    "last_sync_after_change": after.get("last_sync"),
    "programming": delta(m1, m2, "skein_network_programming_duration_seconds"),
    "churn": json.load(open(files + "-churn.json")),
    "churn_programming": delta(c0, c1, "skein_network_programming_duration_seconds"),
    "churn_partial": delta(c0, c1, "skein_sync_partial_proxy_rules_duration_seconds"),
    "churn_full": delta(c0, c1, "skein_sync_full_proxy_rules_duration_seconds"),
    "rss_kb": $rss, "hwm_kb": $hwm, "rss_kb_after_churn": $rss_churn,
    "slab_kb_before": $s0, "slab_kb_after": $s1,
    "kmalloc_kb_before": $k0, "kmalloc_kb_after": $k1,
    "cgroup_kmem_kb_running": $kmem, "cgroup_kmem_kb_after_exit": $held,
}))
PY
)"
    log "skein, $n Services: $(tail -n 1 "$results")"
}

# --- the run ------------------------------------------------------------------------------------
# The proxy alone, as kube-proxy is: the node's DNS part off (it would keep an index of the same
# Services, and its own chains' check wakes on every commit to the table).
node_stop
sed -i 's/^\[dns\]$/[dns]\nenabled = false/' "/run/skein-lab/$lab/nodes/node-1/config.toml"
grep -q '^enabled = false' "/run/skein-lab/$lab/nodes/node-1/config.toml" || { log "cannot turn the node's DNS off"; exit 1; }
"$skein_lab" --name "$lab" start node-1 2>/dev/null
log "client and server namespaces, the connection target Service"
conn_setup
log "connection setup rate with 1 Service"
conn_rounds 1

created=0
for i in "${!counts[@]}"; do
    n=${counts[i]}
    last=no
    ((i == ${#counts[@]} - 1)) && last=yes
    log "$n Services: creating $((n - created)) more"
    t0=$(now)
    "$bench" create --kubeconfig "$kubeconfig" --from "$created" --to "$n" --parallel 32 >&2
    record create "$n" "{\"from\":$created,\"seconds\":$(python3 -c "print($(now) - $t0)")}"
    created=$n
    log "$n Services: kube-proxy (skein's node stopped)"
    node_stop
    kube_proxy_run "$n"
    log "$n Services: skein"
    skein_run "$n" "$last"
done

if [[ ${counts[-1]} -ge 10000 ]]; then
    log "connection setup rate, 1 and ${counts[-1]} Services side by side"
    conn_pair "${counts[-1]}"
fi

log "skein's proxy in-process (fresh namespace per N)"
for n in "${counts[@]}"; do
    ip netns add "skl-$lab-sync"
    out=$(ip netns exec "skl-$lab-sync" "$bench" sync --count "$n" --changes 20)
    record insync "$n" "$out"
    log "in-process, $n Services: $out"
    ip netns del "skl-$lab-sync"
done

log "ClusterIP dispatch shapes, 10,000 elements"
ip netns add "skl-$lab-shapes"
out=$(ip netns exec "skl-$lab-shapes" "$bench" shapes --count 10000 --shards 64 --repeats 3)
record shapes 10000 "$out"
log "shapes: $out"
ip netns del "skl-$lab-shapes"

python3 bench/proxy/report.py "$results" >"$result.md"
python3 -c 'import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])], indent=1))' "$results" >"$result"
cat "$result.md"
log "raw figures: $result; tables: $result.md"
