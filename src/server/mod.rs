//! The HTTP side: the router, its handlers, and [`run`], which serves until shutdown.

pub mod admin;
pub mod error;
pub mod nar;
pub mod observe;
pub mod status_page;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::index::IndexStats;
use crate::nix::store_path::StoreHash;
use crate::sources::HealthSnapshot;
use error::ApiError;

/// How long in-flight requests may finish after shutdown was asked for.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// All routes of the appliance.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/metrics", get(observe::metrics))
        .route("/nix-cache-info", get(cache_info))
        .route("/healthz", get(healthz))
        .route("/_status", get(status))
        .route("/public-key", get(public_key))
        .route("/_refresh", axum::routing::post(refresh))
        .merge(admin::routes())
        .route("/nar/{name}", get(nar::get_nar))
        .route("/{file}", get(narinfo))
        .fallback(|| async { ApiError::NotFound("not found") })
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            observe::track,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

/// Serves `listener` until `app.shutdown` is cancelled, then drains for at most [`DRAIN_TIMEOUT`] and
/// stops the background tasks. The caller binds the socket (tests pass a port-0 listener).
pub async fn run(listener: TcpListener, app: Arc<App>) -> std::io::Result<()> {
    let background = app.start_background();
    let shutdown = app.shutdown.clone();
    // Headers and a small body go out in separate writes: without TCP_NODELAY the body waits for the
    // client's delayed ACK (~40 ms per small NAR on a kept-alive connection).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let serve = axum::serve(
        listener,
        router(app.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await });
    let drained = async {
        app.shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    let result = tokio::select! {
        r = serve => r,
        () = drained => {
            tracing::warn!("requests still running after the drain time-out; closing them");
            Ok(())
        }
    };
    app.shutdown.cancel();
    app.stopped.cancel();
    background.join(&app).await;
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
) -> Result<Response, ApiError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return Err(ApiError::NotFound("not found"));
    };
    let hash: StoreHash = hash
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid store hash"))?;
    match crate::lookup::narinfo(&app, hash).await? {
        Some(body) => Ok(text(body, "text/x-nix-narinfo")),
        None => Err(ApiError::NotFound("not in any cache")),
    }
}

/// `POST /_refresh`: refresh the OCI index now. Allowed from loopback, or with the admin token.
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
    match crate::mirror::refresh_once(&app).await {
        Ok(outcome) => Ok(Json(outcome).into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "forced refresh failed");
            Err(ApiError::Upstream(
                crate::sources::SourceError::RefreshFailed,
            ))
        }
    }
}

/// The authorization of the admin endpoints (`POST /_refresh`, and issue 16's `/_warm`, `/_pins`):
/// allowed from loopback, or with `Authorization: Bearer <admin token>`; otherwise `refusal` (403).
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
    if !peer.ip().is_loopback() && !token_ok {
        return Err(ApiError::Forbidden(refusal));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
    /// Counters since start (requests, bytes, fills, evictions).
    traffic: crate::metrics::Traffic,
    /// The last things that happened, newest first.
    recent_activity: Vec<crate::activity::Event>,
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
                url: u.url().to_string(),
                priority: i,
                accept_unsigned: u.accepts_unsigned(),
                rejected_narinfos: u.rejected(),
                health: u.health().snapshot(),
            })
            .collect(),
        traffic: app.metrics.traffic(),
        recent_activity: app.metrics.activity().recent(),
        lan,
    })
}
