//! `skein-lab dns-stub`: the upstream DNS server of a test, inside the lab (never a resolver of
//! the machine). It answers `A` for any name under `example.test` with an address made from
//! the name (`192.0.2.x`, x the name's length), NXDOMAIN with the zone's SOA for `missing.` names
//! under it and REFUSED for anything else but `. NS` (the forwarder's health check), and writes
//! each question it gets to its log, one `name TYPE` line each, so a test can count what
//! reached it.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;

use anyhow::Context;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub const ZONE: &str = "example.test.";

pub fn run(listen: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let zone = Name::from_ascii(ZONE)?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, peer) = socket.recv_from(&mut buf)?;
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(q) = query.queries.first().cloned() else {
            continue;
        };
        writeln!(log, "{} {}", q.name, q.query_type)?;
        log.flush()?;
        let mut answer = Message::new(
            query.metadata.id,
            MessageType::Response,
            query.metadata.op_code,
        );
        answer.metadata.recursion_desired = query.metadata.recursion_desired;
        answer.metadata.recursion_available = true;
        answer.add_query(q.clone());
        let name = q.name.to_lowercase();
        if name.is_root() && q.query_type == RecordType::NS {
            // The health check: an answer is all it needs.
        } else if !zone.zone_of(&name) {
            answer.metadata.response_code = ResponseCode::Refused;
        } else if name.iter().next() == Some(b"missing".as_slice()) {
            answer.metadata.response_code = ResponseCode::NXDomain;
            answer.add_authority(Record::from_rdata(
                zone.clone(),
                30,
                RData::SOA(SOA::new(
                    zone.clone(),
                    zone.clone(),
                    1,
                    3600,
                    600,
                    86400,
                    30,
                )),
            ));
        } else if q.query_type == RecordType::A {
            let last = u8::try_from(name.to_ascii().len()).unwrap_or(255);
            answer.add_answer(Record::from_rdata(
                q.name.clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
            ));
        }
        if let Ok(bytes) = answer.to_vec() {
            let _ = socket.send_to(&bytes, peer);
        }
    }
}
