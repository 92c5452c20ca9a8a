//! The HTTP side: the router, its handlers, and [`run`], which serves until shutdown.

pub mod admin;
pub mod bucket;
pub mod connection;
pub mod cores;
pub mod dispatch;
pub mod error;
pub mod listener;
pub mod nar;
pub mod observe;
pub mod sendfile;
pub mod status_page;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::app::App;
use crate::index::IndexStats;
use crate::nix::store_path::StoreHash;
use crate::sources::HealthSnapshot;
use error::ApiError;

/// How long in-flight requests may finish after shutdown was asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// All routes of the appliance, as an axum [`Router`] (connections call them through
/// [`dispatch::Routes`], which answers narinfo and NAR reads without the router).
pub fn router(app: Arc<App>) -> Router {
    let observe = observe::Observe::new(&app);
    router_with(app, observe)
}

/// [`router`], counting into `observe`.
fn router_with(app: Arc<App>, observe: observe::Observe) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/metrics", get(observe::metrics))
        .route(
            "/nix-cache-info",
            get(cache_info).put(upload::put_side_file),
        )
        .route("/healthz", get(healthz))
        .route("/_status", get(status))
        .route("/public-key", get(public_key))
        .route("/_refresh", axum::routing::post(refresh))
        .merge(admin::routes())
        // PUT: LAN builders publishing with `nix copy --to` (issue 12, `upload.rs`).
        .route("/nar/{name}", get(nar::get_nar).put(upload::put_nar))
        .route("/{file}", get(narinfo).put(upload::put_file))
        .fallback(upload::fallback)
        .layer(observe)
        .with_state(app)
}

/// Serves `listener` until `app.shutdown` is cancelled, then drains for at most [`DRAIN_TIMEOUT`] and
/// stops the background tasks. The caller binds the socket (tests pass a port-0 listener). Connections
/// are limited as `app.config.limits` says (see [`listener`] and [`connection`]).
pub async fn run(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let background = app.start_background();
    let cores = cores::Cores::for_this_machine()?;
    let result = listener::serve(
        listener,
        &cores,
        Arc::new(dispatch::Routes::new(app.clone())),
        &app.config.limits,
        app.metrics.limits().clone(),
        app.shutdown.clone(),
        DRAIN_TIMEOUT,
    )
    .await;
    app.shutdown.cancel();
    app.stopped.cancel();
    background.join(&app).await;
    // Last: fills and jobs that connections started run on their threads.
    if tokio::task::spawn_blocking(move || cores.stop())
        .await
        .is_err()
    {
        tracing::error!("stopping the connection threads panicked");
    }
    result
}

/// `/healthz`: 200 while the appliance can do its job, 503 with the reason otherwise (see `health.rs`).
async fn healthz(State(app): State<Arc<App>>) -> Response {
    match crate::health::check(&app) {
        Ok(()) => "ok\n".into_response(),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn cache_info(State(app): State<Arc<App>>) -> Response {
    let mut body = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        crate::nix::STORE_DIR,
        app.config.priority
    );
    // Not a field Nix reads (it ignores unknown ones): tells people and discovery which key signs here.
    if !app.signer.is_empty() {
        body.push_str(&format!("PublicKey: {}\n", app.signer));
    }
    text(body, "text/x-nix-cache-info")
}

/// `/public-key`: the key clients should trust, as `name:base64`.
async fn public_key(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    if app.signer.is_empty() {
        return Err(ApiError::NotFound(
            "no signing key configured (set signing_key_file)",
        ));
    }
    Ok(text(
        format!("{}\n", app.signer),
        "text/plain; charset=utf-8",
    ))
}

fn text(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `/<hash>.narinfo`. The hash is checked before anything is looked up.
async fn narinfo(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    narinfo_answer(&app, &file, request.method(), request.headers()).await
}

/// The answer to a GET or HEAD of `/<file>`; also called straight by [`dispatch`].
async fn narinfo_answer(
    app: &Arc<App>,
    file: &str,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return Err(ApiError::NotFound("not found"));
    };
    let hash: StoreHash = hash
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid store hash"))?;
    match crate::lookup::narinfo_as(app, hash, narinfo_asker(method)).await {
        Ok((_, found)) => narinfo_response(found),
        // A LAN builder about to push asks first (issue 12): with a source failing, "absent" lets
        // it upload the path instead of failing its `nix copy --to`.
        Err(crate::lookup::LookupError::Source(e)) if upload::is_pusher(app, headers) => {
            tracing::info!(error = %e, "sources failing; a pusher is told the path is absent");
            Err(ApiError::NotFound("not in any cache that answered"))
        }
        Err(e) => Err(e.into()),
    }
}

/// What the index already has for `/<hash>.narinfo` (see [`crate::lookup::narinfo_known`]): the
/// answer at once, or `None` for [`narinfo_answer`] to give.
fn narinfo_known(app: &App, file: &str, method: &axum::http::Method) -> Option<Response> {
    let hash: StoreHash = file.strip_suffix(".narinfo")?.parse().ok()?;
    let (_, found) = crate::lookup::narinfo_known(app, &hash, narinfo_asker(method))?;
    Some(narinfo_response(found).unwrap_or_else(IntoResponse::into_response))
}

/// Who asks: a HEAD only asks whether the path is here, and its NAR is not fetched ahead (see
/// `prefetch.rs`).
fn narinfo_asker(method: &axum::http::Method) -> crate::lookup::Asker {
    if method == axum::http::Method::HEAD {
        crate::lookup::Asker::Probe
    } else {
        crate::lookup::Asker::Client
    }
}

/// A narinfo's text, or 404 when it is absent everywhere.
fn narinfo_response(found: Option<String>) -> Result<Response, ApiError> {
    match found {
        Some(body) => Ok(text(body, "text/x-nix-narinfo")),
        None => Err(ApiError::NotFound("not in any cache")),
    }
}

/// `POST /_refresh`: refresh the OCI index now. Allowed from loopback (unless `trust_loopback` is off,
/// as behind a local reverse proxy where every client looks like loopback), or with the admin token.
/// One refresh runs at a time: a call while one runs is answered 429.
async fn refresh(
    State(app): State<Arc<App>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    authorize_admin(
        &app,
        peer,
        &headers,
        "refresh is allowed from loopback or with the admin token",
    )?;
    if app.sources.oci().is_none() {
        return Err(ApiError::NotFound("no OCI source configured"));
    }
    match crate::mirror::try_refresh_now(&app).await {
        None => {
            app.metrics.limits().refreshes_refused.inc();
            Err(ApiError::TooManyRequests("a refresh is already running"))
        }
        Some(Ok(outcome)) => Ok(Json(outcome).into_response()),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "forced refresh failed");
            Err(ApiError::Upstream(
                crate::sources::SourceError::RefreshFailed,
            ))
        }
    }
}

/// Loopback, also written as an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`, what a dual-stack
/// `[::]` listener sees of an IPv4 loopback client).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The authorization of the admin endpoints (`POST /_refresh`, and the warm and pin endpoints): allowed
/// from loopback (unless `trust_loopback` is off), or with `Authorization: Bearer <admin token>`;
/// otherwise `refusal` (403).
pub(crate) fn authorize_admin(
    app: &App,
    peer: std::net::SocketAddr,
    headers: &axum::http::HeaderMap,
    refusal: &'static str,
) -> Result<(), ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token_ok = match (&app.admin_token, bearer) {
        (Some(want), Some(got)) => constant_time_eq(want.as_bytes(), got.trim().as_bytes()),
        _ => false,
    };
    let trust_loopback = app.config.limits.trust_loopback;
    if !(token_ok || trust_loopback && is_loopback(peer.ip())) {
        return Err(ApiError::Forbidden(if trust_loopback {
            refusal
        } else {
            "this needs the admin token"
        }));
    }
    Ok(())
}

/// Whether `a` and `b` are equal, in a time that does not depend on where they differ (secrets).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct OciStatus {
    registry: String,
    image: String,
    accept_unsigned: bool,
    rejected_entries: u64,
    #[serde(flatten)]
    index: crate::sources::oci::IndexState,
    health: HealthSnapshot,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    uptime_secs: u64,
    /// The signing key's name, if the appliance signs.
    signing_key: Option<String>,
    public_key: Option<String>,
    /// Whether the appliance can do its job (what `/healthz` says), and why not.
    healthy: bool,
    unhealthy_reason: Option<String>,
    index: IndexStats,
    store: StoreStatus,
    fills_in_flight: usize,
    oci: Option<OciStatus>,
    upstreams: Vec<UpstreamStatus>,
    /// The shared bucket (issue 13), when configured.
    bucket: Option<bucket::BucketStatus>,
    /// Counters since start (requests, bytes, fills, evictions).
    traffic: crate::metrics::Traffic,
    /// The last things that happened, newest first.
    recent_activity: Vec<crate::activity::Event>,
    /// LAN pushes by token (issue 12); null when no push token is configured.
    pushes: Option<crate::push::PushStatus>,
    /// Issue 16: transcoding, warm jobs, pins.
    #[serde(flatten)]
    lan: admin::LanStatus,
}

#[derive(Serialize)]
struct StoreStatus {
    bytes: u64,
    max_bytes: u64,
    nars: u64,
    /// Bytes reserved by running downloads (counted against `max_bytes`).
    reserved_bytes: u64,
    /// Bytes of the index file (counted against `max_bytes`).
    index_bytes: u64,
    /// Free space on the data folder's filesystem, and the floor kept.
    fs_free_bytes: u64,
    min_free_bytes: u64,
}

#[derive(Serialize)]
struct UpstreamStatus {
    url: String,
    priority: usize,
    accept_unsigned: bool,
    rejected_narinfos: u64,
    #[serde(flatten)]
    health: HealthSnapshot,
}

async fn status(State(app): State<Arc<App>>) -> Result<Json<Status>, ApiError> {
    Ok(Json(collect_status(&app).await?))
}

/// What `/_status` answers and the status page shows.
async fn collect_status(app: &Arc<App>) -> Result<Status, ApiError> {
    let a = app.clone();
    let (index, usage, lan) = tokio::task::spawn_blocking(move || {
        let lan = admin::lan_status(&a)?;
        a.index.stats().map(|s| (s, a.budget.usage(&a), lan))
    })
    .await??;
    let health = crate::health::check(app);
    Ok(Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: app.started.elapsed().as_secs(),
        signing_key: app.signing_key.as_ref().map(|k| k.name().to_string()),
        public_key: (!app.signer.is_empty()).then(|| app.signer.clone()),
        healthy: health.is_ok(),
        unhealthy_reason: health.err(),
        store: StoreStatus {
            bytes: index.store_bytes,
            max_bytes: app.config.max_size,
            nars: index.nars_stored,
            reserved_bytes: usage.reserved,
            index_bytes: index.file_bytes,
            fs_free_bytes: usage.fs_free,
            min_free_bytes: usage.min_free,
        },
        index,
        fills_in_flight: app.fills.in_flight(),
        oci: app.sources.oci().map(|o| {
            let (registry, image) = o.describe();
            OciStatus {
                registry,
                image,
                accept_unsigned: o.accepts_unsigned(),
                rejected_entries: o.rejected(),
                index: o.state(),
                health: o.health(),
            }
        }),
        upstreams: app
            .sources
            .all()
            .iter()
            .enumerate()
            .map(|(i, u)| UpstreamStatus {
                // The shown URL: credentials hidden.
                url: u.url().to_string(),
                priority: i,
                accept_unsigned: u.accepts_unsigned(),
                rejected_narinfos: u.rejected(),
                health: u.health().snapshot(),
            })
            .collect(),
        bucket: bucket::status(app),
        traffic: app.metrics.traffic(),
        recent_activity: app.metrics.activity().recent(),
        pushes: app.pushes.status(&app.metrics),
        lan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_loopback_is_loopback() {
        for (ip, want) in [
            ("127.0.0.1", true),
            ("127.1.2.3", true),
            ("::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:192.168.1.5", false),
            ("192.168.1.5", false),
            ("fe80::1", false),
        ] {
            assert_eq!(is_loopback(ip.parse().unwrap()), want, "{ip}");
        }
    }
}
