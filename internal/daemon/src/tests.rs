//! Supervisor behaviour with real tasks on a paused clock.

use super::supervisor::*;
use super::{Part, PartError};
use skein_status::{Identity, State, StatusBoard};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn board() -> StatusBoard {
    StatusBoard::new(Identity {
        node: "n".into(),
        version: "v".into(),
        config_path: "c".into(),
        state_path: "s".into(),
    })
}

fn state_of(board: &StatusBoard, name: &str) -> skein_status::PartStatus {
    board
        .report()
        .parts
        .into_iter()
        .find(|p| p.name == name)
        .expect("registered")
}

#[test]
fn backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run() {
    let b = Backoff {
        first: Duration::from_secs(1),
        max: Duration::from_secs(8),
        healthy: Duration::from_secs(60),
    };
    let quick = Duration::from_millis(10);
    let mut d = b.next(None, quick);
    let mut seen = vec![d.as_secs()];
    for _ in 0..5 {
        d = b.next(Some(d), quick);
        seen.push(d.as_secs());
    }
    assert_eq!(seen, [1, 2, 4, 8, 8, 8]);
    assert_eq!(
        b.next(Some(Duration::from_secs(8)), Duration::from_secs(61))
            .as_secs(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_part_is_restarted_and_does_not_stop_the_others() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    sup.spawn("flaky", move |part: Part| {
        let n = a.fetch_add(1, Ordering::SeqCst);
        let handle = part.handle.clone();
        async move {
            if n < 2 {
                Err(PartError::Failed(format!("attempt {n} failed")))
            } else {
                handle.ok("third time lucky");
                std::future::pending::<()>().await;
                Ok(())
            }
        }
    });
    sup.spawn("steady", |part: Part| async move {
        part.handle.ok("fine");
        part.cancel.cancelled().await;
        Ok(())
    });

    tokio::time::sleep(Duration::from_millis(10)).await;
    let flaky = state_of(&board, "flaky");
    assert_eq!(flaky.state, State::Failed);
    assert_eq!(flaky.last_error.as_deref(), Some("attempt 0 failed"));
    assert_eq!(state_of(&board, "steady").state, State::Ok);

    // 1 s, then 2 s of backoff: the third attempt runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let flaky = state_of(&board, "flaky");
    assert_eq!(flaky.state, State::Ok, "{flaky:?}");
    assert_eq!(flaky.restarts, 2);
    assert_eq!(flaky.last_error.as_deref(), Some("attempt 1 failed"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(state_of(&board, "steady").state, State::Ok);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_part_is_reported_and_restarted() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    sup.spawn("panicky", move |part: Part| {
        let n = a.fetch_add(1, Ordering::SeqCst);
        async move {
            assert!(n > 0, "boom on the first run");
            part.cancel.cancelled().await;
            Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let p = state_of(&board, "panicky");
    assert_eq!(p.state, State::Failed);
    assert!(
        p.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("panicked: boom"),
        "{p:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    sup.shutdown(Duration::from_secs(1)).await;
}

/// Tells, by being dropped, that the future holding it is gone (finished or aborted).
struct DropFlag(Arc<AtomicU32>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_aborts_parts_and_helpers_that_ignore_cancellation() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let dropped = Arc::new(AtomicU32::new(0));
    let d = dropped.clone();
    sup.spawn("stubborn", move |part: Part| {
        let (main_flag, helper_flag) = (DropFlag(d.clone()), DropFlag(d.clone()));
        async move {
            part.spawn("stubborn helper", async move {
                let _flag = helper_flag;
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            });
            let _flag = main_flag;
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "both still running");
    sup.shutdown(Duration::from_secs(2)).await;
    // Both futures were dropped (aborted) before shutdown returned: nothing of the part runs on
    // while the daemon closes its store.
    assert_eq!(dropped.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_part_takes_its_helpers_down_before_it_restarts() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let runs = Arc::new(AtomicU32::new(0));
    let helpers_alive = Arc::new(AtomicU32::new(0));
    let helpers_dropped = Arc::new(AtomicU32::new(0));
    let (r, alive, dropped) = (runs.clone(), helpers_alive.clone(), helpers_dropped.clone());
    sup.spawn("server", move |part: Part| {
        let run = r.fetch_add(1, Ordering::SeqCst);
        let (alive, flag) = (alive.clone(), DropFlag(dropped.clone()));
        async move {
            // What the CNI part does: a server task beside the part's own loop.
            part.spawn("socket server", async move {
                let _flag = flag;
                alive.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok::<(), String>(())
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(run > 0, "the first run panics with its server running");
            part.cancel.cancelled().await;
            Ok(())
        }
    });
    // The stubborn server ignores its cancellation: it gets the restart grace (2 s), then it
    // is aborted, and only then does the part count as failed and wait out its backoff.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        helpers_dropped.load(Ordering::SeqCst),
        0,
        "still in its grace period"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(state_of(&board, "server").state, State::Failed);
    assert_eq!(helpers_alive.load(Ordering::SeqCst), 1);
    assert_eq!(
        helpers_dropped.load(Ordering::SeqCst),
        1,
        "the panicked run's server is gone before the restart"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(helpers_alive.load(Ordering::SeqCst), 2);
    assert_eq!(
        helpers_dropped.load(Ordering::SeqCst),
        1,
        "the new server runs"
    );
    sup.shutdown(Duration::from_secs(1)).await;
    assert_eq!(helpers_dropped.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_helper_that_heeds_cancellation_finishes_its_cleanup_when_its_part_fails() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let cleaned = Arc::new(AtomicU32::new(0));
    let c = cleaned.clone();
    sup.spawn("p", move |part: Part| {
        let c = c.clone();
        async move {
            let token = part.cancel.clone();
            part.spawn("server", async move {
                token.cancelled().await;
                // Cleanup that takes a moment, as removing a socket file does.
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.fetch_add(1, Ordering::SeqCst);
                Ok::<(), String>(())
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            Err(PartError::Failed("gave up".into()))
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cleaned.load(Ordering::SeqCst),
        1,
        "asked first, not aborted"
    );
    assert_eq!(state_of(&board, "p").state, State::Failed);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_helper_ends_the_run_and_the_part_restarts() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    sup.spawn("p", move |part: Part| {
        let run = r.fetch_add(1, Ordering::SeqCst);
        async move {
            if run == 0 {
                part.spawn("listener", async { Err::<(), _>("address in use") });
            }
            part.cancel.cancelled().await;
            Ok(())
        }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let p = state_of(&board, "p");
    assert_eq!(p.state, State::Failed);
    assert_eq!(
        p.last_error.as_deref(),
        Some("its task `listener` ended: address in use")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    sup.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_injected_fault_panics_the_named_part_only() {
    let board = board();
    let mut sup = Supervisor::new(board.clone(), Backoff::default());
    for name in ["a", "b"] {
        sup.spawn(name, |part: Part| async move {
            part.handle.ok("up");
            part.cancel.cancelled().await;
            Ok(())
        });
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(sup.inject_panic("a"));
    assert!(!sup.inject_panic("nope"));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let a = state_of(&board, "a");
    assert_eq!(a.state, State::Failed);
    assert!(a.last_error.unwrap_or_default().contains("fault injected"));
    assert_eq!(state_of(&board, "b").state, State::Ok);
    sup.shutdown(Duration::from_secs(1)).await;
}

mod pure {
    //! The daemon's pure pieces: pod MTU, CNI installation, published annotations.
    use crate::{cluster_part, cni_install, cni_part};
    use skein_config::Mtu;

    #[test]
    fn pods_get_the_overlay_mtu_or_a_smaller_configured_one() {
        assert_eq!(cni_part::pod_mtu(Mtu::Auto, 1420), 1420);
        assert_eq!(cni_part::pod_mtu(Mtu::Fixed(1300), 1420), 1300);
        assert_eq!(
            cni_part::pod_mtu(Mtu::Fixed(9000), 1420),
            1420,
            "a pod MTU above the tunnel's would black-hole large packets"
        );
    }

    #[test]
    fn the_overlay_mtu_is_the_underlay_minus_80_unless_fixed() {
        // Lives in skein-overlay; checked here where the daemon derives the pods' MTU from it.
        use skein_overlay::overlay_mtu;
        assert_eq!(overlay_mtu(None, Some(1500)), 1420);
        assert_eq!(overlay_mtu(None, Some(9000)), 8920);
        assert_eq!(overlay_mtu(None, None), 1420, "1500 assumed when unknown");
        assert_eq!(overlay_mtu(Some(1300), Some(9000)), 1300);
        assert_eq!(
            overlay_mtu(None, Some(600)),
            576,
            "never below IPv4's minimum"
        );
    }

    #[test]
    fn the_conflist_speaks_1_0_0_and_offers_1_1_0() {
        use cni_install::PortMappings;
        let list = |port_mappings| -> serde_json::Value {
            serde_json::from_str(&cni_install::conflist(
                std::path::Path::new("/run/skein/cni.sock"),
                port_mappings,
            ))
            .expect("json")
        };
        let skein = list(PortMappings::Skein);
        assert_eq!(skein["cniVersion"], "1.0.0");
        assert_eq!(skein["cniVersions"], serde_json::json!(["1.0.0", "1.1.0"]));
        assert_eq!(skein["plugins"][0]["type"], "skein");
        assert_eq!(skein["plugins"][0]["socket"], "/run/skein/cni.sock");
        assert_eq!(skein["plugins"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            skein["plugins"][0]["capabilities"],
            serde_json::json!({"portMappings": true}),
            "skein takes the hostPorts itself"
        );
        // With portmap chained only portmap declares the capability: both would DNAT.
        let portmap = list(PortMappings::Portmap);
        assert_eq!(portmap["plugins"][1]["type"], "portmap");
        assert_eq!(
            portmap["plugins"][1]["capabilities"],
            serde_json::json!({"portMappings": true})
        );
        assert_eq!(portmap["plugins"][0].get("capabilities"), None);
        let nobody = list(PortMappings::Nobody);
        assert_eq!(nobody["plugins"].as_array().map(Vec::len), Some(1));
        assert_eq!(nobody["plugins"][0].get("capabilities"), None);
    }

    #[test]
    fn files_are_installed_only_when_their_content_differs() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub").join("10-skein.conflist");
        assert!(cni_install::install_file(&path, b"one", 0o644).expect("write"));
        assert!(
            !cni_install::install_file(&path, b"one", 0o644).expect("same"),
            "unchanged content is left alone"
        );
        assert!(cni_install::install_file(&path, b"two", 0o644).expect("rewrite"));
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn the_node_publishes_its_underlay_address_until_the_api_has_it() {
        let desired =
            cluster_part::desired_annotations(Some("198.18.0.11".parse().expect("ip")), None);
        let mut snapshot = skein_cluster::Snapshot::default();
        assert!(
            cluster_part::annotations_outdated(&snapshot, "n1", &desired),
            "node not seen yet"
        );
        let node = skein_cluster::Node {
            name: "n1".into(),
            uid: "u".into(),
            pod_cidrs: vec![],
            internal_ip: None,
            internal_ips: Vec::new(),
            zone: None,
            ready: Some(true),
            skein: desired.clone(),
            unschedulable: false,
        };
        snapshot.nodes.insert("n1".into(), node.clone());
        assert!(!cluster_part::annotations_outdated(
            &snapshot, "n1", &desired
        ));
        let mut stale = node;
        stale.skein.insert(
            skein_cluster::ANNOTATION_UNDERLAY_ADDRESS.into(),
            "198.18.0.99".into(),
        );
        snapshot.nodes.insert("n1".into(), stale);
        assert!(
            cluster_part::annotations_outdated(&snapshot, "n1", &desired),
            "a changed address is republished"
        );
        assert!(cluster_part::desired_annotations(None, None).is_empty());
    }

    #[test]
    fn node_underlay_interface_gives_that_interfaces_address() {
        assert_eq!(
            cluster_part::address_of_interface("lo"),
            Some("127.0.0.1".parse().expect("ip"))
        );
        assert_eq!(cluster_part::address_of_interface("skein-none0"), None);
    }

    #[test]
    fn the_wireguard_endpoint_is_the_underlay_address_with_the_overlay_port() {
        let key = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
        let id = crate::overlay_part::Identity {
            public_key: key.into(),
            listen_port: 51820,
        };
        let v4 =
            cluster_part::desired_annotations(Some("198.18.0.11".parse().expect("ip")), Some(&id));
        assert_eq!(
            v4[skein_cluster::ANNOTATION_WIREGUARD_ENDPOINT],
            "198.18.0.11:51820"
        );
        assert_eq!(v4[skein_cluster::ANNOTATION_WIREGUARD_PUBLIC_KEY], key);
        let v6 =
            cluster_part::desired_annotations(Some("fd00::11".parse().expect("ip")), Some(&id));
        assert_eq!(
            v6[skein_cluster::ANNOTATION_WIREGUARD_ENDPOINT],
            "[fd00::11]:51820"
        );
        assert!(
            cluster_part::desired_annotations(None, Some(&id)).is_empty(),
            "no endpoint without an underlay address"
        );
    }
}
