//! The tests every [`RequestQueue`] implementation must pass, written once
//! against the trait: the SQLite store runs them in its unit tests, and a
//! PostgreSQL store runs the same functions on a fresh database each.
//!
//! Each function takes a fresh, empty store and panics on a violation.
//! Nothing here sleeps to hope something happened: time-based behaviour
//! (leases, back-off, ageing) uses short durations and polls the condition
//! with a bounded deadline.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{
    Action, CatalogEntry, CatalogState, Enqueued, FailKind, Lease, LeaseFilter, NewRequest, Policy,
    RequestId, RequestQueue, RequestState,
};
use ferry::store::{EventFilter, StoreError};

/// How long a poll for a time-based change may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);
const LONG: Duration = Duration::from_secs(60);

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

pub fn request(action: Action, fid: &str) -> NewRequest {
    NewRequest {
        action,
        fsname: "fs0".into(),
        archive_id: 1,
        flags: 0,
        data: Vec::new(),
        fid: fid.into(),
        path: None,
        priority_ms: 0,
    }
}

fn enqueue_one<Q: RequestQueue>(q: &Q, action: Action, fid: &str) -> RequestId {
    match q.enqueue(&[request(action, fid)]).unwrap().remove(0) {
        Enqueued::Queued { id } => id,
        other => panic!("expected a new request, got {other:?}"),
    }
}

fn lease_one<Q: RequestQueue>(q: &Q, worker: &str, lease: Duration) -> Lease {
    let mut leases = q.lease(worker, &LeaseFilter::default(), 1, lease).unwrap();
    assert_eq!(leases.len(), 1, "one request ready");
    leases.remove(0)
}

/// Leases one request, waiting (bounded) for one to become ready.
fn lease_when_ready<Q: RequestQueue>(q: &Q, worker: &str, lease: Duration) -> Lease {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut leases = q.lease(worker, &LeaseFilter::default(), 1, lease).unwrap();
        if let Some(lease) = leases.pop() {
            return lease;
        }
        assert!(Instant::now() < deadline, "no request became ready");
        std::thread::yield_now();
    }
}

fn archived(fid: &str, object: &str) -> CatalogEntry {
    CatalogEntry {
        fid: fid.into(),
        path: None,
        state: CatalogState::Archived,
        archive_id: 1,
        object: Some(object.into()),
        size: 3,
        mtime_ns: 7,
        mode: 0o644,
        checksum: Some("xxh3-128:0".into()),
        updated_ns: 0,
        ino: 11,
        ctime_ns: 13,
    }
}

fn state<Q: RequestQueue>(q: &Q, id: RequestId) -> RequestState {
    q.request(id).unwrap().expect("request exists").state
}

/// The names of a request's events, in order.
fn events<Q: RequestQueue>(q: &Q, id: RequestId) -> Vec<String> {
    let filter = EventFilter {
        request: Some(id),
        ..Default::default()
    };
    let events = q.events_since(0, &filter, 10_000).unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        events
            .iter()
            .all(|e| e.request == Some(id) && e.transfer.is_none())
    );
    events.into_iter().map(|e| e.name).collect()
}

fn is_stale<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::StaleLease { .. }))
}

fn quick_policy<Q: RequestQueue>(q: &Q, max_attempts: u32) {
    q.set_policy(&Policy {
        max_attempts,
        backoff_base_ms: 20,
        backoff_max_ms: 40,
        ..Policy::DEFAULT
    })
    .unwrap();
}

pub fn enqueue_is_durable_and_has_events<Q: RequestQueue>(q: &Q) {
    let mut batch = vec![
        request(Action::Archive, "a"),
        request(Action::Archive, "b"),
        request(Action::Restore, "c"),
    ];
    batch[0].data = b"opaque\0data".to_vec();
    batch[0].flags = 0x42;
    batch[0].path = Some("/fs/a".into());
    let out = q.enqueue(&batch).unwrap();
    let ids: Vec<RequestId> = out.iter().map(|e| e.id().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let a = q.request(ids[0]).unwrap().unwrap();
    assert_eq!(
        (a.action, a.fsname.as_str(), a.archive_id, a.flags),
        (Action::Archive, "fs0", 1, 0x42)
    );
    assert_eq!(a.data, b"opaque\0data");
    assert_eq!(a.path.as_deref(), Some("/fs/a".as_ref()));
    assert_eq!(
        (a.state, a.attempts, a.waiters),
        (RequestState::Waiting, 0, 1)
    );
    assert_eq!(a.max_attempts, Policy::DEFAULT.max_attempts);
    for id in &ids {
        assert_eq!(events(q, *id), ["request.waiting"]);
    }
    let listed = q.requests(Some(RequestState::Waiting), 100).unwrap();
    assert_eq!(listed.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    let stats = q.stats().unwrap();
    assert_eq!(stats.count(Some(Action::Archive), RequestState::Waiting), 2);
    assert_eq!(stats.count(None, RequestState::Waiting), 3);
    assert!(q.request(RequestId(999_999)).unwrap().is_none());
}

/// Every allowed transition, with its event, and refusals of the others.
pub fn every_transition<Q: RequestQueue>(q: &Q) {
    quick_policy(q, 2);
    // waiting → started → succeed
    let a = enqueue_one(q, Action::Archive, "a");
    let lease = lease_one(q, "w1", LONG);
    assert_eq!((lease.id(), lease.attempt), (a, 1));
    assert_eq!(state(q, a), RequestState::Started);
    let r = q.request(a).unwrap().unwrap();
    assert_eq!(r.lease_holder.as_deref(), Some("w1"));
    q.ack(&lease, Some(&archived("a", "obj-a"))).unwrap();
    assert_eq!(state(q, a), RequestState::Succeed);
    assert_eq!(
        events(q, a),
        [
            "request.waiting",
            "request.started",
            "request.succeed",
            "catalog.archived"
        ]
    );
    // succeed is terminal: no cancel, no second ack.
    assert!(matches!(
        q.cancel(a),
        Err(StoreError::RequestTransition { .. })
    ));
    assert!(is_stale(q.ack(&lease, None)));

    // started → waiting (retry) → started → failed (no attempt left)
    let b = enqueue_one(q, Action::Archive, "b");
    let first = lease_one(q, "w1", LONG);
    assert_eq!(
        q.fail(&first, FailKind::Retry, "EIO").unwrap(),
        RequestState::Waiting
    );
    let second = lease_when_ready(q, "w1", LONG);
    assert_eq!((second.id(), second.attempt), (b, 2));
    assert_eq!(
        q.fail(&second, FailKind::Retry, "EIO again").unwrap(),
        RequestState::Failed
    );
    let failed = q.request(b).unwrap().unwrap();
    assert_eq!(failed.error.as_deref(), Some("EIO again"));
    assert_eq!(
        events(q, b),
        [
            "request.waiting",
            "request.started",
            "request.waiting",
            "request.started",
            "request.failed"
        ]
    );

    // started → failed at once (permanent)
    let c = enqueue_one(q, Action::Restore, "c");
    let lease = lease_one(q, "w1", LONG);
    assert_eq!(
        q.fail(&lease, FailKind::Permanent, "no copy").unwrap(),
        RequestState::Failed
    );
    assert_eq!(state(q, c), RequestState::Failed);

    // waiting → canceled, started → canceled
    let d = enqueue_one(q, Action::Archive, "d");
    q.cancel(d).unwrap();
    assert_eq!(state(q, d), RequestState::Canceled);
    assert_eq!(events(q, d), ["request.waiting", "request.canceled"]);
    let e = enqueue_one(q, Action::Archive, "e");
    let lease = lease_one(q, "w1", LONG);
    q.cancel(e).unwrap();
    assert_eq!(state(q, e), RequestState::Canceled);
    assert!(is_stale(q.ack(&lease, None)));
    assert!(matches!(
        q.cancel(e),
        Err(StoreError::RequestTransition { .. })
    ));
    assert!(matches!(
        q.cancel(RequestId(999_999)),
        Err(StoreError::NoSuchRequest { .. })
    ));

    // started → waiting (lease expired) → started → failed (expired, no attempt left)
    let f = enqueue_one(q, Action::Archive, "f");
    let _gone = lease_one(q, "w1", Duration::ZERO);
    let again = lease_when_ready(q, "w2", Duration::ZERO);
    assert_eq!((again.id(), again.attempt), (f, 2));
    let deadline = Instant::now() + DEADLINE;
    while state(q, f) != RequestState::Failed {
        q.expire_leases().unwrap();
        assert!(
            Instant::now() < deadline,
            "the expired lease was not failed"
        );
    }
    assert_eq!(
        events(q, f),
        [
            "request.waiting",
            "request.started",
            "request.waiting",
            "request.started",
            "request.failed"
        ]
    );
    assert!(
        q.lease("w1", &LeaseFilter::default(), 10, LONG)
            .unwrap()
            .is_empty()
    );
}

pub fn restores_before_archives_with_ageing<Q: RequestQueue>(q: &Q) {
    q.set_policy(&Policy {
        head_start_restore_ms: 60_000,
        ..Policy::DEFAULT
    })
    .unwrap();
    let batch: Vec<NewRequest> = (0..100)
        .map(|i| request(Action::Archive, &format!("a{i}")))
        .collect();
    q.enqueue(&batch).unwrap();
    let restore = enqueue_one(q, Action::Restore, "r");
    let first = lease_one(q, "w", LONG);
    assert_eq!(first.id(), restore, "the restore enqueued last goes first");
    let r = &first.request;
    assert_eq!(r.rank, r.created_ns - 60_000 * 1_000_000);

    // Weights, not ageing into FIFO: behind a backlog of archives however
    // old (no head start at all here), a restore waits for at most one of
    // them; and with restores streaming in, an archive still gets one lease
    // in every restore_share + 1.
    q.set_policy(&Policy {
        head_start_restore_ms: 0,
        restore_share: 2,
        ..Policy::DEFAULT
    })
    .unwrap();
    let drained = q.lease("w", &LeaseFilter::default(), 1000, LONG).unwrap();
    assert_eq!(drained.len(), 100);
    let backlog: Vec<NewRequest> = (0..50)
        .map(|i| request(Action::Archive, &format!("old{i}")))
        .collect();
    q.enqueue(&backlog).unwrap();
    let restores: Vec<RequestId> = (0..6)
        .map(|i| enqueue_one(q, Action::Restore, &format!("r{i}")))
        .collect();
    let order: Vec<Lease> = (0..9).map(|_| lease_one(q, "w", LONG)).collect();
    let is_archive: Vec<bool> = order
        .iter()
        .map(|l| l.request.action == Action::Archive)
        .collect();
    assert!(
        !is_archive[..2].iter().all(|a| *a),
        "a restore waits behind at most one archive: {is_archive:?}"
    );
    assert!(
        is_archive.windows(3).all(|w| w.contains(&true)),
        "an archive gets one lease in every three: {is_archive:?}"
    );
    let leased_restores: Vec<RequestId> = order
        .iter()
        .filter(|l| l.request.action == Action::Restore)
        .map(Lease::id)
        .collect();
    assert_eq!(leased_restores, restores, "restores in their own order");
}

pub fn fifo_when_no_head_start<Q: RequestQueue>(q: &Q) {
    q.set_policy(&Policy::DEFAULT.fifo()).unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let action = if i % 3 == 0 {
            Action::Restore
        } else {
            Action::Archive
        };
        ids.push(enqueue_one(q, action, &format!("f{i}")));
    }
    let order: Vec<RequestId> = q
        .lease("w", &LeaseFilter::default(), 100, LONG)
        .unwrap()
        .iter()
        .map(Lease::id)
        .collect();
    assert_eq!(order, ids);
}

pub fn dedup_joins_waiters<Q: RequestQueue>(q: &Q) {
    let first = enqueue_one(q, Action::Restore, "f");
    let out = q
        .enqueue(&[request(Action::Restore, "f"), request(Action::Restore, "f")])
        .unwrap();
    assert_eq!(
        out,
        [
            Enqueued::Joined {
                id: first,
                waiters: 2
            },
            Enqueued::Joined {
                id: first,
                waiters: 3
            }
        ]
    );
    let lease = lease_one(q, "w", LONG);
    // A restore while the first runs joins it too.
    assert_eq!(
        q.enqueue(&[request(Action::Restore, "f")]).unwrap(),
        [Enqueued::Joined {
            id: first,
            waiters: 4
        }]
    );
    // Another action on the same file is its own request.
    let other = enqueue_one(q, Action::Archive, "f");
    assert_ne!(other, first);
    q.ack(&lease, None).unwrap();
    assert_eq!(q.request(first).unwrap().unwrap().waiters, 4);
    assert_eq!(
        events(q, first),
        [
            "request.waiting",
            "request.joined",
            "request.joined",
            "request.started",
            "request.joined",
            "request.succeed"
        ]
    );
    // Once it is over, a new restore is a new request.
    let again = enqueue_one(q, Action::Restore, "f");
    assert!(again > first);
}

pub fn remove_cancels_waiting_archive<Q: RequestQueue>(q: &Q) {
    // Never archived: the remove cancels the archive and has nothing to do.
    let archive = enqueue_one(q, Action::Archive, "f");
    let out = q.enqueue(&[request(Action::Remove, "f")]).unwrap();
    assert!(matches!(out[0], Enqueued::Noop { .. }), "{out:?}");
    let canceled = q.request(archive).unwrap().unwrap();
    assert_eq!(canceled.state, RequestState::Canceled);
    assert!(canceled.error.unwrap().contains("remove"));

    // Archived, then changed: a new archive waits; the remove cancels it
    // and is queued to remove the old copy.
    let a = enqueue_one(q, Action::Archive, "g");
    let lease = lease_one(q, "w", LONG);
    assert_eq!(lease.id(), a);
    q.ack(&lease, Some(&archived("g", "obj-g"))).unwrap();
    q.set_catalog_state("g", CatalogState::Archived, CatalogState::Dirty)
        .unwrap();
    let again = enqueue_one(q, Action::Archive, "g");
    let remove = enqueue_one(q, Action::Remove, "g");
    assert_eq!(state(q, again), RequestState::Canceled);
    assert_eq!(state(q, remove), RequestState::Waiting);
    // A started archive is left to finish (the remove follows it).
    let h = enqueue_one(q, Action::Archive, "h");
    let lease = q.lease("w", &LeaseFilter::default(), 10, LONG).unwrap();
    assert!(lease.iter().any(|l| l.id() == h));
    q.enqueue(&[request(Action::Remove, "h")]).unwrap();
    assert_eq!(state(q, h), RequestState::Started);
}

pub fn archive_of_current_copy_is_noop<Q: RequestQueue>(q: &Q) {
    enqueue_one(q, Action::Archive, "f");
    let lease = lease_one(q, "w", LONG);
    q.ack(&lease, Some(&archived("f", "obj-f"))).unwrap();
    // A caller that looked at the file (it gives its path) learns at once.
    let looked = NewRequest {
        path: Some("/managed/f".into()),
        ..request(Action::Archive, "f")
    };
    let out = q.enqueue(&[looked]).unwrap();
    assert!(matches!(out[0], Enqueued::Noop { .. }), "{out:?}");
    assert_eq!(q.stats().unwrap().count(None, RequestState::Waiting), 0);
    // The upcall never looks: queued, for the worker to compare.
    let out = q.enqueue(&[request(Action::Archive, "f")]).unwrap();
    assert!(matches!(out[0], Enqueued::Queued { .. }), "{out:?}");
    let lease = lease_one(q, "w", LONG);
    q.ack(&lease, None).unwrap();
    // Once dirty, it is archived again.
    q.set_catalog_state("f", CatalogState::Archived, CatalogState::Dirty)
        .unwrap();
    enqueue_one(q, Action::Archive, "f");
}

pub fn stale_attempt_is_refused<Q: RequestQueue>(q: &Q) {
    let id = enqueue_one(q, Action::Archive, "f");
    let old = lease_one(q, "w1", Duration::ZERO);
    let new = lease_when_ready(q, "w2", LONG);
    assert_eq!((new.id(), old.attempt, new.attempt), (id, 1, 2));
    assert!(is_stale(q.heartbeat(&old, LONG)));
    assert!(is_stale(q.ack(&old, Some(&archived("f", "stale")))));
    assert!(is_stale(q.fail(&old, FailKind::Retry, "late")));
    // Same attempt number, other worker: refused too.
    let forged = Lease {
        worker: "w1".into(),
        ..new.clone()
    };
    assert!(is_stale(q.ack(&forged, None)));
    assert!(q.heartbeat(&new, LONG).unwrap() > 0);
    q.ack(&new, Some(&archived("f", "fresh"))).unwrap();
    let entry = q.catalog_entry("f").unwrap().unwrap();
    assert_eq!(entry.object.as_deref(), Some("fresh"));
}

pub fn expired_lease_returns_to_queue<Q: RequestQueue>(q: &Q) {
    let id = enqueue_one(q, Action::Archive, "f");
    let lease = lease_one(q, "dead", Duration::from_millis(300));
    // A heartbeat keeps it: still started after an expiry pass.
    q.heartbeat(&lease, LONG).unwrap();
    assert_eq!(q.expire_leases().unwrap(), 0);
    assert_eq!(state(q, id), RequestState::Started);
    // Now let it lapse.
    q.heartbeat(&lease, Duration::ZERO).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while state(q, id) != RequestState::Waiting {
        q.expire_leases().unwrap();
        assert!(Instant::now() < deadline);
    }
    let r = q.request(id).unwrap().unwrap();
    assert_eq!((r.lease_holder, r.attempts), (None, 1));
    let next = lease_one(q, "alive", LONG);
    assert_eq!((next.id(), next.attempt), (id, 2));
}

pub fn retries_with_backoff_then_failed<Q: RequestQueue>(q: &Q) {
    quick_policy(q, 3);
    let policy = q.policy().unwrap();
    assert_eq!(policy.max_attempts, 3);
    let id = enqueue_one(q, Action::Archive, "f");
    for attempt in 1..=3 {
        let lease = lease_when_ready(q, "w", LONG);
        assert_eq!((lease.id(), lease.attempt), (id, attempt));
        let to = q.fail(&lease, FailKind::Retry, "EIO").unwrap();
        let r = q.request(id).unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(to, RequestState::Waiting);
            let backoff = policy.backoff(attempt).as_nanos() as i64;
            assert!(
                r.not_before_ns >= r.updated_ns + backoff - 1_000_000,
                "back-off of {backoff} ns after attempt {attempt}"
            );
            // Backing off: nothing to lease right away.
            if r.not_before_ns > now_ns() + 5_000_000 {
                assert!(
                    q.lease("w", &LeaseFilter::default(), 1, LONG)
                        .unwrap()
                        .is_empty()
                );
            }
        } else {
            assert_eq!(to, RequestState::Failed);
        }
    }
    assert_eq!(policy.backoff(1), Duration::from_millis(20));
    assert_eq!(policy.backoff(2), Duration::from_millis(40));
    assert_eq!(policy.backoff(9), Duration::from_millis(40));
    assert_eq!(state(q, id), RequestState::Failed);
}

pub fn lost_marks_catalog<Q: RequestQueue>(q: &Q) {
    enqueue_one(q, Action::Archive, "f");
    let lease = lease_one(q, "w", LONG);
    q.ack(&lease, Some(&archived("f", "obj"))).unwrap();
    q.set_catalog_state("f", CatalogState::Archived, CatalogState::Released)
        .unwrap();
    let restore = enqueue_one(q, Action::Restore, "f");
    let lease = lease_one(q, "w", LONG);
    assert_eq!(
        q.fail(&lease, FailKind::Lost, "checksum mismatch").unwrap(),
        RequestState::Failed
    );
    assert_eq!(state(q, restore), RequestState::Failed);
    let entry = q.catalog_entry("f").unwrap().unwrap();
    assert_eq!(entry.state, CatalogState::Lost);
    assert!(events(q, restore).ends_with(&["request.failed".into(), "catalog.lost".into()]));
}

pub fn cancel_stops_a_started_request<Q: RequestQueue>(q: &Q) {
    let id = enqueue_one(q, Action::Restore, "f");
    let lease = lease_one(q, "w", LONG);
    q.cancel(id).unwrap();
    assert!(is_stale(q.heartbeat(&lease, LONG)));
    assert!(is_stale(q.fail(&lease, FailKind::Retry, "x")));
    assert_eq!(state(q, id), RequestState::Canceled);
}

pub fn catalog_compare_and_swap<Q: RequestQueue>(q: &Q) {
    assert!(matches!(
        q.set_catalog_state("nope", CatalogState::Archived, CatalogState::Released),
        Err(StoreError::NotInCatalog { .. })
    ));
    enqueue_one(q, Action::Archive, "f");
    let lease = lease_one(q, "w", LONG);
    q.ack(&lease, Some(&archived("f", "obj"))).unwrap();
    let released = q
        .set_catalog_state("f", CatalogState::Archived, CatalogState::Released)
        .unwrap();
    assert_eq!(released.object.as_deref(), Some("obj"));
    assert!(matches!(
        q.set_catalog_state("f", CatalogState::Archived, CatalogState::Released),
        Err(StoreError::CatalogConflict { .. })
    ));
    // released → dirty is not a transition the catalog knows.
    assert!(matches!(
        q.set_catalog_state("f", CatalogState::Released, CatalogState::Dirty),
        Err(StoreError::CatalogConflict { .. })
    ));
    assert_eq!(
        q.catalog_entry("f").unwrap().unwrap().state,
        CatalogState::Released
    );
}

/// The change stamp (inode, ctime) round-trips, follows state changes, and
/// is written only while the entry is in the state the caller saw.
pub fn catalog_stamp<Q: RequestQueue>(q: &Q) {
    enqueue_one(q, Action::Archive, "f");
    let lease = lease_one(q, "w", LONG);
    q.ack(&lease, Some(&archived("f", "obj"))).unwrap();
    let entry = q.catalog_entry("f").unwrap().unwrap();
    assert_eq!((entry.ino, entry.ctime_ns), (11, 13));
    assert!(
        q.set_catalog_stamp("f", CatalogState::Archived, 17, 19)
            .unwrap()
    );
    let released = q
        .set_catalog_state("f", CatalogState::Archived, CatalogState::Released)
        .unwrap();
    assert_eq!((released.ino, released.ctime_ns), (17, 19));
    assert!(
        !q.set_catalog_stamp("f", CatalogState::Archived, 23, 29)
            .unwrap()
    );
    assert!(
        !q.set_catalog_stamp("nope", CatalogState::Archived, 23, 29)
            .unwrap()
    );
    assert!(
        q.set_catalog_stamp("f", CatalogState::Released, 31, 37)
            .unwrap()
    );
    let entry = q.catalog_entry("f").unwrap().unwrap();
    assert_eq!(
        (entry.state, entry.ino, entry.ctime_ns),
        (CatalogState::Released, 31, 37)
    );
}

pub fn lease_filter_by_archive_id<Q: RequestQueue>(q: &Q) {
    let mut two = request(Action::Archive, "two");
    two.archive_id = 2;
    let mut any = request(Action::Archive, "any");
    any.archive_id = 0;
    let out = q.enqueue(&[two, any]).unwrap();
    let only_one = LeaseFilter {
        archive_id: Some(1),
        ..LeaseFilter::default()
    };
    let leased = q.lease("w", &only_one, 10, LONG).unwrap();
    assert_eq!(
        leased.iter().map(Lease::id).collect::<Vec<_>>(),
        [out[1].id().unwrap()]
    );
    let leased = q.lease("w", &LeaseFilter::default(), 10, LONG).unwrap();
    assert_eq!(
        leased.iter().map(Lease::id).collect::<Vec<_>>(),
        [out[0].id().unwrap()]
    );
}

/// A worker whose restores are at their cap leases only archives, even
/// with a restore ranked first; with every action at its cap, nothing.
pub fn lease_filter_by_action<Q: RequestQueue>(q: &Q) {
    let restore = enqueue_one(q, Action::Restore, "r");
    let archives = [
        enqueue_one(q, Action::Archive, "a1"),
        enqueue_one(q, Action::Archive, "a2"),
    ];
    let none = LeaseFilter {
        actions: Some(Vec::new()),
        ..LeaseFilter::default()
    };
    assert!(q.lease("w", &none, 10, LONG).unwrap().is_empty());
    let archives_only = LeaseFilter {
        actions: Some(vec![Action::Archive]),
        ..LeaseFilter::default()
    };
    let leased = q.lease("w", &archives_only, 10, LONG).unwrap();
    let mut ids: Vec<RequestId> = leased.iter().map(Lease::id).collect();
    ids.sort();
    assert_eq!(ids, archives);
    let leased = q.lease("w", &LeaseFilter::default(), 10, LONG).unwrap();
    assert_eq!(leased.iter().map(Lease::id).collect::<Vec<_>>(), [restore]);
}

pub fn concurrent_workers_never_share_a_lease<Q: RequestQueue>(q: &Q) {
    let batch: Vec<NewRequest> = (0..200)
        .map(|i| request(Action::Archive, &format!("f{i}")))
        .collect();
    q.enqueue(&batch).unwrap();
    let done: Vec<Vec<RequestId>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let leases = q
                            .lease(&format!("w{w}"), &LeaseFilter::default(), 7, LONG)
                            .unwrap();
                        if leases.is_empty() {
                            return mine;
                        }
                        for lease in leases {
                            q.ack(&lease, None).unwrap();
                            mine.push(lease.id());
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: Vec<RequestId> = done.into_iter().flatten().collect();
    let unique: HashSet<RequestId> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (200, 200));
    assert_eq!(q.stats().unwrap().count(None, RequestState::Succeed), 200);
}

/// Runs every function of this suite as a `#[test]`, each on the store
/// `$fresh()` makes: `(guard, store)`, where the guard (a directory, a
/// schema) outlives the store. The one list of the suite, for every store.
#[macro_export]
#[doc(hidden)]
macro_rules! hsm_conformance_tests {
    ($fresh:expr) => {
        $crate::hsm_conformance_tests!(
            $fresh;
            enqueue_is_durable_and_has_events,
            every_transition,
            restores_before_archives_with_ageing,
            fifo_when_no_head_start,
            dedup_joins_waiters,
            remove_cancels_waiting_archive,
            archive_of_current_copy_is_noop,
            stale_attempt_is_refused,
            expired_lease_returns_to_queue,
            retries_with_backoff_then_failed,
            lost_marks_catalog,
            cancel_stops_a_started_request,
            catalog_compare_and_swap,
            catalog_stamp,
            lease_filter_by_archive_id,
            lease_filter_by_action,
            concurrent_workers_never_share_a_lease,
        );
    };
    ($fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = $fresh();
                $crate::conformance::$name(&store);
            }
        )*
    };
}
