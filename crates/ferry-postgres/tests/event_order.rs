//! Why events are numbered at commit under the counter lock
//! ([`EventNumbering::Ordered`]): with numbers handed out as rows are
//! inserted ([`EventNumbering::Sequence`]), a transaction that commits
//! later can hold a lower number than one a watcher has already seen, and
//! the watcher, whose cursor has moved past it, never sees it.
//!
//! The interleaving is forced, not hoped for: A stops right before its
//! commit ([`PgStore::holding_commit`]), B writes, and the test waits for
//! B's backend to block on A's lock (Ordered) or for B to commit
//! (Sequence) before the watcher reads; no sleeps. Needs the test server.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry::conformance::{file_entry, new_transfer};
use ferry::model::{EntryIndex, TransferId, TransferState};
use ferry::store::{Change, EventFilter, Store};
use ferry_postgres::testing::TestSchema;
use ferry_postgres::{EventNumbering, PgStore};

const DEADLINE: Duration = Duration::from_secs(60);

fn dispatch(id: TransferId) -> Change {
    Change::Transfer {
        id,
        to: TransferState::Dispatched,
        owner: None,
        context: serde_json::Value::Null,
    }
}

/// What the watcher of the scenario saw, and what the log holds.
struct Outcome {
    seen: Vec<u64>,
    /// The log after the watcher's first cursor.
    log: Vec<u64>,
    /// The number of A's event.
    a: u64,
}

/// A holds its transaction open after appending its event; B appends and
/// (Sequence) commits or (Ordered) blocks; the watcher reads and moves its
/// cursor to the newest event it saw; A commits; the watcher reads again.
fn scenario(numbering: EventNumbering) -> Outcome {
    let schema = TestSchema::new();
    let setup = schema.open_with(numbering);
    let ta = setup
        .create_transfer(&new_transfer(Some("a")), &[])
        .unwrap();
    let tb = setup
        .create_transfer(&new_transfer(Some("b")), &[])
        .unwrap();
    let watcher = schema.open_with(numbering);
    let mut cursor = watcher.last_seq().unwrap();
    let first_cursor = cursor;
    let a = schema.open_with(numbering);
    let b_name = format!("b_{}", schema.name);
    let b = PgStore::open_with(
        &format!("{}&application_name={b_name}", schema.url),
        numbering,
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut read = |cursor: &mut u64| {
        for event in watcher
            .events_since(*cursor, &EventFilter::default(), 1000)
            .unwrap()
        {
            seen.push(event.seq);
            *cursor = event.seq;
        }
    };

    let (held_tx, held_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let a_thread = s.spawn(|| {
            PgStore::holding_commit(
                move || {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                },
                || a.apply(&[dispatch(ta.id)]),
            )
        });
        held_rx
            .recv_timeout(DEADLINE)
            .expect("A reached its commit");
        let b_thread = s.spawn(|| b.apply(&[dispatch(tb.id)]));
        let b_thread = match numbering {
            EventNumbering::Ordered => {
                schema.wait_until_blocked(&b_name);
                Some(b_thread)
            }
            EventNumbering::Sequence => {
                b_thread.join().unwrap().unwrap();
                None
            }
        };
        read(&mut cursor);
        go_tx.send(()).unwrap();
        a_thread.join().unwrap().unwrap();
        if let Some(b_thread) = b_thread {
            b_thread.join().unwrap().unwrap();
        }
    });
    read(&mut cursor);

    let log = setup
        .events_since(first_cursor, &EventFilter::default(), 1000)
        .unwrap();
    let a = log
        .iter()
        .find(|e| e.transfer == Some(ta.id))
        .expect("A's event is in the log")
        .seq;
    Outcome {
        seen,
        log: log.iter().map(|e| e.seq).collect(),
        a,
    }
}

#[test]
fn numbered_at_commit_a_watcher_sees_every_event_once_in_order() {
    let outcome = scenario(EventNumbering::Ordered);
    assert_eq!(outcome.log.len(), 2);
    assert_eq!(outcome.seen, outcome.log, "every event, once, in order");
    assert_eq!(outcome.seen[0], outcome.a, "A committed first");
}

/// The same scenario with the usual mistake: it must fail the promise, or
/// the test above would prove nothing.
#[test]
fn numbered_by_a_sequence_a_watcher_misses_the_event_committed_late() {
    let outcome = scenario(EventNumbering::Sequence);
    assert_eq!(outcome.log.len(), 2);
    assert!(
        outcome.log.contains(&outcome.a),
        "A's event is in the log..."
    );
    assert!(
        !outcome.seen.contains(&outcome.a),
        "...and the watcher missed it: saw {:?} of {:?}",
        outcome.seen,
        outcome.log
    );
    assert!(
        outcome.seen.iter().all(|seq| *seq > outcome.a),
        "its cursor moved past A's number before A committed"
    );
}

/// 8 writers, each with its own store handle (its own connections), 500
/// changes each, while a watcher follows the log through an event reader:
/// it sees 1..N, each once, in order.
#[test]
fn a_watcher_follows_eight_concurrent_writers_without_a_gap() {
    const WRITERS: usize = 8;
    const CHANGES: u64 = 500;
    let schema = TestSchema::new();
    let writers: Vec<PgStore> = (0..WRITERS).map(|_| schema.open()).collect();
    let watched = schema.open();
    let n = WRITERS as u64 * CHANGES;
    let mut reader = watched.event_reader().unwrap();
    let ids: Vec<TransferId> = std::thread::scope(|s| {
        let threads: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(i, store)| {
                s.spawn(move || {
                    // created + added, dispatched, running, then progress:
                    // CHANGES events in all.
                    let t = store
                        .create_transfer(
                            &new_transfer(Some(&format!("w{i}"))),
                            &[file_entry(0, 1 << 30)],
                        )
                        .unwrap();
                    for to in [TransferState::Dispatched, TransferState::Running] {
                        store
                            .apply(&[Change::Transfer {
                                id: t.id,
                                to,
                                owner: None,
                                context: serde_json::Value::Null,
                            }])
                            .unwrap();
                    }
                    for bytes in 1..=CHANGES - 4 {
                        store
                            .apply(&[Change::Progress {
                                id: t.id,
                                index: EntryIndex(0),
                                progress_bytes_durable: bytes,
                                piece_digests: Vec::new(),
                            }])
                            .unwrap();
                    }
                    t.id
                })
            })
            .collect();

        // The watcher, in this thread, while they write.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut cursor = 0;
        while cursor < n {
            let token = reader.change_token().unwrap();
            let page = reader
                .events_since(cursor, &EventFilter::default(), 1000)
                .unwrap();
            for event in &page.events {
                assert_eq!(event.seq, cursor + 1, "a gap, a duplicate or a reorder");
                cursor = event.seq;
            }
            if page.events.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "the watcher stalled at {cursor} of {n}");
                reader.wait_changed(token, left).unwrap();
            }
        }
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(watched.last_seq().unwrap(), n);
    let events = watched
        .events_since(0, &EventFilter::default(), 1 << 20)
        .unwrap();
    assert_eq!(events.len() as u64, n);
    for id in ids {
        let progress: Vec<u64> = events
            .iter()
            .filter(|e| e.transfer == Some(id) && e.name == "file.progress")
            .map(|e| e.context["bytes_durable"].as_u64().unwrap())
            .collect();
        assert_eq!(progress, (1..=CHANGES - 4).collect::<Vec<_>>());
    }
}
