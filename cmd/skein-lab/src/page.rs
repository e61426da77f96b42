//! A node's status page as the lab and its tests read it: a plain HTTP/1.1 GET on loopback, the
//! `/api/v1/status` report, one part of it, and which parts keep a node from being ok.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// A minimal HTTP/1.1 GET: (status code, body). `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut buf = String::new();
    conn.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// The daemon's `/api/v1/status` at `addr`, when it answers 200 with JSON.
pub fn status(addr: SocketAddr) -> Option<Value> {
    match http_get(addr, "/api/v1/status")? {
        (200, body) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// One part's entry in a status report (`Null` when the part is not there).
pub fn part<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Whether the report's overall health is ok.
pub fn is_ok(status: &Value) -> bool {
    status["overall"] == "ok"
}

/// Why a node is not ok, one line per part that is neither ok nor disabled: its name, state,
/// what it is doing and its last error. Empty for a healthy report.
pub fn problems(status: &Value) -> Vec<String> {
    let parts = status["parts"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    parts
        .iter()
        .filter(|p| p["state"] != "ok" && p["state"] != "disabled")
        .map(|p| {
            let mut line = format!(
                "{} is {}",
                p["name"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("?")
            );
            if let Some(detail) = p["detail"].as_str().filter(|d| !d.is_empty()) {
                line.push_str(&format!(": {detail}"));
            }
            if let Some(error) = p["last_error"].as_str() {
                line.push_str(&format!(" (last error: {error})"));
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests;
