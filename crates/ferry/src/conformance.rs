//! The tests every [`Store`] implementation must pass, written once against
//! the trait: the SQLite store runs them in its unit tests, and the
//! PostgreSQL store (`crates/ferry-postgres/tests/conformance.rs`) runs the
//! same functions, each on a fresh schema.
//!
//! Each function takes `open`, which opens the same fresh, empty store
//! every time it is called (a second call is a second handle: another
//! connection, as another process would have), and panics on a violation.
//! Nothing here sleeps to hope something happened: a wait is on the event
//! itself, with a bounded deadline.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::model::RequestId;
use crate::model::{
    Caller, Checksum, ChecksumAlgo, EntryIndex, EntryKind, Event, FileState, Kind, NewEntry,
    NewTransfer, Owner, Preserve, SourceMeta, TransferId, TransferRecord, TransferState, Xattrs,
};
use crate::store::{Change, EventFilter, Store, StoreError};

mod lease;
pub use lease::the_lease_is_renewed_by_the_owner_and_fences_the_old_one;

/// How long a wait for something that must happen may take before the test
/// fails; far beyond what it takes on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

pub fn owner(pid: u32) -> Owner {
    Owner {
        host: "h".into(),
        boot_id: "b".into(),
        pid,
        start_time: 2,
    }
}

pub fn new_transfer(name: Option<&str>) -> NewTransfer {
    NewTransfer {
        checksum: None,
        name: name.map(str::to_owned),
        kind: Kind::Sync,
        caller: None,
        owner: owner(1),
        preserve: Preserve::ALL,
        temp_suffix: crate::model::DEFAULT_TEMP_SUFFIX.into(),
    }
}

pub fn file_entry(i: usize, size: u64) -> NewEntry {
    NewEntry {
        link_leader: None,
        xattrs: Xattrs::default(),
        kind: EntryKind::File,
        source: PathBuf::from(format!("/src/dir/file-{i:06}")),
        dest: PathBuf::from(format!("/dst/dir/file-{i:06}")),
        meta: SourceMeta {
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 1,
            mtime_ns: 2,
        },
        link_target: None,
    }
}

fn to(id: TransferId, to: TransferState) -> Change {
    Change::Transfer {
        id,
        to,
        owner: None,
        context: Value::Null,
    }
}

fn entry(id: TransferId, index: u32, to: FileState) -> Change {
    Change::Entry {
        id,
        index: EntryIndex(index),
        to,
        progress_bytes_durable: None,
        error: None,
        checksum: None,
        context: Value::Null,
    }
}

fn progress(id: TransferId, index: u32, bytes: u64, digests: Vec<Checksum>) -> Change {
    Change::Progress {
        id,
        index: EntryIndex(index),
        progress_bytes_durable: bytes,
        piece_digests: digests,
    }
}

fn digest(algo: ChecksumAlgo, byte: u8) -> Checksum {
    let bytes: Vec<u8> = (0..algo.digest_len() as u8)
        .map(|i| i.wrapping_mul(31) ^ byte)
        .collect();
    Checksum::from_digest(algo, &bytes).expect("digest of the algorithm's length")
}

fn all_events<S: Store>(store: &S) -> Vec<Event> {
    let events = store
        .events_since(0, &EventFilter::default(), 1 << 20)
        .unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    events
}

fn names(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.name.as_str()).collect()
}

/// A transfer with `files` entries of `size` bytes, dispatched and running.
fn running<S: Store>(store: &S, name: &str, files: usize, size: u64) -> TransferRecord {
    let entries: Vec<_> = (0..files).map(|i| file_entry(i, size)).collect();
    let t = store
        .create_transfer(&new_transfer(Some(name)), &entries)
        .unwrap();
    store
        .apply(&[
            to(t.id, TransferState::Dispatched),
            to(t.id, TransferState::Running),
        ])
        .unwrap();
    t
}

pub fn ids_are_never_reused_and_names_are_unique<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let a = store.create_transfer(&new_transfer(None), &[]).unwrap();
    assert_eq!(a.name, format!("cp-{}", a.id));
    let b = store
        .create_transfer(&new_transfer(Some("ckpt")), &[])
        .unwrap();
    assert!(b.id > a.id);
    match store.create_transfer(&new_transfer(Some("ckpt")), &[]) {
        Err(StoreError::DuplicateName { name, id, path }) => {
            assert_eq!((name.as_str(), id), ("ckpt", b.id));
            assert_eq!(path, store.location());
        }
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    // Freed: the name may be used again, the id never.
    store.apply(&[Change::Free { id: b.id }]).unwrap();
    assert!(store.transfer(b.id).unwrap().is_none());
    let c = store
        .create_transfer(&new_transfer(Some("ckpt")), &[])
        .unwrap();
    assert!(c.id > b.id);
    assert_eq!(store.transfer_by_name("ckpt").unwrap().unwrap().id, c.id);
    let ids: Vec<_> = store.transfers().unwrap().iter().map(|t| t.id).collect();
    assert_eq!(ids, [a.id, c.id]);
    assert!(store.transfer_by_name("nope").unwrap().is_none());
}

/// A name chosen to look like the next unnamed transfer's (`cp-ID`) does
/// not make that transfer fail: it is named `cp-ID-2`.
pub fn an_unnamed_transfer_never_collides_with_a_chosen_cp_name<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let first = store.create_transfer(&new_transfer(None), &[]).unwrap();
    assert_eq!(first.name, format!("cp-{}", first.id.0));
    // Ids count up: the squatter takes the next, and the name after it.
    let squatter = store
        .create_transfer(&new_transfer(Some(&format!("cp-{}", first.id.0 + 2))), &[])
        .unwrap();
    assert_eq!(squatter.id.0, first.id.0 + 1);
    let unnamed = store.create_transfer(&new_transfer(None), &[]).unwrap();
    assert_eq!(unnamed.id.0, first.id.0 + 2);
    assert_eq!(unnamed.name, format!("cp-{}-2", unnamed.id.0));
}

pub fn every_change_writes_its_event_and_illegal_transitions_change_nothing<S: Store>(
    open: &dyn Fn() -> S,
) {
    let store = open();
    let t = store
        .create_transfer(&new_transfer(Some("x")), &[])
        .unwrap();
    let mut new = file_entry(0, 10);
    new.source = PathBuf::from(OsString::from_vec(b"/src/\xff".to_vec()));
    store.add_entries(t.id, std::slice::from_ref(&new)).unwrap();
    // Not moving yet: its files do not change.
    assert!(matches!(
        store.apply(&[entry(t.id, 0, FileState::Copying)]),
        Err(StoreError::IllegalTransition { .. })
    ));
    assert!(matches!(
        store.apply(&[to(t.id, TransferState::Completed)]),
        Err(StoreError::IllegalTransition { .. })
    ));
    store.apply(&[to(t.id, TransferState::Dispatched)]).unwrap();
    store.apply(&[to(t.id, TransferState::Running)]).unwrap();
    // Running: no more entries.
    assert!(matches!(
        store.add_entries(t.id, &[file_entry(1, 1)]),
        Err(StoreError::IllegalTransition { .. })
    ));
    let before = all_events(&store).len();
    // A batch with an illegal change is refused whole.
    let copied = Change::Entry {
        checksum: None,
        id: t.id,
        index: EntryIndex(0),
        to: FileState::Copied,
        progress_bytes_durable: Some(10),
        error: None,
        context: Value::Null,
    };
    let batch = [copied, entry(t.id, 0, FileState::Pending)];
    match store.apply(&batch) {
        Err(StoreError::IllegalTransition { id, path, .. }) => {
            assert_eq!((id, path), (t.id, store.location()));
        }
        other => panic!("expected IllegalTransition, got {other:?}"),
    }
    assert_eq!(all_events(&store).len(), before);
    assert_eq!(store.entries(t.id).unwrap()[0].state, FileState::Pending);
    // An entry that does not exist is refused the same way.
    assert!(matches!(
        store.apply(&[entry(t.id, 7, FileState::Copying)]),
        Err(StoreError::IllegalTransition { .. })
    ));
    store.apply(&batch[..1]).unwrap();
    let entries = store.entries(t.id).unwrap();
    assert_eq!(entries[0].source, new.source);
    assert_eq!(entries[0].state, FileState::Copied);
    assert_eq!(entries[0].progress_bytes_durable, 10);
    let events = all_events(&store);
    assert_eq!(
        names(&events),
        [
            "transfer.created",
            "transfer.added",
            "transfer.dispatched",
            "transfer.running",
            "file.copied"
        ]
    );
    // Unknown transfers are named as such.
    let missing = TransferId(t.id.0 + 1000);
    for change in [
        to(missing, TransferState::Dispatched),
        Change::Free { id: missing },
    ] {
        assert!(matches!(
            store.apply(&[change]),
            Err(StoreError::NoSuchTransfer { .. })
        ));
    }
    assert!(matches!(
        store.add_entries(missing, &[file_entry(0, 1)]),
        Err(StoreError::NoSuchTransfer { .. })
    ));
    assert_eq!(all_events(&store).len(), events.len());
    // An empty batch writes nothing.
    store.apply(&[]).unwrap();
    assert_eq!(store.last_seq().unwrap(), events.last().unwrap().seq);
}

/// Everything written comes back exactly: the transfer's columns (caller,
/// checksum algorithm, preserve, suffix), each entry's (paths that are not
/// UTF-8, metadata, link targets, hard-link groups across batches, extended
/// attributes), checksums, piece digests, errors, and each event's fields.
pub fn create_entries_and_events_round_trip_every_field<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let new = NewTransfer {
        name: Some("round-trip".into()),
        kind: Kind::Daemon,
        owner: Owner {
            host: "node-17.example".into(),
            boot_id: "5f0c-boot".into(),
            pid: 4_000_000,
            start_time: 1 << 40,
        },
        preserve: Preserve {
            mode: true,
            ownership: false,
            times: true,
        },
        temp_suffix: ".part-".into(),
        checksum: Some(ChecksumAlgo::Blake3),
        caller: Some(Caller {
            uid: 4_000_000_001,
            gid: 1002,
            groups: vec![5, 70_000, 4_000_000_002],
        }),
    };
    let bytes = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
    let meta = |size: u64| SourceMeta {
        size,
        mode: 0o4755,
        uid: 4_000_000_003,
        gid: 7,
        atime_ns: -5,
        mtime_ns: 1_700_000_000_123_456_789,
    };
    let first = vec![
        NewEntry {
            kind: EntryKind::Dir,
            source: "/src/d".into(),
            dest: "/dst/d".into(),
            meta: meta(0),
            link_target: None,
            link_leader: None,
            xattrs: Xattrs::default(),
        },
        NewEntry {
            kind: EntryKind::File,
            source: bytes(b"/src/d/caf\xe9\n"),
            dest: bytes(b"/dst/d/caf\xe9\n"),
            meta: meta(100),
            link_target: None,
            link_leader: None,
            xattrs: Xattrs(vec![
                (b"user.a".to_vec(), b"\0\xff\0".to_vec()),
                (b"system.posix_acl_access".to_vec(), vec![2, 0, 0, 0, 1]),
                (b"user.empty".to_vec(), Vec::new()),
            ]),
        },
        NewEntry {
            kind: EntryKind::File,
            source: "/src/d/hardlink".into(),
            dest: "/dst/d/hardlink".into(),
            meta: meta(100),
            link_target: None,
            link_leader: Some(1),
            xattrs: Xattrs::default(),
        },
    ];
    let second = vec![
        NewEntry {
            kind: EntryKind::Symlink,
            source: "/src/d/link".into(),
            dest: "/dst/d/link".into(),
            meta: meta(5),
            link_target: Some(bytes(b"../\xfetarget")),
            link_leader: None,
            xattrs: Xattrs::default(),
        },
        file_entry(4, 7),
        NewEntry {
            link_leader: Some(1),
            ..file_entry(5, 7)
        },
    ];
    let t = store.create_transfer(&new, &first).unwrap();
    assert_eq!(t.name, "round-trip");
    assert_eq!(
        (t.kind, t.state, &t.owner, t.preserve),
        (new.kind, TransferState::Created, &new.owner, new.preserve)
    );
    assert_eq!(
        (t.temp_suffix.as_str(), t.checksum, &t.caller),
        (".part-", new.checksum, &new.caller)
    );
    assert!(t.created_ns > 0 && t.updated_ns == t.created_ns);
    store.add_entries(t.id, &second).unwrap();
    let read = store.transfer(t.id).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(&read).unwrap(),
        serde_json::to_value(&t).unwrap()
    );
    let by_name = store.transfer_by_name("round-trip").unwrap().unwrap();
    assert_eq!(by_name.id, t.id);

    let entries = store.entries(t.id).unwrap();
    assert_eq!(entries.len(), 6);
    for (i, (got, want)) in entries.iter().zip(first.iter().chain(&second)).enumerate() {
        let leader_base = if i < first.len() { 0 } else { first.len() };
        assert_eq!(got.index, EntryIndex(i as u32));
        assert_eq!(
            (got.kind, &got.source, &got.dest, got.meta),
            (want.kind, &want.source, &want.dest, want.meta),
            "entry {i}"
        );
        assert_eq!(got.link_target, want.link_target, "entry {i}");
        assert_eq!(
            got.link_leader,
            want.link_leader
                .map(|l| EntryIndex((leader_base + l) as u32)),
            "entry {i}: the leader is counted from the batch's first index"
        );
        assert_eq!(got.xattrs, want.xattrs, "entry {i}");
        assert_eq!(
            (
                got.state,
                got.progress_bytes_durable,
                &got.error,
                got.checksum
            ),
            (FileState::Pending, 0, &None, None)
        );
        assert!(got.piece_digests.is_empty());
    }

    // Checksums, piece digests, errors.
    let algo = ChecksumAlgo::Blake3;
    let pieces = vec![digest(algo, 1), digest(algo, 2)];
    let whole = digest(algo, 3);
    store
        .apply(&[
            to(t.id, TransferState::Dispatched),
            to(t.id, TransferState::Running),
            entry(t.id, 1, FileState::Copying),
            progress(t.id, 1, 50, pieces.clone()),
        ])
        .unwrap();
    let got = &store.entries(t.id).unwrap()[1];
    assert_eq!(got.progress_bytes_durable, 50);
    assert_eq!(
        got.piece_digests,
        [pieces[0].digest(), pieces[1].digest()].concat()
    );
    let context = json!({"bytes": 100, "nested": {"list": [1, "two", null]}});
    store
        .apply(&[
            Change::Entry {
                id: t.id,
                index: EntryIndex(1),
                to: FileState::Copied,
                progress_bytes_durable: Some(100),
                error: None,
                checksum: Some(whole),
                context: context.clone(),
            },
            Change::Entry {
                id: t.id,
                index: EntryIndex(4),
                to: FileState::Failed,
                progress_bytes_durable: None,
                error: Some("EIO: the disk said no — twice".into()),
                checksum: None,
                context: Value::Null,
            },
            Change::Entry {
                id: t.id,
                index: EntryIndex(5),
                to: FileState::Skipped,
                progress_bytes_durable: None,
                error: None,
                checksum: Some(digest(ChecksumAlgo::Xxh3, 9)),
                context: Value::Null,
            },
        ])
        .unwrap();
    let entries = store.entries(t.id).unwrap();
    assert_eq!(entries[1].state, FileState::Copied);
    assert_eq!(entries[1].checksum, Some(whole));
    assert_eq!(entries[1].progress_bytes_durable, 100);
    assert_eq!(
        entries[1].piece_digests,
        [pieces[0].digest(), pieces[1].digest()].concat(),
        "progress forward keeps the digests"
    );
    assert_eq!(entries[4].state, FileState::Failed);
    assert_eq!(
        entries[4].error.as_deref(),
        Some("EIO: the disk said no — twice")
    );
    assert_eq!(entries[5].checksum, Some(digest(ChecksumAlgo::Xxh3, 9)));
    let updated = store.transfer(t.id).unwrap().unwrap();
    assert_eq!(updated.state, TransferState::Running);
    assert!(updated.updated_ns >= t.updated_ns);

    // The events, field by field.
    let events = all_events(&store);
    assert_eq!(
        names(&events),
        [
            "transfer.created",
            "transfer.added",
            "transfer.added",
            "transfer.dispatched",
            "transfer.running",
            "file.copying",
            "file.progress",
            "file.copied",
            "file.failed",
            "file.skipped",
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.transfer == Some(t.id) && e.request.is_none() && e.time_ns > 0)
    );
    let entry_of = |i: usize| events[i].entry.map(|e| e.0);
    assert_eq!(
        (0..events.len()).map(entry_of).collect::<Vec<_>>(),
        [
            None,
            None,
            None,
            None,
            None,
            Some(1),
            Some(1),
            Some(1),
            Some(4),
            Some(5)
        ]
    );
    assert_eq!(
        events[0].context,
        json!({"name": "round-trip", "kind": "daemon", "host": "node-17.example",
               "pid": 4_000_000, "uid": 4_000_000_001u32})
    );
    assert_eq!(events[1].context, json!({"entries": 3, "bytes": 200}));
    assert_eq!(events[2].context, json!({"entries": 3, "bytes": 19}));
    assert_eq!(events[3].context, Value::Null);
    assert_eq!(events[6].context, json!({"bytes_durable": 50}));
    assert_eq!(events[7].context, context);
}

pub fn progress_never_goes_back<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let t = running(&store, "p", 2, 1000);
    let algo = ChecksumAlgo::Xxh3;
    store
        .apply(&[progress(t.id, 0, 100, vec![digest(algo, 1)])])
        .unwrap();
    let events = all_events(&store).len();
    match store.apply(&[progress(t.id, 0, 50, vec![])]) {
        Err(StoreError::IllegalTransition { id, .. }) => assert_eq!(id, t.id),
        other => panic!("expected IllegalTransition, got {other:?}"),
    }
    // Nor does a batch that contains such a step write any of it.
    assert!(
        store
            .apply(&[progress(t.id, 1, 10, vec![]), progress(t.id, 0, 99, vec![])])
            .is_err()
    );
    assert_eq!(all_events(&store).len(), events);
    let entries = store.entries(t.id).unwrap();
    assert_eq!(entries[0].progress_bytes_durable, 100);
    assert_eq!(entries[0].piece_digests, digest(algo, 1).digest());
    assert_eq!(entries[1].progress_bytes_durable, 0);
    // The same progress again is fine; an entry that does not exist is not.
    store.apply(&[progress(t.id, 0, 100, vec![])]).unwrap();
    assert!(matches!(
        store.apply(&[progress(t.id, 9, 1, vec![])]),
        Err(StoreError::IllegalTransition { .. })
    ));
    // A restart (an entry change to 0) is the only way back, and the
    // digests of the pieces go with it.
    store
        .apply(&[progress(
            t.id,
            0,
            200,
            vec![digest(algo, 1), digest(algo, 2)],
        )])
        .unwrap();
    store
        .apply(&[Change::Entry {
            id: t.id,
            index: EntryIndex(0),
            to: FileState::Copying,
            progress_bytes_durable: Some(0),
            error: None,
            checksum: None,
            context: Value::Null,
        }])
        .unwrap();
    let restarted = &store.entries(t.id).unwrap()[0];
    assert_eq!(restarted.progress_bytes_durable, 0);
    assert!(restarted.piece_digests.is_empty());
    let names: Vec<String> = all_events(&store)
        .into_iter()
        .filter(|e| e.entry == Some(EntryIndex(0)))
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            "file.progress",
            "file.progress",
            "file.progress",
            "file.copying"
        ]
    );
}

/// A cancel written through one handle stops a mover writing through
/// another at its next entry change or progress record.
pub fn a_cancel_is_seen_by_an_entry_change<S: Store>(open: &dyn Fn() -> S) {
    let mover = open();
    let controller = open();
    let t = running(&mover, "c", 2, 100);
    mover.apply(&[entry(t.id, 0, FileState::Copying)]).unwrap();
    controller
        .apply(&[to(t.id, TransferState::Cancelled)])
        .unwrap();
    let events = all_events(&mover).len();
    for change in [
        entry(t.id, 0, FileState::Copied),
        progress(t.id, 1, 10, vec![]),
    ] {
        match mover.apply(&[change]) {
            Err(StoreError::Cancelled { id, path }) => {
                assert_eq!((id, path), (t.id, mover.location()));
            }
            other => panic!("expected Cancelled, got {other:?}"),
        }
    }
    assert_eq!(all_events(&mover).len(), events);
    assert_eq!(
        mover.transfer(t.id).unwrap().unwrap().state,
        TransferState::Cancelled
    );
    assert_eq!(mover.entries(t.id).unwrap()[0].state, FileState::Copying);
}

pub fn free_is_refused_while_moving<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let t = store
        .create_transfer(&new_transfer(Some("f")), &[file_entry(0, 1)])
        .unwrap();
    for state in [TransferState::Dispatched, TransferState::Running] {
        store.apply(&[to(t.id, state)]).unwrap();
        match store.apply(&[Change::Free { id: t.id }]) {
            Err(StoreError::IllegalTransition { from, .. }) => assert_eq!(from, state.as_str()),
            other => panic!("expected IllegalTransition while {state}, got {other:?}"),
        }
        assert!(store.transfer(t.id).unwrap().is_some());
    }
    store.apply(&[to(t.id, TransferState::Cancelled)]).unwrap();
    store.apply(&[Change::Free { id: t.id }]).unwrap();
    assert!(store.transfer(t.id).unwrap().is_none());
    assert!(store.transfer_by_name("f").unwrap().is_none());
    assert!(store.transfers().unwrap().is_empty());
    // A freed transfer takes no change at all; its rows and events stay.
    for change in [
        Change::Free { id: t.id },
        to(t.id, TransferState::Dispatched),
        entry(t.id, 0, FileState::Copying),
    ] {
        assert!(matches!(
            store.apply(&[change]),
            Err(StoreError::NoSuchTransfer { .. })
        ));
    }
    assert_eq!(store.entries(t.id).unwrap().len(), 1);
    let events = all_events(&store);
    assert_eq!(events.last().unwrap().name, "transfer.freed");
    assert_eq!(events.last().unwrap().context, Value::Null);
}

/// Of two handles re-attaching a dead owner's transfer at once, one wins;
/// only the recorded owner dispatches.
pub fn reattach_is_a_compare_and_swap<S: Store>(open: &dyn Fn() -> S) {
    let one = open();
    let two = open();
    let t = one.create_transfer(&new_transfer(Some("r")), &[]).unwrap();
    let dead = owner(1);
    let (a, b) = (owner(2), owner(3));
    one.apply(&[Change::Reattach {
        id: t.id,
        from: dead.clone(),
        owner: a.clone(),
    }])
    .unwrap();
    match two.apply(&[Change::Reattach {
        id: t.id,
        from: dead.clone(),
        owner: b.clone(),
    }]) {
        Err(StoreError::OwnerChanged { id, pid, host, .. }) => {
            assert_eq!((id, pid, host.as_str()), (t.id, a.pid, "h"));
        }
        other => panic!("expected OwnerChanged, got {other:?}"),
    }
    assert_eq!(two.transfer(t.id).unwrap().unwrap().owner, a);
    let dispatch = |owner: &Owner| Change::Transfer {
        id: t.id,
        to: TransferState::Dispatched,
        owner: Some(owner.clone()),
        context: Value::Null,
    };
    assert!(matches!(
        two.apply(&[dispatch(&dead)]),
        Err(StoreError::OwnerChanged { .. })
    ));
    two.apply(&[dispatch(&a)]).unwrap();
    assert!(matches!(
        one.apply(&[Change::Reattach {
            id: TransferId(t.id.0 + 1000),
            from: a.clone(),
            owner: b,
        }]),
        Err(StoreError::NoSuchTransfer { .. })
    ));
    let events = all_events(&one);
    assert_eq!(
        names(&events),
        [
            "transfer.created",
            "transfer.reattached",
            "transfer.dispatched"
        ]
    );
    assert_eq!(events[1].context, json!({"host": "h", "pid": 2}));
}

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

/// Runs every function of this module as a test: `$open` is an expression
/// of type `&dyn Fn() -> S` opening one fresh store, evaluated once per test
/// (so `let`s in it live as long as the test).
#[macro_export]
#[doc(hidden)]
macro_rules! store_conformance_tests {
    ($fresh:expr) => {
        $crate::store_conformance_tests!(
            $fresh;
            ids_are_never_reused_and_names_are_unique,
            an_unnamed_transfer_never_collides_with_a_chosen_cp_name,
            every_change_writes_its_event_and_illegal_transitions_change_nothing,
            create_entries_and_events_round_trip_every_field,
            progress_never_goes_back,
            a_cancel_is_seen_by_an_entry_change,
            free_is_refused_while_moving,
            reattach_is_a_compare_and_swap,
            events_since_filters_and_limits,
            compaction_and_cursors,
            the_event_reader_wakes_on_a_write_from_another_handle,
            concurrent_handles_number_events_without_gaps,
            the_lease_is_renewed_by_the_owner_and_fences_the_old_one,
        );
    };
    ($fresh:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $fresh(|open| $crate::conformance::$name(open));
            }
        )*
    };
}
