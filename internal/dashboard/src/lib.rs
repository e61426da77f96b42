//! The status page and its API: `/` (the page from `web/`, embedded at build time),
//! `/api/v1/status` (the overview: parts and each section's summary), `/api/v1/<section>` (a
//! section's details, lists paged by `?offset=&limit=`), `/metrics` (Prometheus text format),
//! `/healthz`, `/readyz`.
//!
//! The page reads the status board and the metrics registry, never the dataplane, and shows
//! nothing secret. It knows no section by name: whatever the parts registered is served.

use std::future::Future;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use skein_metrics::Metrics;
use skein_status::{Page, StatusBoard};

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

/// What the handlers read.
#[derive(Debug, Clone)]
struct Shared {
    board: StatusBoard,
    metrics: Metrics,
}

pub fn router(board: StatusBoard, metrics: Metrics) -> Router {
    let mut router = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/{section}", get(section))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    for (path, content_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router.with_state(Shared { board, metrics })
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

async fn status(State(shared): State<Shared>) -> Response {
    no_store(Json(shared.board.report()).into_response())
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// One section's details (`null` before its part first reports), 404 for a section no part
/// registered.
async fn section(
    State(shared): State<Shared>,
    Path(name): Path<String>,
    Query(page): Query<PageQuery>,
) -> Response {
    match shared
        .board
        .section_details(&name, Page::new(page.offset, page.limit))
    {
        Some(details) => no_store(Json(details).into_response()),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "no section {name:?}; this daemon has: {}\n",
                shared.board.section_names().join(", ")
            ),
        )
            .into_response(),
    }
}

async fn metrics_text(State(shared): State<Shared>) -> Response {
    match shared.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(skein_metrics::CONTENT_TYPE),
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Ready once the daemon said so (store open, page listening); 503 with a reason before that.
async fn readyz(State(shared): State<Shared>) -> (StatusCode, &'static str) {
    if shared.board.is_ready() {
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
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(board, metrics))
        .with_graceful_shutdown(shutdown)
        .await
}
