//! TCP forwarding from the host's loopback into the lab's namespaces, so the host (a browser,
//! kubectl, the tests) reaches the API server and each node's status page without the host
//! joining the underlay or getting a route to it.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::mpsc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

type Request = (
    SocketAddr,
    tokio::sync::oneshot::Sender<std::io::Result<std::net::TcpStream>>,
);

/// Opens connections from inside one network namespace: a thread that entered it once and makes
/// every socket there (a socket stays in the namespace it was made in).
#[derive(Debug, Clone)]
pub struct Dialer {
    requests: mpsc::Sender<Request>,
}

impl Dialer {
    pub fn new(netns: &str) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("dial-{netns}"))
            .spawn(move || {
                let entered = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                let _ = ready_tx.send(entered.map_err(|e| e.to_string()));
                if entered.is_err() {
                    return;
                }
                for (addr, reply) in rx {
                    let conn = std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_secs(5),
                    );
                    let _ = reply.send(conn);
                }
            })?;
        ready_rx
            .recv()
            .context("dialer thread died")?
            .map_err(|e| anyhow::anyhow!("entering {netns}: {e}"))?;
        Ok(Self { requests: tx })
    }

    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .send((addr, tx))
            .map_err(|_| std::io::Error::other("dialer thread is gone"))?;
        let conn = rx
            .await
            .map_err(|_| std::io::Error::other("dialer thread is gone"))??;
        conn.set_nonblocking(true)?;
        TcpStream::from_std(conn)
    }
}

/// Accepts on `listener` (on the host) and splices each connection to `target` in the dialer's
/// namespace, until the process ends.
pub async fn forward(listener: TcpListener, dialer: Dialer, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            match dialer.connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!("forward to {target}: {e}"),
            }
        });
    }
}
