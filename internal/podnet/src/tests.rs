//! Pure helpers: derived interface names and the bridge address.

use super::*;

#[test]
fn host_ifnames_are_stable_unique_and_short() {
    let a = host_ifname("0123456789abcdef0123456789abcdef", "eth0");
    assert_eq!(
        a,
        host_ifname("0123456789abcdef0123456789abcdef", "eth0"),
        "stable"
    );
    assert_ne!(
        a,
        host_ifname("0123456789abcdef0123456789abcdef", "eth1"),
        "per interface"
    );
    assert_ne!(
        a,
        host_ifname("0123456789abcdef0123456789abcdee", "eth0"),
        "per container"
    );
    // The container/interface boundary is part of the key: ("ab", "c") is not ("a", "bc").
    assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    assert!(a.len() <= 15 && a.starts_with(HOST_IFNAME_PREFIX), "{a}");
}

#[test]
fn the_bridge_holds_the_gateway_with_the_cidr_prefix() {
    let cidr: IpNet = "10.42.1.0/24".parse().expect("cidr");
    let gw: IpAddr = "10.42.1.1".parse().expect("ip");
    assert_eq!(bridge_address(cidr, gw).to_string(), "10.42.1.1/24");
}
