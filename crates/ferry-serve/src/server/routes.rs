//! The router, and what every request goes through first: peer
//! credentials and the bounds on requests in flight (in all and per user).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::daemon::Daemon;
use super::handlers::{
    add, cancel, create, dispatch, events, limit, list, metrics, resume, status, verify, wait,
};
use super::peer::PeerInfo;
use super::{REQUESTS_MAX, REQUESTS_PER_USER_MAX};
use crate::error::ApiError;

pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/transfers", post(create).get(list))
        .route("/v1/transfers/{name}", get(status))
        .route("/v1/transfers/{name}/entries", post(add))
        .route("/v1/transfers/{name}/dispatch", post(dispatch))
        .route("/v1/transfers/{name}/resume", post(resume))
        .route("/v1/transfers/{name}/cancel", post(cancel))
        .route("/v1/transfers/{name}/limit", post(limit))
        .route("/v1/transfers/{name}/wait", get(wait))
        .route("/v1/transfers/{name}/verify", get(verify))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such route: GET /openapi.json describes the daemon's API",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&daemon), guard))
        .layer(middleware::from_fn(json_errors))
        .with_state(daemon)
}

/// The API's OpenAPI document (`docs/openapi.json`, the one the fuzzer in
/// CI checks the daemon against).
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

pub(super) const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// The framework's own refusals (a query or path that does not parse, a
/// method a route does not take) come as plain text or empty: every error
/// of the API is the JSON body the document promises, so they are turned
/// into it here, with their status and headers (`Allow`) kept.
async fn json_errors(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REFUSAL_BYTES_MAX)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let kind = match status {
        StatusCode::NOT_FOUND => "no_such_route",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::METHOD_NOT_ALLOWED, _) => {
            let allowed = allowed_methods(route.as_deref().unwrap_or_default());
            if let Ok(value) = axum::http::HeaderValue::from_str(&allowed) {
                parts.headers.insert(axum::http::header::ALLOW, value);
            }
            format!("this route does not take that method; it takes: {allowed}")
        }
        (_, true) => status.canonical_reason().unwrap_or("error").to_owned(),
        (_, false) => text,
    };
    let json = ApiError::new(status, kind, message).into_response();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, json.into_body())
}

/// The methods the document gives `route` (a route's template, as the
/// router matched it), for a 405's `Allow`.
pub(super) fn allowed_methods(route: &str) -> String {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let document = DOCUMENT.get_or_init(|| serde_json::from_str(OPENAPI).unwrap_or_default());
    document["paths"][route]
        .as_object()
        .map(|operations| {
            operations
                .keys()
                .filter(|key| *key != "parameters")
                .map(|method| method.to_uppercase())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The framework's refusal texts are a line or two.
const REFUSAL_BYTES_MAX: usize = 64 * 1024;

/// Every request: a bound on requests in flight, the non-root daemon's
/// single user, and latency metrics.
async fn guard(State(daemon): State<Arc<Daemon>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // The connection's idle clock stops while this request and its answer
    // (a watch stream's included) are in flight.
    let in_flight = request
        .extensions()
        .get::<ConnectInfo<PeerInfo>>()
        .map(|c| c.0.conn.begin());
    let response = match daemon.requests.clone().try_acquire_owned() {
        Err(_) => ApiError::busy(format!(
            "the daemon is busy: {REQUESTS_MAX} requests in flight; try again"
        ))
        .into_response(),
        Ok(_permit) => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<PeerInfo>>()
                .map(|c| c.0.peer());
            match peer {
                Some(Ok(peer)) if daemon.uid != 0 && peer.caller.uid != daemon.uid => {
                    ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "this daemon runs as uid {} and serves only that user (uid {} asked); \
                             a daemon for every user runs as root",
                            daemon.uid, peer.caller.uid
                        ),
                    )
                    .into_response()
                }
                Some(Err(e)) => e.into_response(),
                Some(Ok(peer)) => match daemon.requests_by_user.acquire(peer.caller.uid) {
                    None => ApiError::busy(format!(
                        "uid {} has {REQUESTS_PER_USER_MAX} requests in flight already; try \
                         again",
                        peer.caller.uid
                    ))
                    .into_response(),
                    Some(_mine) => next.run(request).await,
                },
                None => next.run(request).await,
            }
        }
    };
    daemon
        .metrics
        .observe(&route, response.status().as_u16(), started.elapsed());
    match in_flight {
        Some(in_flight) if response.body().size_hint().exact().is_none() => response.map(|body| {
            use futures_util::StreamExt;
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &in_flight;
                chunk
            }))
        }),
        _ => response,
    }
}
