//! The PUT side, for LAN builders running `nix copy --to http://…` (issue 12): `PUT /nar/<name>`,
//! `PUT /<hash>.narinfo`, and the side files Nix may send. Every PUT needs a push token (checked
//! before a byte of the body is read: Nix sends `Expect: 100-continue`, so a refused upload is never
//! transferred); GET and HEAD stay open as before. What each upload becomes is decided in `push/`;
//! this file maps it to HTTP, counts it, and notes it in the recent activity.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::app::App;
use crate::metrics::human_bytes;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::MAX_NARINFO_BYTES;
use crate::nix::store_path::StoreHash;
use crate::push::receive::NarReceived;
use crate::push::{PushError, Token};

/// `PUT /nar/<FileHash>.nar<ext>`: a NAR file, kept until its narinfo arrives.
pub async fn put_nar(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(e) => return respond(&app, None, "nar", Err(e)),
    };
    let result = async {
        let name: NarName = name
            .parse()
            .map_err(|e| PushError::Invalid(format!("bad NAR name: {e}")))?;
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let received =
            crate::push::receive::receive_nar(&app, token, name, length, body.into_data_stream())
                .await?;
        Ok(match received {
            NarReceived::Pending => format!("received {name}; waiting for its narinfo"),
            NarReceived::AlreadyPending => format!("{name} was already received"),
            NarReceived::AlreadyStored => format!("{name} is already stored"),
        })
    }
    .await;
    respond(&app, Some(token), "nar", result)
}

/// `PUT /<file>` at the root: `<hash>.narinfo`, or a `<hash>.ls` listing (taken, not kept).
pub async fn put_file(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if file.ends_with(".ls") {
        return put_side_file(State(app), headers).await;
    }
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(e) => return respond(&app, None, "narinfo", Err(e)),
    };
    let result = async {
        let hash: StoreHash = file
            .strip_suffix(".narinfo")
            .and_then(|h| h.parse().ok())
            .ok_or_else(|| PushError::Invalid("not a <hash>.narinfo".into()))?;
        let body = axum::body::to_bytes(body, MAX_NARINFO_BYTES)
            .await
            .map_err(|_| PushError::TooLarge("a narinfo is at most 64 KiB"))?;
        let accepted = crate::push::accept::accept_narinfo(&app, token, hash, &body).await?;
        let message = if accepted.new {
            format!(
                "pushed {} by {} ({})",
                accepted.store_path,
                token.name,
                human_bytes(accepted.file_size)
            )
        } else {
            format!("{} was already pushed", accepted.store_path)
        };
        tracing::info!(token = %token.name, path = %accepted.store_path, new = accepted.new, "push accepted");
        if accepted.new {
            app.metrics.push_event(true, message.clone());
        }
        Ok(message)
    }
    .await;
    respond(&app, Some(token), "narinfo", result)
}

/// `PUT /nix-cache-info`, listings and debug-info links: taken with a token and not kept. The
/// appliance answers its own `nix-cache-info` (so Nix never uploads one to it), serves no listings
/// (Nix falls back to the NAR), and keeps no debug-info index; refusing them would only make
/// `nix copy` fail for a file nobody reads here.
pub async fn put_side_file(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(e) => return respond(&app, None, "other", Err(e)),
    };
    respond(&app, Some(token), "other", Ok("taken, not kept".into()))
}

/// Anything no route matched: 404 for reads; for PUT, debug-info links are taken (not kept), build
/// logs and realisations refused (501), the rest 404.
pub async fn fallback(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::PUT {
        return ApiError::NotFound("not found").into_response();
    }
    let path = uri.path();
    if path.starts_with("/debuginfo/") {
        return put_side_file(State(app), headers).await;
    }
    let token = match authorize(&app, &headers) {
        Ok(t) => t,
        Err(e) => return respond(&app, None, "other", Err(e)),
    };
    let refusal = if path.starts_with("/log/") {
        PushError::Unsupported("build logs are not kept by this cache")
    } else if path.starts_with("/realisations/") {
        PushError::Unsupported("realisations (content-addressed derivations) are not taken")
    } else {
        return ApiError::NotFound("not found").into_response();
    };
    respond(&app, Some(token), "other", Err(refusal))
}

/// Whether the request carries a valid push token (a builder asking before it uploads).
pub fn is_pusher(app: &App, headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) && authorize(app, headers).is_ok()
}

/// The token of the request's Authorization header.
fn authorize<'a>(app: &'a App, headers: &HeaderMap) -> Result<&'a Token, PushError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    app.pushes.authorize(header)
}

/// Counts the outcome, logs a refusal, and answers.
fn respond(
    app: &App,
    token: Option<&Token>,
    kind: &'static str,
    result: Result<String, PushError>,
) -> Response {
    let name = token.map(|t| t.name.as_str());
    match result {
        Ok(message) => {
            if let Some(name) = name {
                app.metrics.push_accepted(name, kind);
            }
            (StatusCode::OK, format!("{message}\n")).into_response()
        }
        Err(e) => {
            app.metrics.push_refused(name, kind, e.reason());
            let who = name.unwrap_or(crate::metrics::NO_TOKEN);
            tracing::warn!(token = %who, kind, reason = e.reason(), error = %e, "push refused");
            if kind != "other" && !matches!(e, PushError::Unauthorized) {
                app.metrics
                    .push_event(false, format!("{kind} upload by {who} refused: {e}"));
            }
            e.into_response()
        }
    }
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        let status = match &self {
            PushError::Unauthorized => StatusCode::UNAUTHORIZED,
            PushError::Forbidden | PushError::Scope(_) | PushError::Signature => {
                StatusCode::FORBIDDEN
            }
            PushError::Invalid(_)
            | PushError::Compression(_)
            | PushError::FileMismatch(_)
            | PushError::NarMismatch(_)
            | PushError::MissingNar
            | PushError::CutOff(_) => StatusCode::BAD_REQUEST,
            PushError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            PushError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            PushError::Conflict(_) => StatusCode::CONFLICT,
            PushError::Quota(_) | PushError::PushFull | PushError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            PushError::NoRoom | PushError::Busy | PushError::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PushError::Stalled => StatusCode::REQUEST_TIMEOUT,
            PushError::Internal(cause) => {
                tracing::error!(cause = %cause, "push: internal error");
                return (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response();
            }
        };
        let mut response = (status, format!("{self}\n")).into_response();
        let h = response.headers_mut();
        match status {
            StatusCode::UNAUTHORIZED => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"nixcache push\""),
                );
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
