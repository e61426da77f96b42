//! The status page and its API: `/` (the page from `web/`, embedded at build time),
//! `/api/v1/status`, `/healthz`, `/readyz`.
//!
//! The page reads the status board, never the dataplane, and shows nothing secret.

use std::future::Future;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use skein_status::StatusBoard;

#[cfg(test)]
mod tests;

/// The page's files, embedded so the binary is all a node needs.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
];

/// The page only loads its own files and talks to its own API.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

pub fn router(board: StatusBoard) -> Router {
    let mut router = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/peers", get(peers))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    for (path, content_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router.with_state(board)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn status(State(board): State<StatusBoard>) -> Response {
    let mut response = Json(board.report()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The overlay alone: backend, public key and each peer; `null` before the overlay reports.
async fn peers(State(board): State<StatusBoard>) -> Response {
    let mut response = Json(board.report().overlay).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Ready once the daemon said so (store open, page listening); 503 with a reason before that.
async fn readyz(State(board): State<StatusBoard>) -> (StatusCode, &'static str) {
    if board.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

/// Serves until `shutdown` completes. The listener is bound by the caller, so a port in use is
/// reported at start, before readiness.
pub async fn serve(
    listener: tokio::net::TcpListener,
    board: StatusBoard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(board))
        .with_graceful_shutdown(shutdown)
        .await
}
