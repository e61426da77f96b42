//! Against the kernel: real UDP traffic through an nft DNAT rule, the entries it leaves, their
//! deletion, and what a client's next datagram does with and without it. Each test runs on a
//! thread that unshared a network namespace of its own, so nothing leaves it and nothing on
//! the host is touched. `nft` and `ip` build the fixture; the crate itself uses neither.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use skein_conntrack::{Conntrack, UdpEntry};
use skein_lab::skip::{require, require_root};

/// Runs `body` on a thread in a fresh network namespace laid out by [`lay_out`].
fn in_private_netns(what: &str, body: impl FnOnce() + Send + 'static) {
    if !require_root(what) {
        return;
    }
    let tools = ["nft", "ip"].iter().all(|tool| {
        Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !require(tools, &format!("{what} needs nft and ip")) {
        return;
    }
    let thread = std::thread::spawn(move || {
        // Only this thread moves; the processes it starts are born in its namespace.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        lay_out();
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f - <<{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Endpoints, a client and node addresses on `lo`; the Service ranges routed out of a veth
/// (a route via `lo` would make IPv6 a reject route), so datagrams that no rule DNATs still
/// leave an entry and go nowhere. The test's own table: an empty output DNAT chain, and a rule that needs
/// conntrack, which a namespace only runs once a rule asks for it.
fn lay_out() {
    run("ip", &["link", "set", "lo", "up"]);
    for addr in [
        "10.99.0.1/32",
        "10.99.0.2/32",
        "10.99.0.5/32",
        "10.99.0.6/32",
        "10.99.0.10/32",
    ] {
        run("ip", &["addr", "add", addr, "dev", "lo"]);
    }
    for addr in ["fd99::1/128", "fd99::2/128", "fd99::10/128"] {
        run("ip", &["-6", "addr", "add", addr, "dev", "lo", "nodad"]);
    }
    run(
        "ip",
        &[
            "link", "add", "svc0", "type", "veth", "peer", "name", "svc1",
        ],
    );
    run("ip", &["link", "set", "svc0", "up"]);
    run("ip", &["link", "set", "svc1", "up"]);
    // Through a gateway with a permanent neighbour entry: no address resolution holds
    // datagrams back (and with them the sender).
    let mac = "02:00:00:00:00:01";
    run(
        "ip",
        &[
            "neigh",
            "add",
            "10.98.0.2",
            "lladdr",
            mac,
            "dev",
            "svc0",
            "nud",
            "permanent",
        ],
    );
    run(
        "ip",
        &[
            "route",
            "add",
            "10.43.0.0/16",
            "via",
            "10.98.0.2",
            "dev",
            "svc0",
            "onlink",
        ],
    );
    run(
        "ip",
        &[
            "-6",
            "neigh",
            "add",
            "fd98::2",
            "lladdr",
            mac,
            "dev",
            "svc0",
            "nud",
            "permanent",
        ],
    );
    run(
        "ip",
        &[
            "-6",
            "route",
            "add",
            "fd43::/64",
            "via",
            "fd98::2",
            "dev",
            "svc0",
            "onlink",
        ],
    );
    nft("table inet ct_test {
        chain out { type nat hook output priority -100; policy accept; }
        chain track { type filter hook output priority 0; policy accept; ct state new counter; }
    }");
}

/// The output DNAT chain holds exactly `rules`.
fn dnat(rules: &[&str]) {
    let mut script = String::from("flush chain inet ct_test out\n");
    for rule in rules {
        script.push_str(&format!("add rule inet ct_test out {rule}\n"));
    }
    nft(&script);
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn socket(addr: &str) -> UdpSocket {
    UdpSocket::bind(sa(addr)).unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

fn send(client: &UdpSocket, to: &str, text: &str) {
    client.send_to(text.as_bytes(), sa(to)).expect("send");
}

/// `text` arrives at `server` from `client`.
fn arrives(server: &UdpSocket, client: &UdpSocket, text: &str) {
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap_or_else(|e| {
        panic!(
            "{text:?} did not reach {}: {e}",
            server.local_addr().expect("addr")
        )
    });
    assert_eq!(&buf[..n], text.as_bytes());
    assert_eq!(
        from,
        client.local_addr().expect("addr"),
        "sent from the client, no SNAT"
    );
}

/// Nothing is waiting at `server` (what was sent went elsewhere).
fn nothing_at(server: &UdpSocket) {
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    if let Ok((n, from)) = server.recv_from(&mut buf) {
        panic!(
            "{:?} from {from} reached {}",
            String::from_utf8_lossy(&buf[..n]),
            server.local_addr().expect("addr")
        );
    }
}

fn entry(client: &UdpSocket, orig_dst: &str, reply_src: &str) -> UdpEntry {
    UdpEntry {
        orig_src: client.local_addr().expect("addr"),
        orig_dst: sa(orig_dst),
        reply_src: sa(reply_src),
    }
}

fn assert_entries(ct: &mut Conntrack, present: &[UdpEntry], absent: &[UdpEntry]) {
    let entries = ct.udp_entries().expect("udp_entries");
    for e in present {
        assert!(entries.contains(e), "{e} missing from {entries:?}");
    }
    for e in absent {
        assert!(!entries.contains(e), "{e} still in {entries:?}");
    }
}

/// The addresses of one Service-DNAT case, in either family.
struct Case {
    /// The Service address and the two endpoints behind it, one after the other.
    service: &'static str,
    old_endpoint: &'static str,
    new_endpoint: &'static str,
    /// Another Service DNATed to the old endpoint: its entries must stay.
    other_service: &'static str,
    client: &'static str,
    /// nft's word for the family: `ip` or `ip6`.
    l3: &'static str,
}

fn dnat_rule(case: &Case, service: &str, endpoint: &str) -> String {
    let to = sa(service);
    format!(
        "{l3} daddr {} udp dport {} dnat {l3} to {endpoint}",
        to.ip(),
        to.port(),
        l3 = case.l3
    )
}

/// A gone endpoint's entries are deleted, exactly those, and the client's next datagram then
/// reaches the new endpoint; before the deletion it still reached the old one.
fn endpoint_goes_away(case: Case) {
    let old = socket(case.old_endpoint);
    let new = socket(case.new_endpoint);
    dnat(&[
        &dnat_rule(&case, case.service, case.old_endpoint),
        &dnat_rule(&case, case.other_service, case.old_endpoint),
    ]);
    let client = socket(case.client);
    let bystander = socket(case.client);
    let direct = socket(case.client);
    send(&client, case.service, "one");
    arrives(&old, &client, "one");
    send(&bystander, case.other_service, "other service");
    arrives(&old, &bystander, "other service");
    send(&direct, case.old_endpoint, "not DNATed");
    arrives(&old, &direct, "not DNATed");

    let mut ct = Conntrack::new().expect("socket");
    let stale = entry(&client, case.service, case.old_endpoint);
    let unrelated = [
        entry(&bystander, case.other_service, case.old_endpoint),
        entry(&direct, case.old_endpoint, case.old_endpoint),
    ];
    assert_entries(&mut ct, &[stale], &[]);
    assert_entries(&mut ct, &unrelated, &[]);

    // The endpoint moves. Without a deletion the entry still sends the client to the old one.
    dnat(&[
        &dnat_rule(&case, case.service, case.new_endpoint),
        &dnat_rule(&case, case.other_service, case.old_endpoint),
    ]);
    send(&client, case.service, "two");
    arrives(&old, &client, "two");
    nothing_at(&new);

    let old_ip = sa(case.old_endpoint).ip();
    assert_eq!(
        ct.delete_udp_nat(sa(case.service), old_ip).expect("delete"),
        1
    );
    assert_entries(&mut ct, &unrelated, &[stale]);
    // Again: nothing left to delete, and no error.
    assert_eq!(
        ct.delete_udp_nat(sa(case.service), old_ip).expect("delete"),
        0
    );

    send(&client, case.service, "three");
    arrives(&new, &client, "three");
    nothing_at(&old);
    assert_entries(
        &mut ct,
        &[entry(&client, case.service, case.new_endpoint)],
        &[],
    );
}

#[test]
fn a_gone_endpoints_entries_are_deleted_ipv4() {
    in_private_netns("conntrack in a network namespace", || {
        endpoint_goes_away(Case {
            service: "10.43.0.99:53",
            old_endpoint: "10.99.0.1:5353",
            new_endpoint: "10.99.0.2:5353",
            other_service: "10.43.0.98:53",
            client: "10.99.0.10:0",
            l3: "ip",
        })
    });
}

#[test]
fn a_gone_endpoints_entries_are_deleted_ipv6() {
    in_private_netns("conntrack in a network namespace", || {
        endpoint_goes_away(Case {
            service: "[fd43::99]:53",
            old_endpoint: "[fd99::1]:5353",
            new_endpoint: "[fd99::2]:5353",
            other_service: "[fd43::98]:53",
            client: "[fd99::10]:0",
            l3: "ip6",
        })
    });
}

/// The NodePort form: port 30053 on any node address.
#[test]
fn a_gone_endpoints_nodeport_entries_are_deleted() {
    in_private_netns("conntrack in a network namespace", || {
        let old = socket("10.99.0.1:5353");
        let new = socket("10.99.0.2:5353");
        let nodeport =
            |endpoint: &str| format!("meta nfproto ipv4 udp dport 30053 dnat ip to {endpoint}");
        let cluster_ip = "ip daddr 10.43.0.99 udp dport 53 dnat ip to 10.99.0.1:5353";
        dnat(&[&nodeport("10.99.0.1:5353"), cluster_ip]);
        let (a, b, bystander) = (
            socket("10.99.0.10:0"),
            socket("10.99.0.10:0"),
            socket("10.99.0.10:0"),
        );
        send(&a, "10.99.0.5:30053", "a");
        arrives(&old, &a, "a");
        send(&b, "10.99.0.6:30053", "b");
        arrives(&old, &b, "b");
        send(&bystander, "10.43.0.99:53", "cluster IP");
        arrives(&old, &bystander, "cluster IP");

        let mut ct = Conntrack::new().expect("socket");
        let stale = [
            entry(&a, "10.99.0.5:30053", "10.99.0.1:5353"),
            entry(&b, "10.99.0.6:30053", "10.99.0.1:5353"),
        ];
        let unrelated = entry(&bystander, "10.43.0.99:53", "10.99.0.1:5353");
        assert_entries(&mut ct, &stale, &[]);

        dnat(&[&nodeport("10.99.0.2:5353"), cluster_ip]);
        send(&a, "10.99.0.5:30053", "control");
        arrives(&old, &a, "control");
        nothing_at(&new);

        assert_eq!(
            ct.delete_udp_port_nat(30053, ip("10.99.0.1"))
                .expect("delete"),
            2
        );
        assert_entries(&mut ct, &[unrelated], &stale);

        send(&a, "10.99.0.5:30053", "a again");
        arrives(&new, &a, "a again");
        send(&b, "10.99.0.6:30053", "b again");
        arrives(&new, &b, "b again");
        nothing_at(&old);
    });
}

/// Entries made while the Service had no endpoint (no DNAT rule: in skein they are rejected)
/// keep the client away from the first endpoint until deleted; DNATed ones stay.
#[test]
fn entries_from_before_the_first_endpoint_are_deleted() {
    in_private_netns("conntrack in a network namespace", || {
        let endpoint = socket("10.99.0.1:5353");
        let early = socket("10.99.0.10:0");
        let elsewhere = socket("10.99.0.10:0");
        send(&early, "10.43.0.99:53", "no endpoint yet");
        send(
            &elsewhere,
            "10.43.0.98:53",
            "another Service, no endpoint either",
        );
        nothing_at(&endpoint);

        let mut ct = Conntrack::new().expect("socket");
        let stale = entry(&early, "10.43.0.99:53", "10.43.0.99:53");
        let other = entry(&elsewhere, "10.43.0.98:53", "10.43.0.98:53");
        assert_entries(&mut ct, &[stale, other], &[]);

        dnat(&["ip daddr 10.43.0.99 udp dport 53 dnat ip to 10.99.0.1:5353"]);
        let late = socket("10.99.0.10:0");
        send(&late, "10.43.0.99:53", "late");
        arrives(&endpoint, &late, "late");
        // The control: the early client's entry still says "not DNATed".
        send(&early, "10.43.0.99:53", "still nowhere");
        nothing_at(&endpoint);

        let dnated = entry(&late, "10.43.0.99:53", "10.99.0.1:5353");
        assert_eq!(
            ct.delete_udp_unnated(sa("10.43.0.99:53")).expect("delete"),
            1
        );
        assert_entries(&mut ct, &[dnated, other], &[stale]);

        send(&early, "10.43.0.99:53", "now");
        arrives(&endpoint, &early, "now");
    });
}

/// The NodePort form: port 30053 on any node address, before it had an endpoint.
#[test]
fn nodeport_entries_from_before_the_first_endpoint_are_deleted() {
    in_private_netns("conntrack in a network namespace", || {
        let endpoint = socket("10.99.0.1:5353");
        let (a, b, elsewhere) = (
            socket("10.99.0.10:0"),
            socket("10.99.0.10:0"),
            socket("10.99.0.10:0"),
        );
        send(&a, "10.99.0.5:30053", "a");
        send(&b, "10.99.0.6:30053", "b");
        send(&elsewhere, "10.99.0.5:30054", "another NodePort");
        nothing_at(&endpoint);

        let mut ct = Conntrack::new().expect("socket");
        let stale = [
            entry(&a, "10.99.0.5:30053", "10.99.0.5:30053"),
            entry(&b, "10.99.0.6:30053", "10.99.0.6:30053"),
        ];
        let other = entry(&elsewhere, "10.99.0.5:30054", "10.99.0.5:30054");
        assert_entries(&mut ct, &stale, &[]);

        dnat(&["meta nfproto ipv4 udp dport 30053 dnat ip to 10.99.0.1:5353"]);
        let late = socket("10.99.0.10:0");
        send(&late, "10.99.0.5:30053", "late");
        arrives(&endpoint, &late, "late");
        send(&a, "10.99.0.5:30053", "control");
        nothing_at(&endpoint);

        let dnated = entry(&late, "10.99.0.5:30053", "10.99.0.1:5353");
        assert_eq!(ct.delete_udp_port_unnated(30053).expect("delete"), 2);
        assert_entries(&mut ct, &[dnated, other], &stale);

        send(&a, "10.99.0.5:30053", "a now");
        arrives(&endpoint, &a, "a now");
        send(&b, "10.99.0.6:30053", "b now");
        arrives(&endpoint, &b, "b now");
    });
}

/// An entry in a conntrack zone other than the default is deleted too: the delete names its
/// zone, without which the kernel would look in zone 0. Two entries with one tuple, one per
/// zone, make the difference visible.
#[test]
fn entries_in_another_zone_are_deleted() {
    in_private_netns("conntrack in a network namespace", || {
        let endpoint = socket("10.99.0.1:5353");
        dnat(&["ip daddr 10.43.0.99 udp dport 53 dnat ip to 10.99.0.1:5353"]);
        let client = socket("10.99.0.10:0");
        send(&client, "10.43.0.99:53", "zone 0");
        arrives(&endpoint, &client, "zone 0");
        nft("table inet ct_test {
            chain zone { type filter hook output priority -300; policy accept; ip daddr 10.43.0.99 ct zone set 7; }
        }");
        send(&client, "10.43.0.99:53", "zone 7");
        arrives(&endpoint, &client, "zone 7");

        let mut ct = Conntrack::new().expect("socket");
        let stale = entry(&client, "10.43.0.99:53", "10.99.0.1:5353");
        let count = |ct: &mut Conntrack| {
            let entries = ct.udp_entries().expect("udp_entries");
            entries.iter().filter(|e| **e == stale).count()
        };
        assert_eq!(count(&mut ct), 2, "one entry per zone");
        assert_eq!(
            ct.delete_udp_nat(sa("10.43.0.99:53"), ip("10.99.0.1"))
                .expect("delete"),
            2
        );
        assert_eq!(count(&mut ct), 0);
    });
}

/// A table too big for one datagram is read whole, and one call deletes along many filters.
#[test]
fn a_large_table_is_read_whole_and_deleted_in_one_pass() {
    const SERVICES: u16 = 3000;
    in_private_netns("conntrack in a network namespace", || {
        let client = socket("10.99.0.10:0");
        let services: Vec<SocketAddr> = (1..=SERVICES)
            .map(|port| SocketAddr::new(ip("10.43.1.1"), port))
            .collect();
        for service in &services {
            client.send_to(b"x", service).expect("send");
        }
        let keep = socket("10.99.0.10:0");
        send(&keep, "10.43.1.2:53", "not asked about");

        let mut ct = Conntrack::new().expect("socket");
        let entries = ct.udp_entries().expect("udp_entries");
        let ours = |entries: &[UdpEntry]| {
            entries
                .iter()
                .filter(|e| e.orig_src == client.local_addr().expect("addr"))
                .count()
        };
        assert_eq!(ours(&entries), usize::from(SERVICES));

        let filters: Vec<_> = services
            .iter()
            .map(|&dst| skein_conntrack::UdpFilter::Unnated { dst })
            .collect();
        assert_eq!(
            ct.delete_udp(&filters).expect("delete"),
            usize::from(SERVICES)
        );
        let entries = ct.udp_entries().expect("udp_entries");
        assert_eq!(ours(&entries), 0);
        assert!(entries.contains(&entry(&keep, "10.43.1.2:53", "10.43.1.2:53")));
    });
}
