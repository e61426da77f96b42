//! The health check servers of Services with `externalTrafficPolicy: Local`: one HTTP listener
//! per `healthCheckNodePort`, answering as kube-proxy's does, so a cloud load balancer sends
//! traffic only to nodes with a local endpoint: `200` when the node has one, `503` when it has
//! none, and a JSON body naming the Service and counting its local endpoints.

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use skein_cluster::ObjectKey;
use tokio_util::sync::CancellationToken;

use crate::Part;

/// What one health check port reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub service: ObjectKey,
    pub local_endpoints: usize,
}

/// The body kube-proxy's health check answers with.
pub fn body(h: &Health) -> serde_json::Value {
    serde_json::json!({
        "service": { "namespace": h.service.namespace(), "name": h.service.name() },
        "localEndpoints": h.local_endpoints,
        "serviceProxyHealthy": true,
    })
}

fn answer(h: &Health) -> Response {
    let status = if h.local_endpoints > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, body(h).to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

struct Server {
    health: Arc<RwLock<Health>>,
    stop: CancellationToken,
}

/// The running servers, by port.
#[derive(Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, Server>,
}

impl HealthServers {
    /// Starts, updates and stops servers so that exactly the ports of `want` answer; returns
    /// the ports that could not be bound, with why.
    pub fn update(&mut self, part: &Part, want: &BTreeMap<u16, Health>) -> Vec<String> {
        let gone: Vec<u16> = self
            .servers
            .keys()
            .filter(|p| !want.contains_key(p))
            .copied()
            .collect();
        for port in gone {
            if let Some(s) = self.servers.remove(&port) {
                s.stop.cancel();
            }
        }
        let mut problems = Vec::new();
        for (port, health) in want {
            if let Some(s) = self.servers.get(port) {
                *s.health.write().unwrap_or_else(|e| e.into_inner()) = health.clone();
                continue;
            }
            // One dual-stack socket answers IPv4 too (bindv6only is off by default); an
            // IPv4-only node falls back to 0.0.0.0.
            let listener =
                std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port)))
                    .or_else(|_| {
                        std::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], *port)))
                    })
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std);
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    problems.push(format!(
                        "{}: cannot listen on healthCheckNodePort {port}: {e}",
                        health.service
                    ));
                    continue;
                }
            };
            let shared = Arc::new(RwLock::new(health.clone()));
            let stop = part.cancel.child_token();
            let (state, until) = (shared.clone(), stop.clone());
            let app = axum::Router::new().fallback(move || {
                let state = state.clone();
                async move { answer(&state.read().unwrap_or_else(|e| e.into_inner())) }
            });
            part.spawn("health check server", async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(until.cancelled_owned())
                    .await
            });
            self.servers.insert(
                *port,
                Server {
                    health: shared,
                    stop,
                },
            );
        }
        problems
    }
}
