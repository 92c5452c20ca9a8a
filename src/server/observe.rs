//! `GET /metrics` in the Prometheus text format, and the middleware that counts and times every request
//! by its route template (never by its raw path).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::app::App;
use crate::metrics::Snapshot;

/// `GET /metrics`: the gauges read now (store, index, fills, source health), then every metric.
pub async fn metrics(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let a = app.clone();
    let (index, usage) =
        tokio::task::spawn_blocking(move || a.index.stats().map(|s| (s, a.budget.usage(&a))))
            .await??;
    let oci = app.sources.oci();
    let mut health: Vec<_> = app
        .sources
        .all()
        .iter()
        .map(|u| (u.url(), u.health().snapshot()))
        .collect();
    let oci_index = oci.map(|o| {
        health.push((o.id(), o.health()));
        let state = o.state();
        (o.id(), state.entries, state.last_success)
    });
    let snapshot = Snapshot {
        index,
        max_bytes: app.config.max_size,
        fills_in_flight: app.fills.in_flight(),
        health,
        oci_index,
        index_writable: app.index.writable().is_ok(),
        reserved_bytes: usage.reserved,
        fs_free_bytes: usage.fs_free,
    };
    let body = app
        .metrics
        .render(&snapshot)
        .map_err(|e| ApiError::Internal(format!("encoding metrics: {e}")))?;
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus::TEXT_FORMAT),
    );
    Ok(response)
}

/// Counts the request and the time to its response headers (a NAR's body streams on afterwards).
pub async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    app.metrics.http_request(
        &route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// The route template; the narinfo route, which axum can only match as `/{file}`, under its real shape.
fn route_label(matched: Option<&MatchedPath>) -> Cow<'static, str> {
    match matched.map(MatchedPath::as_str) {
        None => Cow::Borrowed("unmatched"),
        Some("/{file}") => Cow::Borrowed("/{hash}.narinfo"),
        Some(template) => Cow::Owned(template.to_string()),
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        _ => "other",
    }
}
