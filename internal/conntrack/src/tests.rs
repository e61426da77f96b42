//! Parsing and encoding against messages built byte by byte here, the filters' matches, and
//! how a dump's end, interruption and leftovers are read.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::message::{
    Header, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    error_payload, messages, request,
};
use crate::socket::{DumpReader, Fed};

// Built by hand, not with `AttrWriter`, so the two can disagree.
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

fn nest(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
    nla(kind | 0x8000, &parts.concat())
}

fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = ((16 + payload.len()) as u32).to_ne_bytes().to_vec();
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&4242u32.to_ne_bytes());
    out.extend_from_slice(payload);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A `CTA_TUPLE_*` nest as the kernel sends it.
fn tuple(kind: u16, proto: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let ips = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => vec![nla(1, &s.octets()), nla(2, &d.octets())],
        (IpAddr::V6(s), IpAddr::V6(d)) => vec![nla(3, &s.octets()), nla(4, &d.octets())],
        _ => unreachable!("one family"),
    };
    nest(
        kind,
        &[
            nest(1, &ips),
            nest(
                2,
                &[
                    nla(1, &[proto]),
                    nla(2, &src.port().to_be_bytes()),
                    nla(3, &dst.port().to_be_bytes()),
                ],
            ),
        ],
    )
}

/// The payload of a dump message: nfgenmsg, both tuples, and the attributes a real entry has
/// around them (status, timeout, mark, use, id).
fn entry_payload(family: u8, proto: u8, orig: (&str, &str), reply: (&str, &str)) -> Vec<u8> {
    [
        vec![family, 0, 0, 0],
        tuple(1, proto, sa(orig.0), sa(orig.1)),
        tuple(2, proto, sa(reply.0), sa(reply.1)),
        nla(3, &0x1a8u32.to_be_bytes()),
        nla(7, &30u32.to_be_bytes()),
        nla(8, &0u32.to_be_bytes()),
        nla(11, &1u32.to_be_bytes()),
        nla(12, &0xdead_beefu32.to_be_bytes()),
    ]
    .concat()
}

fn dnat_v4() -> Vec<u8> {
    entry_payload(
        2,
        17,
        ("10.42.1.5:40000", "10.43.0.10:53"),
        ("10.42.2.7:5353", "10.42.1.5:40000"),
    )
}

#[test]
fn a_dnated_ipv4_entry_parses_with_its_id() {
    let flow = parse_flow(&dnat_v4())
        .expect("parses")
        .expect("both tuples");
    assert_eq!(flow.family, 2);
    assert_eq!(flow.orig.src, ip("10.42.1.5"));
    assert_eq!(flow.orig.dst_port, Some(53));
    assert_eq!(flow.reply.src, ip("10.42.2.7"));
    assert_eq!(flow.id, Some(0xdead_beef));
    assert_eq!(flow.zone, None);
    let entry = UdpEntry::of(&flow).expect("udp");
    assert_eq!(
        entry,
        UdpEntry {
            orig_src: sa("10.42.1.5:40000"),
            orig_dst: sa("10.43.0.10:53"),
            reply_src: sa("10.42.2.7:5353"),
        }
    );
    assert!(entry.is_dnated());
}

#[test]
fn an_ipv6_entry_in_a_zone_parses() {
    let mut payload = entry_payload(
        10,
        17,
        ("[fd42::5]:40000", "[fd43::10]:53"),
        ("[fd43::10]:53", "[fd42::5]:40000"),
    );
    payload.extend(nla(18, &7u16.to_be_bytes()));
    let flow = parse_flow(&payload).expect("parses").expect("both tuples");
    assert_eq!(flow.family, 10);
    assert_eq!(flow.zone, Some(7));
    let entry = UdpEntry::of(&flow).expect("udp");
    assert_eq!(entry.orig_dst, sa("[fd43::10]:53"));
    assert!(!entry.is_dnated());
}

#[test]
fn other_protocols_are_no_udp_entries() {
    let tcp = entry_payload(
        2,
        6,
        ("10.42.1.5:40000", "10.43.0.10:53"),
        ("10.42.2.7:53", "10.42.1.5:40000"),
    );
    let flow = parse_flow(&tcp).expect("parses").expect("tuples");
    assert_eq!(UdpEntry::of(&flow), None);

    // ICMP: no ports, an id and type instead.
    let icmp_tuple = |kind, src: &str, dst: &str| {
        nest(
            kind,
            &[
                nest(
                    1,
                    &[
                        nla(1, &src.parse::<std::net::Ipv4Addr>().expect("v4").octets()),
                        nla(2, &dst.parse::<std::net::Ipv4Addr>().expect("v4").octets()),
                    ],
                ),
                nest(
                    2,
                    &[
                        nla(1, &[1]),
                        nla(4, &7u16.to_be_bytes()),
                        nla(5, &[8]),
                        nla(6, &[0]),
                    ],
                ),
            ],
        )
    };
    let icmp = [
        vec![2, 0, 0, 0],
        icmp_tuple(1, "10.0.0.1", "10.0.0.2"),
        icmp_tuple(2, "10.0.0.2", "10.0.0.1"),
    ]
    .concat();
    let flow = parse_flow(&icmp).expect("parses").expect("tuples");
    assert_eq!(flow.orig.src_port, None);
    assert_eq!(UdpEntry::of(&flow), None);
}

#[test]
fn an_entry_missing_a_tuple_is_skipped_not_an_error() {
    let payload = [
        vec![2, 0, 0, 0],
        tuple(1, 17, sa("10.0.0.1:1"), sa("10.0.0.2:2")),
    ]
    .concat();
    assert_eq!(parse_flow(&payload).expect("parses"), None);
}

#[test]
fn malformed_lengths_are_errors() {
    let mut payload = dnat_v4();
    // The first attribute (CTA_TUPLE_ORIG) now claims more than there is.
    payload[4..6].copy_from_slice(&4000u16.to_ne_bytes());
    assert!(matches!(
        parse_flow(&payload),
        Err(NetlinkError::Malformed(_))
    ));

    let mut datagram = nlmsg(0x100, 0, 1, &dnat_v4());
    datagram[0..4].copy_from_slice(&9000u32.to_ne_bytes());
    let all: Vec<_> = messages(&datagram).collect();
    assert_eq!(all.len(), 1);
    assert!(matches!(all[0], Err(NetlinkError::Malformed(_))));

    // A port of three bytes.
    let bad = [
        vec![2, 0, 0, 0],
        nest(1, &[nest(2, &[nla(2, &[0, 53, 0])])]),
    ]
    .concat();
    assert!(parse_flow(&bad).is_err());
}

#[test]
fn one_datagram_carries_several_messages() {
    let datagram = [
        nlmsg(0x100, 2, 9, &dnat_v4()),
        nlmsg(0x100, 2, 9, &dnat_v4()),
        nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()),
    ]
    .concat();
    let kinds: Vec<_> = messages(&datagram)
        .map(|m| m.expect("parses").0.kind)
        .collect();
    assert_eq!(kinds, [0x100, 0x100, NLMSG_DONE]);
}

#[test]
fn the_dump_request_is_a_bare_nfgenmsg() {
    let msg = request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, 77, 10, &[]);
    let mut want = 20u32.to_ne_bytes().to_vec();
    want.extend_from_slice(&0x0101u16.to_ne_bytes());
    want.extend_from_slice(&0x0301u16.to_ne_bytes());
    want.extend_from_slice(&77u32.to_ne_bytes());
    want.extend_from_slice(&0u32.to_ne_bytes());
    want.extend_from_slice(&[10, 0, 0, 0]);
    assert_eq!(msg, want);
}

#[test]
fn the_dump_asks_the_kernel_for_udp_only() {
    let want = [
        nest(1, &[nest(2, &[nla(1, &[17])])]),
        nest(25, &[nla(1, &(1u32 << 3).to_ne_bytes())]),
    ]
    .concat();
    assert_eq!(flow::udp_dump_filter(), want);
}

#[test]
fn a_delete_names_the_original_tuple_zone_and_id() {
    let mut flow = parse_flow(&dnat_v4()).expect("parses").expect("tuples");
    let want = [
        tuple(1, 17, sa("10.42.1.5:40000"), sa("10.43.0.10:53")),
        nla(12, &0xdead_beefu32.to_be_bytes()),
    ]
    .concat();
    assert_eq!(delete_attrs(&flow), want);

    flow.zone = Some(3);
    flow.id = None;
    let want = [
        tuple(1, 17, sa("10.42.1.5:40000"), sa("10.43.0.10:53")),
        nla(18, &3u16.to_be_bytes()),
    ]
    .concat();
    assert_eq!(delete_attrs(&flow), want);

    let msg = request(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, 5, 2, &want);
    assert_eq!(&msg[4..6], &0x0102u16.to_ne_bytes());
    assert_eq!(msg.len(), 20 + want.len());
}

#[test]
fn a_delete_of_an_ipv6_entry_round_trips() {
    let payload = entry_payload(
        10,
        17,
        ("[fd42::5]:40000", "[fd43::10]:53"),
        ("[fd42::9]:5353", "[fd42::5]:40000"),
    );
    let flow = parse_flow(&payload).expect("parses").expect("tuples");
    let attrs = delete_attrs(&flow);
    // The original tuple comes back as the kernel would read it, with the nested flag set.
    assert_eq!(
        u16::from_ne_bytes([attrs[2], attrs[3]]),
        1 | 0x8000,
        "CTA_TUPLE_ORIG, nested"
    );
    let reparsed = [
        vec![10, 0, 0, 0],
        attrs.clone(),
        tuple(2, 17, sa("[::1]:1"), sa("[::1]:2")),
    ]
    .concat();
    let back = parse_flow(&reparsed).expect("parses").expect("tuples");
    assert_eq!(back.orig, flow.orig);
    assert_eq!(back.id, flow.id);
}

#[test]
fn acknowledgements_and_refusals() {
    let header = |flags| Header {
        kind: NLMSG_ERROR,
        flags,
        seq: 1,
    };
    let echoed = &nlmsg(IPCTNL_MSG_CT_DELETE, 5, 1, &[])[..16];
    let ack = [0i32.to_ne_bytes().as_slice(), echoed].concat();
    assert!(error_payload(&header(0x100), &ack).is_ok());

    let enoent = [(-2i32).to_ne_bytes().as_slice(), echoed].concat();
    assert!(matches!(
        error_payload(&header(0x100), &enoent),
        Err(NetlinkError::Kernel {
            errno: 2,
            message: None
        })
    ));

    // Capped, with the extended-ack text.
    let with_text = [
        (-22i32).to_ne_bytes().as_slice(),
        echoed,
        &nla(1, b"missing tuple\0"),
    ]
    .concat();
    let err = error_payload(&header(0x100 | 0x200), &with_text).expect_err("refused");
    assert!(
        matches!(&err, NetlinkError::Kernel { errno: 22, message: Some(m) } if m == "missing tuple"),
        "{err:?}"
    );
    assert!(err.to_string().contains("(missing tuple)"), "{err}");
}

fn read_dump(datagrams: &[Vec<u8>]) -> Result<(Option<socket::Dumped>, usize), NetlinkError> {
    let mut reader = DumpReader::new(9);
    let mut seen = 0;
    for datagram in datagrams {
        let fed = reader.feed(datagram, &mut |_, payload| {
            seen += 1;
            parse_flow(payload).map(|_| ())
        })?;
        if let Fed::Ended(outcome) = fed {
            return Ok((Some(outcome?), seen));
        }
    }
    Ok((None, seen))
}

#[test]
fn a_dump_ends_at_done_and_skips_leftovers() {
    let (outcome, seen) = read_dump(&[
        [
            // An acknowledgement left over from an earlier request.
            nlmsg(NLMSG_ERROR, 0x100, 8, &[0; 20]),
            nlmsg(0x100, 2, 9, &dnat_v4()),
        ]
        .concat(),
        nlmsg(0x100, 2, 9, &dnat_v4()),
        nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()),
    ])
    .expect("reads");
    assert_eq!(outcome, Some(socket::Dumped::Complete));
    assert_eq!(seen, 2);

    let (outcome, _) = read_dump(&[nlmsg(0x100, 2, 9, &dnat_v4())]).expect("reads");
    assert_eq!(outcome, None, "no end yet");
}

#[test]
fn an_entry_that_does_not_parse_fails_the_dump_only_at_its_end() {
    let mut bad = dnat_v4();
    bad[4..6].copy_from_slice(&4000u16.to_ne_bytes());
    let mut reader = DumpReader::new(9);
    let mut visit = |_: &Header, payload: &[u8]| parse_flow(payload).map(|_| ());
    // The rest is still read, so the socket is left with nothing of this dump.
    let fed = reader
        .feed(&nlmsg(0x100, 2, 9, &bad), &mut visit)
        .expect("framing is fine");
    assert!(matches!(fed, Fed::More), "{fed:?}");
    let fed = reader
        .feed(
            &[
                nlmsg(0x100, 2, 9, &dnat_v4()),
                nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()),
            ]
            .concat(),
            &mut visit,
        )
        .expect("framing is fine");
    assert!(
        matches!(fed, Fed::Ended(Err(NetlinkError::Malformed(_)))),
        "{fed:?}"
    );
}

#[test]
fn an_interrupted_dump_is_asked_again() {
    // NLM_F_DUMP_INTR on any message, even when the dump then ends well.
    let (outcome, _) = read_dump(&[
        nlmsg(0x100, 2 | NLM_F_DUMP_INTR, 9, &dnat_v4()),
        nlmsg(NLMSG_DONE, 2, 9, &0i32.to_ne_bytes()),
    ])
    .expect("reads");
    assert_eq!(outcome, Some(socket::Dumped::Interrupted));

    // EINTR as the dump's error, in NLMSG_DONE or in NLMSG_ERROR.
    let (outcome, _) =
        read_dump(&[nlmsg(NLMSG_DONE, 2, 9, &(-4i32).to_ne_bytes())]).expect("reads");
    assert_eq!(outcome, Some(socket::Dumped::Interrupted));
    let eintr = [(-4i32).to_ne_bytes().to_vec(), vec![0; 16]].concat();
    let (outcome, _) = read_dump(&[nlmsg(NLMSG_ERROR, 0x100, 9, &eintr)]).expect("reads");
    assert_eq!(outcome, Some(socket::Dumped::Interrupted));

    // Any other error is one.
    let eperm = [(-1i32).to_ne_bytes().to_vec(), vec![0; 16]].concat();
    assert!(matches!(
        read_dump(&[nlmsg(NLMSG_ERROR, 0x100, 9, &eperm)]),
        Err(NetlinkError::Kernel { errno: 1, .. })
    ));
}

fn entry(orig_src: &str, orig_dst: &str, reply_src: &str) -> UdpEntry {
    UdpEntry {
        orig_src: sa(orig_src),
        orig_dst: sa(orig_dst),
        reply_src: sa(reply_src),
    }
}

#[test]
fn the_filters_pick_what_they_say() {
    let to_dead = entry("10.42.1.5:40000", "10.43.0.10:53", "10.42.2.7:5353");
    let to_live = entry("10.42.1.5:40001", "10.43.0.10:53", "10.42.3.8:5353");
    let other_service = entry("10.42.1.5:40002", "10.43.0.11:53", "10.42.2.7:5353");
    let unnated = entry("10.42.1.5:40003", "10.43.0.10:53", "10.43.0.10:53");
    let nodeport = entry("198.18.0.9:40004", "198.18.0.2:30053", "10.42.2.7:5353");
    let nodeport_unnated = entry("198.18.0.9:40005", "198.18.0.3:30053", "198.18.0.3:30053");
    // DNATed to a host-network endpoint on the node's own address: same address, other port.
    let nodeport_host = entry("198.18.0.9:40006", "198.18.0.2:30053", "198.18.0.2:53");
    let all = [
        to_dead,
        to_live,
        other_service,
        unnated,
        nodeport,
        nodeport_unnated,
        nodeport_host,
    ];
    let picked = |filter: UdpFilter| -> Vec<UdpEntry> {
        all.iter().copied().filter(|e| filter.matches(e)).collect()
    };
    assert_eq!(
        picked(UdpFilter::Nat {
            dst: sa("10.43.0.10:53"),
            endpoint: ip("10.42.2.7")
        }),
        [to_dead]
    );
    assert_eq!(
        picked(UdpFilter::PortNat {
            port: 30053,
            endpoint: ip("10.42.2.7")
        }),
        [nodeport]
    );
    assert_eq!(
        picked(UdpFilter::Unnated {
            dst: sa("10.43.0.10:53")
        }),
        [unnated]
    );
    assert_eq!(
        picked(UdpFilter::PortUnnated { port: 30053 }),
        [nodeport_unnated]
    );
    assert_eq!(
        picked(UdpFilter::Nat {
            dst: sa("[fd43::10]:53"),
            endpoint: ip("10.42.2.7")
        }),
        []
    );
}

#[test]
fn only_the_families_concerned_are_dumped() {
    let v4 = UdpFilter::Unnated {
        dst: sa("10.43.0.10:53"),
    };
    let v6 = UdpFilter::PortNat {
        port: 30053,
        endpoint: ip("fd42::7"),
    };
    assert_eq!(families(&[v4]), [Family::Ipv4]);
    assert_eq!(families(&[v6]), [Family::Ipv6]);
    assert_eq!(families(&[v6, v4]), [Family::Ipv4, Family::Ipv6]);
    assert_eq!(
        families(&[UdpFilter::PortUnnated { port: 53 }]),
        [Family::Ipv4, Family::Ipv6]
    );
    assert_eq!(families(&[]), []);
}

#[test]
fn errors_say_what_was_being_done() {
    let err = ConntrackError::Delete {
        entry: entry("10.42.1.5:53", "10.43.0.10:53", "10.42.2.7:5353").to_string(),
        source: NetlinkError::Kernel {
            errno: 1,
            message: None,
        },
    };
    assert_eq!(
        err.to_string(),
        "deleting the entry 10.42.1.5:53 -> 10.43.0.10:53 (answered by 10.42.2.7:5353): \
         the kernel answered Operation not permitted (os error 1)"
    );
    let err = ConntrackError::List {
        family: Family::Ipv6,
        source: NetlinkError::Interrupted { attempts: 5 },
    };
    assert_eq!(
        err.to_string(),
        "listing UDP conntrack entries (IPv6): the dump was interrupted 5 times in a row while \
         the table changed"
    );
}
