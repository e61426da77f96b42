//! What the lab shares with its end-to-end tests, kept once for both: waiting for a condition
//! with a deadline, running a program inside one of the lab's network namespaces, and reading a
//! node's status page, and skipping a test that cannot run here. Std and JSON only, so the tests link it without the lab's machinery.

pub mod netns;
pub mod page;
pub mod skip;
pub mod wait;

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
