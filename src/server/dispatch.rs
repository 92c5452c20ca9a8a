//! The service every connection calls. Narinfo and NAR GET and HEAD requests, nearly all a cache ever
//! sees, are recognised by hand and go straight to their handlers; everything else goes through the
//! axum [`Router`] of [`super::router`].
//!
//! Why: on this 2-core machine the same narinfo reply came out at about 1.4× the rate through bare hyper
//! than through a one-route axum Router (boxing the request body, the route match, the URL parameters
//! and their percent-decoding, a service clone per request; docs/benchmarks.md). The fast path keeps
//! every behaviour of the routed one: the same handlers, the same metrics (route template, method,
//! status, time to headers), the same request span, HEAD answered as axum answers it. A path that needs
//! decoding (`%`) or any other method takes the router.
//!
//! A narinfo the index already has (a hit, or a live negative entry) is answered inside the call, with
//! no future built or polled: that is most requests of a warm cache, and the futures of the handler
//! chain cost about 0.3 µs of a 7–8 µs hit (docs/benchmarks.md, "Narinfo hits: what two threads
//! share"). Anything else (a miss, an index failure, a bad hash) takes the async handler, which looks
//! again and answers it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use http_body::Body as _;
use hyper::body::Incoming;
use tower::ServiceExt;

use super::observe::{NAR_ROUTE, NARINFO_ROUTE, Observe, Timed};
use crate::app::App;
use crate::metrics::method_index;

/// The routes of the appliance, with the hot ones dispatched by hand.
pub struct Routes {
    app: Arc<App>,
    router: Router,
    observe: Observe,
}

/// A request the fast path answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fast {
    /// `GET|HEAD /<hash>.narinfo`
    Narinfo,
    /// `GET|HEAD /nar/<name>`
    Nar,
}

impl Routes {
    /// Every route of `app`, counted into its metrics.
    pub fn new(app: Arc<App>) -> Routes {
        let observe = Observe::new(&app);
        let router = super::router_with(app.clone(), observe.clone());
        Routes {
            app,
            router,
            observe,
        }
    }

    /// The answer to `request`, which came from `peer`.
    pub fn call(
        self: &Arc<Self>,
        mut request: hyper::Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response> + Send + use<> {
        let method = request.method();
        let path = request.uri().path();
        // A request with a body (a GET should have none) takes the router, which sees it read.
        let fast = fast_route(method, path).filter(|_| request.body().is_end_stream());
        // A narinfo the index already has is answered here and now: no future to build and poll.
        if let Some((Fast::Narinfo, name)) = fast {
            let known = self.observe.now(NARINFO_ROUTE, method_index(method), || {
                super::narinfo_known(&self.app, name, method).map(|r| finish(r, method))
            });
            if let Some(response) = known {
                return Either::Left(std::future::ready(response));
            }
        }
        // The name is the end of the path: kept as where it starts, the request moves into the future.
        let fast = fast.map(|(kind, name)| (kind, path.len() - name.len()));
        let routes = self.clone();
        Either::Right(async move {
            match fast {
                Some((kind, name_at)) => {
                    let route = match kind {
                        Fast::Narinfo => NARINFO_ROUTE,
                        Fast::Nar => NAR_ROUTE,
                    };
                    let method = method_index(request.method());
                    let answer = routes.answer(kind, name_at, request);
                    let Ok(response) = Timed::new(answer, &routes.observe, route, method).await;
                    response
                }
                None => {
                    // Only routed handlers read the peer (admin endpoints).
                    request.extensions_mut().insert(ConnectInfo(peer));
                    let read = Arc::new(AtomicBool::new(request.body().is_end_stream()));
                    let request = request.map(|body| ReadToEnd {
                        inner: body,
                        read: read.clone(),
                    });
                    let Ok(mut response) = routes.router.clone().oneshot(request).await;
                    if !read.load(Ordering::Relaxed) {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    response
                }
            }
        })
    }

    /// The fast path's answer, finished as axum finishes a routed one.
    async fn answer(
        &self,
        kind: Fast,
        name_at: usize,
        request: hyper::Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let method = request.method();
        let headers = request.headers();
        let name = &request.uri().path()[name_at..];
        let result = match kind {
            Fast::Narinfo => super::narinfo_answer(&self.app, name, method, headers).await,
            Fast::Nar => super::nar::answer(&self.app, name, method, headers).await,
        };
        Ok(finish(
            result.unwrap_or_else(IntoResponse::into_response),
            method,
        ))
    }
}

/// A fast-path answer finished as axum finishes a routed one: the length of an exact body, then no
/// body for HEAD.
fn finish(mut response: Response, method: &Method) -> Response {
    if !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = response.body().size_hint().exact()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    if *method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

/// A request body that notes when it has been read to its end.
///
/// A handler may answer without reading the body (a refused upload, a NAR upload already stored or
/// waiting): that answer closes the connection (`Connection: close`), as RFC 9110 §10.1.1 leaves a
/// server two choices, reading the rest or closing, and reading can go wrong. Nix sends every upload
/// with `Expect: 100-continue`; told 200 before any `100 Continue`, curl sends no body and reuses the
/// connection for its next request, and hyper, which cannot know that, takes the first bytes of that
/// next request for the body it waits for and answers the rest 400 (`tests/push.rs`,
/// `an_upload_answered_before_its_body_closes_the_connection`).
struct ReadToEnd {
    inner: Incoming,
    read: Arc<AtomicBool>,
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The fast route of a request and the name its handler takes (`<hash>.narinfo`, or the NAR file's
/// name), if it has one: GET or HEAD of `/<hash>.narinfo` or `/nar/<name>`, one path segment,
/// nothing to percent-decode.
fn fast_route<'p>(method: &Method, path: &'p str) -> Option<(Fast, &'p str)> {
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    let rest = path.strip_prefix('/')?;
    if rest.contains(['/', '%']) {
        return match rest.strip_prefix("nar/") {
            Some(name) if !name.is_empty() && !name.contains(['/', '%']) => Some((Fast::Nar, name)),
            _ => None,
        };
    }
    rest.ends_with(".narinfo").then_some((Fast::Narinfo, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_narinfo_and_nar_reads_take_the_fast_path() {
        let get = Method::GET;
        let hash = "0123456789abcdfghijklmnpqrsvwxyz";
        let narinfo = format!("{hash}.narinfo");
        assert_eq!(
            fast_route(&get, &format!("/{narinfo}")),
            Some((Fast::Narinfo, narinfo.as_str()))
        );
        assert_eq!(
            fast_route(&Method::HEAD, &format!("/{narinfo}")),
            Some((Fast::Narinfo, narinfo.as_str()))
        );
        assert_eq!(
            fast_route(&get, "/nar/abc.nar.xz"),
            Some((Fast::Nar, "abc.nar.xz"))
        );
        // Everything else is routed by axum, which answers it as before.
        assert_eq!(fast_route(&Method::PUT, &format!("/{hash}.narinfo")), None);
        assert_eq!(fast_route(&Method::POST, "/nar/abc.nar.xz"), None);
        assert_eq!(fast_route(&get, "/nar/"), None);
        assert_eq!(fast_route(&get, "/nar/a/b"), None);
        assert_eq!(fast_route(&get, "/nar/a%2Fb"), None);
        assert_eq!(fast_route(&get, "/a%2e.narinfo"), None);
        assert_eq!(fast_route(&get, "/x/y.narinfo"), None);
        assert_eq!(fast_route(&get, "/nix-cache-info"), None);
        assert_eq!(fast_route(&get, "/"), None);
        assert_eq!(fast_route(&get, "/healthz"), None);
    }
}
