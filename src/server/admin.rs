//! The admin endpoints of issue 16, under the same authorization as `POST /_refresh` (loopback, or the
//! admin token): warm jobs and pins. And what `/_status` and the status page show of transcoding, warm
//! jobs and pins.
//!
//! | route | what |
//! |---|---|
//! | `POST /_warm` | `{"paths": [store paths], "pin": "NAME"?}` → 202 with the job's progress (its `id`) |
//! | `GET /_warm` | every kept job, newest first |
//! | `GET /_warm/{id}` | one job's progress |
//! | `GET /_pins` | the pins and their sizes (as in `/_status`; not secret, open like it) |
//! | `DELETE /_pins/{name}` | removes a pin, releasing what only it held |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::{Deserialize, Serialize};

use super::authorize_admin;
use super::error::ApiError;
use crate::app::App;
use crate::index::{IndexError, PinUsage};
use crate::metrics::TranscodeTotals;
use crate::transcode::{RegenerateError, TranscodeError};
use crate::warm::Progress;

/// A warm request's body: up to 16 MiB (a closure of a whole system is ~100 KiB of paths).
const WARM_BODY_LIMIT: usize = 16 << 20;
/// What a refused request is told.
const REFUSAL: &str = "admin endpoints are allowed from loopback or with the admin token";

/// The routes.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/_warm",
            axum::routing::post(warm_start)
                .get(warm_list)
                .layer(DefaultBodyLimit::max(WARM_BODY_LIMIT)),
        )
        .route("/_warm/{id}", get(warm_progress))
        .route("/_pins", get(pins))
        .route("/_pins/{name}", delete(unpin))
}

/// The body of `POST /_warm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmRequest {
    /// Full store paths; their closures are fetched.
    pub paths: Vec<String>,
    /// Keep them as this named pin (replacing a pin of that name).
    #[serde(default)]
    pub pin: Option<String>,
}

/// A 400 whose reason was made from the request (a path, a name): said in a JSON body.
fn bad_request(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": reason })),
    )
        .into_response()
}

async fn warm_start(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize_admin(&app, peer, &headers, REFUSAL)?;
    let request: WarmRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(bad_request(format!(
                "body must be JSON {{\"paths\": [...], \"pin\": NAME}}: {e}"
            )));
        }
    };
    match app.warm.submit(&app, &request.paths, request.pin, "api") {
        Ok(job) => Ok((StatusCode::ACCEPTED, Json(job.progress())).into_response()),
        Err(e) => Ok(bad_request(e.0)),
    }
}

async fn warm_list(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<Vec<Progress>>, ApiError> {
    authorize_admin(&app, peer, &headers, REFUSAL)?;
    Ok(Json(app.warm.recent()))
}

async fn warm_progress(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Progress>, ApiError> {
    authorize_admin(&app, peer, &headers, REFUSAL)?;
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid job id"))?;
    app.warm.get(id).map(Json).ok_or(ApiError::NotFound(
        "no such warm job (finished jobs are kept for a while)",
    ))
}

async fn pins(State(app): State<Arc<App>>) -> Result<Json<PinsStatus>, ApiError> {
    let a = app.clone();
    Ok(Json(
        tokio::task::spawn_blocking(move || pins_status(&a)).await??,
    ))
}

async fn unpin(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize_admin(&app, peer, &headers, REFUSAL)?;
    if crate::pins::check_name(&name).is_err() {
        return Err(ApiError::BadRequest("invalid pin name"));
    }
    let a = app.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let removed = a.index.remove_pin(&name);
        crate::pins::refresh_gauges(&a);
        removed
    })
    .await??;
    if !removed {
        return Err(ApiError::NotFound("no such pin"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The pins, what they hold, and how much pins may hold.
#[derive(Debug, Clone, Serialize)]
pub struct PinsStatus {
    /// Bytes on disk held by pins (and pushes): never evicted.
    pub protected_bytes: u64,
    /// The most pins may hold together.
    pub limit_bytes: u64,
    /// Each pin.
    pub pins: Vec<PinUsage>,
}

fn pins_status(app: &App) -> Result<PinsStatus, IndexError> {
    Ok(PinsStatus {
        protected_bytes: app.index.protected_bytes()?,
        limit_bytes: crate::pins::limit(app),
        pins: app.index.pins()?,
    })
}

/// Transcoding as `/_status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TranscodeStatus {
    /// Whether stored xz/bzip2 NARs are transcoded.
    pub enabled: bool,
    /// The zstd level.
    pub level: Option<i32>,
    /// NARs waiting.
    pub queued: usize,
    /// Originals that have a zstd twin (recorded in the index).
    pub nars_transcoded: u64,
    /// Originals still on disk for their grace.
    pub originals_kept: u64,
    /// Totals since start.
    #[serde(flatten)]
    pub totals: TranscodeTotals,
}

/// Warm jobs as `/_status` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct WarmStatus {
    /// Jobs running.
    pub running: usize,
    /// Kept jobs, newest first (at most 5 here; `GET /_warm` has them all).
    pub jobs: Vec<Progress>,
}

/// What `/_status` adds for issue 16.
#[derive(Debug, Clone, Serialize)]
pub struct LanStatus {
    /// Transcoding.
    pub transcode: TranscodeStatus,
    /// Warm jobs.
    pub warm: WarmStatus,
    /// Pins.
    pub pins: PinsStatus,
}

/// Collects [`LanStatus`]. Blocking (index reads).
pub fn lan_status(app: &App) -> Result<LanStatus, IndexError> {
    let (nars_transcoded, originals_kept) = app.index.transcode_counts()?;
    let jobs = app.warm.recent();
    Ok(LanStatus {
        transcode: TranscodeStatus {
            enabled: app.config.transcode_level.is_some(),
            level: app.config.transcode_level,
            queued: app.transcoder.waiting(),
            nars_transcoded,
            originals_kept,
            totals: app.metrics.transcode_totals(),
        },
        warm: WarmStatus {
            running: jobs.iter().filter(|j| j.finished_at.is_none()).count(),
            jobs: jobs.into_iter().take(5).collect(),
        },
        pins: pins_status(app)?,
    })
}

/// A twin that could not be made again for a client (issue 16): how it is answered.
impl From<RegenerateError> for ApiError {
    fn from(e: RegenerateError) -> Self {
        match e {
            RegenerateError::Fill(f) => f.into(),
            RegenerateError::Start(f) => f.into(),
            RegenerateError::Gone => ApiError::NotFound("unknown NAR"),
            RegenerateError::Transcode(TranscodeError::Index(i)) => i.into(),
            RegenerateError::Transcode(TranscodeError::NoRoom(_)) => {
                ApiError::Unavailable("no room in the cache's store; try again later")
            }
            RegenerateError::Transcode(TranscodeError::ShuttingDown) => {
                ApiError::Unavailable("shutting down")
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
