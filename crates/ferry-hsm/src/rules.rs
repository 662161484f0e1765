//! The queue's rules, apart from any store: what a request becomes at each
//! step (its new record, its event and the event's context), which state
//! may follow which, the rank and the weighted lease order. Every store's
//! [`RequestQueue`](super::RequestQueue) reads and writes rows; these
//! functions decide, so that SQLite and PostgreSQL cannot drift apart.
//!
//! **Architecture invariant:** nothing here does I/O or reads a clock: the
//! caller passes `now_ns` from the clock its store uses.

use serde_json::{Value, json};

use ferry::store::StoreError;

use super::{
    Action, CatalogEntry, CatalogState, FailKind, Lease, NewRequest, Policy, RequestId,
    RequestRecord, RequestState,
};

/// The columns of a request row, in the order both stores read them.
pub const REQUEST_COLUMNS: &str = "id, action, fsname, archive_id, flags, data, fid, path, \
     priority_ms, rank, state, attempts, max_attempts, not_before_ns, lease_holder, \
     lease_expires_ns, waiters, error, created_ns, updated_ns";

/// The columns of a catalog row, in the order both stores read them.
pub const CATALOG_COLUMNS: &str = "fid, path, state, archive_id, object, size, mtime_ns, mode, checksum, updated_ns, ino, \
     ctime_ns";

/// `meta` keys of the [`Policy`], in the order of its fields.
pub const POLICY_KEYS: [&str; 7] = [
    "hsm.head_start_restore_ms",
    "hsm.head_start_remove_ms",
    "hsm.head_start_archive_ms",
    "hsm.max_attempts",
    "hsm.backoff_base_ms",
    "hsm.backoff_max_ms",
    "hsm.restore_share",
];

/// One request change, decided: the record to write, the event's name
/// (`request.<event>`) and its context (without `state` and `attempt`,
/// which [`event_context`] adds from the record as written).
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub new: RequestRecord,
    pub event: &'static str,
    pub context: Value,
}

pub fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

pub fn duration_ns(d: std::time::Duration) -> i64 {
    d.as_nanos().min(i64::MAX as u128) as i64
}

/// Lease order, smaller first: `created - head start(action) - priority`.
pub fn rank(policy: &Policy, action: Action, priority_ms: i64, created_ns: i64) -> i64 {
    let head_start = policy.head_start_ms(action).saturating_add(priority_ms);
    created_ns.saturating_sub(ms_to_ns(head_start))
}

/// Why `request` needs no new request given what the catalog holds of its
/// file (and, for a remove, the waiting archive it just canceled), or
/// `None` when it does. The words are what the caller is told.
pub fn enqueue_noop(
    request: &NewRequest,
    catalog: Option<&CatalogEntry>,
    superseded: bool,
) -> Option<String> {
    let state = catalog.map(|c| c.state);
    let reason = match request.action {
        // Not "nothing to do": the remove did cancel something.
        Action::Remove if catalog.is_none_or(|c| c.object.is_none()) && superseded => {
            return Some(format!(
                "canceled its waiting archive; {} has no archived copy to remove",
                request.fid
            ));
        }
        _ => enqueue_noop_reason(request, catalog, state),
    };
    reason.map(|r| format!("nothing to do: {r}"))
}

fn enqueue_noop_reason(
    request: &NewRequest,
    catalog: Option<&CatalogEntry>,
    state: Option<CatalogState>,
) -> Option<String> {
    match request.action {
        // Only a caller that looked at the file (the friendly commands
        // refresh the catalog first, and give a path) knows it is
        // unchanged; the upcall never looks, and Lustre sends ARCHIVE
        // exactly when a file changed: the worker decides then.
        Action::Archive if request.path.is_some() && state == Some(CatalogState::Archived) => {
            Some(format!("{} is archived and unchanged since", request.fid))
        }
        // Its data is only in the archive: the file is a stub.
        Action::Archive if state == Some(CatalogState::Released) => Some(format!(
            "{} is released: its data is in the archive",
            request.fid
        )),
        Action::Remove if catalog.is_none_or(|c| c.object.is_none()) => {
            Some(format!("{} has no archived copy", request.fid))
        }
        _ => None,
    }
}

/// A new request, waiting (its id is the store's to assign).
pub fn enqueued(policy: &Policy, request: &NewRequest, now_ns: i64) -> Transition {
    let new = RequestRecord {
        id: RequestId(0),
        action: request.action,
        fsname: request.fsname.clone(),
        archive_id: request.archive_id,
        flags: request.flags,
        data: request.data.clone(),
        fid: request.fid.clone(),
        path: request.path.clone(),
        priority_ms: request.priority_ms,
        rank: rank(policy, request.action, request.priority_ms, now_ns),
        state: RequestState::Waiting,
        attempts: 0,
        max_attempts: policy.max_attempts,
        not_before_ns: 0,
        lease_holder: None,
        lease_expires_ns: None,
        waiters: 1,
        error: None,
        created_ns: now_ns,
        updated_ns: now_ns,
    };
    let context = json!({
        "action": request.action.as_str(),
        "fid": request.fid,
        "fsname": request.fsname,
        "archive_id": request.archive_id,
        "path": request.path.as_ref().map(|p| p.to_string_lossy()),
    });
    Transition {
        new,
        event: "waiting",
        context,
    }
}

/// One more caller waits on a live request of the same action and file.
pub fn joined(live: &RequestRecord) -> Transition {
    let mut new = live.clone();
    new.waiters += 1;
    Transition {
        context: json!({"waiters": new.waiters}),
        new,
        event: "joined",
    }
}

/// A remove supersedes the file's waiting archive.
pub fn superseded(archive: &RequestRecord) -> Transition {
    let mut new = archive.clone();
    new.state = RequestState::Canceled;
    new.error = Some("superseded by a remove of the same file".into());
    Transition {
        new,
        event: "canceled",
        context: json!({"reason": "removed"}),
    }
}

/// Leased to `worker` until `expires_ns`: the next attempt.
pub fn started(old: &RequestRecord, worker: &str, expires_ns: i64) -> Transition {
    let mut new = old.clone();
    new.state = RequestState::Started;
    new.attempts += 1;
    new.lease_holder = Some(worker.to_owned());
    new.lease_expires_ns = Some(expires_ns);
    Transition {
        new,
        event: "started",
        context: json!({"worker": worker}),
    }
}

pub fn succeeded(old: &RequestRecord) -> Transition {
    let mut new = old.clone();
    new.state = RequestState::Succeed;
    new.lease_expires_ns = None;
    new.error = None;
    Transition {
        new,
        event: "succeed",
        context: json!({}),
    }
}

/// A failed attempt: back to the queue after the policy's back-off while
/// attempts remain and retrying may help, failed otherwise.
pub fn failed(
    old: &RequestRecord,
    policy: &Policy,
    kind: FailKind,
    error: &str,
    now_ns: i64,
) -> Transition {
    let mut new = old.clone();
    new.lease_holder = None;
    new.lease_expires_ns = None;
    new.error = Some(error.to_owned());
    if kind == FailKind::Retry && old.attempts < old.max_attempts {
        let backoff = policy.backoff(old.attempts);
        new.state = RequestState::Waiting;
        new.not_before_ns = now_ns.saturating_add(duration_ns(backoff));
        Transition {
            new,
            event: "waiting",
            context: json!({"error": error, "retry_in_ms": backoff.as_millis() as u64}),
        }
    } else {
        new.state = RequestState::Failed;
        Transition {
            new,
            event: "failed",
            context: json!({"error": error}),
        }
    }
}

pub fn canceled(old: &RequestRecord) -> Transition {
    let mut new = old.clone();
    new.state = RequestState::Canceled;
    new.lease_holder = None;
    new.lease_expires_ns = None;
    new.error = Some("canceled".into());
    Transition {
        new,
        event: "canceled",
        context: json!({"reason": "cancel"}),
    }
}

/// A lease that expired: back to the queue, or failed when it was the
/// last attempt.
pub fn expired(old: &RequestRecord, now_ns: i64) -> Transition {
    let mut new = old.clone();
    let worker = new.lease_holder.take();
    new.lease_expires_ns = None;
    let context = json!({"reason": "lease expired", "worker": worker});
    if old.attempts >= old.max_attempts {
        new.state = RequestState::Failed;
        new.error = Some(format!(
            "the lease of worker {} expired at attempt {} of {}",
            worker.as_deref().unwrap_or("?"),
            old.attempts,
            old.max_attempts
        ));
        Transition {
            new,
            event: "failed",
            context,
        }
    } else {
        new.state = RequestState::Waiting;
        new.not_before_ns = now_ns;
        Transition {
            new,
            event: "waiting",
            context,
        }
    }
}

/// Whether a request may go from `old` to `new`: a state change must be
/// one [`RequestState::allowed_from`] allows; staying put (a waiter
/// joining) only while the request is live.
pub fn transition_allowed(old: RequestState, new: RequestState) -> bool {
    if old == new {
        !old.is_terminal()
    } else {
        new.allowed_from().contains(&old)
    }
}

/// Whether `lease` is the request's current lease (same attempt, same
/// holder, still started): the fencing check of heartbeat, ack and fail.
pub fn lease_is_current(current: &RequestRecord, lease: &Lease) -> bool {
    current.state == RequestState::Started
        && current.attempts == lease.attempt
        && current.lease_holder.as_deref() == Some(lease.worker.as_str())
}

/// The event context as written: the caller's, plus the request's new
/// state and attempt.
pub fn event_context(mut context: Value, new: &RequestRecord) -> Value {
    if let Value::Object(map) = &mut context {
        map.insert("state".into(), new.state.as_str().into());
        map.insert("attempt".into(), new.attempts.into());
    }
    context
}

/// The event context of a catalog change.
pub fn catalog_context(new: &CatalogEntry, from: Option<CatalogState>) -> Value {
    json!({
        "fid": new.fid,
        "path": new.path.as_ref().map(|p| p.to_string_lossy()),
        "from": from.map(|s| s.as_str()),
        "object": new.object,
    })
}

/// Which requests a lease looks at, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseClass {
    /// Every action, in rank order (no restore share).
    Any,
    /// Restores and removes: the better ranked of the two heads.
    FirstClass,
    Archives,
}

/// The classes to try for the next lease, best first, given how many
/// restores and removes were leased since the last archive: with a restore
/// share, restores and removes go first until they have had
/// `restore_share` leases, then one archive; without, rank order.
pub fn lease_order(policy: &Policy, since_archive: i64) -> &'static [LeaseClass] {
    use LeaseClass::*;
    if policy.restore_share == 0 {
        &[Any]
    } else if since_archive >= i64::from(policy.restore_share) {
        &[Archives, FirstClass]
    } else {
        &[FirstClass, Archives]
    }
}

/// The restore-and-remove count after leasing one `action`.
pub fn since_archive_after(since_archive: i64, action: Action) -> i64 {
    match action {
        Action::Archive => 0,
        _ => since_archive.saturating_add(1),
    }
}

/// Of two candidates, the one to lease first: smaller `(rank, id)`.
pub fn better(a: RequestRecord, b: RequestRecord) -> RequestRecord {
    if (b.rank, b.id) < (a.rank, a.id) {
        b
    } else {
        a
    }
}

/// Whether a file's catalog entry may become `new` from `old` (none: not
/// in the catalog): refused as [`StoreError::CatalogConflict`].
pub fn check_catalog_change(
    path: &std::path::Path,
    old: Option<&CatalogEntry>,
    new: &CatalogEntry,
) -> Result<(), StoreError> {
    let from = old.map(|o| o.state);
    if !new.state.allowed_from().contains(&from) {
        return Err(StoreError::CatalogConflict {
            path: path.to_path_buf(),
            fid: new.fid.clone(),
            state: from.map_or("unknown".into(), |s| s.to_string()),
            expected: new.state,
            hint: "the catalog refuses that change",
        });
    }
    // An archived or released file has a copy to come back from.
    if matches!(new.state, CatalogState::Archived | CatalogState::Released) {
        assert!(
            new.object.is_some() && new.checksum.is_some(),
            "an archived file has an object and a checksum"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: Action) -> RequestRecord {
        enqueued(
            &Policy::DEFAULT,
            &crate::conformance::request(action, "f"),
            1_000_000_000_000,
        )
        .new
    }

    #[test]
    fn rank_is_created_minus_head_starts() {
        let r = record(Action::Restore);
        assert_eq!(r.rank, 1_000_000_000_000 - 600_000 * 1_000_000);
        assert_eq!(
            rank(&Policy::DEFAULT, Action::Archive, 5, 10_000_000),
            5_000_000
        );
        assert_eq!(
            rank(&Policy::DEFAULT, Action::Remove, 0, i64::MIN),
            i64::MIN
        );
    }

    #[test]
    fn the_weighted_order_alternates_share_then_one_archive() {
        let policy = Policy {
            restore_share: 2,
            ..Policy::DEFAULT
        };
        let mut since = 0;
        let mut picks = Vec::new();
        for _ in 0..6 {
            let class = lease_order(&policy, since)[0];
            picks.push(class);
            let action = match class {
                LeaseClass::Archives => Action::Archive,
                _ => Action::Restore,
            };
            since = since_archive_after(since, action);
        }
        use LeaseClass::*;
        assert_eq!(
            picks,
            [
                FirstClass, FirstClass, Archives, FirstClass, FirstClass, Archives
            ]
        );
        assert_eq!(lease_order(&Policy::DEFAULT.fifo(), 9), [Any]);
    }

    #[test]
    fn failures_retry_with_backoff_until_the_last_attempt() {
        let policy = Policy::DEFAULT;
        let mut r = started(&record(Action::Archive), "w", 5).new;
        let retry = failed(&r, &policy, FailKind::Retry, "EIO", 100);
        assert_eq!(retry.new.state, RequestState::Waiting);
        assert_eq!(retry.new.not_before_ns, 100 + 1_000_000_000);
        assert!(transition_allowed(r.state, retry.new.state));
        r.attempts = r.max_attempts;
        let last = failed(&r, &policy, FailKind::Retry, "EIO", 100);
        assert_eq!(
            (last.new.state, last.event),
            (RequestState::Failed, "failed")
        );
        let ctx = event_context(last.context, &last.new);
        assert_eq!(ctx["state"], "failed");
        assert_eq!(ctx["attempt"], Policy::DEFAULT.max_attempts);
    }

    #[test]
    fn terminal_states_stay_and_joins_need_a_live_request() {
        use RequestState::*;
        assert!(transition_allowed(Waiting, Waiting));
        assert!(!transition_allowed(Succeed, Succeed));
        assert!(!transition_allowed(Succeed, Canceled));
        assert!(!transition_allowed(Waiting, Succeed));
        assert!(transition_allowed(Started, Canceled));
    }
}
