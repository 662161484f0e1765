//! Who is asking: a connection's peer credentials, the credentials a
//! request acts with, and per-user bounds. The bottom of the server: it
//! knows nothing of the daemon or the routes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use crate::creds::Peer;
use crate::error::ApiError;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use ferry::Caller;

/// The peer of a connection, read once when it connects (by the
/// listener, [`Guarded`]), and the connection's idle clock.
#[derive(Clone)]
pub struct PeerInfo {
    peer: Result<Peer, String>,
    pub(super) conn: Arc<ConnState>,
}

impl std::fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.peer.fmt(f)
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

/// A handler's view of who connected.
pub(super) type PeerConn = ConnectInfo<PeerInfo>;

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

/// What a connection's requests and its stream share.
pub struct ConnState {
    pub(super) in_flight: AtomicUsize,
    pub(super) idle_since: Mutex<Instant>,
}

impl ConnState {
    /// A request started on this connection; the idle clock stops until
    /// the guard (and so its response) is dropped.
    pub(super) fn begin(self: &Arc<ConnState>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }
}

pub(super) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().expect("connection state poisoned") = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
