//! `GET /metrics` in the Prometheus text format, and the layer that counts and times every request by
//! its route template (never by its raw path).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};

use super::error::ApiError;
use crate::app::App;
use crate::metrics::{HttpMetrics, METHODS, Snapshot, method_index};

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

/// The `route` labels: every route template of [`super::router`] under its label, then `unmatched`
/// (the fallback), which is also where a template missing from this list is counted.
const ROUTES: [(&str, &str); 14] = [
    ("/", "/"),
    ("/metrics", "/metrics"),
    ("/nix-cache-info", "/nix-cache-info"),
    ("/healthz", "/healthz"),
    ("/_status", "/_status"),
    ("/public-key", "/public-key"),
    ("/_refresh", "/_refresh"),
    ("/_warm", "/_warm"),
    ("/_warm/{id}", "/_warm/{id}"),
    ("/_pins", "/_pins"),
    ("/_pins/{name}", "/_pins/{name}"),
    ("/nar/{name}", "/nar/{name}"),
    // axum can only match the narinfo route as `/{file}`: counted under its real shape.
    ("/{file}", "/{hash}.narinfo"),
    ("", UNMATCHED),
];
const UNMATCHED: &str = "unmatched";
const ROUTE_LABELS: [&str; ROUTES.len()] = {
    let mut labels = [""; ROUTES.len()];
    let mut i = 0;
    while i < ROUTES.len() {
        labels[i] = ROUTES[i].1;
        i += 1;
    }
    labels
};

/// The index in [`ROUTES`] of the narinfo route, for [`super::dispatch`].
pub(super) const NARINFO_ROUTE: usize = ROUTES.len() - 2;
/// The index in [`ROUTES`] of the NAR route, for [`super::dispatch`].
pub(super) const NAR_ROUTE: usize = ROUTES.len() - 3;

/// The index in [`ROUTES`] of a matched route template (`unmatched` when none or unknown).
fn route_index(template: Option<&str>) -> usize {
    let unmatched = ROUTES.len() - 1;
    match template {
        None => unmatched,
        Some(t) => ROUTES[..unmatched]
            .iter()
            .position(|(known, _)| *known == t)
            .unwrap_or_else(|| {
                tracing::debug!(route = t, "route template without a metrics label");
                unmatched
            }),
    }
}

/// Counts every request by route template, method and status, times it to its response headers (a
/// NAR's body streams on afterwards), and runs it in a `request` span (DEBUG: free unless asked for
/// with `NIXCACHE_LOG=nixcache=debug`).
///
/// A hand-written layer rather than `from_fn` + `TraceLayer`: those cost about a fifth of a narinfo
/// hit (boxing, label hashing, span bookkeeping and a body wrapper on every response; see
/// docs/benchmarks.md).
#[derive(Clone)]
pub struct Observe {
    pub(super) http: Arc<HttpMetrics>,
}

impl Observe {
    /// The layer counting into `app`'s metrics.
    pub fn new(app: &App) -> Observe {
        Observe {
            http: Arc::new(app.metrics.http(&ROUTE_LABELS)),
        }
    }
}

impl<S> Layer<S> for Observe {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Observed<S> {
        Observed {
            inner,
            http: self.http.clone(),
        }
    }
}

/// The service [`Observe`] wraps each route in.
#[derive(Clone)]
pub struct Observed<S> {
    inner: S,
    http: Arc<HttpMetrics>,
}

impl<S> Service<Request> for Observed<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = route_index(
            request
                .extensions()
                .get::<MatchedPath>()
                .map(MatchedPath::as_str),
        );
        let method = method_index(request.method());
        let started = Instant::now();
        let span = span(route, method);
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Timed {
            future,
            span,
            started,
            route,
            method,
            http: self.http.clone(),
        }
    }
}

/// The span a request runs in.
fn span(route: usize, method: usize) -> tracing::Span {
    tracing::debug_span!("request", method = METHODS[method], route = ROUTES[route].1)
}

impl<F> Timed<F> {
    /// `future` answering a request of route `route` ([`ROUTES`] index) and method `method`, counted
    /// into `observe`'s metrics when it is ready.
    pub(super) fn new(future: F, observe: &Observe, route: usize, method: usize) -> Timed<F> {
        Timed {
            future,
            span: span(route, method),
            started: Instant::now(),
            route,
            method,
            http: observe.http.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered: counted when its response (headers) is ready.
    pub struct Timed<F> {
        #[pin]
        future: F,
        span: tracing::Span,
        started: Instant,
        route: usize,
        method: usize,
        http: Arc<HttpMetrics>,
    }
}

impl<F> Future for Timed<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let Ok(response) = ready!(this.future.poll(cx));
        answered(
            this.http,
            *this.route,
            *this.method,
            &response,
            *this.started,
        );
        Poll::Ready(Ok(response))
    }
}

/// Counts `response`, the answer to a request of `route` and `method` that started at `started` (in
/// the request's span).
fn answered(
    http: &HttpMetrics,
    route: usize,
    method: usize,
    response: &Response,
    started: Instant,
) {
    let took = started.elapsed();
    let status = response.status().as_u16();
    http.observe(route, method, status, took);
    tracing::debug!(status, micros = took.as_micros() as u64, "answered");
}

impl Observe {
    /// Answers a request of `route` and `method` at once with `answer` (no future), counted as
    /// [`Timed`] counts one; `None` when `answer` has none.
    pub(super) fn now(
        &self,
        route: usize,
        method: usize,
        answer: impl FnOnce() -> Option<Response>,
    ) -> Option<Response> {
        let started = Instant::now();
        let span = span(route, method);
        let _entered = span.enter();
        let response = answer()?;
        answered(&self.http, route, method, &response, started);
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_has_its_label() {
        let label = |template| ROUTE_LABELS[route_index(template)];
        assert_eq!(label(Some("/{file}")), "/{hash}.narinfo");
        assert_eq!(label(Some("/nar/{name}")), "/nar/{name}");
        assert_eq!(label(Some("/")), "/");
        assert_eq!(label(Some("/{new}")), UNMATCHED);
        assert_eq!(label(None), UNMATCHED);
        assert_eq!(ROUTE_LABELS[NARINFO_ROUTE], "/{hash}.narinfo");
        assert_eq!(ROUTE_LABELS[NAR_ROUTE], "/nar/{name}");
    }
}
