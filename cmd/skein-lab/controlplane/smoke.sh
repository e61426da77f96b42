#!/usr/bin/env bash
# Smoke test of the control plane built by build.sh: kine (SQLite) on a unix
# socket, kube-apiserver on it, kube-controller-manager on the apiserver, all
# on 127.0.0.1 in a temp dir that is removed afterwards, with every process
# stopped. Usage: smoke.sh [BIN_DIR]   (default: the dir build.sh prints)
# SKEIN_LAB_SMOKE_KEEP=1 keeps the temp dir (certs, logs) for a look.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-$("$here/build.sh" | tail -n 1)}
for b in kube-apiserver kube-controller-manager kine; do
	[[ -x $bin/$b ]] || { echo "missing $bin/$b" >&2; exit 1; }
done

log() { printf '[smoke %3ds] %s\n' "$SECONDS" "$*" >&2; }

work=$(mktemp -d /tmp/skein-lab-smoke.XXXXXX)
pids=()
cleanup() {
	local rc=$? i p n
	# Newest first: kube-apiserver stopped after kine hangs for minutes
	# retrying its storage, so kine goes last. SIGKILL after 30 s.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		p=${pids[i]}
		kill "$p" 2>/dev/null || continue
		for ((n = 0; n < 300; n++)); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if ((rc != 0)); then
		for f in "$work"/*.log; do
			[[ -f $f ]] || continue
			echo "--- last lines of $(basename "$f")" >&2
			tail -n 25 "$f" >&2
		done
	fi
	if [[ ${SKEIN_LAB_SMOKE_KEEP:-} == 1 ]]; then
		log "kept $work"
	else
		rm -rf "$work"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 20000))
		ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

# --- PKI: one CA signs the serving cert and the admin client cert ------------
cd "$work"
ossl() { openssl "$@" 2>/dev/null; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
	-subj /CN=skein-lab-ca -keyout ca.key -out ca.crt
ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=kube-apiserver \
	-keyout apiserver.key -out apiserver.csr
ossl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
	-extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n') \
	-out apiserver.crt
ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /O=system:masters/CN=skein-lab-admin \
	-keyout admin.key -out admin.csr
ossl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
	-extfile <(printf 'extendedKeyUsage=clientAuth\n') -out admin.crt
ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
ossl pkey -in sa.key -pubout -out sa.pub

api_port=$(free_port)
kcm_port=$(free_port)
api="https://127.0.0.1:$api_port"
cat >admin.kubeconfig <<EOF
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "$api", certificate-authority: $work/ca.crt}
users:
- name: admin
  user: {client-certificate: $work/admin.crt, client-key: $work/admin.key}
contexts:
- name: lab
  context: {cluster: lab, user: admin}
current-context: lab
EOF

kcurl() { curl -sS --max-time 5 --cacert ca.crt --cert admin.crt --key admin.key "$@"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
	local until=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < until)) || { log "timed out waiting for $what"; return 1; }
		for p in "${pids[@]}"; do
			kill -0 "$p" 2>/dev/null || { log "a process exited while waiting for $what"; return 1; }
		done
		sleep 1
	done
}

# --- kine ---------------------------------------------------------------------
# A DSN without parameters gets none of kine's defaults (WAL, busy timeout,
# immediate transactions), so they are spelled out.
log "starting kine"
"$bin/kine" \
	--endpoint "sqlite://$work/state.db?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate&cache=shared" \
	--listen-address "unix://$work/kine.sock" \
	--metrics-bind-address 0 \
	>kine.log 2>&1 &
pids+=($!)
wait_for 30 "kine socket" test -S "$work/kine.sock"

# --- kube-apiserver -------------------------------------------------------------
# A loopback --advertise-address is refused by the default (lease) endpoint
# reconciler ("may not be in the loopback range"), hence
# --endpoint-reconciler-type=none: the kubernetes Service then has no endpoints.
log "starting kube-apiserver on 127.0.0.1:$api_port"
"$bin/kube-apiserver" \
	--etcd-servers="unix://$work/kine.sock" \
	--bind-address=127.0.0.1 --secure-port="$api_port" --advertise-address=127.0.0.1 \
	--endpoint-reconciler-type=none \
	--tls-cert-file=apiserver.crt --tls-private-key-file=apiserver.key \
	--client-ca-file=ca.crt \
	--service-account-issuer=https://kubernetes.default.svc \
	--service-account-key-file=sa.pub --service-account-signing-key-file=sa.key \
	--service-cluster-ip-range=10.43.0.0/16 \
	--authorization-mode=Node,RBAC \
	--profiling=false \
	>kube-apiserver.log 2>&1 &
pids+=($!)
wait_for 120 "kube-apiserver /readyz" kcurl -f "$api/readyz"
log "readyz: $(kcurl "$api/readyz")"
log "version: $(kcurl "$api/version" | tr -d ' \n')"

# A write and a read through kine.
kcurl -f -X POST -H 'Content-Type: application/json' "$api/api/v1/namespaces/default/configmaps" \
	-d '{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"smoke"},"data":{"k":"v"}}' >/dev/null
[[ $(kcurl -f "$api/api/v1/namespaces/default/configmaps/smoke") == *'"k": "v"'* ]] ||
	{ log "configmap round trip failed"; exit 1; }
log "configmap written and read back"

# --- kube-controller-manager ------------------------------------------------------
log "starting kube-controller-manager on 127.0.0.1:$kcm_port"
"$bin/kube-controller-manager" \
	--kubeconfig=admin.kubeconfig \
	--authentication-kubeconfig=admin.kubeconfig --authorization-kubeconfig=admin.kubeconfig \
	--bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$work/kcm-certs" \
	--leader-elect=false \
	--use-service-account-credentials=true \
	--service-account-private-key-file=sa.key --root-ca-file=ca.crt \
	--cluster-signing-cert-file=ca.crt --cluster-signing-key-file=ca.key \
	--service-cluster-ip-range=10.43.0.0/16 \
	--profiling=false \
	>kube-controller-manager.log 2>&1 &
pids+=($!)
wait_for 60 "kube-controller-manager /healthz" curl -sSfk --max-time 5 "https://127.0.0.1:$kcm_port/healthz"
# The serviceaccount controller creates "default" in every namespace.
wait_for 60 "default ServiceAccount" kcurl -f "$api/api/v1/namespaces/default/serviceaccounts/default"
log "kube-controller-manager healthy; it created default/default ServiceAccount"

log "PASS (kine $("$bin/kine" --version 2>/dev/null | head -n 1 || true), $("$bin/kube-apiserver" --version))"
