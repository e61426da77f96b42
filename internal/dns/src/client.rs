//! One question to a DNS server, for `skein dns query` (people debugging a pod's lookups):
//! over UDP, again over TCP when the answer is truncated.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

/// Asks `server` for `name`'s records of `rtype`; the answer, and whether it came over TCP.
pub fn query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> Result<(Message, bool), String> {
    let qname =
        Name::from_ascii(name).map_err(|e| format!("{name:?} is not a domain name: {e}"))?;
    let mut m = Message::query();
    m.metadata.id = std::process::id() as u16;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, rtype));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    m.set_edns(edns);
    let bytes = m.to_vec().map_err(|e| e.to_string())?;
    let fail = |what: &str, e: std::io::Error| format!("{what} {server}: {e}");
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .expect("address");
    let socket = UdpSocket::bind(bind).map_err(|e| fail("binding a socket for", e))?;
    socket
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail("a timeout for", e))?;
    socket
        .send_to(&bytes, server)
        .map_err(|e| fail("sending to", e))?;
    let mut buf = vec![0u8; 65535];
    let answer = loop {
        let (n, from) = socket.recv_from(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no answer from {server} within {timeout:?}")
            }
            _ => fail("reading from", e),
        })?;
        if from != server {
            continue;
        }
        let answer = Message::from_vec(&buf[..n])
            .map_err(|e| format!("{server} sent a malformed answer: {e}"))?;
        if answer.metadata.id == m.metadata.id {
            break answer;
        }
    };
    if !answer.metadata.truncation {
        return Ok((answer, false));
    }
    let mut stream =
        TcpStream::connect_timeout(&server, timeout).map_err(|e| fail("connecting to", e))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| fail("a timeout for", e))?;
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend(&bytes);
    stream
        .write_all(&framed)
        .map_err(|e| fail("writing to", e))?;
    let mut len = [0u8; 2];
    stream
        .read_exact(&mut len)
        .map_err(|e| fail("reading from", e))?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream
        .read_exact(&mut buf)
        .map_err(|e| fail("reading from", e))?;
    let answer = Message::from_vec(&buf)
        .map_err(|e| format!("{server} sent a malformed answer over TCP: {e}"))?;
    Ok((answer, true))
}

/// The answer as people read it: the status, then each section's records as zone-file lines.
pub fn describe(m: &Message, tcp: bool) -> String {
    let mut out = format!(
        "status: {}{}{}\n",
        m.metadata.response_code,
        if m.metadata.authoritative {
            ", authoritative"
        } else {
            ""
        },
        if tcp {
            ", over TCP (the UDP answer was truncated)"
        } else {
            ""
        }
    );
    for (title, records) in [
        ("answer", &m.answers),
        ("authority", &m.authorities),
        ("additional", &m.additionals),
    ] {
        if records.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}:\n"));
        for r in records {
            out.push_str(&format!(
                "  {} {} {} {}\n",
                r.name,
                r.ttl,
                r.record_type(),
                r.data
            ));
        }
    }
    out
}
