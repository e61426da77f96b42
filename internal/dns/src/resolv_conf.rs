//! The default upstreams: the nameservers of the node's resolv.conf. A loopback nameserver
//! (systemd-resolved's 127.0.0.53 stub, a local dnsmasq) is skipped: forwarding to it from the
//! node's namespace would loop back through whatever it forwards to, or reach nothing from a
//! pod's point of view; with systemd-resolved its own list of real servers
//! (/run/systemd/resolve/resolv.conf) is read instead, as kubelet and CoreDNS do.

use std::net::{IpAddr, SocketAddr};

pub const RESOLV_CONF: &str = "/etc/resolv.conf";
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// The nameservers of a resolv.conf text, port 53, loopback ones left out; and whether any
/// was left out.
pub fn nameservers(text: &str) -> (Vec<SocketAddr>, bool) {
    let mut found = Vec::new();
    let mut skipped = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // An IPv6 address may carry a zone (`fe80::1%eth0`), which a socket address cannot.
        let Some(ip) = words
            .next()
            .and_then(|w| w.split('%').next())
            .and_then(|w| w.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if ip.is_loopback() {
            skipped = true;
            continue;
        }
        let addr = SocketAddr::new(ip, 53);
        if !found.contains(&addr) {
            found.push(addr);
        }
    }
    (found, skipped)
}

/// The node's upstreams and the file they came from.
pub fn system_upstreams() -> Result<(Vec<SocketAddr>, &'static str), String> {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    let (servers, skipped) = nameservers(&read(RESOLV_CONF)?);
    if !servers.is_empty() {
        return Ok((servers, RESOLV_CONF));
    }
    if skipped && let Ok(text) = read(SYSTEMD_RESOLV_CONF) {
        let (servers, _) = nameservers(&text);
        if !servers.is_empty() {
            return Ok((servers, SYSTEMD_RESOLV_CONF));
        }
    }
    Err(format!(
        "{RESOLV_CONF} names no nameserver skein can forward to{}; set dns.upstreams",
        if skipped {
            " (only loopback ones, which would loop)"
        } else {
            ""
        }
    ))
}
