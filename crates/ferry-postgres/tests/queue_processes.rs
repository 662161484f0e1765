//! Many processes on one PostgreSQL queue: 4 enqueuing processes and 4
//! worker processes, 10,000 requests in all. Every request is completed
//! exactly once (each worker prints the ids it acked), and a watcher
//! following the event log sees every event exactly once, in order: seq
//! 1..N without a gap or a duplicate. Idle workers block on LISTEN/NOTIFY
//! through the store's event reader, as `ferry hsm worker` does, never on a
//! sleep.
//!
//! The children are this test binary itself, re-run with `--exact
//! queue_process_child` and the role in the environment. Needs the test
//! server (see `ferry_postgres::testing`).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry::store::{EventFilter, Store};
use ferry_hsm::{Action, LeaseFilter, NewRequest, RequestQueue, RequestState};
use ferry_postgres::PgStore;
use ferry_postgres::testing::TestSchema;

const ENQUEUERS: usize = 4;
const WORKERS: usize = 4;
const REQUESTS: usize = 10_000;
/// Requests per enqueue transaction, and leases per lease call.
const ENQUEUE_BATCH: usize = 25;
const LEASE_BATCH: usize = 16;
/// The whole run, children included, or the test fails.
const DEADLINE: Duration = Duration::from_secs(120);
/// Every request: `request.waiting`, `request.started`, `request.succeed`.
const EVENTS: u64 = 3 * REQUESTS as u64;

const ROLE: &str = "FERRY_QUEUE_CHILD_ROLE";
const URL: &str = "FERRY_QUEUE_CHILD_URL";
const DONE: &str = "FERRY_QUEUE_CHILD_DONE";
const CHILD: &str = "queue_process_child";

#[test]
fn four_workers_four_enqueuers_each_request_completed_once_events_in_order() {
    assert!(std::env::var_os(ROLE).is_none(), "the parent runs once");
    let schema = TestSchema::new();
    let store = schema.open();
    let scratch = tempfile::tempdir().unwrap();
    let done_flag = scratch.path().join("enqueuers-done");
    let started = Instant::now();
    let deadline = started + DEADLINE;

    // The watcher: follows the log from seq 0, blocking on NOTIFY.
    let watcher = {
        let store = schema.open();
        std::thread::spawn(move || watch(&store, deadline))
    };

    let (tx, rx) = mpsc::channel();
    let mut pids = Vec::new();
    let spawn = |role: String, tx: mpsc::Sender<(String, std::process::Output)>| {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD, "--nocapture", "--test-threads=1"])
            .env(ROLE, &role)
            .env(URL, &schema.url)
            .env(DONE, &done_flag)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::spawn(move || {
            let out = child.wait_with_output().unwrap();
            let _ = tx.send((role, out));
        });
        pid
    };
    for w in 0..WORKERS {
        pids.push(spawn(format!("work:{w}"), tx.clone()));
    }
    for e in 0..ENQUEUERS {
        pids.push(spawn(format!("enqueue:{e}"), tx.clone()));
    }
    drop(tx);

    let mut outputs = BTreeMap::new();
    let mut enqueuers_left = ENQUEUERS;
    while outputs.len() < ENQUEUERS + WORKERS {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((role, out)) = rx.recv_timeout(left) else {
            for pid in &pids {
                let _ = Command::new("kill").arg(pid.to_string()).status();
            }
            panic!(
                "the children did not finish within {DEADLINE:?}: {} of {} did",
                outputs.len(),
                ENQUEUERS + WORKERS
            );
        };
        assert!(
            out.status.success(),
            "child {role} failed: {:?}",
            out.status
        );
        if role.starts_with("enqueue") {
            enqueuers_left -= 1;
            if enqueuers_left == 0 {
                // The workers stop once this is there and the queue is empty;
                // the NOTIFY wakes the idle ones to look.
                std::fs::write(&done_flag, b"done").unwrap();
                schema
                    .client()
                    .execute(
                        "SELECT pg_notify($1, $2)",
                        &[&ferry_postgres::CHANNEL, &schema.name],
                    )
                    .unwrap();
            }
        }
        outputs.insert(role, String::from_utf8(out.stdout).unwrap());
    }

    let ids = |prefix: &str, role: &str| -> Vec<i64> {
        outputs
            .iter()
            .filter(|(r, _)| r.starts_with(role))
            .flat_map(|(_, out)| out.lines())
            // libtest's "test NAME ... " may begin the first line.
            .filter_map(|l| l.split_once(prefix).map(|(_, id)| id))
            .map(|id| id.parse().unwrap())
            .collect()
    };
    let queued = ids("QUEUED ", "enqueue");
    let acked = ids("ACK ", "work");
    let queued_set: HashSet<i64> = queued.iter().copied().collect();
    assert_eq!((queued.len(), queued_set.len()), (REQUESTS, REQUESTS));
    let mut per_request: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &acked {
        *per_request.entry(*id).or_default() += 1;
    }
    let twice: Vec<_> = per_request.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "completed more than once: {twice:?}");
    assert_eq!(
        per_request.keys().copied().collect::<HashSet<_>>(),
        queued_set,
        "every queued request completed, nothing else"
    );
    let per_worker: Vec<usize> = (0..WORKERS)
        .map(|w| {
            outputs[&format!("work:{w}")]
                .lines()
                .filter(|l| l.starts_with("ACK "))
                .count()
        })
        .collect();
    let stats = store.stats().unwrap();
    assert_eq!(stats.count(None, RequestState::Succeed), REQUESTS as u64);
    assert_eq!(stats.count(None, RequestState::Waiting), 0);

    let seen = watcher.join().expect("the watcher panicked");
    assert_eq!(seen.len() as u64, EVENTS);
    let succeed: Vec<i64> = seen
        .iter()
        .filter(|(_, name, _)| name == "request.succeed")
        .map(|(_, _, id)| *id)
        .collect();
    let succeed_set: HashSet<i64> = succeed.iter().copied().collect();
    assert_eq!((succeed.len(), succeed_set), (REQUESTS, queued_set));
    eprintln!(
        "{REQUESTS} requests by {ENQUEUERS} enqueuers, completed by {WORKERS} workers \
         ({per_worker:?} each), {EVENTS} events watched in order, in {:?}",
        started.elapsed()
    );
}

/// Follows the whole log until it has seen [`EVENTS`] events, checking
/// that each page continues the last without a gap or a duplicate.
/// Returns `(seq, name, request id)` of every event.
fn watch(store: &PgStore, deadline: Instant) -> Vec<(u64, String, i64)> {
    let mut reader = store.event_reader().unwrap();
    let mut seen = Vec::new();
    let mut last = 0u64;
    while last < EVENTS {
        let token = reader.change_token().unwrap();
        let page = store
            .events_since(last, &EventFilter::default(), 5000)
            .unwrap();
        if page.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "the watcher saw {last} of {EVENTS} events by the deadline"
            );
            reader.wait_changed(token, left).unwrap();
            continue;
        }
        for e in page {
            assert_eq!(e.seq, last + 1, "a gap or a duplicate after seq {last}");
            last = e.seq;
            seen.push((e.seq, e.name, e.request.map_or(0, |r| r.0)));
        }
    }
    assert!(
        store
            .events_since(last, &EventFilter::default(), 10)
            .unwrap()
            .is_empty(),
        "more events than the run makes"
    );
    seen
}

/// The child's side: a no-op unless the parent set a role.
#[test]
fn queue_process_child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let url = std::env::var(URL).unwrap();
    let done_flag = PathBuf::from(std::env::var_os(DONE).unwrap());
    let store = PgStore::open(&url).unwrap();
    let deadline = Instant::now() + DEADLINE;
    match role.split_once(':') {
        Some(("enqueue", k)) => enqueue(&store, k.parse().unwrap()),
        Some(("work", k)) => work(&store, k, &done_flag, deadline),
        _ => panic!("unknown role {role}"),
    }
}

fn enqueue(store: &PgStore, k: usize) {
    let per = REQUESTS / ENQUEUERS;
    let requests: Vec<NewRequest> = (0..per)
        .map(|i| NewRequest {
            // Some restores among the archives: the weighted order at work.
            action: if i % 5 == 0 {
                Action::Restore
            } else {
                Action::Archive
            },
            fsname: "fs0".into(),
            archive_id: 1,
            flags: 0,
            data: Vec::new(),
            fid: format!("e{k}-f{i}"),
            path: None,
            priority_ms: 0,
        })
        .collect();
    for chunk in requests.chunks(ENQUEUE_BATCH) {
        for out in store.enqueue(chunk).unwrap() {
            let id = out.id().expect("every request is new");
            println!("QUEUED {id}");
        }
    }
}

fn work(store: &PgStore, name: &str, done_flag: &std::path::Path, deadline: Instant) {
    // Listening before the first lease: no commit after it is missed.
    let mut reader = store.event_reader().unwrap();
    let name = format!("w{name}");
    loop {
        assert!(
            Instant::now() < deadline,
            "worker {name} ran past the deadline"
        );
        // The flag first, then the queue: once both say so, nothing comes.
        let token = reader.change_token().unwrap();
        let done = done_flag.exists();
        let leases = store
            .lease(
                &name,
                &LeaseFilter::default(),
                LEASE_BATCH,
                Duration::from_secs(60),
            )
            .unwrap();
        if leases.is_empty() {
            if done && store.stats().unwrap().count(None, RequestState::Waiting) == 0 {
                return;
            }
            reader
                .wait_changed(token, deadline.saturating_duration_since(Instant::now()))
                .unwrap();
            continue;
        }
        for lease in leases {
            // A no-op archive: this test is about the queue.
            store.ack(&lease, None).unwrap();
            println!("ACK {}", lease.id());
        }
    }
}
