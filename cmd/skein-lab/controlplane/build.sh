#!/usr/bin/env bash
# Builds the lab's Kubernetes control plane from Go modules, once, into a cache
# outside the clone:
#
#   ${SKEIN_LAB_CACHE:-/var/cache/skein-lab}/<k8s>-kine-<kine>/bin/
#       kube-apiserver  kube-controller-manager  kine
#
# If the three binaries are already there it prints the bin dir and exits.
# Progress goes to stderr; the last line on stdout is the bin dir.
#
#   build.sh kube-proxy
#       builds only kube-proxy (same modules, same flags) into that bin dir,
#       when it is missing; the three above are neither needed nor touched.
#       The benchmarks use it (bench/proxy); the lab does not.
#
# Environment:
#   SKEIN_LAB_CACHE       cache root (default /var/cache/skein-lab)
#   SKEIN_LAB_BUILD_JOBS  parallelism: go build -p N and GOMAXPROCS=N
#                         (default: all cores; 1 keeps a 2-core box half free)
#   GOMODCACHE, GOCACHE   honoured as usual (go env defaults otherwise)
#
# Versions: K8S_VERSION must match k8s.io/kubernetes (and the v0.X.Y staging
# replaces) in kube/go.mod, KINE_VERSION the kine require in kine/go.mod.
set -euo pipefail

K8S_VERSION=v1.37.2
KINE_VERSION=v0.17.5

# kine's own release build (scripts/build) uses these cgo flags and tags for
# the bundled SQLite of github.com/mattn/go-sqlite3; its "nats" tag (embedded
# NATS server) is left out: the lab only uses the SQLite backend.
KINE_TAGS=sqlite_unlock_notify,sqlite_vtable,sqlite_stat4,sqlite_preupdate_hook,sqlite_math_functions,sqlite_dbstat,sqlite_column_metadata
KINE_CGO_CFLAGS="-O2 -g0
  -DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_DISABLE_INTRINSIC
  -DSQLITE_ENABLE_COLUMN_METADATA -DSQLITE_ENABLE_DBPAGE_VTAB
  -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ENABLE_MATH_FUNCTIONS
  -DSQLITE_ENABLE_MEMORY_MANAGEMENT -DSQLITE_ENABLE_OFFSET_SQL_FUNC
  -DSQLITE_ENABLE_PREUPDATE_HOOK -DSQLITE_ENABLE_RBU -DSQLITE_ENABLE_RTREE
  -DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_SNAPSHOT -DSQLITE_ENABLE_STAT4
  -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_LIKE_DOESNT_MATCH_BLOBS
  -DSQLITE_THREADSAFE=1 -DSQLITE_WITHOUT_ZONEMALLOC"

BINARIES=(kube-apiserver kube-controller-manager kine)
# Built only when named on the command line, into the same bin dir.
OPTIONAL_BINARIES=(kube-proxy)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${SKEIN_LAB_CACHE:-/var/cache/skein-lab}
dest="$cache_root/$K8S_VERSION-kine-$KINE_VERSION"
bin="$dest/bin"

log() { printf '[controlplane %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_all() {
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "$1/$b" ]] || return 1
	done
}

# build.sh kube-proxy: the optional binaries named, instead of the default set.
optional=()
for arg in "$@"; do
	case " ${OPTIONAL_BINARIES[*]} " in
	*" $arg "*) optional+=("$arg") ;;
	*) die "unknown binary '$arg' (optional ones: ${OPTIONAL_BINARIES[*]}; none builds the default set)" ;;
	esac
done
have_optional() {
	local b
	for b in "${optional[@]}"; do
		[[ -x "$1/$b" ]] || return 1
	done
}
if ((${#optional[@]})); then
	have_all() { have_optional "$@"; }
fi

if have_all "$bin"; then
	log "cached: $bin"
	echo "$bin"
	exit 0
fi

# --- checks before the long part -------------------------------------------
command -v go >/dev/null || die "go is not installed"
command -v gcc >/dev/null || die "gcc is needed for kine (cgo SQLite)"

[[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "bad K8S_VERSION $K8S_VERSION"
k8s_minor=${BASH_REMATCH[1]}
staging_version="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
grep -Eq "^[[:space:]]*k8s\.io/kubernetes $K8S_VERSION( |$)" "$here/kube/go.mod" ||
	die "kube/go.mod does not require k8s.io/kubernetes $K8S_VERSION"
if grep -E '^[[:space:]]*k8s\.io/[a-z0-9-]+ => k8s\.io/' "$here/kube/go.mod" |
	grep -Ev " => k8s\.io/[a-z0-9-]+ $staging_version\$" >&2; then
	die "kube/go.mod: staging replaces above are not at $staging_version"
fi
grep -Eq "^[[:space:]]*github\.com/k3s-io/kine $KINE_VERSION( |$)" "$here/kine/go.mod" ||
	die "kine/go.mod does not require github.com/k3s-io/kine $KINE_VERSION"

jobs=${SKEIN_LAB_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "SKEIN_LAB_BUILD_JOBS must be a positive integer"
# go build -p N bounds concurrent packages; GOMAXPROCS bounds each compiler's
# and the linker's own threads (with -p 1 the compiler would otherwise use
# every core for its backend).
export GOMAXPROCS=$jobs
export GOWORK=off

mkdir -p "$cache_root"
# One builder at a time; a second one waits, then finds the cache filled.
exec 9>"$cache_root/.build.lock"
if command -v flock >/dev/null; then
	flock -n 9 || { log "another build holds $cache_root/.build.lock; waiting"; flock 9; }
fi
if have_all "$bin"; then
	log "cached: $bin"
	echo "$bin"
	exit 0
fi

tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
ticker=
gobuild=
cleanup() {
	[[ -n $gobuild ]] && kill "$gobuild" 2>/dev/null && wait "$gobuild" 2>/dev/null || true
	[[ -n $ticker ]] && kill "$ticker" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$tmp/bin" "$tmp/gotmp"
# go build's work dir too, so that an interrupted build leaves nothing behind.
export GOTMPDIR="$tmp/gotmp"

log "building into $dest (jobs=$jobs, $(go version | cut -d' ' -f3))"
log "GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

count_built() { grep -cv '^go: downloading' "$1" 2>/dev/null || true; }
count_downloads() { grep -c '^go: downloading' "$1" 2>/dev/null || true; }

# run_build NAME DIR LOG -- go build args...
# Runs go build -v in DIR, its output in LOG; every 30 s a line says how long
# it has run and how many packages it has compiled (cached ones don't count).
run_build() {
	local name=$1 dir=$2 out=$3
	shift 4
	local start=$SECONDS rc=0
	(
		trap 'kill $! 2>/dev/null; exit 0' TERM
		while :; do
			sleep 30 &
			wait $!
			log "still building $name ($((SECONDS - start)) s, $(count_built "$out") packages compiled, $(count_downloads "$out") modules downloaded)"
		done
	) &
	ticker=$!
	# In the background so that a signal to this script interrupts the wait
	# (and the trap stops go build) instead of waiting for go build to end.
	(cd "$dir" && exec go build -v -mod=readonly -trimpath "$@") >"$out" 2>&1 &
	gobuild=$!
	wait "$gobuild" || rc=$?
	gobuild=
	kill "$ticker" 2>/dev/null || true
	wait "$ticker" 2>/dev/null || true
	ticker=
	if ((rc != 0)); then
		log "go build of $name failed (exit $rc); last lines of its output:"
		tail -n 40 "$out" >&2
		exit "$rc"
	fi
	log "built $name in $((SECONDS - start)) s ($(count_built "$out") packages compiled, $(count_downloads "$out") modules downloaded)"
}

# Same variables as Kubernetes' hack/lib/version.sh, so --version reports the
# release. buildDate is the module's release time, which keeps builds
# reproducible. The module zip carries no git commit, so gitCommit is left
# unset and reads "$Format:%H$" in --version=raw and /version.
k8s_date=$(cd "$here/kube" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
	k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$k8s_date"
done

if ((${#optional[@]})); then
	n=0
	for b in "${optional[@]}"; do
		n=$((n + 1))
		[[ -x $bin/$b ]] && continue
		log "step $n/${#optional[@]}: $b $K8S_VERSION"
		CGO_ENABLED=0 run_build "$b" "$here/kube" "$tmp/$b.log" -- \
			-p "$jobs" -ldflags "$k8s_ldflags" -o "$tmp/bin/$b" "k8s.io/kubernetes/cmd/$b"
		got=$("$tmp/bin/$b" --version 2>&1) || die "$b --version failed: $got"
		[[ $got == "Kubernetes $K8S_VERSION" ]] || die "$b --version says '$got'"
		# Into the bin dir by a rename (same filesystem), so a reader never sees half a file.
		mkdir -p "$bin"
		chmod 755 "$dest" "$bin" 2>/dev/null || true
		mv -f "$tmp/bin/$b" "$bin/$b"
		echo "$b built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((SECONDS))s with jobs=$jobs" >>"$dest/VERSIONS.optional"
	done
	log "done in ${SECONDS}s: ${optional[*]} in $bin"
	echo "$bin"
	exit 0
fi

log "step 1/3: kube-apiserver $K8S_VERSION"
CGO_ENABLED=0 run_build kube-apiserver "$here/kube" "$tmp/kube-apiserver.log" -- \
	-p "$jobs" -ldflags "$k8s_ldflags" -o "$tmp/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver

log "step 2/3: kube-controller-manager $K8S_VERSION"
CGO_ENABLED=0 run_build kube-controller-manager "$here/kube" "$tmp/kube-controller-manager.log" -- \
	-p "$jobs" -ldflags "$k8s_ldflags" -o "$tmp/bin/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager

log "step 3/3: kine $KINE_VERSION (cgo SQLite)"
CGO_ENABLED=1 CGO_CFLAGS="$KINE_CGO_CFLAGS" run_build kine "$here/kine" "$tmp/kine.log" -- \
	-p "$jobs" -tags "$KINE_TAGS" \
	-ldflags "-s -w -X github.com/k3s-io/kine/pkg/version.Version=$KINE_VERSION" \
	-o "$tmp/bin/kine" github.com/k3s-io/kine

# Check before publishing.
got=$("$tmp/bin/kube-apiserver" --version 2>&1) || die "kube-apiserver --version failed: $got"
[[ $got == "Kubernetes $K8S_VERSION" ]] || die "kube-apiserver --version says '$got'"
got=$("$tmp/bin/kube-controller-manager" --version 2>&1) || die "kube-controller-manager --version failed: $got"
[[ $got == "Kubernetes $K8S_VERSION" ]] || die "kube-controller-manager --version says '$got'"
"$tmp/bin/kine" --help >/dev/null 2>&1 || die "kine --help failed"

rm -rf "$tmp"/*.log "$tmp/gotmp"
cat >"$tmp/VERSIONS" <<EOF
kubernetes $K8S_VERSION
kine $KINE_VERSION
go $(go env GOVERSION)
built $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${SECONDS}s with jobs=$jobs
EOF
# A partial or stale directory (binaries missing) is replaced whole; the
# rename of the finished temp dir is atomic on the same filesystem.
# Optional binaries already built for this version are kept.
if [[ -e $dest ]]; then
	for b in "${OPTIONAL_BINARIES[@]}"; do
		[[ -x $bin/$b ]] && mv "$bin/$b" "$tmp/bin/$b"
	done
	[[ -e $dest/VERSIONS.optional ]] && mv "$dest/VERSIONS.optional" "$tmp/"
	rm -rf "$dest"
fi
chmod 755 "$tmp" # mktemp -d made it 0700
mv -T "$tmp" "$dest"
trap - EXIT
log "done in ${SECONDS}s: $(du -sh "$bin" | cut -f1) in $bin"
echo "$bin"
