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

/// How a probe connects.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub timeout: Duration,
    /// The client's own port (TCP: bound with SO_REUSEADDR first; UDP: the socket's port), so
    /// that probes after one another are one flow as conntrack sees it.
    pub source_port: Option<u16>,
    /// HTTP(S): the request's path.
    pub path: String,
    /// HTTPS: the CA certificate (PEM) the server's certificate must chain to; the server's
    /// name is the target's address.
    pub ca: Option<std::path::PathBuf>,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            source_port: None,
            path: "/".into(),
            ca: None,
        }
    }
}

/// What one probe found: the answer (TCP: the first line; UDP: the datagram; HTTP(S): the
/// body), an HTTP status, or why there was none, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub answer: Option<String>,
    /// Where the answer came from (UDP: the datagram's source; else the target).
    pub from: Option<SocketAddr>,
    pub status: Option<u16>,
    /// `refused`, `reset`, `timeout`, `unreachable` or `other`, with the error's text.
    pub error: Option<(&'static str, String)>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.answer.is_some(),
            "answer": self.answer,
            "from": self.from.map(|a| a.to_string()),
            "status": self.status,
            "error_kind": self.error.as_ref().map(|(k, _)| *k),
            "error": self.error.as_ref().map(|(_, e)| e),
            "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
        })
    }
}

/// The kind of a probe's failure, from the I/O error underneath it.
fn error_kind(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    "reset"
                }
                std::io::ErrorKind::TimedOut => "timeout",
                std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                    "unreachable"
                }
                _ => "other",
            };
        }
    }
    "other"
}

async fn tcp_connect(target: SocketAddr, source_port: Option<u16>) -> std::io::Result<TcpStream> {
    let Some(port) = source_port else {
        return TcpStream::connect(target).await;
    };
    let socket = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    let bind: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    };
    socket.bind(bind)?;
    socket.connect(target).await
}

/// A UDP socket on `source_port` (any when `None`) of `target`'s family.
async fn udp_bind(target: SocketAddr, source_port: Option<u16>) -> anyhow::Result<UdpSocket> {
    let port = source_port.unwrap_or(0);
    let bind: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    };
    UdpSocket::bind(bind)
        .await
        .with_context(|| format!("binding udp {bind}"))
}

/// A UDP socket on `source_port` (any when `None`), connected to `target`, as a long-lived UDP
/// client's is: only `target`'s answers arrive, and the kernel reports an ICMP refusal to it.
async fn udp_socket(target: SocketAddr, source_port: Option<u16>) -> anyhow::Result<UdpSocket> {
    let socket = udp_bind(target, source_port).await?;
    socket.connect(target).await?;
    Ok(socket)
}

/// `GET path` over `conn`: (status, body).
async fn http_get<S>(mut conn: S, host: &str, path: &str) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    // A TLS server may end without close_notify; what arrived is the answer.
    if let Err(e) = conn.read_to_end(&mut raw).await
        && raw.is_empty()
    {
        return Err(e.into());
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {head:?}"))?;
    Ok((status, body.trim().to_string()))
}

fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.with_context(|| format!("a certificate in {}", ca.display()))?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// One probe: what the target answered within the timeout, or why it did not.
pub async fn probe(protocol: &str, target: SocketAddr, options: &ProbeOptions) -> Outcome {
    let started = std::time::Instant::now();
    let attempt = async {
        match protocol {
            "tcp" => {
                let mut conn = tcp_connect(target, options.source_port).await?;
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).await? == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                Ok((String::from_utf8_lossy(&line).into_owned(), target, None))
            }
            "udp" => {
                // Not connected: a server bound to a wildcard address (a workload on a node)
                // may answer from another of its addresses, and that is still its answer.
                // IP_RECVERR makes the kernel report an ICMP refusal to it all the same.
                let socket = udp_bind(target, options.source_port).await?;
                if target.is_ipv4() {
                    nix::sys::socket::setsockopt(
                        &socket,
                        nix::sys::socket::sockopt::Ipv4RecvErr,
                        &true,
                    )?;
                } else {
                    nix::sys::socket::setsockopt(
                        &socket,
                        nix::sys::socket::sockopt::Ipv6RecvErr,
                        &true,
                    )?;
                }
                socket.send_to(b"probe", target).await?;
                let mut buf = vec![0u8; 65536];
                let (n, from) = socket.recv_from(&mut buf).await?;
                Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from, None))
            }
            "http" => {
                let conn = tcp_connect(target, options.source_port).await?;
                let (status, body) = http_get(conn, &target.to_string(), &options.path).await?;
                Ok((body, target, Some(status)))
            }
            "https" => {
                let ca = options
                    .ca
                    .as_deref()
                    .context("https needs --ca, the CA certificate the server's chains to")?;
                let connector = tls_connector(ca)?;
                let conn = tcp_connect(target, options.source_port).await?;
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::IpAddress(target.ip().into());
                let tls = connector.connect(name, conn).await?;
                let (status, body) = http_get(tls, &target.to_string(), &options.path).await?;
                Ok((body, target, Some(status)))
            }
            other => bail!("unknown protocol {other:?} (tcp, udp, http or https)"),
        }
    };
    let result: anyhow::Result<(String, SocketAddr, Option<u16>)> =
        match tokio::time::timeout(options.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(anyhow::Error::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer from {protocol} {target} within {:?}",
                    options.timeout
                ),
            ))),
        };
    let elapsed = started.elapsed();
    match result {
        Ok((answer, from, status)) => Outcome {
            answer: Some(answer),
            from: Some(from),
            status,
            error: None,
            elapsed,
        },
        Err(e) => Outcome {
            answer: None,
            from: None,
            status: None,
            error: Some((error_kind(&e), format!("{protocol} {target}: {e:#}"))),
            elapsed,
        },
    }
}

/// A UDP flow: one socket on `source_port`, a numbered datagram to `target` every `every`,
/// each answer printed as it comes as "<unix ms> <answer>" (an error as "<unix ms> ! <error>"),
/// until `duration` has passed or, when given, `stop_file` exists. Every datagram has the same
/// 5-tuple: to conntrack this is one flow, as a long-lived UDP client's is.
pub async fn udp_flow(
    target: SocketAddr,
    source_port: u16,
    every: Duration,
    duration: Duration,
    stop_file: Option<std::path::PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    use std::io::Write as _;
    let socket = std::sync::Arc::new(udp_socket(target, Some(source_port)).await?);
    let started = std::time::Instant::now();
    let receiver = {
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let line = match socket.recv(&mut buf).await {
                    Ok(n) => format!("{} {}", unix_ms(), String::from_utf8_lossy(&buf[..n])),
                    Err(e) => format!("{} ! {e}", unix_ms()),
                };
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        })
    };
    let mut tick = tokio::time::interval(every);
    let mut sent: u64 = 0;
    loop {
        tick.tick().await;
        let done = match &stop_file {
            Some(f) => f.exists(),
            None => started.elapsed() >= duration,
        };
        if done {
            break;
        }
        // An ICMP error from an earlier datagram can surface here; the flow goes on.
        let _ = socket.send(sent.to_string().as_bytes()).await;
        sent += 1;
    }
    // Answers still on their way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    receiver.abort();
    Ok(serde_json::json!({ "sent": sent, "seconds": started.elapsed().as_secs_f64() }))
}
