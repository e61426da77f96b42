//! Connection setup rate: a server that accepts and closes, and a client that opens one TCP
//! connection after another for a fixed time, each closed at once with a reset (no TIME_WAIT,
//! so the source ports never run out), and prints how many it completed per second.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Accepts and drops connections until killed. The accept queue is long (4096, with
/// `net.core.somaxconn` raised in the server's namespace): the client's connections complete in
/// the kernel whether or not this process got the CPU yet, so a late accept never turns into a
/// dropped SYN and a retransmission a second later.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket
        .bind(&listen.into())
        .with_context(|| format!("listening on {listen}"))?;
    socket.listen(4096)?;
    let listener: TcpListener = socket.into();
    loop {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(e) => eprintln!("accept: {e}"),
        }
    }
}

/// Opens connections to `target` one after another for `duration`; prints connections/s.
pub fn rate(target: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut failed = 0u64;
    while started.elapsed() < duration {
        match TcpStream::connect(target) {
            Ok(stream) => {
                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
                drop(stream);
                done += 1;
            }
            Err(_) => failed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"connections\":{done},\"failed\":{failed},\"seconds\":{secs:.3},\"per_second\":{:.1}}}",
        done as f64 / secs
    );
    Ok(())
}
