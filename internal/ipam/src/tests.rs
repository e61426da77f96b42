//! Allocation tests: the layout of pod CIDRs of every size that matters, the cursor's
//! round-robin and wraparound, and what exhaustion says.

use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| ip(a)).collect()
}

/// A pod CIDR's gateway, first and last pod address; `None` when it is too small for pods.
type Layout = Option<(&'static str, &'static str, &'static str)>;

#[test]
fn layout_of_pod_cidrs() {
    // (cidr, layout, capacity)
    let table: &[(&str, Layout, u128)] = &[
        (
            "10.42.1.0/24",
            Some(("10.42.1.1", "10.42.1.2", "10.42.1.254")),
            253,
        ),
        // Host bits in the CIDR do not move the layout.
        (
            "10.42.1.77/24",
            Some(("10.42.1.1", "10.42.1.2", "10.42.1.254")),
            253,
        ),
        (
            "10.42.1.64/26",
            Some(("10.42.1.65", "10.42.1.66", "10.42.1.126")),
            61,
        ),
        (
            "10.42.1.4/30",
            Some(("10.42.1.5", "10.42.1.6", "10.42.1.6")),
            1,
        ),
        ("10.42.1.4/31", None, 0),
        ("10.42.1.7/32", None, 0),
        ("255.255.255.255/32", None, 0),
        (
            "0.0.0.0/0",
            Some(("0.0.0.1", "0.0.0.2", "255.255.255.254")),
            (1 << 32) - 3,
        ),
        (
            "fd00:42:1::/64",
            Some((
                "fd00:42:1::1",
                "fd00:42:1::2",
                "fd00:42:1::ffff:ffff:ffff:ffff",
            )),
            (1 << 64) - 2,
        ),
        (
            "fd00:42::/120",
            Some(("fd00:42::1", "fd00:42::2", "fd00:42::ff")),
            254,
        ),
        (
            "fd00:42::/126",
            Some(("fd00:42::1", "fd00:42::2", "fd00:42::3")),
            2,
        ),
        ("fd00:42::/127", None, 0),
        ("fd00:42::1/128", None, 0),
        (
            "::/0",
            Some(("::1", "::2", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            u128::MAX - 1,
        ),
    ];
    for &(cidr, layout, want_capacity) in table {
        let cidr = net(cidr);
        assert_eq!(capacity(cidr), want_capacity, "capacity of {cidr}");
        match layout {
            Some((gw, first, last)) => {
                assert_eq!(gateway(cidr), Ok(ip(gw)), "gateway of {cidr}");
                assert_eq!(usable(cidr).next(), Some(ip(first)), "first of {cidr}");
                assert_eq!(
                    next_free(cidr, &BTreeSet::new(), None),
                    Ok(ip(first)),
                    "next_free of empty {cidr}"
                );
                // The cursor on the last pod address wraps round to the first.
                assert_eq!(
                    next_free(cidr, &BTreeSet::new(), Some(ip(last))),
                    Ok(ip(first)),
                    "wrap in {cidr}"
                );
                if want_capacity < 1024 {
                    let all: Vec<IpAddr> = usable(cidr).collect();
                    assert_eq!(all.len() as u128, want_capacity, "usable of {cidr}");
                    assert_eq!(all.last(), Some(&ip(last)), "last of {cidr}");
                }
            }
            None => {
                let too_small = Err(IpamError::TooSmall { cidr: cidr.trunc() });
                assert_eq!(gateway(cidr), too_small, "gateway of {cidr}");
                assert_eq!(usable(cidr).next(), None, "usable of {cidr}");
                assert_eq!(
                    next_free(cidr, &BTreeSet::new(), None),
                    too_small,
                    "next_free of {cidr}"
                );
            }
        }
    }
}

#[test]
fn usable_never_yields_network_gateway_or_broadcast() {
    for (cidr, reserved) in [
        (
            "10.42.1.0/29",
            ["10.42.1.0", "10.42.1.1", "10.42.1.7"].as_slice(),
        ),
        ("10.42.1.0/24", &["10.42.1.0", "10.42.1.1", "10.42.1.255"]),
        ("fd00:42::/120", &["fd00:42::", "fd00:42::1"]),
    ] {
        let all: BTreeSet<IpAddr> = usable(net(cidr)).collect();
        for r in reserved {
            assert!(!all.contains(&ip(r)), "{cidr} yields {r}");
        }
        assert!(all.iter().all(|a| net(cidr).contains(a)), "{cidr}");
    }
    let all: Vec<IpAddr> = usable(net("10.42.1.0/29")).collect();
    let want: Vec<IpAddr> = (2..=6).map(|h| ip(&format!("10.42.1.{h}"))).collect();
    assert_eq!(all, want);
}

#[test]
fn next_free_after_a_cursor() {
    // (cidr, used, after, expected)
    let table: &[(&str, &[&str], Option<&str>, &str)] = &[
        ("10.42.1.0/24", &[], Some("10.42.1.2"), "10.42.1.3"),
        (
            "10.42.1.0/24",
            &["10.42.1.2", "10.42.1.3"],
            None,
            "10.42.1.4",
        ),
        (
            "10.42.1.0/24",
            &["10.42.1.11", "10.42.1.12"],
            Some("10.42.1.10"),
            "10.42.1.13",
        ),
        // Wraparound past the last pod address, skipping what is taken at the bottom.
        (
            "10.42.1.0/24",
            &["10.42.1.2"],
            Some("10.42.1.254"),
            "10.42.1.3",
        ),
        (
            "10.42.1.0/24",
            &["10.42.1.254"],
            Some("10.42.1.253"),
            "10.42.1.2",
        ),
        // A cursor that is no pod address of the CIDR starts from the bottom.
        ("10.42.1.0/24", &[], Some("10.42.1.1"), "10.42.1.2"),
        ("10.42.1.0/24", &[], Some("10.42.1.255"), "10.42.1.2"),
        ("10.42.1.0/24", &[], Some("10.43.0.9"), "10.42.1.2"),
        ("10.42.1.0/24", &[], Some("fd00::9"), "10.42.1.2"),
        // Used addresses of other CIDRs and families do not count.
        (
            "10.42.1.4/30",
            &["10.42.1.2", "10.42.1.10", "fd00::6"],
            None,
            "10.42.1.6",
        ),
        (
            "fd00:42:1::/64",
            &["fd00:42:1::2", "fd00:42:1::3"],
            None,
            "fd00:42:1::4",
        ),
        ("fd00:42:1::/64", &[], Some("fd00:42:1::5"), "fd00:42:1::6"),
        (
            "fd00:42:1::/64",
            &["fd00:42:1::2"],
            Some("fd00:42:1::ffff:ffff:ffff:ffff"),
            "fd00:42:1::3",
        ),
        ("fd00:42::/120", &[], Some("fd00:42::90"), "fd00:42::91"),
    ];
    for &(cidr, used, after, want) in table {
        assert_eq!(
            next_free(net(cidr), &set(used), after.map(ip)),
            Ok(ip(want)),
            "{cidr} used {used:?} after {after:?}"
        );
    }

    // The one free address of a /120, found by wrapping from a cursor above it.
    let mut nearly_full: BTreeSet<IpAddr> = usable(net("fd00:42::/120")).collect();
    nearly_full.remove(&ip("fd00:42::80"));
    assert_eq!(
        next_free(net("fd00:42::/120"), &nearly_full, Some(ip("fd00:42::90"))),
        Ok(ip("fd00:42::80"))
    );
}

#[test]
fn a_released_address_comes_back_last() {
    let cidr = net("10.42.1.0/29");
    let mut used = BTreeSet::new();
    let mut cursor = None;
    let mut take = |used: &mut BTreeSet<IpAddr>| {
        let addr = next_free(cidr, used, cursor).expect("free");
        used.insert(addr);
        cursor = Some(addr);
        addr
    };
    let first: Vec<IpAddr> = (0..3).map(|_| take(&mut used)).collect();
    assert_eq!(first, [ip("10.42.1.2"), ip("10.42.1.3"), ip("10.42.1.4")]);
    used.remove(&ip("10.42.1.3"));
    assert_eq!(
        take(&mut used),
        ip("10.42.1.5"),
        "not the one just released"
    );
    assert_eq!(take(&mut used), ip("10.42.1.6"));
    assert_eq!(take(&mut used), ip("10.42.1.3"), "after the wrap");
    assert_eq!(
        next_free(cidr, &used, cursor),
        Err(IpamError::Exhausted { cidr, usable: 5 })
    );
}

#[test]
fn exhaustion_names_the_cidr_and_its_size() {
    for (cidr, want) in [
        (
            "10.42.1.0/24",
            "no free address left in 10.42.1.0/24 (253 usable, all leased)",
        ),
        (
            "10.42.1.4/30",
            "no free address left in 10.42.1.4/30 (1 usable, all leased)",
        ),
        (
            "fd00:42::/120",
            "no free address left in fd00:42::/120 (254 usable, all leased)",
        ),
    ] {
        let cidr = net(cidr);
        let full: BTreeSet<IpAddr> = usable(cidr).collect();
        for after in [
            None,
            full.iter().next().copied(),
            full.iter().last().copied(),
        ] {
            let err = next_free(cidr, &full, after).expect_err("full");
            assert_eq!(err.to_string(), want);
        }
    }
}

#[test]
fn a_cidr_too_small_for_pods_says_so() {
    for cidr in [
        "10.42.1.4/31",
        "10.42.1.7/32",
        "fd00:42::/127",
        "fd00:42::1/128",
    ] {
        let err = next_free(net(cidr), &BTreeSet::new(), None).expect_err("too small");
        let msg = err.to_string();
        assert!(msg.starts_with(&net(cidr).trunc().to_string()), "{msg}");
        assert!(msg.contains("no room for pods"), "{msg}");
    }
}

#[test]
fn families() {
    assert_eq!(Family::of(net("10.42.1.0/24")), Family::V4);
    assert_eq!(Family::of(net("fd00:42:1::/64")), Family::V6);
}
