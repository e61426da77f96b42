//! What runs in a lab pod, in the spirit of Kubernetes' agnhost: a server that answers on the
//! pod's container ports with the pod's name and the source address it sees (TCP: that line,
//! then an echo of whatever arrives; UDP: that line; HTTP: the name as the body), and a probe
//! that reports whether a target answers within a timeout, and what it said. The source address
//! is how tests see masquerading.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Serves until killed.
pub async fn serve(
    name: String,
    tcp: Vec<u16>,
    udp: Vec<u16>,
    http: Vec<u16>,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for port in tcp {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("tcp port {port}"))?;
        let name = name.clone();
        tasks.spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(echo(conn, format!("{name} {}", peer.ip())));
            }
        });
    }
    for port in udp {
        let socket = UdpSocket::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("udp port {port}"))?;
        let name = name.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((_, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = format!("{name} {}", peer.ip());
                let _ = socket.send_to(reply.as_bytes(), peer).await;
            }
        });
    }
    for port in http {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("http port {port}"))?;
        let name = name.clone();
        tasks.spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { continue };
                let name = name.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
                    let body = format!("{name}\n");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
    }
    if tasks.is_empty() {
        bail!("no ports to serve");
    }
    eprintln!("workload {name} serving");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn echo(mut conn: TcpStream, greeting: String) {
    if conn
        .write_all(format!("{greeting}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let (mut r, mut w) = conn.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// Sends a numbered line every `every` over one connection and times the echoes. The
/// connection must survive: a reset or close is an error, as it would be for an application.
/// Stops after `duration`, or once `stop_file` exists when given.
pub async fn echo_stream(
    target: SocketAddr,
    every: Duration,
    duration: Duration,
    stop_file: Option<std::path::PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::AsyncBufReadExt;
    let conn = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target))
        .await
        .with_context(|| format!("connecting to {target}"))??;
    conn.set_nodelay(true)?;
    let (read, mut write) = conn.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let greeting = lines.next_line().await?.unwrap_or_default();
    let started = std::time::Instant::now();
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: u64 = 0;
        loop {
            tick.tick().await;
            let done = match &stop_file {
                Some(f) => f.exists(),
                None => started.elapsed() >= duration,
            };
            if done {
                // The write half goes back with the count: dropping it here would close our
                // side, and the server's close could look like a broken stream.
                return Ok::<_, std::io::Error>((sent, write));
            }
            write.write_all(format!("{sent}\n").as_bytes()).await?;
            sent += 1;
        }
    });
    let mut received: u64 = 0;
    let mut last = std::time::Instant::now();
    let mut max_gap = Duration::ZERO;
    let mut out_of_order = 0u64;
    let mut sender = sender;
    // Once the sender is done: how many it sent, its write half (kept open), and how long the
    // last echoes, still on their way, may take.
    let mut finished = None;
    let sent = loop {
        if let Some((sent, _, deadline)) = &finished
            && (received >= *sent || std::time::Instant::now() >= *deadline)
        {
            break *sent;
        }
        let next = tokio::time::timeout(Duration::from_millis(100), lines.next_line()).await;
        match next {
            Ok(Ok(Some(line))) => {
                let now = std::time::Instant::now();
                max_gap = max_gap.max(now - last);
                last = now;
                if line.trim().parse::<u64>().ok() != Some(received) {
                    out_of_order += 1;
                }
                received += 1;
            }
            Ok(Ok(None)) => bail!("{target} closed the connection after {received} echoes"),
            Ok(Err(e)) => bail!("{target}: {e} after {received} echoes"),
            Err(_) => {}
        }
        if finished.is_none() && sender.is_finished() {
            let (sent, write) = (&mut sender).await??;
            finished = Some((
                sent,
                write,
                std::time::Instant::now() + Duration::from_secs(1),
            ));
        }
    };
    Ok(serde_json::json!({
        "greeting": greeting,
        "sent": sent,
        "received": received,
        "out_of_order": out_of_order,
        "max_gap_ms": max_gap.as_millis() as u64,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sends numbered datagrams to `target`: traffic in one direction only, which is what
/// exercises WireGuard's keepalive and rekey timers differently from a conversation.
pub async fn udp_send(
    target: SocketAddr,
    every: Duration,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()?;
    let socket = UdpSocket::bind(bind).await?;
    let started = std::time::Instant::now();
    let started_ms = unix_ms();
    let mut tick = tokio::time::interval(every);
    let mut sent: u64 = 0;
    let mut errors: u64 = 0;
    while started.elapsed() < duration {
        tick.tick().await;
        // A send can fail while a route is briefly missing; that is loss, not the end.
        if socket
            .send_to(sent.to_string().as_bytes(), target)
            .await
            .is_err()
        {
            errors += 1;
        }
        sent += 1;
    }
    Ok(serde_json::json!({
        "sent": sent,
        "send_errors": errors,
        "started_ms": started_ms,
        "ended_ms": unix_ms(),
    }))
}

/// Logs every datagram arriving on `port` as "<unix ms> <payload>" lines in `out`.
pub async fn udp_sink(port: u16, out: std::path::PathBuf) -> anyhow::Result<()> {
    use std::io::Write as _;
    let socket = UdpSocket::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("udp port {port}"))?;
    let file = std::fs::File::create(&out).with_context(|| format!("{}", out.display()))?;
    let mut file = std::io::LineWriter::new(file);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        writeln!(file, "{} {}", unix_ms(), String::from_utf8_lossy(&buf[..n]))?;
    }
}

/// One probe: `Ok(answer)` when the target answered within `timeout`.
pub async fn probe(
    protocol: &str,
    target: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<String> {
    let attempt = async {
        match protocol {
            "tcp" => {
                let mut conn = TcpStream::connect(target).await?;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).await? == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                Ok(String::from_utf8_lossy(&line).into_owned())
            }
            "udp" => {
                let bind: SocketAddr = if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()?;
                let socket = UdpSocket::bind(bind).await?;
                socket.send_to(b"probe", target).await?;
                let mut buf = vec![0u8; 65536];
                let (n, _) = socket.recv_from(&mut buf).await?;
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            "http" => {
                let mut conn = TcpStream::connect(target).await?;
                conn.write_all(
                    format!("GET / HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await?;
                let mut text = String::new();
                conn.read_to_string(&mut text).await?;
                let body = text
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.trim().to_string())
                    .unwrap_or_default();
                Ok(body)
            }
            other => bail!("unknown protocol {other:?} (tcp, udp or http)"),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => bail!("no answer from {protocol} {target} within {timeout:?}"),
    }
}
