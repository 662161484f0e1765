//! The router, and what every request goes through: peer credentials,
//! bounds on requests in flight (in all and per user), body and input checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::conns::{ConnState, Guarded};
use super::daemon::Daemon;
use super::handlers::{add, cancel, create, dispatch, events, list, metrics, resume, status, wait};
use super::{NAME_BYTES_MAX, PATH_BYTES_MAX, REQUESTS_MAX, REQUESTS_PER_USER_MAX};
use crate::api::BODY_BYTES_MAX;
use crate::creds::Peer;
use crate::error::ApiError;
use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use ferry::Caller;
use serde::de::DeserializeOwned;

/// The peer of a connection, read once when it connects, and the
/// connection's idle clock.
#[derive(Clone)]
pub struct PeerInfo {
    peer: Result<Peer, String>,
    conn: Arc<ConnState>,
}

impl std::fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.peer.fmt(f)
    }
}

impl Connected<IncomingStream<'_, Guarded>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, Guarded>) -> PeerInfo {
        stream.remote_addr().clone()
    }
}

impl PeerInfo {
    pub(super) fn new(peer: Result<Peer, String>, conn: Arc<ConnState>) -> PeerInfo {
        PeerInfo { peer, conn }
    }

    pub(super) fn peer(&self) -> Result<Peer, ApiError> {
        self.peer.clone().map_err(|e| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("cannot read the peer credentials of this connection: {e}"),
            )
        })
    }
}

pub(super) fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/transfers", post(create).get(list))
        .route("/v1/transfers/{name}", get(status))
        .route("/v1/transfers/{name}/entries", post(add))
        .route("/v1/transfers/{name}/dispatch", post(dispatch))
        .route("/v1/transfers/{name}/resume", post(resume))
        .route("/v1/transfers/{name}/cancel", post(cancel))
        .route("/v1/transfers/{name}/wait", get(wait))
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

/// A JSON request body: refused with a clear 4xx when it is too large, not
/// JSON, of the wrong shape or has unknown fields. An empty body is `{}`.
pub(super) struct ApiJson<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the request body is larger than {BODY_BYTES_MAX} bytes"),
                )
            } else {
                ApiError::new(e.status(), "bad_request", e.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the request body is not what this route takes: {e}"),
            )
        })
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's thread failed: {e}")))?
}

pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad_request(format!(
            "invalid transfer name {name:?}: 1 to {NAME_BYTES_MAX} bytes, no '/' and no control \
             characters"
        )));
    }
    Ok(())
}

pub(super) fn check_path(what: &str, path: &str) -> Result<PathBuf, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} {path:?} contains a NUL byte, which no path may contain"),
        ));
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} is longer than {PATH_BYTES_MAX} bytes"),
        ));
    }
    if !path.starts_with('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!(
                "{what} {path:?} is relative: the daemon does not know your working directory; \
                 send absolute paths"
            ),
        ));
    }
    Ok(PathBuf::from(path))
}

pub(super) type Caller_ = ConnectInfo<PeerInfo>;

/// Per-user counts under a bound (root is not counted: it may need every
/// slot to repair things). A permit gives its slot back when dropped.
pub(super) struct PerUser {
    max: usize,
    held: Mutex<HashMap<u32, usize>>,
}

pub(super) struct UserPermit {
    of: Arc<PerUser>,
    uid: u32,
}

impl PerUser {
    pub(super) fn new(max: usize) -> Arc<PerUser> {
        Arc::new(PerUser {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn acquire(self: &Arc<PerUser>, uid: u32) -> Option<UserPermit> {
        if uid != 0 {
            let mut held = self.held.lock().expect("per-user counts poisoned");
            let n = held.entry(uid).or_insert(0);
            if *n >= self.max {
                return None;
            }
            *n += 1;
        }
        Some(UserPermit {
            of: Arc::clone(self),
            uid,
        })
    }

    pub(super) fn acquire_or_busy(self: &Arc<PerUser>, uid: u32) -> Result<UserPermit, ApiError> {
        self.acquire(uid).ok_or_else(|| {
            ApiError::busy(format!(
                "uid {uid} holds {} watchers and waiters already",
                self.max
            ))
        })
    }
}

impl Drop for UserPermit {
    fn drop(&mut self) {
        if self.uid == 0 {
            return;
        }
        let mut held = self.of.held.lock().expect("per-user counts poisoned");
        if let Some(n) = held.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.uid);
            }
        }
    }
}

/// Whose credentials a request acts with on a transfer: the requester's
/// own, as they are now (groups gained or lost since the transfer was
/// made count), when it is the transfer's user; the recorded ones when root
/// acts on another user's transfer (its data stays that user's).
pub(super) fn acting_caller(peer: &Peer, recorded: Caller) -> Caller {
    if peer.caller.uid == recorded.uid {
        peer.caller.clone()
    } else {
        recorded
    }
}
