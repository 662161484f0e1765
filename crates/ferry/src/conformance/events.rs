//! The event log: filters and limits, compaction and cursors, a reader
//! woken by another handle, numbering without gaps under concurrency.

use super::*;

/// Every filter kind, alone and combined, from several cursors and with
/// several limits, gives exactly the events [`EventFilter::matches`]
/// selects, oldest first; the event reader agrees.
pub fn events_since_filters_and_limits<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let a = running(&store, "a", 3, 10);
    let b = running(&store, "b", 2, 10);
    store
        .apply(&[
            entry(a.id, 0, FileState::Copied),
            entry(b.id, 1, FileState::Copying),
            progress(b.id, 1, 5, vec![]),
            entry(a.id, 0, FileState::Committed),
            to(b.id, TransferState::Cancelled),
        ])
        .unwrap();
    let all = all_events(&store);
    assert_eq!(all.len(), 13);
    let last = store.last_seq().unwrap();
    assert_eq!(last, all.last().unwrap().seq);
    let kind = |k: &str| Some(k.to_string());
    let filters = [
        EventFilter::default(),
        EventFilter {
            transfer: Some(a.id),
            ..Default::default()
        },
        EventFilter {
            transfer: Some(TransferId(b.id.0 + 1000)),
            ..Default::default()
        },
        EventFilter {
            kind: kind("file"),
            ..Default::default()
        },
        EventFilter {
            kind: kind("transfer"),
            ..Default::default()
        },
        EventFilter {
            kind: kind("transfer.created"),
            ..Default::default()
        },
        EventFilter {
            kind: kind("transfer.c"),
            ..Default::default()
        },
        EventFilter {
            kind: kind("file.progress"),
            transfer: Some(b.id),
            ..Default::default()
        },
        EventFilter {
            request: Some(RequestId(1)),
            ..Default::default()
        },
    ];
    let mut reader = store.event_reader().unwrap();
    for filter in &filters {
        for after in [0, all[4].seq, last] {
            for limit in [1, 3, 1000] {
                let want: Vec<&Event> = all
                    .iter()
                    .filter(|e| e.seq > after && filter.matches(e))
                    .take(limit)
                    .collect();
                let got = store.events_since(after, filter, limit).unwrap();
                assert_eq!(
                    got.iter().collect::<Vec<_>>(),
                    want,
                    "{filter:?} after {after} limit {limit}"
                );
                let page = reader.events_since(after, filter, limit).unwrap();
                assert_eq!(page.events, got, "{filter:?} after {after} limit {limit}");
                assert_eq!(page.last_seq, last);
            }
        }
    }
    // Families match at a dot only.
    let family = store.events_since(0, &filters[6], 1000).unwrap();
    assert!(family.is_empty(), "transfer.c matched {family:?}");
}

pub fn compaction_and_cursors<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    assert_eq!(store.last_seq().unwrap(), 0);
    assert_eq!(store.compact(10).unwrap(), 0, "nothing to compact");
    let t = running(&store, "k", 1, 10);
    for bytes in 1..=4 {
        store.apply(&[progress(t.id, 0, bytes, vec![])]).unwrap();
    }
    let last = store.last_seq().unwrap();
    assert_eq!(last, 8);
    let all = EventFilter::default();

    assert_eq!(store.compact(4).unwrap(), 3);
    match store.events_since(2, &all, 100) {
        Err(StoreError::Compacted {
            requested,
            horizon,
            path,
        }) => assert_eq!((requested, horizon, path), (2, 3, store.location())),
        other => panic!("expected Compacted, got {other:?}"),
    }
    let rest = store.events_since(3, &all, 100).unwrap();
    assert_eq!(rest.first().map(|e| e.seq), Some(4));
    assert_eq!(rest.len(), 5);
    let mut reader = store.event_reader().unwrap();
    assert!(matches!(
        reader.events_since(0, &all, 100),
        Err(StoreError::Compacted { horizon: 3, .. })
    ));
    assert_eq!(store.compact(2).unwrap(), 3, "the horizon never goes back");
    // The newest event always stays, so the last seq survives.
    assert_eq!(store.compact(u64::MAX).unwrap(), last - 1);
    assert_eq!(store.last_seq().unwrap(), last);
    let kept = store.events_since(last - 1, &all, 100).unwrap();
    assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [last]);
    assert_eq!(
        reader.events_since(last - 1, &all, 100).unwrap().last_seq,
        last
    );
    // Numbering continues after the horizon.
    store.apply(&[progress(t.id, 0, 5, vec![])]).unwrap();
    assert_eq!(store.last_seq().unwrap(), last + 1);

    // A cursor past the end is not from this log.
    let dyn_store: &dyn Store = &store;
    match crate::events::Watch::new(dyn_store, last + 2, all.clone()) {
        Err(crate::Error::Store(StoreError::CursorAhead {
            requested,
            last: newest,
            ..
        })) => assert_eq!((requested, newest), (last + 2, last + 1)),
        Err(e) => panic!("expected CursorAhead, got {e}"),
        Ok(_) => panic!("expected CursorAhead, got a watch"),
    }
    assert!(crate::events::Watch::new(dyn_store, last + 1, all).is_ok());
}

/// A reader blocked in `wait_changed` wakes when another handle (another
/// connection, as another process) writes, long before its timeout; with
/// nothing written it times out and says so.
pub fn the_event_reader_wakes_on_a_write_from_another_handle<S: Store>(open: &dyn Fn() -> S) {
    let watched = open();
    let writer = open();
    let mut reader = watched.event_reader().unwrap();
    let token = reader.change_token().unwrap();
    let page = reader
        .events_since(0, &EventFilter::default(), 100)
        .unwrap();
    assert!(page.events.is_empty());
    assert!(
        !reader
            .wait_changed(token, Duration::from_millis(50))
            .unwrap(),
        "nothing was written"
    );
    let (waiting_tx, waiting_rx) = std::sync::mpsc::channel();
    let (changed, waited, mut reader) = std::thread::scope(|s| {
        let waiter = s.spawn(move || {
            waiting_tx.send(()).unwrap();
            let start = Instant::now();
            let changed = reader.wait_changed(token, DEADLINE * 2).unwrap();
            (changed, start.elapsed(), reader)
        });
        waiting_rx.recv().unwrap();
        writer
            .create_transfer(&new_transfer(Some("w")), &[])
            .unwrap();
        waiter.join().unwrap()
    });
    assert!(changed, "the write was not seen");
    assert!(waited < DEADLINE, "woken only after {waited:?}");
    assert_ne!(reader.change_token().unwrap(), token);
    let page = reader
        .events_since(0, &EventFilter::default(), 100)
        .unwrap();
    assert_eq!(names(&page.events), ["transfer.created"]);
    // A token taken after the write sees no further change.
    let token = reader.change_token().unwrap();
    assert!(
        !reader
            .wait_changed(token, Duration::from_millis(50))
            .unwrap()
    );
}

/// 4 threads, each with its own handle, change different transfers at
/// once: the log holds 1..N, every number once, and each transfer's events
/// in the order its thread wrote them.
pub fn concurrent_handles_number_events_without_gaps<S: Store>(open: &dyn Fn() -> S) {
    const THREADS: usize = 4;
    const STEPS: u64 = 50;
    let handles: Vec<S> = (0..THREADS).map(|_| open()).collect();
    let ids: Vec<TransferId> = std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(i, store)| {
                s.spawn(move || {
                    let t = running(store, &format!("t{i}"), 1, 1 << 20);
                    for bytes in 1..=STEPS {
                        store.apply(&[progress(t.id, 0, bytes, vec![])]).unwrap();
                    }
                    t.id
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let store = open();
    let events = all_events(&store);
    // created, added, dispatched, running, then the progress records.
    let n = THREADS as u64 * (4 + STEPS);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "a gap or a duplicate"
    );
    assert_eq!(store.last_seq().unwrap(), n);
    for id in ids {
        let bytes: Vec<u64> = events
            .iter()
            .filter(|e| e.transfer == Some(id) && e.name == "file.progress")
            .map(|e| e.context["bytes_durable"].as_u64().unwrap())
            .collect();
        assert_eq!(bytes, (1..=STEPS).collect::<Vec<_>>());
    }
}
