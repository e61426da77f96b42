//! The lab's Kubernetes control plane: kine (SQLite, the store k3s uses) on a unix socket,
//! kube-apiserver and kube-controller-manager of the release k8s-openapi targets, built from
//! Kubernetes' Go modules by `controlplane/build.sh` into a cache outside the clone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::lab::{API_PORT, CONTROL_PLANE_IP, NODE_CIDR_MASK, POD_CIDR, SERVICE_CIDR};
use crate::pki::Pki;

pub const BINARIES: [&str; 3] = ["kine", "kube-apiserver", "kube-controller-manager"];

/// The build script and Go modules, in this source tree.
fn build_script() -> PathBuf {
    std::env::var_os("SKEIN_LAB_CONTROLPLANE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane"))
        .join("build.sh")
}

/// Where the three binaries are: `--bin-dir`, else all three on PATH, else the build cache
/// (building them first, with progress on stderr, the first time).
pub fn binaries(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let complete = |dir: &Path| BINARIES.iter().all(|b| dir.join(b).is_file());
    if let Some(dir) = explicit {
        if !complete(dir) {
            bail!("{} lacks one of {}", dir.display(), BINARIES.join(", "));
        }
        return Ok(dir.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if complete(&dir) {
                return Ok(dir);
            }
        }
    }
    let script = build_script();
    eprintln!(
        "==> control plane: {} (the first build takes a while)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "building the control plane failed ({}); see the lines above",
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    if !complete(&dir) {
        bail!(
            "{} printed {} but the binaries are not there",
            script.display(),
            dir.display()
        );
    }
    Ok(dir)
}

pub fn kine_socket(dir: &Path) -> PathBuf {
    dir.join("kine.sock")
}

pub fn kine_argv(bin: &Path, dir: &Path) -> Vec<String> {
    vec![
        bin.join("kine").display().to_string(),
        // Spelled out: a DSN with parameters gets none of kine's defaults.
        format!(
            "--endpoint=sqlite://{}?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL&_txlock=immediate&cache=shared",
            dir.join("kine.db").display()
        ),
        format!("--listen-address=unix://{}", kine_socket(dir).display()),
        "--metrics-bind-address=0".into(),
    ]
}

pub fn apiserver_argv(bin: &Path, dir: &Path, pki: &Pki) -> Vec<String> {
    let p = |p: PathBuf| p.display().to_string();
    vec![
        p(bin.join("kube-apiserver")),
        format!("--etcd-servers=unix://{}", kine_socket(dir).display()),
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={API_PORT}"),
        // Without it, an API server in a namespace with no usable default route exits.
        format!("--advertise-address={CONTROL_PLANE_IP}"),
        format!("--tls-cert-file={}", p(pki.serving_cert())),
        format!("--tls-private-key-file={}", p(pki.serving_key())),
        format!("--client-ca-file={}", p(pki.ca_cert())),
        "--service-account-issuer=https://kubernetes.default.svc".into(),
        format!(
            "--service-account-key-file={}",
            p(pki.service_account_public_key())
        ),
        format!(
            "--service-account-signing-key-file={}",
            p(pki.service_account_key())
        ),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        // As k3s runs it: a node's credentials may write only its own Node (and its Lease, and
        // its pods' status); the Node authorizer allows nodes writes to Nodes, NodeRestriction
        // narrows that to the caller's own.
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--profiling=false".into(),
    ]
}

pub fn controller_manager_argv(
    bin: &Path,
    dir: &Path,
    pki: &Pki,
    kubeconfig: &Path,
    grace_secs: u64,
) -> Vec<String> {
    let p = |p: PathBuf| p.display().to_string();
    let kc = kubeconfig.display().to_string();
    vec![
        p(bin.join("kube-controller-manager")),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--cert-dir={}", dir.join("kcm-certs").display()),
        "--leader-elect=false".into(),
        // Each controller acts with its own service account, as in a real cluster.
        "--use-service-account-credentials=true".into(),
        format!(
            "--service-account-private-key-file={}",
            p(pki.service_account_key())
        ),
        format!("--root-ca-file={}", p(pki.ca_cert())),
        format!("--cluster-signing-cert-file={}", p(pki.ca_cert())),
        format!("--cluster-signing-key-file={}", p(pki.ca_key())),
        // Node IPAM: each Node gets its slice of the pod range in spec.podCIDRs.
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={POD_CIDR}"),
        format!("--node-cidr-mask-size={NODE_CIDR_MASK}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        // Shorter than the default so a stopped lab node turns NotReady in tens of seconds.
        format!("--node-monitor-grace-period={grace_secs}s"),
        "--profiling=false".into(),
    ]
}
