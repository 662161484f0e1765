//! HSM coordination: a durable queue of archive, restore and remove
//! requests on the files of a managed file system, workers that serve it,
//! and the archive back ends they move data to.
//!
//! This crate stands above `ferry`: it keeps its queue and catalog in a
//! ferry store (the same file or database as the transfers, so that its
//! events are in the store's one ordered log), and `ferry` never imports it.
//!
//! # Brief overview
//!
//! - [`RequestQueue`] is the queue: `ferry::store::SqliteStore` implements
//!   it here (`sqlite.rs`, through the store's write and read transactions),
//!   and `ferry_postgres::PgStore` in its own crate; [`conformance`] checks
//!   both the same way. Requests go `waiting → started → succeed | failed |
//!   canceled`; every change is written with its event (`request.*`) in one
//!   transaction.
//! - Leases: [`RequestQueue::lease`] hands out the best-ranked waiting
//!   requests for a bounded time with an attempt number, the fencing token
//!   that [`RequestQueue::heartbeat`], [`RequestQueue::ack`] and
//!   [`RequestQueue::fail`] must present: a stale attempt never completes.
//! - Rank: `created - head start(action) - priority`, fixed at enqueue.
//!   Restores get a head start over archives ([`Policy`]); an archive that
//!   waited longer than that head start outranks any new restore, so
//!   archives never starve. The lease query seeks an index on the rank.
//! - The catalog ([`CatalogState`]) records what the archive holds of each
//!   file; [`catalog`] mirrors it in the `user.ferry.hsm` extended attribute
//!   and releases files. [`archive`] holds the back-end trait and the POSIX
//!   archive; [`worker`] leases, moves, heartbeats and acks.
//! - [`rules`] decides every step (new record, event, weighted order, back-off)
//!   without I/O, so that every store applies the same rules.
//! - The words the store itself needs ([`RequestId`], [`RequestState`],
//!   [`CatalogState`]) live in `ferry::model` and are re-exported here.

pub mod archive;
pub mod catalog;
pub mod conformance;
pub mod rules;
mod sqlite;
pub mod worker;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use ferry::model::{CatalogState, RequestId, RequestState};
use ferry::store::{Store, StoreError};

/// What a request asks for (Lustre's `hsm_copytool_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Archive,
    Restore,
    Remove,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Archive, Action::Restore, Action::Remove];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Archive => "archive",
            Action::Restore => "restore",
            Action::Remove => "remove",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request as the upcall gives it (Lustre's coordinator-bypass argument
/// order), plus the path when the caller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    pub action: Action,
    pub fsname: String,
    /// The archive back end that serves it; 0: any.
    pub archive_id: u32,
    pub flags: u64,
    /// Opaque to ferry; handed to the worker as given.
    pub data: Vec<u8>,
    /// The file's identifier (a Lustre FID, or an absolute path).
    pub fid: String,
    pub path: Option<PathBuf>,
    /// An extra head start on top of the action's, in milliseconds.
    pub priority_ms: i64,
}

/// A request as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RequestRecord {
    pub id: RequestId,
    pub action: Action,
    pub fsname: String,
    pub archive_id: u32,
    pub flags: u64,
    #[serde(skip)]
    pub data: Vec<u8>,
    pub fid: String,
    pub path: Option<PathBuf>,
    pub priority_ms: i64,
    /// Lease order: smaller first.
    pub rank: i64,
    pub state: RequestState,
    /// Leases handed out so far; the current lease's fencing token.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Not leased before this time (back-off after a failure).
    pub not_before_ns: i64,
    pub lease_holder: Option<String>,
    pub lease_expires_ns: Option<i64>,
    /// Callers waiting on this request (dedup joins them).
    pub waiters: u32,
    pub error: Option<String>,
    pub created_ns: i64,
    pub updated_ns: i64,
}

/// What [`RequestQueue::enqueue`] did with one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Enqueued {
    /// A new request, waiting.
    Queued { id: RequestId },
    /// A live request of the same action on the same file exists: the
    /// caller became one more of its waiters.
    Joined { id: RequestId, waiters: u32 },
    /// Nothing to do: an archive of a file whose copy is current, or a
    /// remove of a file with no archived copy.
    Noop { reason: String },
}

impl Enqueued {
    pub fn id(&self) -> Option<RequestId> {
        match self {
            Enqueued::Queued { id } | Enqueued::Joined { id, .. } => Some(*id),
            Enqueued::Noop { .. } => None,
        }
    }
}

/// A lease on one request: `attempt` is the fencing token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub request: RequestRecord,
    pub attempt: u32,
    pub worker: String,
    pub expires_ns: i64,
}

impl Lease {
    pub fn id(&self) -> RequestId {
        self.request.id
    }
}

/// Which requests a worker serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    /// Only requests for this archive (and those for any archive, id 0).
    pub archive_id: Option<u32>,
    /// Only requests of these actions (every action when `None`): a
    /// worker whose archives are at their cap still leases restores.
    pub actions: Option<Vec<Action>>,
}

impl LeaseFilter {
    /// Whether a request of `action` passes the filter.
    pub fn allows(&self, action: Action) -> bool {
        self.actions.as_ref().is_none_or(|a| a.contains(&action))
    }
}

/// What the archive holds of a file: one catalog row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CatalogEntry {
    pub fid: String,
    pub path: Option<PathBuf>,
    pub state: CatalogState,
    pub archive_id: u32,
    /// The archived copy's object id, when there is one.
    pub object: Option<String>,
    /// The file as it was archived.
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub checksum: Option<String>,
    pub updated_ns: i64,
    /// The file's inode and change time as ferry last left it (after its
    /// own archive, release or restore of it; 0: not recorded). A user
    /// can set mtime back, never ctime: a file changed in place with its
    /// mtime restored is dirty by these.
    pub ino: u64,
    pub ctime_ns: i64,
}

/// How a failed attempt ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailKind {
    /// Retried after a back-off, until the attempts run out.
    Retry,
    /// Failed now: retrying cannot help (no archived copy, bad request).
    Permanent,
    /// Failed now, and the file's archived copy is unusable: the catalog
    /// marks the file lost.
    Lost,
}

/// Queue-wide settings, kept in the store so that every enqueuer and
/// worker of one store agrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Head start of each action, in milliseconds: a restore enqueued now
    /// ranks as an archive enqueued `restore - archive` ms ago.
    pub head_start_restore_ms: i64,
    pub head_start_remove_ms: i64,
    pub head_start_archive_ms: i64,
    /// Leases handed out per request before it fails.
    pub max_attempts: u32,
    /// Back-off after the n-th failure: `base * 2^(n-1)`, at most `max`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// When both wait, restores and removes get this many leases for each
    /// one an archive gets: a restore never waits behind an archive
    /// backlog, however old, and archives never starve. 0: rank order only
    /// (head starts and enqueue time).
    pub restore_share: u32,
}

impl Policy {
    /// The defaults: restores first by ten minutes, removes by one, at most
    /// 5 attempts, back-off 1 s doubling up to 5 minutes.
    pub const DEFAULT: Policy = Policy {
        head_start_restore_ms: 600_000,
        head_start_remove_ms: 60_000,
        head_start_archive_ms: 0,
        max_attempts: 5,
        backoff_base_ms: 1_000,
        backoff_max_ms: 300_000,
        restore_share: 4,
    };

    /// Plain FIFO: no action goes first.
    pub fn fifo(self) -> Policy {
        Policy {
            head_start_restore_ms: 0,
            head_start_remove_ms: 0,
            head_start_archive_ms: 0,
            restore_share: 0,
            ..self
        }
    }

    pub fn head_start_ms(&self, action: Action) -> i64 {
        match action {
            Action::Archive => self.head_start_archive_ms,
            Action::Restore => self.head_start_restore_ms,
            Action::Remove => self.head_start_remove_ms,
        }
    }

    /// The wait before attempt `failed + 1`, after `failed` failures.
    pub fn backoff(&self, failed: u32) -> Duration {
        let shift = failed.saturating_sub(1).min(32);
        let ms = self.backoff_base_ms.saturating_mul(1u64 << shift);
        Duration::from_millis(ms.min(self.backoff_max_ms))
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::DEFAULT
    }
}

/// Counts of requests per action and state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// `(action, state, count)`, for every pair with requests.
    pub counts: Vec<(Action, RequestState, u64)>,
    /// Waiting requests whose back-off has not passed yet.
    pub backing_off: u64,
    /// Started requests whose lease has expired (not yet returned).
    pub expired_leases: u64,
}

impl QueueStats {
    pub fn count(&self, action: Option<Action>, state: RequestState) -> u64 {
        self.counts
            .iter()
            .filter(|(a, s, _)| *s == state && action.is_none_or(|x| x == *a))
            .map(|(_, _, n)| n)
            .sum()
    }
}

/// The most requests one enqueue, lease or list call handles.
pub const BATCH_MAX: usize = 10_000;

/// The durable request queue and file catalog, part of a [`Store`] (its
/// events are in the store's log). Implemented by every store;
/// [`conformance`] holds the tests every implementation must pass.
///
/// **Invariants:** every request state change is written with its
/// `request.*` event in one transaction, and every catalog change with its
/// `catalog.*` event; a call that fails changes nothing. A lease, heartbeat,
/// ack or fail with an attempt other than the request's current one is
/// refused ([`StoreError::StaleLease`]).
pub trait RequestQueue: Store {
    /// Makes the batch durable, in one transaction, in order. A restore or
    /// archive of a file with a live request of that action joins it; a
    /// remove cancels the file's waiting archive.
    fn enqueue(&self, batch: &[NewRequest]) -> Result<Vec<Enqueued>, StoreError>;

    /// Returns expired leases to the queue, then leases at most `max`
    /// ready requests in rank order to `worker` for `lease`.
    fn lease(
        &self,
        worker: &str,
        filter: &LeaseFilter,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Extends a live lease to `lease` from now. Refused when the attempt
    /// is stale or the request was cancelled: the worker must stop.
    fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<i64, StoreError>;

    /// Completes the leased request; `catalog` (written in the same
    /// transaction) is what the archive now holds of the file.
    fn ack(&self, lease: &Lease, catalog: Option<&CatalogEntry>) -> Result<(), StoreError>;

    /// Fails the attempt; returns the request's new state (`waiting` when
    /// it will be retried after the policy's back-off).
    fn fail(&self, lease: &Lease, kind: FailKind, error: &str) -> Result<RequestState, StoreError>;

    /// Cancels a waiting or started request (a started one's worker learns
    /// at its next heartbeat).
    fn cancel(&self, id: RequestId) -> Result<(), StoreError>;

    /// Whether a [`StoreError::ReadOnly`] of this store ends by itself
    /// (a probe returns it to read-write when there is room again), so a
    /// worker may pause on it rather than stop.
    fn recovers_from_read_only(&self) -> bool {
        false
    }

    /// Blocks until the store takes writes again or `timeout` passed;
    /// returns whether it does.
    fn wait_read_write(&self, timeout: Duration) -> bool {
        let _ = timeout;
        true
    }

    /// Returns every expired lease to the queue (or fails the request when
    /// it has no attempt left); returns how many.
    fn expire_leases(&self) -> Result<usize, StoreError>;

    fn request(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError>;

    /// Requests in `state` (all when `None`), oldest first, at most `limit`.
    fn requests(
        &self,
        state: Option<RequestState>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError>;

    fn stats(&self) -> Result<QueueStats, StoreError>;

    fn policy(&self) -> Result<Policy, StoreError>;

    fn set_policy(&self, policy: &Policy) -> Result<(), StoreError>;

    fn catalog_entry(&self, fid: &str) -> Result<Option<CatalogEntry>, StoreError>;

    /// Moves a file's catalog entry to `to` (release, dirty): a
    /// compare-and-swap on `from`, refused otherwise
    /// ([`StoreError::CatalogConflict`]).
    fn set_catalog_state(
        &self,
        fid: &str,
        from: CatalogState,
        to: CatalogState,
    ) -> Result<CatalogEntry, StoreError>;

    /// Records the file's inode and change time after ferry's own change
    /// to it (the mirror attribute, a release's punch), while its entry is
    /// still in `state`; `false` when it no longer is (nothing written).
    /// Not a state change, so no event: a missed stamp only makes the file
    /// look dirty later, never clean.
    fn set_catalog_stamp(
        &self,
        fid: &str,
        state: CatalogState,
        ino: u64,
        ctime_ns: i64,
    ) -> Result<bool, StoreError>;
}

/// Blocks until request `id` is over (or `timeout` passed: `Ok(None)`),
/// following the event log, and returns how it ended.
pub fn wait_request(
    queue: &dyn RequestQueue,
    id: RequestId,
    timeout: Option<Duration>,
) -> ferry::Result<Option<RequestRecord>> {
    // The cursor first, then the state: a change in between is in the log
    // after the cursor, so it cannot be missed.
    let since = queue.last_seq()?;
    let over = |queue: &dyn RequestQueue| -> ferry::Result<Option<RequestRecord>> {
        let r = queue
            .request(id)?
            .ok_or_else(|| StoreError::NoSuchRequest {
                path: queue.location(),
                id,
            })?;
        Ok(r.state.is_terminal().then_some(r))
    };
    if let Some(r) = over(queue)? {
        return Ok(Some(r));
    }
    let filter = ferry::store::EventFilter {
        request: Some(id),
        kind: Some("request".into()),
        ..Default::default()
    };
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let mut watch = ferry::events::Watch::new(queue, since, filter)?;
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        match watch.next_timeout(left)? {
            None => return Ok(None),
            Some(ferry::events::WatchItem::Event(e))
                if e.context["state"]
                    .as_str()
                    .and_then(RequestState::parse)
                    .is_some_and(RequestState::is_terminal) =>
            {
                return over(queue);
            }
            Some(_) => {}
        }
    }
}
