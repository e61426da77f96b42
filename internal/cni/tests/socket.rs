//! Plugin and daemon over a real unix socket: requests carrying a real namespace descriptor,
//! every command's round trip, the daemon down, concurrency, binding, and the plugin's own `DEL`
//! in a real network namespace (root only; skipped visibly without, failing under
//! `SKEIN_TEST_ALL=1`).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use skein_cni::{
    AddRequest, AddResult, Attachment, CheckRequest, CniError, DelRequest, Env, GcRequest, Handler,
    Interface, IpConfig, bind, run, serve,
};
use tokio::sync::Barrier;
use tokio_util::sync::CancellationToken;

/// What the test handler saw of each request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    command: &'static str,
    container_id: String,
    /// Inode of the namespace descriptor that arrived, if one did.
    netns_inode: Option<u64>,
    pod_name: Option<String>,
    version: String,
    extra: Value,
}

#[derive(Debug, Default)]
struct TestHandler {
    seen: Mutex<Vec<Seen>>,
    /// ADDs for container IDs starting with "wait" meet here, proving they run at once.
    barrier: Option<Barrier>,
    /// What STATUS answers.
    status: Option<CniError>,
}

fn inode(fd: std::os::fd::OwnedFd) -> u64 {
    std::fs::File::from(fd)
        .metadata()
        .expect("fstat the descriptor")
        .ino()
}

impl TestHandler {
    fn record(&self, seen: Seen) {
        self.seen.lock().expect("lock").push(seen);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Handler for TestHandler {
    async fn add(&self, request: AddRequest) -> Result<AddResult, CniError> {
        let id = request.container_id.clone();
        if id.starts_with("wait")
            && let Some(barrier) = &self.barrier
        {
            barrier.wait().await;
        }
        if id == "panic" {
            panic!("the test handler panics on request");
        }
        if id == "full" {
            return Err(CniError::Custom {
                code: 110,
                msg: "no free address left in 10.42.1.0/24".into(),
                details: "254 of 254 addresses leased".into(),
            });
        }
        let sandbox = request.netns_path.clone();
        let version = request.config.cni_version.to_string();
        self.record(Seen {
            command: "ADD",
            container_id: id,
            netns_inode: Some(inode(request.netns)),
            pod_name: request.pod.name,
            version,
            extra: Value::Null,
        });
        Ok(AddResult {
            interfaces: vec![Interface {
                name: request.ifname,
                mac: Some("0a:58:0a:2a:01:07".into()),
                mtu: Some(1420),
                sandbox: Some(sandbox),
                ..Interface::default()
            }],
            ips: vec![IpConfig {
                address: "10.42.1.7/24".parse().expect("cidr"),
                gateway: Some("10.42.1.1".parse().expect("ip")),
                interface: Some(0),
            }],
            ..AddResult::default()
        })
    }

    async fn del(&self, request: DelRequest) -> Result<(), CniError> {
        self.record(Seen {
            command: "DEL",
            container_id: request.container_id,
            netns_inode: request.netns.map(inode),
            pod_name: request.pod.name,
            version: request.config.cni_version.to_string(),
            extra: Value::Null,
        });
        Ok(())
    }

    async fn check(&self, request: CheckRequest) -> Result<(), CniError> {
        let ips = request.prev_result.map(|r| r.ips.len());
        self.record(Seen {
            command: "CHECK",
            container_id: request.container_id,
            netns_inode: Some(inode(request.netns)),
            pod_name: request.pod.name,
            version: request.config.cni_version.to_string(),
            extra: json!({"prevResultIps": ips}),
        });
        Ok(())
    }

    async fn status(&self) -> Result<(), CniError> {
        match &self.status {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    async fn gc(&self, request: GcRequest) -> Result<(), CniError> {
        let valid: Vec<String> = request
            .valid_attachments
            .iter()
            .map(
                |Attachment {
                     container_id,
                     ifname,
                 }| format!("{container_id}/{ifname}"),
            )
            .collect();
        self.record(Seen {
            command: "GC",
            container_id: String::new(),
            netns_inode: None,
            pod_name: None,
            version: request.config.cni_version.to_string(),
            extra: json!(valid),
        });
        Ok(())
    }
}

/// A daemon serving `handler` on a socket in a fresh directory.
struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    cancel: CancellationToken,
    served: tokio::task::JoinHandle<()>,
}

impl Daemon {
    fn start(handler: Arc<TestHandler>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("run/skein/cni.sock");
        let listener = bind(&socket).expect("bind");
        let cancel = CancellationToken::new();
        let metrics = skein_cni::RequestMetrics::register(&skein_metrics::Metrics::new());
        let served = tokio::spawn(serve(listener, handler, metrics, cancel.clone()));
        Self {
            _dir: dir,
            socket,
            cancel,
            served,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.served)
            .await
            .expect("serve returns after cancel")
            .expect("serve does not panic");
    }
}

fn conf(version: &str, socket: &Path, extra: Value) -> String {
    let mut conf = json!({
        "cniVersion": version, "name": "skein", "type": "skein",
        "socket": socket.to_str().expect("utf-8 path"),
    });
    conf.as_object_mut()
        .expect("object")
        .extend(extra.as_object().expect("object").clone());
    conf.to_string()
}

fn env(command: &str, container_id: &str, netns: &str) -> Env {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container_id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=4c3f;K8S_POD_UID=u-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .collect()
}

/// Runs the plugin on a blocking thread, as the runtime's separate process would.
async fn plugin(env: Env, stdin: String) -> (Option<Value>, bool) {
    let (out, ok) = tokio::task::spawn_blocking(move || run(&env, stdin.as_bytes()))
        .await
        .expect("plugin thread");
    let value = (!out.is_empty())
        .then(|| serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out:?}")));
    (value, ok)
}

fn own_netns_inode() -> u64 {
    std::fs::metadata("/proc/self/ns/net").expect("stat").ino()
}

const NETNS: &str = "/proc/self/ns/net";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_carries_the_namespace_descriptor_and_answers_in_the_requested_version() {
    let handler = Arc::new(TestHandler::default());
    let daemon = Daemon::start(Arc::clone(&handler));
    for version in ["1.0.0", "1.1.0"] {
        let (out, ok) = plugin(
            env("ADD", "c1", NETNS),
            conf(version, &daemon.socket, json!({})),
        )
        .await;
        assert!(ok, "{out:?}");
        let mut interface = json!({"name": "eth0", "mac": "0a:58:0a:2a:01:07", "sandbox": NETNS});
        if version == "1.1.0" {
            interface["mtu"] = json!(1420);
        }
        assert_eq!(
            out,
            Some(json!({
                "cniVersion": version,
                "interfaces": [interface],
                "ips": [{"address": "10.42.1.7/24", "gateway": "10.42.1.1", "interface": 0}]
            }))
        );
    }
    let seen = handler.seen();
    assert_eq!(seen.len(), 2);
    for (seen, version) in seen.iter().zip(["1.0.0", "1.1.0"]) {
        assert_eq!(seen.command, "ADD");
        assert_eq!(seen.container_id, "c1");
        assert_eq!(
            seen.netns_inode,
            Some(own_netns_inode()),
            "the very namespace arrives"
        );
        assert_eq!(seen.pod_name.as_deref(), Some("web-0"));
        assert_eq!(seen.version, version);
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_check_status_and_gc_round_trip() {
    let handler = Arc::new(TestHandler::default());
    let daemon = Daemon::start(Arc::clone(&handler));
    let socket = daemon.socket.clone();
    let prev = json!({"prevResult": {"cniVersion": "1.1.0",
                                     "ips": [{"address": "10.42.1.7/24", "interface": 0}],
                                     "interfaces": [{"name": "eth0"}]}});
    let gc = json!({
        "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}],
        "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"},
                                {"containerID": "c2", "ifname": "net1"}]
    });
    let cases = [
        (env("DEL", "c1", NETNS), conf("1.1.0", &socket, json!({}))),
        (env("DEL", "c2", ""), conf("1.1.0", &socket, json!({}))),
        (
            env("DEL", "c3", "/run/netns/skein-test-gone"),
            conf("1.0.0", &socket, json!({})),
        ),
        (env("CHECK", "c1", NETNS), conf("1.1.0", &socket, prev)),
        (env("STATUS", "", ""), conf("1.1.0", &socket, json!({}))),
        (env("GC", "", ""), conf("1.1.0", &socket, gc)),
    ];
    for (env, stdin) in cases {
        let (out, ok) = plugin(env, stdin).await;
        assert!(ok, "{out:?}");
        assert_eq!(out, None, "success without output prints nothing");
    }
    let seen = handler.seen();
    let summary: Vec<_> = seen
        .iter()
        .map(|s| {
            (
                s.command,
                s.container_id.as_str(),
                s.netns_inode.is_some(),
                s.extra.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("DEL", "c1", true, Value::Null),
            ("DEL", "c2", false, Value::Null),
            ("DEL", "c3", false, Value::Null),
            ("CHECK", "c1", true, json!({"prevResultIps": 1})),
            ("GC", "", false, json!(["c1/eth0", "c2/net1"])),
        ]
    );
    assert_eq!(seen[0].netns_inode, Some(own_netns_inode()));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemons_errors_reach_the_runtime() {
    let handler = Arc::new(TestHandler {
        status: Some(CniError::NotAvailableImpaired(
            "the overlay is down; pods on other nodes are unreachable".into(),
        )),
        ..TestHandler::default()
    });
    let daemon = Daemon::start(handler);
    let socket = daemon.socket.clone();
    let cases = [
        (
            env("ADD", "full", NETNS),
            json!({"cniVersion": "1.0.0", "code": 110,
                   "msg": "no free address left in 10.42.1.0/24",
                   "details": "254 of 254 addresses leased"}),
        ),
        (
            env("STATUS", "", ""),
            json!({"cniVersion": "1.0.0", "code": 51,
                   "msg": "the overlay is down; pods on other nodes are unreachable"}),
        ),
    ];
    for (env, want) in cases {
        let (out, ok) = plugin(env, conf("1.0.0", &socket, json!({}))).await;
        assert!(!ok);
        assert_eq!(out, Some(want));
    }
    // A handler that panics yields code 100, and the daemon serves on.
    let (out, ok) = plugin(
        env("ADD", "panic", NETNS),
        conf("1.1.0", &socket, json!({})),
    )
    .await;
    assert!(!ok);
    let out = out.expect("error object");
    assert_eq!(out["code"], 100, "{out}");
    let (_, ok) = plugin(env("ADD", "c1", NETNS), conf("1.1.0", &socket, json!({}))).await;
    assert!(ok, "still serving after a panic");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_concurrently() {
    const N: usize = 6;
    let handler = Arc::new(TestHandler {
        barrier: Some(Barrier::new(N)),
        ..TestHandler::default()
    });
    let daemon = Daemon::start(Arc::clone(&handler));
    let runs: Vec<_> = (0..N)
        .map(|i| {
            let stdin = conf("1.1.0", &daemon.socket, json!({}));
            tokio::spawn(plugin(env("ADD", &format!("wait{i}"), NETNS), stdin))
        })
        .collect();
    // Served one at a time, the first ADD would wait at the barrier forever.
    let all = tokio::time::timeout(Duration::from_secs(20), futures::future::join_all(runs))
        .await
        .expect("all ADDs finish together");
    for joined in all {
        let (out, ok) = joined.expect("plugin task");
        assert!(ok, "{out:?}");
    }
    let mut ids: Vec<_> = handler.seen().into_iter().map(|s| s.container_id).collect();
    ids.sort();
    assert_eq!(ids, (0..N).map(|i| format!("wait{i}")).collect::<Vec<_>>());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_daemon_down_each_command_says_what_the_spec_asks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("cni.sock");
    let socket_text = socket.display().to_string();
    let not_running =
        format!("skein daemon is not running (no one listens on {socket_text}); try again later");
    let cases: [(Env, Option<u32>, &str); 6] = [
        (env("ADD", "c1", NETNS), Some(11), &not_running),
        (env("CHECK", "c1", NETNS), Some(11), &not_running),
        (env("GC", "", ""), Some(11), &not_running),
        (
            env("STATUS", "", ""),
            Some(50),
            "skein daemon is not running",
        ),
        // Nothing to remove without a namespace, so DEL succeeds.
        (env("DEL", "c1", ""), None, ""),
        (env("DEL", "c1", "/run/netns/skein-test-gone"), None, ""),
    ];
    let gc = json!({"cni.dev/valid-attachments": []});
    for (env, code, msg) in cases {
        let command = env.get("CNI_COMMAND").expect("command").to_owned();
        let (out, ok) = plugin(env, conf("1.1.0", &socket, gc.clone())).await;
        match code {
            Some(code) => {
                assert!(!ok, "{command}");
                let out = out.expect("error object");
                assert_eq!(out["code"], code, "{command}: {out}");
                let text = out["msg"].as_str().expect("msg");
                assert!(text.contains(msg), "{command}: {text:?}");
                assert!(
                    text.contains(&socket_text),
                    "{command}: names the socket: {text:?}"
                );
            }
            None => {
                assert!(ok, "{command}: {out:?}");
                assert_eq!(out, None);
            }
        }
    }
}

#[tokio::test]
async fn bind_makes_a_private_socket_and_replaces_only_a_stale_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("a/b/cni.sock");
    let first = bind(&path).expect("bind in a new directory");
    let meta = std::fs::metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let err = bind(&path).expect_err("someone listens");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");

    drop(first);
    let _second = bind(&path).expect("a stale socket is replaced");
    assert_eq!(
        std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("cni.sock")]);

    let file = dir.path().join("plain");
    std::fs::write(&file, "keep me").expect("write");
    let err = bind(&file).expect_err("not a socket");
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
}

/// A thread in a network namespace of its own holding a veth pair (as a pod's namespace would
/// after the peer's move to the host), or why there is none.
struct PodNamespace {
    tid: i32,
    done: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

const LINK: &str = "sktest0";
const PEER: &str = "sktest0p";

fn pod_namespace() -> Result<PodNamespace, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let setup = || -> Result<tokio::runtime::Runtime, String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                handle
                    .link()
                    .add(rtnetlink::LinkVeth::new(LINK, PEER).build())
                    .execute()
                    .await
                    .map_err(|e| format!("add veth pair: {e}"))?;
                if link_exists(LINK).await && link_exists(PEER).await {
                    Ok(())
                } else {
                    Err("the new veth pair is not visible".to_owned())
                }
            })?;
            Ok(runtime)
        };
        let runtime = match setup() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return false;
            }
        };
        let _ = ready_tx.send(Ok(nix::unistd::gettid().as_raw()));
        let _ = done_rx.recv();
        runtime.block_on(async { link_exists(LINK).await || link_exists(PEER).await })
    });
    let tid = ready_rx.recv().map_err(|e| e.to_string())??;
    Ok(PodNamespace { tid, done, thread })
}

async fn link_exists(name: &str) -> bool {
    use futures::TryStreamExt;
    let (connection, handle, _) = rtnetlink::new_connection().expect("netlink");
    tokio::spawn(connection);
    handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .is_ok_and(|link| link.is_some())
}

#[test]
fn del_without_the_daemon_removes_the_interface_itself() {
    let pod = match pod_namespace() {
        Ok(pod) => pod,
        Err(why) => {
            assert!(
                std::env::var("SKEIN_TEST_ALL").as_deref() != Ok("1"),
                "cannot make a network namespace: {why}"
            );
            eprintln!("SKIPPED del_without_the_daemon_removes_the_interface_itself: {why}");
            return;
        }
    };
    let netns = format!("/proc/self/task/{}/ns/net", pod.tid);
    let dir = tempfile::tempdir().expect("temp dir");
    let stdin = conf("1.1.0", &dir.path().join("cni.sock"), json!({}));
    let del = |ifname: &str| {
        let env: Env = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_IFNAME", ifname),
        ]
        .into_iter()
        .collect();
        run(&env, stdin.as_bytes())
    };
    let own_netns = || {
        std::fs::metadata("/proc/thread-self/ns/net")
            .expect("stat")
            .ino()
    };
    let before = own_netns();
    assert_eq!(del(LINK), (String::new(), true), "the link is removed");
    assert_eq!(
        del(LINK),
        (String::new(), true),
        "again: already gone is success"
    );
    pod.done.send(()).expect("namespace thread waits");
    let still_there = pod.thread.join().expect("namespace thread");
    assert!(
        !still_there,
        "{LINK} and its peer must be gone from the pod's namespace"
    );
    assert_eq!(
        own_netns(),
        before,
        "the calling thread stays in its namespace"
    );
}
