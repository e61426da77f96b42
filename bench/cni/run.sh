#!/usr/bin/env bash
# CNI ADD+DEL time: skein against the reference `bridge` + `host-local` plugins
# (Debian's containernetworking-plugins, at cniVersion 1.0.0), in the same run, on the same
# lab node. 100 pods one at a time, then 8 at a time. Needs root.
#   bench/cni/run.sh [PODS]
set -euo pipefail
cd "$(dirname "$0")/../.."
pods="${1:-100}"
lab=bcni

[[ $EUID -eq 0 ]] || { echo "bench/cni/run.sh needs root (network namespaces)" >&2; exit 1; }
# Everything this script runs (the reference plugins, bc, ...), installed with apt-get when missing.
tests/install-deps.sh bench-cni
cargo build --release --locked -p skein -p skein-lab -q
skein_lab="${CARGO_TARGET_DIR:-target}/release/skein-lab"
"$skein_lab" --name "$lab" down >/dev/null 2>&1 || true
trap '"$skein_lab" --name "$lab" down >/dev/null 2>&1 || true' EXIT
# `up` returns once the node is healthy, so it serves ADD from here on.
"$skein_lab" --name "$lab" up --nodes 1 >/dev/null
node_ns="skl-$lab-node-1"
node_dir="/run/skein-lab/$lab/nodes/node-1"
work="/run/skein-lab/$lab/bench"
mkdir -p "$work"
for i in $(seq 1 "$pods"); do ip netns add "skl-$lab-b$i"; done

# skein serves ADD once its node has a pod CIDR: STATUS says so (up has waited for it already).
echo "{\"cniVersion\":\"1.0.0\",\"name\":\"skein\",\"type\":\"skein\",\"socket\":\"$node_dir/cni.sock\"}" |
    CNI_COMMAND=STATUS ip netns exec "$node_ns" "$node_dir/bin/skein" >/dev/null ||
    { echo "skein on node-1 does not serve ADD: see its status page" >&2; exit 1; }

cat >"$work/skein.json" <<JSON
{"cniVersion":"1.0.0","name":"skein","type":"skein","socket":"$node_dir/cni.sock"}
JSON
# The reference set-up as flannel's CNI configures it: a bridge with the gateway, hairpin, and
# host-local addresses; masquerade left to the node (as skein does it once, not per pod).
cat >"$work/reference.json" <<JSON
{"cniVersion":"1.0.0","name":"reference","type":"bridge","bridge":"cnibr0","isGateway":true,
 "ipMasq":false,"hairpinMode":true,"mtu":1420,
 "ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]],"dataDir":"$work/host-local"}}
JSON

# One plugin call, as a runtime makes it. $1 = skein|reference, $2 = ADD|DEL, $3 = pod number.
cat >"$work/call.sh" <<'SH'
#!/usr/bin/env bash
set -euo pipefail
kind=$1 command=$2 i=$3
case $kind in
    skein) plugin=$NODE_DIR/bin/skein ;;
    reference) plugin=/usr/lib/cni/bridge ;;
esac
CNI_COMMAND=$command CNI_CONTAINERID="bench$i" CNI_NETNS="/run/netns/skl-$LAB-b$i" CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p$i" \
    "$plugin" <"$WORK/$kind.json" >/dev/null
SH
chmod +x "$work/call.sh"

# ADD then DEL of every pod, $2 at a time, inside the node's namespace; prints seconds.
measure() {
    local kind=$1 parallel=$2
    ip netns exec "$node_ns" env NODE_DIR="$node_dir" LAB="$lab" WORK="$work" PODS="$pods" PAR="$parallel" KIND="$kind" bash -c '
        set -euo pipefail
        start=$(date +%s%N)
        seq 1 "$PODS" | xargs -P "$PAR" -I{} "$WORK/call.sh" "$KIND" ADD {}
        seq 1 "$PODS" | xargs -P "$PAR" -I{} "$WORK/call.sh" "$KIND" DEL {}
        end=$(date +%s%N)
        echo "scale=3; ($end - $start) / 1000000000" | bc'
}

# A warm-up round of each, so neither pays for first-time page faults in the timed runs.
measure skein 1 >/dev/null
measure reference 1 >/dev/null

printf '%-10s %-14s %-10s\n' plugin parallelism seconds
declare -A t
for par in 1 8; do
    for kind in skein reference; do
        t[$kind-$par]=$(measure "$kind" "$par")
        printf '%-10s %-14s %-10s\n' "$kind" "$par" "${t[$kind-$par]}"
    done
done
for par in 1 8; do
    echo "ratio skein/reference, $par at a time: $(echo "scale=2; ${t[skein-$par]} / ${t[reference-$par]}" | bc)"
done
