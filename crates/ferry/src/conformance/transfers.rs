//! Transfers and entries: ids and names, every change with its event,
//! round trips of every field, progress, cancel, free and re-attach.

use super::*;
use crate::model::LinkLeader;

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
        replaces: None,
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
            shared_inode: None,
            inode_changed_ns: 0,
            xattrs: Xattrs::default(),
        },
        NewEntry {
            kind: EntryKind::File,
            source: bytes(b"/src/d/caf\xe9\n"),
            dest: bytes(b"/dst/d/caf\xe9\n"),
            meta: meta(100),
            link_target: None,
            link_leader: None,
            shared_inode: None,
            inode_changed_ns: 0,
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
            link_leader: Some(LinkLeader::InBatch(1)),
            shared_inode: None,
            inode_changed_ns: 0,
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
            shared_inode: None,
            inode_changed_ns: 0,
            xattrs: Xattrs::default(),
        },
        file_entry(4, 7),
        NewEntry {
            link_leader: Some(LinkLeader::InBatch(1)),
            shared_inode: None,
            inode_changed_ns: 0,
            ..file_entry(5, 7)
        },
        // A plan added a batch at a time: a leader in an earlier batch.
        NewEntry {
            link_leader: Some(LinkLeader::Added(EntryIndex(1))),
            shared_inode: None,
            inode_changed_ns: 0,
            ..file_entry(6, 100)
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
    assert_eq!(entries.len(), 7);
    // The first entry alone (how a re-run finds the copy it repeats).
    assert_eq!(
        serde_json::to_value(store.first_entry(t.id).unwrap()).unwrap(),
        serde_json::to_value(&entries[0]).unwrap()
    );
    assert!(
        store
            .first_entry(TransferId(i64::MAX >> 2))
            .unwrap()
            .is_none()
    );
    // A range of them (how a run pages through a transfer), and the
    // directories alone (its last pass), as the whole read has them.
    // (Debug: some paths are not UTF-8, which JSON cannot hold.)
    let json = |records: &[crate::model::EntryRecord]| format!("{records:?}");
    for (from, limit) in [
        (0usize, 7usize),
        (0, 4),
        (2, 3),
        (4, 100),
        (7, 1),
        (0, usize::MAX),
    ] {
        let want = &entries[from.min(7)..(from.saturating_add(limit)).min(7)];
        let got = store
            .entries_from(t.id, EntryIndex(from as u32), limit)
            .unwrap();
        assert_eq!(json(&got), json(want), "from {from}, at most {limit}");
    }
    let dirs: Vec<crate::model::EntryRecord> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir)
        .cloned()
        .collect();
    assert_eq!(json(&store.directory_entries(t.id).unwrap()), json(&dirs));
    // What a re-run compares, as the whole read has it.
    let compared = store.entries_compared(t.id).unwrap();
    assert_eq!(compared.len(), entries.len());
    for (got, want) in compared.iter().zip(&entries) {
        let fields = |e: &crate::model::EntryRecord| {
            format!(
                "{:?}",
                (
                    e.index,
                    e.kind,
                    &e.source,
                    &e.dest,
                    e.meta.size,
                    e.meta.mode,
                    e.meta.uid,
                    e.meta.gid,
                    e.meta.mtime_ns,
                    &e.link_target,
                    e.state,
                )
            )
        };
        assert_eq!(fields(got), fields(want));
    }
    // And a range of it, as a re-run reads it a page at a time.
    for (from, limit) in [(0usize, 3usize), (2, 4), (6, 5), (7, 1)] {
        let got = store
            .entries_compared_from(t.id, EntryIndex(from as u32), limit)
            .unwrap();
        let want = &compared[from.min(7)..(from + limit).min(7)];
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            want.iter().map(|e| e.index).collect::<Vec<_>>(),
            "compared from {from}, at most {limit}"
        );
        for (got, want) in got.iter().zip(want) {
            assert_eq!(
                (&got.dest, got.meta.size, got.state),
                (&want.dest, want.meta.size, want.state)
            );
        }
    }
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
            want.link_leader.map(|l| match l {
                LinkLeader::InBatch(l) => EntryIndex((leader_base + l) as u32),
                LinkLeader::Added(index) => index,
            }),
            "entry {i}: the leader is counted from the batch's first index, or named"
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
    assert_eq!(events[2].context, json!({"entries": 4, "bytes": 119}));
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

/// A new transfer takes a name from the finished one it `replaces` in the
/// transaction that records it, or in a later batch that frees the holder
/// and names it ([`Change::Named`]): the name is never free in between,
/// and a refused step changes nothing.
pub fn a_name_passes_from_a_finished_transfer_in_one_transaction<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let finished = |name: &str| {
        let t = store
            .create_transfer(&new_transfer(Some(name)), &[file_entry(0, 1)])
            .unwrap();
        store.apply(&[to(t.id, TransferState::Cancelled)]).unwrap();
        t
    };
    // Recorded with the name, freeing its holder.
    let old = finished("job");
    let replacing = |replaces| NewTransfer {
        replaces,
        ..new_transfer(Some("job"))
    };
    match store.create_transfer(&replacing(None), &[]) {
        Err(StoreError::DuplicateName { id, .. }) => assert_eq!(id, old.id),
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    let new = store
        .create_transfer(&replacing(Some(old.id)), &[file_entry(0, 1)])
        .unwrap();
    assert_eq!(store.transfer_by_name("job").unwrap().unwrap().id, new.id);
    assert!(store.transfer(old.id).unwrap().is_none());
    // One freed already is passed over.
    let newer = finished("other");
    store.apply(&[Change::Free { id: newer.id }]).unwrap();
    let other = store
        .create_transfer(
            &NewTransfer {
                replaces: Some(newer.id),
                ..new_transfer(Some("other"))
            },
            &[],
        )
        .unwrap();
    assert_eq!(
        store.transfer_by_name("other").unwrap().unwrap().id,
        other.id
    );
    // A holder that is moving is not freed, and nothing is recorded.
    store
        .apply(&[to(other.id, TransferState::Dispatched)])
        .unwrap();
    let transfers = store.transfers().unwrap().len();
    match store.create_transfer(
        &NewTransfer {
            replaces: Some(other.id),
            ..new_transfer(Some("other"))
        },
        &[],
    ) {
        Err(StoreError::IllegalTransition { .. }) => {}
        other => panic!("expected IllegalTransition, got {other:?}"),
    }
    assert_eq!(store.transfers().unwrap().len(), transfers);

    // Planned under a provisional name, then named.
    let planned = store
        .create_transfer(&new_transfer(Some(" job (planned)")), &[file_entry(0, 1)])
        .unwrap();
    let named = Change::Named {
        id: planned.id,
        name: "job".into(),
    };
    let events = all_events(&store).len();
    match store.apply(std::slice::from_ref(&named)) {
        Err(StoreError::DuplicateName { id, .. }) => assert_eq!(id, new.id),
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    assert_eq!(
        all_events(&store).len(),
        events,
        "a refused batch writes nothing"
    );
    store
        .apply(&[to(new.id, TransferState::Cancelled)])
        .unwrap();
    store
        .apply(&[Change::Free { id: new.id }, named.clone()])
        .unwrap();
    let now = store.transfer_by_name("job").unwrap().unwrap();
    assert_eq!((now.id, now.name.as_str()), (planned.id, "job"));
    assert!(store.transfer_by_name(" job (planned)").unwrap().is_none());
    assert!(store.transfer(new.id).unwrap().is_none());
    let last = all_events(&store);
    let names: Vec<_> = last[events..].iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["transfer.cancelled", "transfer.freed", "transfer.named"]
    );
    assert_eq!(last.last().unwrap().context, json!({ "name": "job" }));
    // Only while it is planned.
    store
        .apply(&[to(planned.id, TransferState::Dispatched)])
        .unwrap();
    match store.apply(&[Change::Named {
        id: planned.id,
        name: "later".into(),
    }]) {
        Err(StoreError::IllegalTransition { .. }) => {}
        other => panic!("expected IllegalTransition, got {other:?}"),
    }
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

/// `Change::Limit` records a rate in any state of a transfer;
/// `Change::Removed` only while it moves (a `--delete` of its mover).
pub fn limit_and_removal_events<S: Store>(open: &dyn Fn() -> S) {
    let store = open();
    let t = store
        .create_transfer(&new_transfer(Some("l")), &[file_entry(0, 1)])
        .unwrap();
    let limit = |rate| Change::Limit {
        id: t.id,
        bytes_per_second: rate,
    };
    let removed = Change::Removed {
        id: t.id,
        path: PathBuf::from("/dst/extra"),
    };
    store.apply(&[limit(Some(5 << 20))]).unwrap();
    let before = all_events(&store).len();
    assert!(
        store.apply(std::slice::from_ref(&removed)).is_err(),
        "not moving"
    );
    assert_eq!(all_events(&store).len(), before, "a refusal writes nothing");
    store.apply(&[to(t.id, TransferState::Dispatched)]).unwrap();
    store.apply(&[removed, limit(None)]).unwrap();
    let events = all_events(&store);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names[names.len() - 4..],
        [
            "transfer.limited",
            "transfer.dispatched",
            "file.removed",
            "transfer.limited"
        ]
    );
    let n = events.len();
    assert_eq!(events[n - 4].context, json!({"bytes_per_second": 5 << 20}));
    assert_eq!(events[n - 2].context, json!({"path": "/dst/extra"}));
    assert_eq!(events[n - 1].context, json!({"bytes_per_second": 0}));
    let missing = Change::Limit {
        id: TransferId(t.id.0 + 1000),
        bytes_per_second: None,
    };
    assert!(store.apply(&[missing]).is_err());
}

/// A transfer's counts ([`Store::entry_tally`]) and its pages of failures
/// ([`Store::failed_entries`]) say what its entries say, through every
/// kind of entry change; a user's unfinished entries count its live,
/// unfinished transfers only.
pub fn tallies_and_failure_pages_agree_with_the_entries<S: Store>(open: &dyn Fn() -> S) {
    use crate::store::EntryTally;
    let store = open();
    let mut entries: Vec<_> = (0..6).map(|i| file_entry(i, 100)).collect();
    let mut dir = file_entry(6, 0);
    dir.kind = EntryKind::Dir;
    entries.push(dir);
    let t = store
        .create_transfer(&new_transfer(Some("tally")), &entries)
        .unwrap();
    store
        .apply(&[
            to(t.id, TransferState::Dispatched),
            to(t.id, TransferState::Running),
        ])
        .unwrap();
    let agrees = |store: &S| {
        let entries = store.entries(t.id).unwrap();
        assert_eq!(store.entry_tally(t.id).unwrap(), EntryTally::of(&entries));
    };
    agrees(&store);
    let failed = |index: u32| Change::Entry {
        id: t.id,
        index: EntryIndex(index),
        to: FileState::Failed,
        progress_bytes_durable: None,
        error: Some(format!("failure {index}")),
        checksum: None,
        context: Value::Null,
    };
    store
        .apply(&[
            entry(t.id, 0, FileState::Copying),
            progress(t.id, 0, 40, vec![]),
        ])
        .unwrap();
    agrees(&store);
    store
        .apply(&[
            entry(t.id, 0, FileState::Copied),
            entry(t.id, 0, FileState::Committed),
            entry(t.id, 1, FileState::Copying),
            failed(1),
            entry(t.id, 3, FileState::Copying),
            failed(3),
            entry(t.id, 4, FileState::Copying),
            failed(4),
        ])
        .unwrap();
    agrees(&store);
    let tally = store.entry_tally(t.id).unwrap();
    assert_eq!(
        (
            tally.entries,
            tally.files,
            tally.files_committed,
            tally.files_failed
        ),
        (7, 6, 1, 3)
    );
    assert_eq!((tally.bytes, tally.bytes_durable), (600, 100));
    let page = |after: Option<u32>, limit| -> Vec<u32> {
        store
            .failed_entries(t.id, after.map(EntryIndex), limit)
            .unwrap()
            .into_iter()
            .map(|f| f.index.0)
            .collect()
    };
    assert_eq!(page(None, 2), [1, 3]);
    assert_eq!(page(Some(3), 2), [4]);
    assert_eq!(page(Some(4), 2), Vec::<u32>::new());
    let first = &store.failed_entries(t.id, None, 1).unwrap()[0];
    assert_eq!(first.error, "failure 1");
    assert_eq!(first.dest, file_entry(1, 100).dest);

    // Per user: only live, unfinished transfers count.
    let caller = |name: &str| NewTransfer {
        replaces: None,
        caller: Some(Caller {
            uid: 4242,
            gid: 4242,
            groups: Vec::new(),
        }),
        ..new_transfer(Some(name))
    };
    assert_eq!(store.unfinished_entries_of_caller(4242).unwrap(), 0);
    let mine: Vec<_> = (0..3).map(|i| file_entry(i, 1)).collect();
    let a = store.create_transfer(&caller("mine-a"), &mine).unwrap();
    store
        .create_transfer(&caller("mine-b"), &mine[..2])
        .unwrap();
    assert_eq!(store.unfinished_entries_of_caller(4242).unwrap(), 5);
    store.apply(&[to(a.id, TransferState::Cancelled)]).unwrap();
    assert_eq!(store.unfinished_entries_of_caller(4242).unwrap(), 2);
    assert_eq!(store.unfinished_entries_of_caller(4243).unwrap(), 0);
}

/// A commit's batch: many entries of one transfer at once (a store may
/// write them with one statement) is checked change by change, in order,
/// and written whole or not at all, every field of each change as if
/// applied alone, with one event each in batch order.
pub fn a_batch_of_entry_changes_is_checked_in_order_and_written_whole<S: Store>(
    open: &dyn Fn() -> S,
) {
    let store = open();
    let t = running(&store, "b", 6, 1000);
    let algo = ChecksumAlgo::Xxh3;
    store
        .apply(&[progress(t.id, 2, 500, vec![digest(algo, 7)])])
        .unwrap();
    let before = all_events(&store).len();
    // An illegal step in the middle (entry 3 cannot be committed from
    // pending), or an entry that does not exist at the end: nothing.
    let copying: Vec<Change> = (0..6).map(|i| entry(t.id, i, FileState::Copying)).collect();
    let mut illegal = copying.clone();
    illegal[3] = entry(t.id, 3, FileState::Committed);
    let mut missing = copying.clone();
    missing.push(entry(t.id, 99, FileState::Copying));
    for batch in [&illegal, &missing] {
        assert!(matches!(
            store.apply(batch),
            Err(StoreError::IllegalTransition { id, .. }) if id == t.id
        ));
        assert_eq!(all_events(&store).len(), before);
        let entries = store.entries(t.id).unwrap();
        assert!(entries.iter().all(|e| e.state == FileState::Pending));
    }
    // An entry twice in one batch: the second sees the first.
    let mut twice = copying.clone();
    twice.push(entry(t.id, 0, FileState::Failed));
    store.apply(&twice).unwrap();
    let checksum = digest(algo, 9);
    let finished: Vec<Change> = (1..6)
        .map(|i| Change::Entry {
            id: t.id,
            index: EntryIndex(i),
            to: FileState::Copied,
            progress_bytes_durable: Some(if i == 2 { 0 } else { 1000 }),
            error: (i == 4).then(|| "a note".to_string()),
            checksum: (i % 2 == 1).then_some(checksum),
            context: json!({"i": i}),
        })
        .collect();
    store.apply(&finished).unwrap();
    let entries = store.entries(t.id).unwrap();
    assert_eq!(entries[0].state, FileState::Failed);
    for e in &entries[1..] {
        let i = e.index.0;
        assert_eq!(e.state, FileState::Copied, "entry {i}");
        let progress = if i == 2 { 0 } else { 1000 };
        assert_eq!(e.progress_bytes_durable, progress, "entry {i}");
        assert_eq!(
            e.error.as_deref(),
            (i == 4).then_some("a note"),
            "entry {i}"
        );
        assert_eq!(e.checksum, (i % 2 == 1).then_some(checksum), "entry {i}");
        // Progress back to 0 restarted entry 2: its pieces' digests went.
        assert!(e.piece_digests.is_empty(), "entry {i}");
    }
    let events = all_events(&store);
    let written: Vec<(Option<u32>, &str, &Value)> = events[before..]
        .iter()
        .map(|e| (e.entry.map(|i| i.0), e.name.as_str(), &e.context))
        .collect();
    let mut expected: Vec<(Option<u32>, &str, Value)> = (0..6)
        .map(|i| (Some(i), "file.copying", Value::Null))
        .collect();
    expected.push((Some(0), "file.failed", Value::Null));
    expected.extend((1..6).map(|i| (Some(i), "file.copied", json!({"i": i}))));
    let expected: Vec<(Option<u32>, &str, &Value)> =
        expected.iter().map(|(i, n, c)| (*i, *n, c)).collect();
    assert_eq!(written, expected);
    // A checksum recorded earlier stays when a later change brings none.
    store
        .apply(&[
            entry(t.id, 1, FileState::Committed),
            entry(t.id, 3, FileState::Committed),
        ])
        .unwrap();
    assert_eq!(store.entries(t.id).unwrap()[3].checksum, Some(checksum));
}
