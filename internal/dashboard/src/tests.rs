//! The routes, exercised over a real loopback socket.

use super::*;
use skein_status::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get_raw(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = String::new();
    conn.read_to_string(&mut buf).await.expect("read");
    let (head, body) = buf.split_once("\r\n\r\n").expect("http response");
    let code = head
        .split_whitespace()
        .nth(1)
        .expect("status")
        .parse()
        .expect("code");
    (code, head.to_lowercase(), body.to_string())
}

async fn start(board: StatusBoard) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    start_with(board, Metrics::new()).await
}

async fn start_with(
    board: StatusBoard,
    metrics: Metrics,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, board, metrics, async move {
        let _ = rx.await;
    }));
    (addr, tx)
}

fn board() -> StatusBoard {
    StatusBoard::new(Identity {
        node: "edge-7".into(),
        version: "1.2.3".into(),
        config_path: "/etc/skein/config.toml".into(),
        state_path: "/var/lib/skein/state.db".into(),
    })
}

#[tokio::test]
async fn status_api_reports_the_board() {
    let b = board();
    b.register("store", true).failed("disk on fire");
    let (addr, _stop) = start(b).await;
    let (code, head, body) = get_raw(addr, "/api/v1/status").await;
    assert_eq!(code, 200);
    assert!(head.contains("application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["node"], "edge-7");
    assert_eq!(v["parts"][0]["state"], "failed");
    assert_eq!(v["parts"][0]["last_error"], "disk on fire");
}

#[tokio::test]
async fn readyz_follows_readiness_and_healthz_always_answers() {
    let b = board();
    let (addr, _stop) = start(b.clone()).await;
    assert_eq!(get_raw(addr, "/readyz").await.0, 503);
    assert_eq!(get_raw(addr, "/healthz").await.0, 200);
    b.set_ready(true);
    assert_eq!(get_raw(addr, "/readyz").await.0, 200);
}

#[tokio::test]
async fn page_and_its_assets_are_served_with_a_strict_policy() {
    let (addr, _stop) = start(board()).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let (code, head, body) = get_raw(addr, path).await;
        assert_eq!(code, 200, "{path}");
        assert!(head.contains(kind), "{path}: {head}");
        assert!(head.contains("content-security-policy"), "{path}: {head}");
        assert!(!body.is_empty(), "{path}");
    }
    assert_eq!(get_raw(addr, "/nope").await.0, 404);
}

#[derive(serde::Serialize)]
struct Peers {
    interface: String,
    peers: Vec<u32>,
}

impl skein_status::Section for Peers {
    const TITLE: &'static str = "Encrypted overlay";
    const LISTS: &'static [&'static str] = &["peers"];
    type Summary = usize;
    fn summary(&self) -> usize {
        self.peers.len()
    }
}

#[tokio::test]
async fn each_section_is_served_at_its_own_path_with_its_lists_paged() {
    let b = board();
    let peers = b.section::<Peers>("peers");
    let (addr, _stop) = start(b).await;
    let (code, _, body) = get_raw(addr, "/api/v1/peers").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "null"),
        "before the part reports"
    );
    peers.set(Peers {
        interface: "skein-wg".into(),
        peers: (0..7).collect(),
    });
    let (code, head, body) = get_raw(addr, "/api/v1/peers?offset=2&limit=3").await;
    assert_eq!(code, 200);
    assert!(head.contains("application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["interface"], "skein-wg");
    assert_eq!(v["peers"], serde_json::json!([2, 3, 4]));
    assert_eq!(v["page"]["totals"]["peers"], 7);
    let (_, _, body) = get_raw(addr, "/api/v1/status").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["sections"]["peers"]["summary"], 7);
    let (code, _, body) = get_raw(addr, "/api/v1/dns").await;
    assert_eq!(code, 404);
    assert!(
        body.contains("peers"),
        "names the sections there are: {body}"
    );
    assert_eq!(get_raw(addr, "/api/v1/peers?limit=many").await.0, 400);
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let b = board();
    let metrics = Metrics::new();
    b.register_metrics(&metrics);
    b.register("cni", true).ok("serving");
    let (addr, _stop) = start_with(b, metrics).await;
    let (code, head, body) = get_raw(addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("skein_part_up{part=\"cni\"} 1\n"), "{body}");
}
