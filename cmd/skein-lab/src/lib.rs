//! What the lab shares with its end-to-end tests, kept once for both: waiting for a condition
//! with a deadline, running a program inside one of the lab's network namespaces, and reading a
//! node's status page, and skipping a test that cannot run here. Std and JSON only, so the tests link it without the lab's machinery.

pub mod netns;
pub mod page;
pub mod skip;
pub mod wait;

/// A loopback TCP port nobody listens on right now, for a listener some process binds a little
/// later. It is chosen below the kernel's ephemeral range, which the outgoing connections of
/// everything else on the machine draw their local ports from (one of them could take an
/// ephemeral port in between, and the bind would fail), from a start that differs per process
/// and per call, so labs set up side by side do not pick the same one.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 20_000;
    if ephemeral_start < FIRST + 1000 {
        // No room below the range: let the kernel choose.
        return Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port());
    }
    let count = ephemeral_start - FIRST;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(nanos);
    for _ in 0..count {
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + seed.wrapping_add(n.wrapping_mul(7)) % count;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port from {FIRST} to {ephemeral_start}"),
    ))
}
