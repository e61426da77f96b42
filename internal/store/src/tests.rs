//! Store tests on real SQLite files in temporary directories: opening, locking, migrations,
//! and the IPAM leases (including concurrent allocation and what the schema itself refuses).

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;

#[tokio::test]
async fn open_creates_private_directory_and_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state").join("state.db");
    let store = Store::open(&path).await.expect("open");
    let dir_mode = fs::metadata(path.parent().expect("dir"))
        .expect("dir")
        .permissions()
        .mode();
    let file_mode = fs::metadata(&path).expect("file").permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(file_mode & 0o777, 0o600);
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.pool)
        .await
        .expect("pragma");
    assert_eq!(journal, "wal");
    store.close().await;
}

#[tokio::test]
async fn existing_file_with_loose_mode_is_tightened() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    fs::write(&path, b"").expect("touch");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let store = Store::open(&path).await.expect("open");
    assert_eq!(
        fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );
    store.close().await;
}

#[tokio::test]
async fn second_open_of_the_same_directory_names_the_owner_pid() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let first = Store::open(&path).await.expect("first");
    let err = Store::open(&tmp.path().join("other.db"))
        .await
        .expect_err("second must fail");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&std::process::id().to_string()),
        "names the pid: {msg}"
    );
    assert!(msg.contains("another skein is running"), "{msg}");
    first.close().await;
    drop(first);
    Store::open(&path)
        .await
        .expect("reopen after the first is gone")
        .close()
        .await;
}

#[tokio::test]
async fn migrations_apply_once_and_reopen_keeps_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let store = Store::open(&path).await.expect("open");
    let id = store.record_start("test").await.expect("start");
    store.record_clean_stop(id).await.expect("stop");
    store.record_start("test").await.expect("crashed start");
    store.close().await;
    drop(store);

    let store = Store::open(&path).await.expect("reopen");
    store.record_start("test").await.expect("start");
    let summary = store.summary().await.expect("summary");
    assert_eq!(summary.schema_version, known_schema_version());
    assert_eq!(summary.starts, 3);
    assert_eq!(
        summary.unclean_stops, 1,
        "the second start never stopped cleanly"
    );
    store.check().await.expect("quick_check");
    store.checkpoint().await.expect("checkpoint");
    store.close().await;
}

#[tokio::test]
async fn newer_schema_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    let store = Store::open(&path).await.expect("open");
    let future = known_schema_version() + 1000;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (?, 'from the future', 1, x'00', 0)",
    )
    .bind(future)
    .execute(&store.pool)
    .await
    .expect("insert");
    store.close().await;
    drop(store);

    let err = Store::open(&path).await.expect_err("newer schema");
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::NewerSchema { found, .. } if found == future),
        "{msg}"
    );
    assert!(msg.contains("newer skein"), "{msg}");
    // Still refused the second time: nothing was rewritten.
    assert!(matches!(
        Store::open(&path).await,
        Err(StoreError::NewerSchema { .. })
    ));
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_gives_an_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("state.db");
    fs::write(&path, vec![0x42u8; 8192]).expect("garbage");
    let err = Store::open(&path)
        .await
        .expect_err("garbage is not a database");
    assert!(err.to_string().contains("state.db"), "{err}");
}

async fn open_in(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("state.db"))
        .await
        .expect("open")
}

fn request(container_id: &str, cidr: &str) -> LeaseRequest {
    LeaseRequest {
        container_id: container_id.to_string(),
        ifname: "eth0".to_string(),
        pod: PodRef {
            namespace: "default".to_string(),
            name: format!("pod-{container_id}"),
            uid: format!("uid-{container_id}"),
        },
        cidr: cidr.parse().expect("cidr"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A lease row written past the store's methods, to see what the schema alone allows.
async fn insert_raw<'c>(
    executor: impl sqlx::SqliteExecutor<'c>,
    address: &str,
    container_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO leases (cidr, address, family, container_id, ifname, pod_namespace,
                             pod_name, pod_uid, created_at)
         VALUES ('10.42.1.0/24', ?, 4, ?, 'eth0', 'default', 'raw', 'raw', 0)",
    )
    .bind(address)
    .bind(container_id)
    .execute(executor)
    .await
    .map(drop)
}

#[tokio::test]
async fn lease_is_idempotent_and_release_gives_it_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let first = store
        .lease(&request("c1", "10.42.1.0/24"))
        .await
        .expect("lease");
    assert_eq!(first.address, ip("10.42.1.2"));
    assert_eq!(first.cidr, "10.42.1.0/24".parse().expect("cidr"));
    assert_eq!(first.pod.name, "pod-c1");
    // An ADD repeated after a crash gets the very same lease.
    let again = store
        .lease(&request("c1", "10.42.1.0/24"))
        .await
        .expect("again");
    assert_eq!(again, first);
    // Host bits in the request's CIDR name the same pod CIDR.
    let again = store
        .lease(&request("c1", "10.42.1.9/24"))
        .await
        .expect("again");
    assert_eq!(again, first);
    let second = store
        .lease(&request("c2", "10.42.1.0/24"))
        .await
        .expect("second");
    assert_eq!(second.address, ip("10.42.1.3"));

    assert_eq!(
        store.lease_of("c1", "eth0").await.expect("of"),
        std::slice::from_ref(&first)
    );
    assert_eq!(store.lease_of("c1", "eth1").await.expect("of"), []);
    assert_eq!(store.release("c1", "eth0").await.expect("release"), [first]);
    // CNI DEL is idempotent: nothing left to release is no error.
    assert_eq!(store.release("c1", "eth0").await.expect("again"), []);
    assert_eq!(store.release("never", "eth0").await.expect("never"), []);
    assert_eq!(store.leases().await.expect("leases"), [second]);
    store.close().await;
}

#[tokio::test]
async fn a_dual_stack_attachment_holds_one_address_per_family() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let v6 = store
        .lease(&request("c1", "fd00:42:1::/64"))
        .await
        .expect("v6");
    let v4 = store
        .lease(&request("c1", "10.42.1.0/24"))
        .await
        .expect("v4");
    assert_eq!(v6.address, ip("fd00:42:1::2"));
    assert_eq!(v4.address, ip("10.42.1.2"));
    assert_eq!(
        store.lease_of("c1", "eth0").await.expect("of"),
        [v4.clone(), v6.clone()],
        "IPv4 first"
    );

    // A second address of a family the attachment already holds, from another CIDR, is refused.
    let err = store
        .lease(&request("c1", "10.43.0.0/24"))
        .await
        .expect_err("other CIDR");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::LeaseElsewhere { .. }), "{msg}");
    assert!(msg.contains("10.42.1.2 from 10.42.1.0/24"), "{msg}");
    assert!(msg.contains("10.43.0.0/24"), "{msg}");

    assert_eq!(
        store.release("c1", "eth0").await.expect("release"),
        [v4, v6]
    );
    assert_eq!(store.leases().await.expect("leases"), []);
    store.close().await;
}

#[tokio::test]
async fn leases_are_never_network_gateway_or_broadcast_and_exhaustion_names_the_cidr() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let mut got = Vec::new();
    for i in 0..5 {
        let lease = store
            .lease(&request(&format!("c{i}"), "10.42.1.0/29"))
            .await
            .expect("lease");
        got.push(lease.address);
    }
    let want: Vec<IpAddr> = (2..=6).map(|h| ip(&format!("10.42.1.{h}"))).collect();
    assert_eq!(got, want, "no .0 (network), .1 (gateway) or .7 (broadcast)");

    let err = store
        .lease(&request("c5", "10.42.1.0/29"))
        .await
        .expect_err("full");
    assert!(
        matches!(
            err,
            StoreError::Ipam(skein_ipam::IpamError::Exhausted { .. })
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "no free address left in 10.42.1.0/29 (5 usable, all leased)"
    );
    let err = store
        .lease(&request("c6", "10.42.1.4/31"))
        .await
        .expect_err("too small");
    assert!(err.to_string().contains("10.42.1.4/31"), "{err}");
    store.close().await;
}

/// Runs one `lease` per container id concurrently, each from its own task.
async fn lease_concurrently(
    store: &Store,
    cidr: &str,
    count: usize,
) -> Vec<Result<Lease, StoreError>> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let store = store.clone();
            let req = request(&format!("c{i}"), cidr);
            tokio::spawn(async move { store.lease(&req).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_get_distinct_addresses() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let cidr: ipnet::IpNet = "10.42.1.0/24".parse().expect("cidr");
    let addresses: Vec<IpAddr> = lease_concurrently(&store, "10.42.1.0/24", 200)
        .await
        .into_iter()
        .map(|r| r.expect("lease").address)
        .collect();
    let distinct: BTreeSet<IpAddr> = addresses.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "an address was handed out twice");
    let usable: BTreeSet<IpAddr> = skein_ipam::usable(cidr).collect();
    assert!(distinct.is_subset(&usable));
    assert_eq!(store.usage().await.expect("usage"), [(cidr, 200)]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_leases_exhaust_a_cidr_exactly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let (mut addresses, mut exhausted) = (BTreeSet::new(), 0);
    for result in lease_concurrently(&store, "10.42.1.64/26", 70).await {
        match result {
            Ok(lease) => assert!(addresses.insert(lease.address), "{} twice", lease.address),
            Err(StoreError::Ipam(skein_ipam::IpamError::Exhausted { .. })) => exhausted += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(addresses.len(), 61, "a /26 has 61 pod addresses");
    assert_eq!(exhausted, 9);
    store.close().await;
}

#[tokio::test]
async fn leases_and_the_cursor_survive_a_reopen() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    for c in ["c1", "c2", "c3"] {
        store
            .lease(&request(c, "10.42.1.0/24"))
            .await
            .expect("lease");
    }
    store.release("c1", "eth0").await.expect("release");
    let before = store.leases().await.expect("leases");
    store.close().await;
    drop(store);

    let store = open_in(&tmp).await;
    assert_eq!(store.leases().await.expect("leases"), before);
    let next = store
        .lease(&request("c4", "10.42.1.0/24"))
        .await
        .expect("lease");
    assert_eq!(
        next.address,
        ip("10.42.1.5"),
        "resumes after .4, not at the released .2"
    );
    store.close().await;
}

#[tokio::test]
async fn a_released_address_is_not_reused_next() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    for c in ["a", "b", "c"] {
        store
            .lease(&request(c, "10.42.1.0/24"))
            .await
            .expect("lease");
    }
    let released = store.release("c", "eth0").await.expect("release");
    assert_eq!(released[0].address, ip("10.42.1.4"));
    let next = store
        .lease(&request("d", "10.42.1.0/24"))
        .await
        .expect("lease");
    assert_eq!(next.address, ip("10.42.1.5"));
    store.close().await;
}

#[tokio::test]
async fn a_lease_rolled_back_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    // What a daemon that dies mid-transaction leaves: a transaction never committed.
    let mut tx = store.begin_write().await.expect("begin");
    insert_raw(&mut *tx, "10.42.1.2", "dead")
        .await
        .expect("insert");
    drop(tx);

    assert_eq!(store.lease_of("dead", "eth0").await.expect("of"), []);
    let lease = store
        .lease(&request("c1", "10.42.1.0/24"))
        .await
        .expect("lease");
    assert_eq!(lease.address, ip("10.42.1.2"));
    assert_eq!(store.leases().await.expect("leases"), [lease]);
    store.close().await;
}

#[tokio::test]
async fn the_schema_refuses_an_address_twice_and_two_per_family() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let lease = store
        .lease(&request("c1", "10.42.1.0/24"))
        .await
        .expect("lease");
    let err = insert_raw(&store.pool, &lease.address.to_string(), "c2")
        .await
        .expect_err("the same address for another container");
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    let err = insert_raw(&store.pool, "10.42.1.200", "c1")
        .await
        .expect_err("a second IPv4 address for the same attachment");
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    assert_eq!(store.leases().await.expect("leases"), [lease]);
    store.close().await;
}

#[tokio::test]
async fn release_except_keeps_exactly_the_kept_attachments() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    for c in ["c1", "c2", "c3", "c4"] {
        store.lease(&request(c, "10.42.1.0/24")).await.expect("v4");
    }
    for c in ["c1", "c2"] {
        store
            .lease(&request(c, "fd00:42:1::/64"))
            .await
            .expect("v6");
    }
    let mut eth1 = request("c3", "10.42.1.0/24");
    eth1.ifname = "eth1".to_string();
    store.lease(&eth1).await.expect("second interface");

    let keep: BTreeSet<(String, String)> = [("c1", "eth0"), ("c3", "eth1"), ("gone", "eth0")]
        .into_iter()
        .map(|(c, i)| (c.to_string(), i.to_string()))
        .collect();
    let freed: Vec<(String, String, IpAddr)> = store
        .release_except(&keep)
        .await
        .expect("release_except")
        .into_iter()
        .map(|l| (l.container_id, l.ifname, l.address))
        .collect();
    let attachment = |c: &str, i: &str, a: &str| (c.to_string(), i.to_string(), ip(a));
    assert_eq!(
        freed,
        [
            attachment("c2", "eth0", "10.42.1.3"),
            attachment("c3", "eth0", "10.42.1.4"),
            attachment("c4", "eth0", "10.42.1.5"),
            attachment("c2", "eth0", "fd00:42:1::3"),
        ]
    );
    let left: BTreeSet<(String, String)> = store
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .map(|l| (l.container_id, l.ifname))
        .collect();
    let kept_and_present: BTreeSet<(String, String)> =
        keep.into_iter().filter(|(c, _)| c != "gone").collect();
    assert_eq!(left, kept_and_present);
    assert_eq!(
        store.usage().await.expect("usage"),
        [
            ("10.42.1.0/24".parse().expect("cidr"), 2),
            ("fd00:42:1::/64".parse().expect("cidr"), 1),
        ]
    );
    store.close().await;
}

fn mapping(host_port: u16, protocol: skein_cni::Protocol, host_ip: Option<&str>) -> PortMapping {
    PortMapping {
        host_port,
        container_port: 8080,
        protocol,
        host_ip: host_ip.map(ip),
    }
}

use skein_cni::{PortMapping, Protocol};

fn attach_request(container_id: &str, cidrs: &[&str], mappings: &[PortMapping]) -> AttachRequest {
    let base = request(container_id, cidrs[0]);
    AttachRequest {
        container_id: base.container_id,
        ifname: base.ifname,
        pod: base.pod,
        cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
        port_mappings: mappings.to_vec(),
    }
}

const DUAL: [&str; 2] = ["10.42.1.0/24", "fd00:42:1::/64"];

#[tokio::test]
async fn attach_leases_every_cidr_and_records_the_mappings_in_one_go() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let web = [
        mapping(80, Protocol::Tcp, None),
        mapping(53, Protocol::Udp, Some("198.18.0.11")),
    ];
    let leases = store
        .attach(&attach_request("c1", &DUAL, &web))
        .await
        .expect("attach");
    let addresses: Vec<IpAddr> = leases.iter().map(|l| l.address).collect();
    assert_eq!(addresses, [ip("10.42.1.2"), ip("fd00:42:1::2")]);
    assert_eq!(store.port_mappings_of("c1", "eth0").await.expect("of"), web);
    assert_eq!(store.lease_of("c1", "eth0").await.expect("of"), leases);

    // A repeated ADD gets its addresses back and the mappings it asks for now.
    let now = [mapping(8443, Protocol::Sctp, Some("fd00::11"))];
    let again = store
        .attach(&attach_request("c1", &DUAL, &now))
        .await
        .expect("again");
    assert_eq!(again, leases);
    assert_eq!(store.port_mappings_of("c1", "eth0").await.expect("of"), now);
    store.close().await;
}

#[tokio::test]
async fn a_refused_attach_leaves_nothing_behind_and_what_was_held_stays() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    // A /30 holds one pod address; the second attachment's IPv4 lease fails after its IPv6
    // one was taken in the same transaction.
    let small = ["fd00:42:1::/64", "10.42.9.0/30"];
    let held = [mapping(80, Protocol::Tcp, None)];
    let first = store
        .attach(&attach_request("c1", &small, &held))
        .await
        .expect("first");
    let err = store
        .attach(&attach_request(
            "c2",
            &small,
            &[mapping(81, Protocol::Tcp, None)],
        ))
        .await
        .expect_err("the /30 is full");
    assert!(matches!(err, StoreError::Ipam(_)), "{err}");
    assert_eq!(store.lease_of("c2", "eth0").await.expect("of"), []);
    assert_eq!(store.port_mappings_of("c2", "eth0").await.expect("of"), []);

    // The holder asking again from another CIDR is refused, and keeps its leases and mappings.
    let err = store
        .attach(&attach_request(
            "c1",
            &["fd00:42:1::/64", "10.43.0.0/24"],
            &[mapping(9000, Protocol::Udp, None)],
        ))
        .await
        .expect_err("another CIDR");
    assert!(matches!(err, StoreError::LeaseElsewhere { .. }), "{err}");
    let mut sorted = first.clone();
    sorted.sort_by_key(|l| (l.cidr, l.address));
    assert_eq!(store.lease_of("c1", "eth0").await.expect("of"), sorted);
    assert_eq!(
        store.port_mappings_of("c1", "eth0").await.expect("of"),
        held
    );
    assert_eq!(store.leases().await.expect("leases").len(), 2);
    store.close().await;
}

#[tokio::test]
async fn mappings_go_with_their_leases_on_release_and_garbage_collection() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    for c in ["c1", "c2", "c3"] {
        store
            .attach(&attach_request(
                c,
                &DUAL,
                &[mapping(80, Protocol::Tcp, None)],
            ))
            .await
            .expect("attach");
    }
    assert_eq!(store.release("c1", "eth0").await.expect("release").len(), 2);
    assert_eq!(store.port_mappings_of("c1", "eth0").await.expect("of"), []);

    let keep: BTreeSet<(String, String)> = [("c3".to_string(), "eth0".to_string())].into();
    let freed = store.release_except(&keep).await.expect("gc");
    assert_eq!(freed.len(), 2, "c2's two addresses");
    assert_eq!(store.port_mappings_of("c2", "eth0").await.expect("of"), []);
    assert_eq!(
        store.port_mappings_of("c3", "eth0").await.expect("of"),
        [mapping(80, Protocol::Tcp, None)]
    );
    let left: Vec<String> = store
        .host_ports()
        .await
        .expect("host ports")
        .into_iter()
        .map(|t| t.container_id)
        .collect();
    assert_eq!(left, ["c3", "c3"]);
    store.close().await;
}

#[tokio::test]
async fn host_ports_pair_each_mapping_with_its_addresses_of_the_right_family_first_come_first() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    store
        .attach(&attach_request(
            "late",
            &DUAL,
            &[
                mapping(80, Protocol::Tcp, None),
                mapping(443, Protocol::Tcp, Some("198.18.0.11")),
                mapping(443, Protocol::Tcp, Some("fd00::11")),
                mapping(53, Protocol::Udp, Some("0.0.0.0")),
            ],
        ))
        .await
        .expect("attach");
    store
        .attach(&attach_request(
            "v4only",
            &["10.42.1.0/24"],
            &[mapping(8080, Protocol::Tcp, Some("fd00::11"))],
        ))
        .await
        .expect("attach");
    let got: Vec<(String, String, u16, Option<IpAddr>, IpAddr)> = store
        .host_ports()
        .await
        .expect("host ports")
        .into_iter()
        .map(|t| {
            (
                t.container_id,
                t.pod.name,
                t.mapping.host_port,
                t.mapping.host_ip,
                t.address,
            )
        })
        .collect();
    let row = |c: &str, port, host_ip: Option<&str>, addr: &str| {
        (
            c.to_string(),
            format!("pod-{c}"),
            port,
            host_ip.map(ip),
            ip(addr),
        )
    };
    assert_eq!(
        got,
        [
            row("late", 80, None, "10.42.1.2"),
            row("late", 80, None, "fd00:42:1::2"),
            row("late", 443, Some("198.18.0.11"), "10.42.1.2"),
            row("late", 443, Some("fd00::11"), "fd00:42:1::2"),
            row("late", 53, Some("0.0.0.0"), "10.42.1.2"),
            // An IPv6 host IP for a pod without an IPv6 address forwards nothing.
        ]
    );

    // The order is the order of arrival, also across a reopen.
    store
        .attach(&attach_request(
            "early",
            &["10.42.1.0/24"],
            &[mapping(80, Protocol::Tcp, None)],
        ))
        .await
        .expect("attach");
    store.close().await;
    drop(store);
    let store = open_in(&tmp).await;
    let late = |mappings: &[PortMapping]| attach_request("late", &DUAL, mappings);
    let before = store.host_ports().await.expect("host ports");
    // An ADD repeated with the same mappings keeps their place...
    store
        .attach(&late(
            &store.port_mappings_of("late", "eth0").await.expect("of"),
        ))
        .await
        .expect("again");
    assert_eq!(store.host_ports().await.expect("host ports"), before);
    // ...one with others rewrites them: they now come after `early`'s.
    store
        .attach(&attach_request(
            "late",
            &DUAL,
            &[mapping(80, Protocol::Tcp, None)],
        ))
        .await
        .expect("again");
    let order: Vec<String> = store
        .host_ports()
        .await
        .expect("host ports")
        .into_iter()
        .map(|t| t.container_id)
        .collect();
    assert_eq!(order, ["early", "late", "late"]);
    store.close().await;
}

#[tokio::test]
async fn the_schema_refuses_a_mapping_it_could_not_read_back() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = open_in(&tmp).await;
    let insert = |port: i64, protocol: &str| {
        sqlx::query(
            "INSERT INTO port_mappings (container_id, ifname, host_port, container_port,
                                        protocol, host_ip)
             VALUES ('c1', 'eth0', ?, 80, ?, '')",
        )
        .bind(port)
        .bind(protocol.to_string())
        .execute(&store.pool)
    };
    insert(80, "tcp").await.expect("valid");
    for (port, protocol, why) in [
        (80, "tcp", "UNIQUE"),
        (0, "tcp", "CHECK"),
        (65536, "udp", "CHECK"),
        (81, "TCP", "CHECK"),
        (81, "icmp", "CHECK"),
    ] {
        let err = insert(port, protocol).await.expect_err("refused");
        assert!(err.to_string().contains(why), "{port}/{protocol}: {err}");
    }
    store.close().await;
}
