//! An enqueue of many requests at once is written in a few statements
//! (`queue/batch.rs`); it must decide exactly what the SQLite store decides
//! one request at a time: the same outcomes, requests and events, in the
//! same order. And when a concurrent enqueue commits a request the batch
//! meant to insert, the batch joins it, as one request alone would. Needs
//! the test server; no sleeps (the race is forced).

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::Duration;

use ferry::store::{EventFilter, SqliteStore, Store};
use ferry_hsm::conformance::request;
use ferry_hsm::{
    Action, CatalogEntry, CatalogState, Enqueued, LeaseFilter, NewRequest, RequestId, RequestQueue,
    RequestState,
};
use ferry_postgres::PgStore;
use ferry_postgres::testing::TestSchema;

const LONG: Duration = Duration::from_secs(600);

fn archived(fid: &str) -> CatalogEntry {
    CatalogEntry {
        fid: fid.into(),
        path: Some(format!("/managed/{fid}").into()),
        state: CatalogState::Archived,
        archive_id: 1,
        object: Some(format!("obj-{fid}")),
        size: 1,
        mtime_ns: 1,
        mode: 0o644,
        checksum: Some("c".into()),
        updated_ns: 0,
        ino: 0,
        ctime_ns: 0,
    }
}

/// Enqueues `fid`'s archive alone, leases it, and (with `catalog`) acks it.
fn archive_alone<Q: RequestQueue>(q: &Q, fid: &str, catalog: Option<CatalogEntry>) {
    q.enqueue(&[request(Action::Archive, fid)]).unwrap();
    let lease = q
        .lease("w", &LeaseFilter::default(), 1, LONG)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(lease.request.fid, fid);
    if let Some(entry) = catalog {
        q.ack(&lease, Some(&entry)).unwrap();
    }
}

/// Sets up a queue with every case a batch meets, enqueues one batch, and
/// returns what came out, with request ids as their rank among all ids.
fn scenario<Q: RequestQueue + Store>(q: &Q) -> Vec<String> {
    // g: archived, changed since, its new archive waiting.
    archive_alone(q, "g", Some(archived("g")));
    q.set_catalog_state("g", CatalogState::Archived, CatalogState::Dirty)
        .unwrap();
    // r: archived, then released.
    archive_alone(q, "r", Some(archived("r")));
    q.set_catalog_state("r", CatalogState::Archived, CatalogState::Released)
        .unwrap();
    // s: its archive started.
    archive_alone(q, "s", None);
    q.enqueue(&[request(Action::Archive, "g")]).unwrap();
    let after = q.last_seq().unwrap();

    let batch = [
        request(Action::Archive, "a"),
        request(Action::Archive, "a"),
        request(Action::Restore, "a"),
        // Supersedes g's waiting archive; g has a copy: queued.
        request(Action::Remove, "g"),
        // g's archive again: a new one (the old one is canceled).
        request(Action::Archive, "g"),
        // Joins s's started archive, twice.
        request(Action::Archive, "s"),
        request(Action::Archive, "s"),
        // Nothing archived: nothing to remove.
        request(Action::Remove, "n"),
        // Released: its data is in the archive.
        request(Action::Archive, "r"),
        request(Action::Remove, "r"),
        // h's archive, superseded within the batch, then a new one.
        request(Action::Archive, "h"),
        request(Action::Remove, "h"),
        request(Action::Archive, "h"),
        request(Action::Restore, "a"),
    ];
    let out = q.enqueue(&batch).unwrap();

    let requests = q.requests(None, 1000).unwrap();
    let rank: HashMap<RequestId, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    let mut lines: Vec<String> = out
        .iter()
        .map(|e| match e {
            Enqueued::Queued { id } => format!("queued #{}", rank[id]),
            Enqueued::Joined { id, waiters } => format!("joined #{} waiters {waiters}", rank[id]),
            Enqueued::Noop { reason } => format!("noop {reason}"),
        })
        .collect();
    lines.extend(requests.iter().map(|r| {
        format!(
            "request #{} {} {} {} attempts {} waiters {} error {:?} rank_is_created {}",
            rank[&r.id],
            r.action,
            r.fid,
            r.state,
            r.attempts,
            r.waiters,
            r.error,
            r.rank == r.created_ns,
        )
    }));
    lines.extend(
        q.events_since(after, &EventFilter::default(), 1000)
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "event {} #{:?} {}",
                    e.name,
                    e.request.map(|id| rank[&id]),
                    e.context
                )
            }),
    );
    lines
}

#[test]
fn a_batch_decides_as_one_request_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("q.db")).unwrap();
    let expected = scenario(&sqlite);
    let schema = TestSchema::new();
    let store = schema.open();
    let got = scenario(&store);
    assert_eq!(got, expected);
    assert_eq!(
        store.enqueue_fallbacks(),
        0,
        "the batch was written at once"
    );
    // Every case was met.
    for needle in ["joined", "noop", "canceled", "request.waiting"] {
        assert!(expected.iter().any(|l| l.contains(needle)), "{needle}");
    }
}

#[test]
fn a_batch_joins_a_request_a_concurrent_enqueue_committed() {
    let schema = TestSchema::new();
    let store = schema.open();
    // Another enqueuer's request of x, inserted and not committed yet: the
    // batch does not see it, and its insert of x waits for it.
    let mut other = schema.client();
    let mut other_tx = other.transaction().unwrap();
    let other_id: i64 = other_tx
        .query_one(
            "INSERT INTO hsm_requests (action, fsname, archive_id, flags, data, fid,
                priority_ms, rank, state, max_attempts, created_ns, updated_ns)
             VALUES ('archive', 'fs', 1, 0, '', 'x', 0, 0, 'waiting', 5, 0, 0) RETURNING id",
            &[],
        )
        .unwrap()
        .get(0);
    let name = format!("batch_{}", schema.name);
    let batcher = PgStore::open(&format!("{}&application_name={name}", schema.url)).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let out = batcher
                .enqueue(&[request(Action::Archive, "w"), request(Action::Archive, "x")])
                .unwrap();
            done_tx.send(out).unwrap();
        });
        schema.wait_until_blocked(&name);
        other_tx.commit().unwrap();
    });
    let out = done_rx.recv().unwrap();
    assert_eq!(batcher.enqueue_fallbacks(), 1, "the batch met the race");
    assert!(matches!(out[0], Enqueued::Queued { .. }), "{out:?}");
    assert!(
        matches!(out[1], Enqueued::Joined { id, waiters: 2 } if id == RequestId(other_id)),
        "{out:?}"
    );
    let requests = store.requests(None, 10).unwrap();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests.iter().all(|r| r.state == RequestState::Waiting));
    let names: Vec<String> = store
        .events_since(0, &EventFilter::default(), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["request.waiting", "request.joined"]);
}

/// Enqueuers of the same files in different orders, started together each
/// round: without one global lock order they wait on each other's
/// uncommitted inserts in a cycle, which the server breaks only after its
/// deadlock_timeout by aborting one (retried, and after five times failed).
/// With it, nothing is ever run again.
#[test]
fn enqueuers_of_the_same_files_in_any_order_never_deadlock() {
    const ENQUEUERS: usize = 4;
    const ROUNDS: usize = 12;
    const FILES: usize = 20;
    let schema = TestSchema::new();
    let stores: Vec<PgStore> = (0..ENQUEUERS).map(|_| schema.open()).collect();
    let barrier = std::sync::Barrier::new(ENQUEUERS);
    std::thread::scope(|s| {
        for (k, store) in stores.iter().enumerate() {
            let barrier = &barrier;
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(k as u64);
                for round in 0..ROUNDS {
                    let mut batch: Vec<NewRequest> = (0..FILES)
                        .map(|i| request(Action::Archive, &format!("r{round}-f{i}")))
                        .collect();
                    rng.shuffle(&mut batch);
                    barrier.wait();
                    store.enqueue(&batch).expect("every enqueue succeeds");
                }
            });
        }
    });
    let retried: u64 = stores.iter().map(PgStore::retried_writes).sum();
    assert_eq!(retried, 0, "transactions were run again (deadlock victims)");
    let stats = stores[0].stats().unwrap();
    assert_eq!(
        stats.count(None, RequestState::Waiting),
        (ROUNDS * FILES) as u64
    );
}
