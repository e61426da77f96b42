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

/// One connection, opened and reset; whether it completed.
fn connect(target: SocketAddr) -> anyhow::Result<bool> {
    match TcpStream::connect(target) {
        Ok(stream) => {
            socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
            drop(stream);
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Opens connections to `target` one after another for `duration`; prints connections/s.
pub fn rate(target: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut failed = 0u64;
    while started.elapsed() < duration {
        if connect(target)? {
            done += 1;
        } else {
            failed += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"connections\":{done},\"failed\":{failed},\"seconds\":{secs:.3},\"per_second\":{:.1}}}",
        done as f64 / secs
    );
    Ok(())
}

/// Connections to `targets` in turn, one to each, for `duration`: the rate of each over the
/// time its own connections took. Interleaved one connection at a time, whatever drifts on
/// the machine (frequency, a neighbour's load) falls on every target alike, so their ratio
/// holds where runs seconds apart differ by 10 %.
pub fn rate_interleaved(targets: &[SocketAddr], duration: Duration) -> anyhow::Result<()> {
    let mut done = vec![0u64; targets.len()];
    let mut failed = vec![0u64; targets.len()];
    let mut spent = vec![Duration::ZERO; targets.len()];
    let started = Instant::now();
    while started.elapsed() < duration {
        for (i, target) in targets.iter().enumerate() {
            let t = Instant::now();
            let ok = connect(*target)?;
            spent[i] += t.elapsed();
            if ok {
                done[i] += 1;
            } else {
                failed[i] += 1;
            }
        }
    }
    let rows: Vec<String> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let secs = spent[i].as_secs_f64();
            format!(
                "{{\"target\":\"{t}\",\"connections\":{},\"failed\":{},\"seconds\":{secs:.3},\"per_second\":{:.1}}}",
                done[i],
                failed[i],
                done[i] as f64 / secs.max(1e-9)
            )
        })
        .collect();
    println!("[{}]", rows.join(","));
    Ok(())
}
