//! The overlay's pure core: peers from the cluster view, the plan, the control protocol's text,
//! and the key file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use skein_cluster::{
    ANNOTATION_WIREGUARD_ENDPOINT, ANNOTATION_WIREGUARD_PUBLIC_KEY, Node, Snapshot,
};
use wireguard_control::Key;

use crate::peers::PeerChange;
use crate::*;

fn key(n: u8) -> Key {
    Key::from_base64(&Key([n; 32]).to_base64()).expect("key")
}

fn node(name: &str, cidr: &str, key: Option<&Key>, endpoint: &str) -> Node {
    let mut skein = BTreeMap::new();
    if let Some(k) = key {
        skein.insert(ANNOTATION_WIREGUARD_PUBLIC_KEY.to_string(), k.to_base64());
        skein.insert(
            ANNOTATION_WIREGUARD_ENDPOINT.to_string(),
            endpoint.to_string(),
        );
    }
    Node {
        name: name.into(),
        uid: name.into(),
        pod_cidrs: if cidr.is_empty() {
            vec![]
        } else {
            vec![cidr.parse().expect("cidr")]
        },
        internal_ip: None,
        internal_ips: Vec::new(),
        zone: None,
        ready: Some(true),
        skein,
        unschedulable: false,
    }
}

fn snapshot(nodes: Vec<Node>) -> Snapshot {
    let mut s = Snapshot {
        version: 1,
        ..Default::default()
    };
    for n in nodes {
        s.nodes.insert(n.name.clone(), n);
    }
    s
}

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|c| c.parse().expect("cidr")).collect()
}

fn ep(s: &str) -> SocketAddr {
    s.parse().expect("endpoint")
}

fn state(k: &Key, endpoint: Option<&str>, ips: &[&str]) -> PeerState {
    let mut p = PeerState::new(k.clone());
    p.endpoint = endpoint.map(ep);
    p.allowed_ips = nets(ips);
    p
}

#[test]
fn every_other_node_with_a_key_endpoint_and_cidr_is_a_peer() {
    let me = key(1);
    let s = snapshot(vec![
        node("a", "10.42.0.0/24", Some(&me), "198.18.0.11:51820"),
        node("b", "10.42.1.0/24", Some(&key(2)), "198.18.0.12:51820"),
        node("c", "10.42.2.0/24", None, ""),
        node("d", "", Some(&key(4)), "198.18.0.14:51820"),
        node("e", "10.42.4.0/24", Some(&key(2)), "198.18.0.15:51820"),
        node("f", "10.42.5.0/24", Some(&me), "198.18.0.16:51820"),
    ]);
    let (peers, skipped) = desired_peers(&s, "a", &me);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].node, "b");
    assert_eq!(peers[0].endpoint, ep("198.18.0.12:51820"));
    assert_eq!(peers[0].allowed_ips, nets(&["10.42.1.0/24"]));
    let why: BTreeMap<&str, &str> = skipped
        .iter()
        .map(|s| (s.node.as_str(), s.why.as_str()))
        .collect();
    assert!(why["c"].contains("not published"), "{why:?}");
    assert!(why["d"].contains("no pod CIDR"), "{why:?}");
    assert!(why["e"].contains("same WireGuard key as node b"), "{why:?}");
    assert!(why["f"].contains("own WireGuard key"), "{why:?}");
    assert!(!why.contains_key("a"), "this node is not its own peer");
}

#[test]
fn a_bad_annotation_is_named_with_its_value() {
    let mut bad_key = node("b", "10.42.1.0/24", Some(&key(2)), "198.18.0.12:51820");
    bad_key
        .skein
        .insert(ANNOTATION_WIREGUARD_PUBLIC_KEY.into(), "not-a-key".into());
    let bad_endpoint = node("c", "10.42.2.0/24", Some(&key(3)), "198.18.0.13");
    let (peers, skipped) = desired_peers(&snapshot(vec![bad_key, bad_endpoint]), "a", &key(1));
    assert!(peers.is_empty());
    assert!(
        skipped[0]
            .why
            .contains("skein.dev/wireguard-public-key = \"not-a-key\""),
        "{skipped:?}"
    );
    assert!(
        skipped[1]
            .why
            .contains("skein.dev/wireguard-endpoint = \"198.18.0.13\""),
        "{skipped:?}"
    );
}

#[test]
fn nodes_coming_and_going_add_and_remove_exactly_their_peer() {
    let s = snapshot(vec![
        node("b", "10.42.1.0/24", Some(&key(2)), "198.18.0.12:51820"),
        node("d", "10.42.3.0/24", Some(&key(4)), "198.18.0.14:51820"),
    ]);
    let (desired, _) = desired_peers(&s, "a", &key(1));
    let current = vec![
        state(&key(2), Some("198.18.0.12:51820"), &["10.42.1.0/24"]),
        state(&key(3), Some("198.18.0.13:51820"), &["10.42.2.0/24"]),
    ];
    let published = BTreeMap::from([(key(2).0, ep("198.18.0.12:51820"))]);
    let plan = plan_peers(&current, &desired, &published);
    assert_eq!(
        plan,
        vec![
            PeerChange::Add {
                public_key: key(4),
                endpoint: ep("198.18.0.14:51820"),
                allowed_ips: nets(&["10.42.3.0/24"]),
            },
            PeerChange::Remove { public_key: key(3) },
        ],
        "b is untouched; the addition comes before the removal"
    );
    assert!(
        plan_peers(&current[..1], &desired[..1], &published).is_empty(),
        "nothing to do twice"
    );
}

#[test]
fn a_learnt_endpoint_is_kept_until_the_published_one_changes() {
    let s = snapshot(vec![node(
        "b",
        "10.42.1.0/24",
        Some(&key(2)),
        "198.18.0.12:51820",
    )]);
    let (desired, _) = desired_peers(&s, "a", &key(1));
    // The tunnel learnt a NAT'd address for b.
    let roamed = vec![state(&key(2), Some("203.0.113.7:40000"), &["10.42.1.0/24"])];
    let published = BTreeMap::from([(key(2).0, ep("198.18.0.12:51820"))]);
    assert!(
        plan_peers(&roamed, &desired, &published).is_empty(),
        "resync leaves it alone"
    );
    // After a daemon restart nothing is remembered: still left alone.
    assert!(plan_peers(&roamed, &desired, &BTreeMap::new()).is_empty());
    // b publishes a new address: that one is written.
    let moved = snapshot(vec![node(
        "b",
        "10.42.1.0/24",
        Some(&key(2)),
        "198.18.0.99:51820",
    )]);
    let (desired, _) = desired_peers(&moved, "a", &key(1));
    match &plan_peers(&roamed, &desired, &published)[..] {
        [PeerChange::Update { endpoint, .. }] => {
            assert_eq!(*endpoint, Some(ep("198.18.0.99:51820")))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn changed_allowed_ips_update_the_peer_without_its_endpoint() {
    let s = snapshot(vec![node(
        "b",
        "10.42.9.0/24",
        Some(&key(2)),
        "198.18.0.12:51820",
    )]);
    let (desired, _) = desired_peers(&s, "a", &key(1));
    let current = vec![state(&key(2), Some("203.0.113.7:40000"), &["10.42.1.0/24"])];
    let published = BTreeMap::from([(key(2).0, ep("198.18.0.12:51820"))]);
    let plan = plan_peers(&current, &desired, &published);
    assert_eq!(
        plan,
        vec![PeerChange::Update {
            public_key: key(2),
            endpoint: None,
            current_endpoint: Some(ep("203.0.113.7:40000")),
            allowed_ips: nets(&["10.42.9.0/24"]),
            old_allowed_ips: nets(&["10.42.1.0/24"]),
        }]
    );
    // The userspace request keeps the learnt endpoint across the remove-and-add.
    let rendered = uapi::render_set(&DeviceChange {
        peers: plan,
        ..Default::default()
    });
    let text = rendered.as_str();
    assert!(text.contains("remove=true\npublic_key="), "{text}");
    assert!(text.contains("endpoint=203.0.113.7:40000"), "{text}");
    assert!(text.contains("allowed_ip=10.42.9.0/24"), "{text}");
}

#[test]
fn routes_are_the_peers_allowed_ips_added_before_removed() {
    let s = snapshot(vec![
        node("b", "10.42.1.0/24", Some(&key(2)), "198.18.0.12:51820"),
        node("c", "10.42.2.0/24", Some(&key(3)), "198.18.0.13:51820"),
    ]);
    let (desired, _) = desired_peers(&s, "a", &key(1));
    let (add, remove) = plan_routes(&nets(&["10.42.1.0/24", "10.42.7.0/24"]), &desired);
    assert_eq!(add, nets(&["10.42.2.0/24"]));
    assert_eq!(remove, nets(&["10.42.7.0/24"]));
}

#[test]
fn the_set_request_speaks_the_wireguard_control_protocol() {
    let changes = vec![
        PeerChange::Add {
            public_key: key(2),
            endpoint: ep("198.18.0.12:51820"),
            allowed_ips: nets(&["10.42.1.0/24"]),
        },
        PeerChange::Remove { public_key: key(3) },
    ];
    let rendered = uapi::render_set(&DeviceChange {
        private_key: PrivateKey::from_hex(&format!("{:02x}", 1).repeat(32)),
        listen_port: Some(51820),
        peers: changes,
        keepalive: Some(25),
    });
    let hex = |n: u8| format!("{n:02x}").repeat(32);
    assert_eq!(
        rendered.as_str(),
        format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nendpoint=198.18.0.12:51820\n\
             persistent_keepalive_interval=25\nallowed_ip=10.42.1.0/24\npublic_key={}\nremove=true\n\n",
            hex(1),
            hex(2),
            hex(3)
        )
    );
}

#[test]
fn get_answers_of_boringtun_and_wireguard_go_both_parse() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let hex = |n: u8| format!("{n:02x}").repeat(32);
    // boringtun: its own public key, and the time *since* the handshake.
    let boringtun = format!(
        "own_public_key={}\nlisten_port=51820\npublic_key={}\nendpoint=198.18.0.12:51820\n\
         allowed_ip=10.42.1.0/24\nlast_handshake_time_sec=7\nlast_handshake_time_nsec=0\n\
         rx_bytes=100\ntx_bytes=200\nerrno=0\n",
        hex(1),
        hex(2)
    );
    let s = uapi::parse_get(&boringtun, now).expect("parse");
    assert_eq!(s.public_key, Some(key(1)));
    assert_eq!(s.listen_port, 51820);
    assert_eq!(s.peers.len(), 1);
    assert_eq!(s.peers[0].last_handshake_age, Some(Duration::from_secs(7)));
    assert_eq!((s.peers[0].rx_bytes, s.peers[0].tx_bytes), (100, 200));
    // wireguard-go: the private key, an absolute handshake time, 0 for never.
    let private = key(1);
    let go = format!(
        "private_key={}\nlisten_port=51820\npublic_key={}\nlast_handshake_time_sec=1799999990\n\
         rx_bytes=1\ntx_bytes=1\npublic_key={}\nlast_handshake_time_sec=0\nrx_bytes=0\ntx_bytes=0\nerrno=0\n",
        hex(1),
        hex(2),
        hex(3)
    );
    let s = uapi::parse_get(&go, now).expect("parse");
    assert_eq!(s.public_key, Some(private.get_public()));
    assert_eq!(s.peers[0].last_handshake_age, Some(Duration::from_secs(10)));
    assert_eq!(s.peers[1].last_handshake_age, None, "0 means never");
    assert!(uapi::parse_get("errno=22\n", now).is_err());
}

#[test]
fn the_key_is_made_once_kept_private_and_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = NodeKey::load_or_create(dir.path()).expect("create");
    let path = NodeKey::path_in(dir.path());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let again = NodeKey::load_or_create(dir.path()).expect("load");
    assert_eq!(first, again, "a restart keeps the key");
    let text = std::fs::read_to_string(&path).expect("read");
    let shown = format!("{first:?}");
    assert!(
        !shown.contains(text.trim()),
        "Debug shows no private key: {shown}"
    );
    assert!(shown.contains(&first.public().to_base64()));
    std::fs::write(&path, "garbage\n").expect("write");
    let e = NodeKey::load_or_create(dir.path())
        .expect_err("malformed")
        .to_string();
    assert!(
        e.contains("wireguard.key") && e.contains("not a WireGuard private key"),
        "{e}"
    );
    // A file that is almost a key is not quoted either: it may be one with a typo.
    let almost = format!("{}!", &first.private().to_base64()[..43]);
    std::fs::write(&path, &almost).expect("write");
    let e = NodeKey::load_or_create(dir.path()).expect_err("malformed");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(
            !shown.contains(&almost[..43]),
            "the file's text is quoted: {shown}"
        );
    }
}

use skein_lab::skip::require_root;

#[test]
fn a_key_on_tmpfs_is_refused() {
    if !require_root("mounting a tmpfs for the key file") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().to_path_buf();
    // A mount namespace of this thread's own: the tmpfs is gone with the thread, whatever
    // happens, and no other process ever sees it.
    let refused = std::thread::spawn(move || {
        use nix::mount::{MsFlags, mount};
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make mounts private");
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=1m,mode=0700"),
        )
        .expect("mount tmpfs");
        let result = NodeKey::load_or_create(&target).map(|_| ());
        let left = std::fs::read_dir(&target).map(|d| d.count()).unwrap_or(0);
        let _ = nix::mount::umount(&target);
        (result, left)
    })
    .join()
    .expect("tmpfs thread");
    let e = refused.0.expect_err("a key on tmpfs").to_string();
    assert!(e.contains("tmpfs") && e.contains("store.path"), "{e}");
    assert_eq!(refused.1, 0, "no key was written to the tmpfs");
}

/// 32 bytes of `n`, as the control protocol writes a key.
fn hex(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

#[test]
fn a_malformed_private_key_from_the_device_is_never_quoted() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    // Key text with one digit short and one that is no hex digit: both malformed.
    let secret = "c0ffee".repeat(10);
    for line in [
        format!("private_key={secret}"),
        format!("private_key={secret}zz1"),
    ] {
        let e = uapi::parse_get(&format!("{line}\nlisten_port=1\nerrno=0\n"), now)
            .expect_err("a malformed key is an error");
        for shown in [e.to_string(), format!("{e:?}")] {
            assert!(!shown.contains(&secret), "the key text is quoted: {shown}");
            assert!(
                !shown.contains("c0ffee"),
                "part of the key is quoted: {shown}"
            );
            assert!(
                shown.contains("private_key"),
                "the error names the field: {shown}"
            );
        }
    }
    // Public fields are still quoted whole, which is what makes the error useful.
    let e = uapi::parse_get("listen_port=x\n", now)
        .expect_err("bad port")
        .to_string();
    assert!(e.contains("listen_port=x"), "{e}");
}

#[test]
fn debug_of_a_private_key_shows_no_key_material() {
    let private = PrivateKey::from_hex(&hex(7)).expect("key");
    let shown = format!("{private:?}");
    assert!(!shown.contains(&hex(7)), "{shown}");
    assert!(!shown.contains(private.to_base64().as_str()), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    assert!(shown.contains(&private.public().to_base64()), "{shown}");
    assert_eq!(private.to_hex().as_str(), hex(7));
    assert_eq!(
        PrivateKey::from_base64(private.to_base64().as_str()),
        Some(private.clone())
    );
}

#[test]
fn debug_of_a_node_key_shows_no_key_material() {
    let node_key = NodeKey::from_private(PrivateKey::from_hex(&hex(9)).expect("key"));
    let shown = format!("{node_key:?} {node_key:#?}");
    assert!(!shown.contains(&hex(9)), "{shown}");
    assert!(
        !shown.contains(node_key.private().to_base64().as_str()),
        "{shown}"
    );
    assert!(shown.contains(&node_key.public().to_base64()), "{shown}");
}

#[test]
fn debug_of_a_device_change_shows_no_key_material() {
    let private = PrivateKey::from_hex(&hex(5)).expect("key");
    let change = DeviceChange {
        private_key: Some(private.clone()),
        listen_port: Some(51820),
        peers: vec![PeerChange::Remove { public_key: key(2) }],
        keepalive: None,
    };
    let shown = format!("{change:?} {change:#?}");
    assert!(!shown.contains(&hex(5)), "{shown}");
    assert!(!shown.contains(private.to_base64().as_str()), "{shown}");
    assert!(shown.contains("redacted"), "{shown}");
    // The request itself carries the key, for the device only.
    assert!(uapi::render_set(&change).contains(&format!("private_key={}", hex(5))));
}

/// A device for the rotation logic: holds a key, and may refuse new ones (outright, or after
/// taking the key anyway, as a connection that broke mid-request may).
#[derive(Debug, Default)]
struct StandInDevice {
    key: std::cell::RefCell<Option<PrivateKey>>,
    refuse: bool,
    take_then_fail: bool,
}

impl KeyDevice for StandInDevice {
    fn public_key(&self) -> Result<Option<Key>, OverlayError> {
        Ok(self.key.borrow().as_ref().map(PrivateKey::public))
    }

    fn set_private_key(&self, key: &PrivateKey) -> Result<(), OverlayError> {
        if self.refuse {
            return Err(OverlayError::Control("errno=22".into()));
        }
        *self.key.borrow_mut() = Some(key.clone());
        if self.take_then_fail {
            return Err(OverlayError::Control("the connection broke".into()));
        }
        Ok(())
    }
}

fn device_holding(key: &NodeKey) -> StandInDevice {
    StandInDevice {
        key: std::cell::RefCell::new(Some(key.private().clone())),
        ..Default::default()
    }
}

#[test]
fn a_rotation_the_device_refuses_leaves_the_old_key_on_disk_and_in_the_device() {
    for (refuse, take_then_fail) in [(true, false), (false, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = NodeKey::load_or_create(dir.path()).expect("key");
        let before = std::fs::read(NodeKey::path_in(dir.path())).expect("key file");
        let device = StandInDevice {
            refuse,
            take_then_fail,
            ..device_holding(&old)
        };
        let e = rotation::rotate(dir.path(), &device, &old).expect_err("refused");
        assert!(matches!(e, KeyError::Refused { .. }), "{e:?}");
        assert!(e.to_string().contains("old key stays"), "{e}");
        assert_eq!(
            std::fs::read(NodeKey::path_in(dir.path())).expect("key file"),
            before,
            "the key file is byte-identical"
        );
        assert_eq!(
            device.public_key().expect("device").as_ref(),
            Some(old.public()),
            "the device holds the old key"
        );
        assert!(!dir.path().join(rotation::PENDING_FILE).exists());
    }
}

#[test]
fn a_rotation_writes_the_device_then_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = NodeKey::load_or_create(dir.path()).expect("key");
    let device = device_holding(&old);
    let new = rotation::rotate(dir.path(), &device, &old).expect("rotated");
    assert_ne!(new.public(), old.public());
    assert_eq!(
        device.public_key().expect("device").as_ref(),
        Some(new.public())
    );
    assert_eq!(NodeKey::load_or_create(dir.path()).expect("reload"), new);
    assert!(!dir.path().join(rotation::PENDING_FILE).exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(NodeKey::path_in(dir.path()))
            .expect("file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_leftover_new_key_is_kept_only_when_the_device_holds_it() {
    let (a, b) = (key(1), key(2));
    use rotation::PendingKey::{Complete, Discard};
    for (pending, device, want) in [
        (Some(&a), Some(&a), Complete),
        (Some(&a), Some(&b), Discard),
        (Some(&a), None, Discard),
        (None, Some(&a), Discard),
        (None, None, Discard),
    ] {
        assert_eq!(
            decide_pending(pending, device),
            want,
            "{pending:?} {device:?}"
        );
    }
}

#[test]
fn a_leftover_new_key_is_renamed_or_discarded_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = NodeKey::load_or_create(dir.path()).expect("key");
    let pending = NodeKey::generate();
    let pending_path = dir.path().join(rotation::PENDING_FILE);
    let old_file = std::fs::read(NodeKey::path_in(dir.path())).expect("key file");

    // Nothing left over: nothing changes.
    let (key_now, decision) =
        finish_pending_rotation(dir.path(), old.clone(), Some(old.public())).expect("none");
    assert_eq!((key_now, decision), (old.clone(), None));

    // The device holds the old key: the new one goes, the file stays.
    pending.write_synced(&pending_path).expect("write");
    let (key_now, decision) =
        finish_pending_rotation(dir.path(), old.clone(), Some(old.public())).expect("discard");
    assert_eq!((&key_now, decision), (&old, Some(PendingKey::Discard)));
    assert!(!pending_path.exists());
    assert_eq!(
        std::fs::read(NodeKey::path_in(dir.path())).expect("file"),
        old_file
    );

    // Half written: discarded.
    std::fs::write(&pending_path, "c0ffee").expect("write");
    let (key_now, decision) =
        finish_pending_rotation(dir.path(), old.clone(), Some(old.public())).expect("discard");
    assert_eq!((&key_now, decision), (&old, Some(PendingKey::Discard)));
    assert!(!pending_path.exists());

    // The device took the new key before the crash: the rename is completed.
    pending.write_synced(&pending_path).expect("write");
    let (key_now, decision) =
        finish_pending_rotation(dir.path(), old.clone(), Some(pending.public())).expect("done");
    assert_eq!((&key_now, decision), (&pending, Some(PendingKey::Complete)));
    assert!(!pending_path.exists());
    assert_eq!(
        NodeKey::load_or_create(dir.path()).expect("reload"),
        pending
    );
}

#[test]
fn backend_choice_says_why() {
    assert_eq!(
        choose_backend(skein_config::OverlayMode::Kernel, false, "x").0,
        Backend::Kernel
    );
    assert_eq!(
        choose_backend(skein_config::OverlayMode::Userspace, true, "x").0,
        Backend::Userspace
    );
    let (b, why) = choose_backend(skein_config::OverlayMode::Auto, true, "skein-test-none");
    assert_eq!(b, Backend::Kernel);
    assert!(why.contains("kernel has WireGuard"), "{why}");
    let (b, why) = choose_backend(skein_config::OverlayMode::Auto, false, "skein-test-none");
    assert_eq!(b, Backend::Userspace);
    assert!(why.contains("no WireGuard module"), "{why}");
}
