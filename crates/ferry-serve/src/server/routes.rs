//! The router, and what every request goes through first: peer
//! credentials and the bounds on requests in flight (in all and per user).

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::daemon::Daemon;
use super::handlers::{
    add, cancel, create, dispatch, events, list, metrics, resume, status, verify, wait,
};
use super::peer::PeerInfo;
use super::{REQUESTS_MAX, REQUESTS_PER_USER_MAX};
use crate::api::BODY_BYTES_MAX;
use crate::error::ApiError;

pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/transfers", post(create).get(list))
        .route("/v1/transfers/{name}", get(status))
        .route("/v1/transfers/{name}/entries", post(add))
        .route("/v1/transfers/{name}/dispatch", post(dispatch))
        .route("/v1/transfers/{name}/resume", post(resume))
        .route("/v1/transfers/{name}/cancel", post(cancel))
        .route("/v1/transfers/{name}/wait", get(wait))
        .route("/v1/transfers/{name}/verify", get(verify))
        .route("/v1/events", get(events))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_route",
                "no such route: see openapi.yaml for the daemon's API",
            )
        })
        .layer(middleware::from_fn_with_state(Arc::clone(&daemon), guard))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(daemon)
}

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
