//! A node's credentials, end to end: in the lab (Node authorizer and NodeRestriction, as k3s
//! runs them), node-1 authenticates as itself (`system:node:node-1`); it can change its own
//! Node's `skein.dev/` annotations and none of another node's, and when its client certificate
//! is re-issued its skein goes on with the new one without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skein_e2e::lab::{self, Lab};
use skein_e2e::{part, require, which};

/// One request to the lab's API server (through its forwarded port) with the client
/// certificate `identity` of the lab's PKI ("node-1", "admin"): (HTTP status, body).
fn request(lab: &Lab, identity: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    request_with(lab, identity, &[], method, path, body)
}

/// [`request`] with extra headers (an administrator's `Impersonate-User`, say).
fn request_with(
    lab: &Lab,
    identity: &str,
    headers: &[&str],
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let pki = Path::new(&lab.dir()).join("pki");
    let api = lab.status["api"].as_str().expect("the lab's API address");
    let file = |ext: &str| pki.join(format!("{identity}.{ext}"));
    let out = Command::new("curl")
        .arg("-sS")
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(file("crt"))
        .arg("--key")
        .arg(file("key"))
        .args(["-X", method])
        .args(["-H", "Content-Type: application/merge-patch+json"])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .args(["--data", body])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{api}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "curl printed no status: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, body.to_string())
}

fn annotation_patch(key: &str, value: Option<&str>) -> String {
    serde_json::json!({ "metadata": { "annotations": { key: value } } }).to_string()
}

/// The Node `name`'s `skein.dev/` annotation `key`, as an administrator reads it.
fn annotation(lab: &Lab, name: &str, key: &str) -> Option<String> {
    let (code, body) = request(lab, "admin", "GET", &format!("/api/v1/nodes/{name}"), "");
    assert_eq!(code, 200, "{body}");
    let node: serde_json::Value = serde_json::from_str(&body).expect("a Node");
    node["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn tools_present() -> bool {
    require(which("curl").is_some(), "curl is not installed")
        && require(which("openssl").is_some(), "openssl is not installed")
}

const ENDPOINT: &str = "skein.dev/wireguard-endpoint";
const UNDERLAY: &str = "skein.dev/underlay-address";

#[test]
fn a_node_changes_its_own_skein_annotations_and_is_refused_another_nodes() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    if !tools_present() {
        return;
    }
    let lab = Lab::up(2, &[]);
    // Each node's skein published its own annotations with nothing but its node identity.
    let endpoint = lab.wait(
        "node-2's skein to publish its WireGuard endpoint",
        Duration::from_secs(60),
        || annotation(&lab, "node-2", ENDPOINT),
    );
    lab.wait(
        "node-1's skein to publish its WireGuard endpoint",
        Duration::from_secs(60),
        || annotation(&lab, "node-1", ENDPOINT),
    );

    // node-1 tries to point node-2's traffic at itself: refused, on the object and on its
    // status subresource alike.
    let hijack = annotation_patch(ENDPOINT, Some("198.18.0.11:51820"));
    for path in ["/api/v1/nodes/node-2", "/api/v1/nodes/node-2/status"] {
        let (code, body) = request(&lab, "node-1", "PATCH", path, &hijack);
        assert_eq!(code, 403, "PATCH {path} as node-1: {body}");
        assert!(
            body.contains("node \\\"node-1\\\" is not allowed to modify node \\\"node-2\\\""),
            "refused by NodeRestriction, which names both nodes: {body}"
        );
    }
    let (code, body) = request(
        &lab,
        "node-1",
        "PATCH",
        "/api/v1/nodes/node-2",
        &annotation_patch(ENDPOINT, None),
    );
    assert_eq!(code, 403, "removing node-2's endpoint as node-1: {body}");
    assert_eq!(
        annotation(&lab, "node-2", ENDPOINT).as_deref(),
        Some(endpoint.as_str()),
        "node-2's endpoint is untouched"
    );

    // Its own Node is node-1's to annotate.
    let (code, body) = request(
        &lab,
        "node-1",
        "PATCH",
        "/api/v1/nodes/node-1",
        &annotation_patch("skein.dev/identity-check", Some("node-1")),
    );
    assert_eq!(code, 200, "node-1 patching its own Node: {body}");
    assert_eq!(
        annotation(&lab, "node-1", "skein.dev/identity-check").as_deref(),
        Some("node-1")
    );
}

/// Rights to patch every Node, for a user and for skein's ServiceAccount, as some other tool
/// might have them.
const NODE_PATCHERS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: identity-test-node-patcher
rules:
  - apiGroups: [""]
    resources: ["nodes", "nodes/status"]
    verbs: ["patch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: identity-test-node-patcher
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: identity-test-node-patcher
subjects:
  - kind: User
    apiGroup: rbac.authorization.k8s.io
    name: mallory
  - kind: ServiceAccount
    name: skein
    namespace: kube-system
"#;

#[test]
fn rights_to_patch_nodes_do_not_reach_another_nodes_skein_annotations() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    if !tools_present() {
        return;
    }
    let lab = Lab::up(2, &[]);
    let endpoint = lab.wait(
        "node-2's skein to publish its WireGuard endpoint",
        Duration::from_secs(60),
        || annotation(&lab, "node-2", ENDPOINT),
    );
    lab.apply(NODE_PATCHERS);
    let as_user = |user: &str, extra: &[&str]| -> Vec<String> {
        [format!("Impersonate-User: {user}")]
            .into_iter()
            .chain(extra.iter().map(|e| e.to_string()))
            .collect()
    };
    let mallory = as_user("mallory", &[]);
    let mallory: Vec<&str> = mallory.iter().map(String::as_str).collect();
    // The grant is in force once mallory may patch an annotation that is not skein's.
    lab.wait(
        "mallory's right to patch nodes",
        Duration::from_secs(30),
        || {
            let other = annotation_patch("example.com/owner", Some("mallory"));
            let (code, _) = request_with(
                &lab,
                "admin",
                &mallory,
                "PATCH",
                "/api/v1/nodes/node-2",
                &other,
            );
            (code == 200).then_some(())
        },
    );

    let hijack = annotation_patch(ENDPOINT, Some("198.18.0.99:51820"));
    for path in ["/api/v1/nodes/node-2", "/api/v1/nodes/node-2/status"] {
        let (code, body) = request_with(&lab, "admin", &mallory, "PATCH", path, &hijack);
        assert_eq!(code, 403, "PATCH {path} as mallory: {body}");
        assert!(
            body.contains("skein-node-annotations")
                && body.contains("only node node-2 itself")
                && body.contains("not mallory"),
            "refused by the packaged admission policy, which says who may: {body}"
        );
    }

    // skein's ServiceAccount, in a pod bound to node-1, may publish node-1's and not node-2's.
    let skein_on_node_1 = as_user(
        "system:serviceaccount:kube-system:skein",
        &["Impersonate-Extra-authentication.kubernetes.io%2fnode-name: node-1"],
    );
    let skein_on_node_1: Vec<&str> = skein_on_node_1.iter().map(String::as_str).collect();
    let own = annotation_patch("skein.dev/identity-check", Some("from a pod"));
    let (code, body) = request_with(
        &lab,
        "admin",
        &skein_on_node_1,
        "PATCH",
        "/api/v1/nodes/node-1",
        &own,
    );
    assert_eq!(
        code, 200,
        "skein's account on node-1, node-1's Node: {body}"
    );
    let (code, body) = request_with(
        &lab,
        "admin",
        &skein_on_node_1,
        "PATCH",
        "/api/v1/nodes/node-2",
        &hijack,
    );
    assert_eq!(
        code, 403,
        "skein's account on node-1, node-2's Node: {body}"
    );

    assert_eq!(
        annotation(&lab, "node-2", ENDPOINT).as_deref(),
        Some(endpoint.as_str()),
        "node-2's endpoint is untouched"
    );
    // Administrators may still correct a node's annotations.
    let (code, body) = request(
        &lab,
        "admin",
        "PATCH",
        "/api/v1/nodes/node-2",
        &annotation_patch("skein.dev/identity-check", Some("set by an administrator")),
    );
    assert_eq!(code, 200, "{body}");
}

/// A new key and certificate for `user` in `groups`, signed by the lab's CA, written over
/// `<stem>.crt` and `<stem>.key` each through a rename, as a rotation does.
fn reissue(pki: &Path, stem: &str, user: &str, groups: &[&str]) {
    let work = tempfile::tempdir().expect("tmp");
    let at = |name: &str| work.path().join(name);
    let subject: String = groups
        .iter()
        .map(|g| format!("/O={g}"))
        .chain([format!("/CN={user}")])
        .collect();
    std::fs::write(
        at("ext.cnf"),
        "extendedKeyUsage = clientAuth\nkeyUsage = critical, digitalSignature\n",
    )
    .expect("write");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let p = |p: PathBuf| p.into_os_string();
    run(&[
        &os("req"),
        &os("-new"),
        &os("-newkey"),
        &os("ec"),
        &os("-pkeyopt"),
        &os("ec_paramgen_curve:prime256v1"),
        &os("-nodes"),
        &os("-subj"),
        &os(&subject),
        &os("-keyout"),
        &p(at("new.key")),
        &os("-out"),
        &p(at("new.csr")),
    ]);
    run(&[
        &os("x509"),
        &os("-req"),
        &os("-in"),
        &p(at("new.csr")),
        &os("-CA"),
        &p(pki.join("ca.crt")),
        &os("-CAkey"),
        &p(pki.join("ca.key")),
        &os("-set_serial"),
        &os(&format!("{}", std::process::id())),
        &os("-days"),
        &os("2"),
        &os("-extfile"),
        &p(at("ext.cnf")),
        &os("-out"),
        &p(at("new.crt")),
    ]);
    for ext in ["key", "crt"] {
        let staged = pki.join(format!("{stem}.{ext}.new"));
        std::fs::copy(at(&format!("new.{ext}")), &staged).expect("stage");
        std::fs::rename(&staged, pki.join(format!("{stem}.{ext}"))).expect("rename");
    }
}

#[test]
fn a_reissued_node_certificate_is_used_without_restarting_skein() {
    let Some(_one) = lab::exclusive() else {
        return;
    };
    if !tools_present() {
        return;
    }
    let lab = Lab::up(1, &[]);
    let published = lab.wait(
        "node-1's skein to publish its underlay address",
        Duration::from_secs(60),
        || annotation(&lab, "node-1", UNDERLAY),
    );
    let pid = lab.pid("node-1").expect("node-1's skein runs");
    let log = Path::new(&lab.dir()).join("logs/node-1.log");
    let reloads = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("reloaded the client certificate")
            .count()
    };
    assert_eq!(reloads(), 0, "nothing changed yet");

    let pki = Path::new(&lab.dir()).join("pki");
    reissue(&pki, "node-1", "system:node:node-1", &["system:nodes"]);
    // The new certificate works for the API: the node's identity, with the same rights.
    let (code, body) = request(&lab, "node-1", "GET", "/api/v1/nodes/node-1", "");
    assert_eq!(code, 200, "the re-issued certificate: {body}");

    // An administrator removes the address; skein, seeing it gone, publishes it again, and its
    // next request goes out with the re-issued certificate.
    let (code, body) = request(
        &lab,
        "admin",
        "PATCH",
        "/api/v1/nodes/node-1",
        &annotation_patch(UNDERLAY, None),
    );
    assert_eq!(code, 200, "{body}");
    lab.wait(
        "node-1's skein to publish its address again",
        Duration::from_secs(30),
        || {
            (annotation(&lab, "node-1", UNDERLAY).as_deref() == Some(published.as_str()))
                .then_some(())
        },
    );
    lab.wait(
        "node-1's skein to say it reloaded its certificate",
        Duration::from_secs(10),
        || (reloads() >= 1).then_some(()),
    );
    assert_eq!(
        lab.pid("node-1"),
        Some(pid),
        "the same skein process carried on"
    );
    let status = lab.node_status("node-1").expect("node-1's page");
    assert_eq!(part(&status, "cluster")["state"], "ok", "{status}");
}
