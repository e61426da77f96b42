//! The status page in a real headless Chromium: what a person sees, not just what the API says.
//! Once against a real `skein run`, once against a fixed API answer (a resolved and a present
//! error, peers up, idle and broken, a long paged list, a section the page has no layout for).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use serde_json::json;
use skein_e2e::{Sandbox, rendered_dom, require, which};

fn chromium() -> bool {
    require(
        which("chromium").is_some(),
        "Debian's chromium is not installed",
    )
}

#[test]
fn the_page_shows_the_node_name_each_parts_state_and_each_section() {
    if !chromium() {
        return;
    }
    let sb = Sandbox::new("page-node-1", "");
    let mut d = sb.start();
    d.wait_ready();
    let status = d.status();
    let dom = rendered_dom(&format!("http://{}/", sb.addr));

    assert!(
        dom.contains(r#"<span id="node">page-node-1</span>"#),
        "node name not rendered:\n{dom}"
    );
    assert!(
        dom.contains(r#"<dd id="ready">yes</dd>"#),
        "readiness not rendered:\n{dom}"
    );
    let parts = status["parts"].as_array().expect("parts");
    assert!(!parts.is_empty());
    for part in parts {
        let name = part["name"].as_str().expect("name");
        let state = part["state"].as_str().expect("state");
        // The part's card carries its name and a badge with its state.
        let card = dom
            .split(&format!(r#"data-part="{name}""#))
            .nth(1)
            .unwrap_or_else(|| panic!("no card for part {name}:\n{dom}"));
        let card = card.split("</li>").next().unwrap_or_default();
        assert!(
            card.contains(&format!(r#"<span class="part-name">{name}</span>"#)),
            "{card}"
        );
        // A part may move on from starting (to ok, or degraded: the overlay without a WireGuard
        // device) between the API call and the page's own fetch.
        let moved_on = ["ok", "degraded", "failed"]
            .iter()
            .any(|s| card.contains(&format!(r#"<span class="badge {s}">{s}</span>"#)));
        let badge_ok = card.contains(&format!(r#"<span class="badge {state}">{state}</span>"#))
            || (state == "starting" && moved_on);
        assert!(badge_ok, "part {name} should show state {state}: {card}");
    }
    // Every section a part registered is on the page under its title.
    let sections = status["sections"].as_object().expect("sections");
    assert!(
        sections.contains_key("peers"),
        "the overlay registers its section at start: {status}"
    );
    for (name, section) in sections {
        let title = section["title"].as_str().expect("title");
        let html = dom
            .split(&format!(r#"data-section="{name}""#))
            .nth(1)
            .unwrap_or_else(|| panic!("no section {name}:\n{dom}"));
        assert!(
            html.contains(&format!(r#"<h2 id="{name}-h">{title}</h2>"#)),
            "section {name} lacks its title {title:?}: {html}"
        );
    }
    assert!(
        !dom.contains("Waiting for the daemon"),
        "the page never rendered the status:\n{dom}"
    );
}

/// A fixed answer for each API path the page asks for.
fn fixture() -> Vec<(&'static str, serde_json::Value)> {
    let now = 1_800_000_000u64;
    let peer = |node: &str, state: &str, handshake: Option<u64>, tx: u64| {
        json!({
            "node": node, "public_key": format!("{node}-public-key"), "endpoint": "198.18.0.12:51820",
            "allowed_ips": ["10.42.1.0/24"], "latest_handshake_seconds": handshake,
            "rx_bytes": 2048, "tx_bytes": tx, "up": state == "up", "state": state
        })
    };
    let pods: Vec<_> = (0..50)
        .map(|i| {
            json!({"namespace": "default", "name": format!("web-{i}"), "address": format!("10.42.0.{}", i + 2),
                   "interface": "eth0", "container": "0123456789ab"})
        })
        .collect();
    let section = |title: &str, name: &str, summary: serde_json::Value| json!({"title": title, "href": format!("/api/v1/{name}"), "summary": summary, "updated_at": now});
    vec![
        (
            "/api/v1/status",
            json!({
                "node": "fixture-1", "version": "9.9.9", "config_path": "/etc/skein/config.toml",
                "state_path": "/var/lib/skein/state.db", "started_at": now - 600, "now": now,
                "uptime_seconds": 600, "ready": true, "overall": "degraded",
                "parts": [
                    {"name": "overlay", "state": "ok", "since": now - 175, "detail": "3 peers",
                     "last_error": "routes before the bridge has its address", "last_error_at": now - 180,
                     "last_error_resolved": true, "restarts": 0,
                     "last_repair": "route 10.42.2.0/24 via skein-wg added", "last_repair_at": now - 60,
                     "repairs": 2},
                    {"name": "store", "state": "degraded", "since": now - 20, "detail": "",
                     "last_error": "disk nearly full", "last_error_at": now - 20,
                     "last_error_resolved": false, "restarts": 0}
                ],
                "sections": {
                    "dns": section("Cluster DNS", "dns", json!({"zone": "cluster.local", "answers": 12})),
                    "ipam": section("Pods on this node", "ipam", json!({"cidrs": [], "pods": 120})),
                    "peers": section("Encrypted overlay", "peers", json!({"peers": 3}))
                }
            }),
        ),
        (
            "/api/v1/peers",
            json!({
                "interface": "skein-wg", "backend": "userspace", "backend_reason": "overlay.mode = userspace",
                "public_key": "fixture-public-key", "listen_port": 51820, "mtu": 1420,
                "peers": [peer("node-2", "up", Some(4), 9000), peer("node-3", "idle", None, 0),
                          peer("node-4", "broken", Some(400), 70000)],
                "skipped": [],
                "page": {"offset": 0, "limit": 50, "totals": {"peers": 3, "skipped": 0}}
            }),
        ),
        (
            "/api/v1/ipam",
            json!({
                "cidrs": [{"cidr": "10.42.0.0/24", "used": 120, "capacity": 253}],
                "pods": pods,
                "page": {"offset": 0, "limit": 50, "totals": {"pods": 120}}
            }),
        ),
        (
            "/api/v1/dns",
            json!({
                "zone": "cluster.local",
                "records": [{"name": "web.default.svc", "address": "10.43.0.10"}],
                "page": {"offset": 0, "limit": 50, "totals": {"records": 1}}
            }),
        ),
    ]
}

/// Serves the page's own files and the fixture on a loopback port until the test ends.
fn serve_fixture() -> std::net::SocketAddr {
    let web = concat!(env!("CARGO_MANIFEST_DIR"), "/../web");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answers = fixture();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut line = String::new();
            if BufReader::new(&conn).read_line(&mut line).is_err() {
                continue;
            }
            let target = line.split_whitespace().nth(1).unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/");
            let (kind, body) = match path {
                "/" => (
                    "text/html",
                    std::fs::read_to_string(format!("{web}/index.html")).ok(),
                ),
                "/app.js" => (
                    "text/javascript",
                    std::fs::read_to_string(format!("{web}/app.js")).ok(),
                ),
                "/style.css" => (
                    "text/css",
                    std::fs::read_to_string(format!("{web}/style.css")).ok(),
                ),
                p => (
                    "application/json",
                    answers
                        .iter()
                        .find(|(a, _)| *a == p)
                        .map(|(_, v)| v.to_string()),
                ),
            };
            let (code, body) = match body {
                Some(b) => ("200 OK", b),
                None => ("404 Not Found", String::new()),
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn row<'a>(dom: &'a str, attr: &str) -> &'a str {
    dom.split(attr)
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row {attr}:\n{dom}"))
}

#[test]
fn the_page_tells_past_errors_from_present_ones_idle_peers_from_broken_ones_and_names_repairs() {
    if !chromium() {
        return;
    }
    let addr = serve_fixture();
    let dom = rendered_dom(&format!("http://{addr}/"));
    assert!(
        dom.contains(r#"<span id="node">fixture-1</span>"#),
        "not rendered:\n{dom}"
    );

    // A resolved error is muted and says so; a present one is red.
    assert!(
        dom.contains(r#"<p class="error resolved">last error 3m 0s ago, resolved: routes before the bridge has its address</p>"#),
        "resolved error not shown as such:\n{dom}"
    );
    assert!(
        dom.contains(r#"<p class="error">last error (20s ago): disk nearly full</p>"#),
        "present error not shown as such:\n{dom}"
    );

    // A repair the part made: what and when, muted.
    assert!(
        dom.contains(r#"<p class="repair">repaired 1m 0s ago: route 10.42.2.0/24 via skein-wg added (2 repairs since start)</p>"#),
        "repair not shown:\n{dom}"
    );

    // Peers: up green, idle grey (not red), broken red.
    for (node, state) in [("node-2", "up"), ("node-3", "idle"), ("node-4", "broken")] {
        let tr = row(&dom, &format!(r#"data-peer="{node}""#));
        assert!(
            tr.contains(&format!(r#"<td class="peer-{state}""#))
                && tr.contains(&format!(">{state}</td>")),
            "peer {node} should be {state}: {tr}"
        );
    }
    assert!(!dom.contains(">no session<"), "the old red label: {dom}");

    // A list longer than a page: the first page and where it stands.
    assert!(dom.contains(r#"data-pod="default/web-49""#), "{dom}");
    assert!(
        dom.contains("<span>1–50 of 120 pods</span>"),
        "no pager for a paged list:\n{dom}"
    );

    // A section the page has no layout for: its summary and its lists, under its title.
    let dns = dom
        .split(r#"data-section="dns""#)
        .nth(1)
        .expect("dns section rendered");
    assert!(dns.contains(r#"<h2 id="dns-h">Cluster DNS</h2>"#), "{dns}");
    assert!(dns.contains("<dd>cluster.local</dd>"), "{dns}");
    assert!(dns.contains("<td>web.default.svc</td>"), "{dns}");
    // Known sections first, in the page's order; then the others.
    let at = |name: &str| dom.find(&format!(r#"data-section="{name}""#)).expect(name);
    assert!(
        at("peers") < at("ipam") && at("ipam") < at("dns"),
        "order:\n{dom}"
    );
}
