use super::*;
use crate::conformance::new_transfer;
use crate::model::EntryKind;

fn file_entry(i: usize) -> NewEntry {
    crate::conformance::file_entry(i, 10)
}

/// SQLite's own trick for a full disk without root: `max_page_count`.
/// The free-space reading is pinned at 0 so that the probe cannot
/// switch back until the test says there is room.
#[test]
fn a_full_store_turns_read_only_keeps_what_it_acknowledged_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let reserve = store.space.reserve_path().to_path_buf();
    assert!(!reserve.exists(), "opening alone makes no reserve");
    let t = store
        .create_transfer(&new_transfer(Some("full")), &[])
        .unwrap();
    assert!(reserve.exists(), "the first write makes the reserve");
    store.space.set_free_bytes(Some(0));
    store
        .read(|c| {
            c.execute_batch("PRAGMA max_page_count = 0")?;
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            c.execute_batch(&format!("PRAGMA max_page_count = {}", pages + 4))
        })
        .unwrap();

    // Acknowledged batches, until the disk is "full".
    let mut acknowledged = 0;
    let err = loop {
        let batch: Vec<_> = (acknowledged..acknowledged + 50).map(file_entry).collect();
        match store.add_entries(t.id, &batch) {
            Ok(()) => acknowledged += batch.len(),
            Err(e) => break e,
        }
        assert!(
            acknowledged < 100_000,
            "max_page_count never filled the store"
        );
    };
    assert!(
        matches!(err, StoreError::ReadOnly { .. }),
        "out of space is read-only: {err}"
    );
    assert!(err.to_string().contains("read-only"), "{err}");
    assert!(!reserve.exists(), "the reserve is released");
    assert!(store.read_only().is_some());
    let names = |store: &SqliteStore| -> Vec<String> {
        store
            .events_since(0, &EventFilter::default(), 1 << 20)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    assert_eq!(
        names(&store).last().map(String::as_str),
        Some("store.read_only"),
        "the switch is recorded, in the room the reserve left"
    );

    // Every mutating call fails at once; reads keep working.
    let err = store.add_entries(t.id, &[file_entry(999_999)]).unwrap_err();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err}");
    assert_eq!(store.entries(t.id).unwrap().len(), acknowledged);
    // A clean shutdown is still written, into the room the reserve left.
    let to = |to| Change::Transfer {
        id: t.id,
        to,
        owner: None,
        context: serde_json::Value::Null,
    };
    store
        .read(|c| c.execute_batch("PRAGMA max_page_count = 1000000"))
        .unwrap();
    store.apply(&[to(TransferState::Failed)]).unwrap();
    assert!(store.read_only().is_some(), "still read-only after it");

    // Room again: the background probe switches back by itself.
    store.space.set_free_bytes(None);
    assert!(store.wait_read_write(Duration::from_secs(30)));
    assert!(reserve.exists(), "the reserve is back");
    store.apply(&[to(TransferState::Dispatched)]).unwrap();
    let names = names(&store);
    assert_eq!(
        &names[names.len() - 2..],
        ["store.read_write", "transfer.dispatched"],
        "the return is recorded with the first write after it"
    );
    assert_eq!(store.entries(t.id).unwrap().len(), acknowledged);
    assert_eq!(store.check().unwrap().integrity, "ok");
}

#[test]
fn garbage_file_is_not_a_store_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    let garbage =
        b"this is not a database, it is a text file with enough bytes to matter".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(&path)
        .err()
        .expect("garbage must be refused");
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[test]
fn other_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE t(x)")
        .unwrap();
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::NotAStore { .. }), "{err}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .unwrap();
    let err = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
}

/// Ids come from AUTOINCREMENT: deleting the newest row does not
/// hand its id out again. (The rest of the promise, and every other
/// Store-generic test, is in `conformance`.)
#[test]
fn a_deleted_newest_id_is_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let b = store
        .create_transfer(&new_transfer(Some("ckpt")), &[])
        .unwrap();
    store
        .read(|c| c.execute("DELETE FROM transfers WHERE id = ?1", [b.id.0]))
        .unwrap();
    let c = store.create_transfer(&new_transfer(None), &[]).unwrap();
    assert!(c.id > b.id);
}

fn fresh(test: impl FnOnce(&dyn Fn() -> SqliteStore)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    test(&|| SqliteStore::open(&path).unwrap());
}

crate::store_conformance_tests!(fresh);

/// A new store, and the log files SQLite makes beside it, are the owner's
/// alone, whatever the umask: the paths it names are theirs to show.
#[test]
fn a_new_store_and_its_logs_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let store = SqliteStore::open(&path);
    rustix::process::umask(old);
    let store = store.unwrap();
    store
        .create_transfer(&new_transfer(Some("private")), &[file_entry(0)])
        .unwrap();
    for name in ["s.db", "s.db-wal", "s.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {mode:o}");
    }
}

/// The schema before packed events and compact entries (version 10): its
/// tables, made by its own migrations, and rows as that version wrote
/// them. A store of it opens, migrates, and keeps answering for its old
/// transfers: status (records, tallies, failures), watch (the log, with
/// the same seqs and contexts) and resume (their files move on).
#[test]
fn a_store_of_schema_10_migrates_and_answers_for_its_old_transfers() {
    use crate::model::{Checksum, ChecksumAlgo};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let digest = [0xab_u8; 16];
    let copied = format!(r#"{{"bytes":10,"checksum":"xxh3:{}"}}"#, "ab".repeat(16));
    {
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for migration in &MIGRATIONS[..10] {
            tx.execute_batch(migration).unwrap();
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 10;"
        ))
        .unwrap();
        let transfer = |name: &str, state: &str| -> i64 {
            tx.execute(
                "INSERT INTO transfers (name, kind, state, owner_host, owner_boot_id, owner_pid,
                    owner_start_time, preserve_mode, preserve_ownership, preserve_times,
                    temp_suffix, created_ns, updated_ns, checksum_algo)
                 VALUES (?1, 'sync', ?2, 'host', 'boot', 1, 1, 1, 1, 1, '._ferry-', 5, 6, 'xxh3')",
                params![name, state],
            )
            .unwrap();
            tx.last_insert_rowid()
        };
        let done = transfer("done", "completed");
        let moving = transfer("moving", "running");
        let entry = |t: i64, idx: i64, kind: &str, state: &str, progress: i64, checksum: bool| {
            tx.execute(
                "INSERT INTO entries (transfer_id, idx, kind, source, dest, size, mode, uid, gid,
                    atime_ns, mtime_ns, state, progress_bytes_durable, error, checksum_algo,
                    checksum)
                 VALUES (?1, ?2, ?3, ?4, ?5, 10, 420, 0, 0, 1, 2, ?6, ?7, ?8, ?9, ?10)",
                params![
                    t,
                    idx,
                    kind,
                    format!("/old/src/{idx}").into_bytes(),
                    format!("/old/dst/{idx}").into_bytes(),
                    state,
                    progress,
                    (state == "failed").then_some("no space left on device"),
                    checksum.then_some("xxh3"),
                    checksum.then_some(&digest[..]),
                ],
            )
            .unwrap();
        };
        entry(done, 0, "dir", "committed", 0, false);
        entry(done, 1, "file", "committed", 10, true);
        entry(done, 2, "file", "failed", 0, false);
        entry(moving, 0, "file", "copying", 4, false);
        entry(moving, 1, "symlink", "pending", 0, false);
        for (t, idx, name, context) in [
            (done, None, "transfer.created", r#"{"name":"done"}"#),
            (done, Some(1), "file.copied", copied.as_str()),
            (done, Some(1), "file.committed", "null"),
            (
                done,
                Some(2),
                "file.failed",
                r#"{"error":"no space left on device"}"#,
            ),
            (done, None, "transfer.completed", "null"),
            (moving, None, "transfer.created", r#"{"name":"moving"}"#),
            (moving, Some(0), "file.copying", r#"{"offset":0}"#),
        ] {
            tx.execute(
                "INSERT INTO events (time_ns, transfer_id, entry_idx, name, context)
                 VALUES (7, ?1, ?2, ?3, ?4)",
                params![t, idx, name, context],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let old_events = |store: &SqliteStore| store.events_since(0, &EventFilter::default(), 100);

    let store = SqliteStore::open(&path).unwrap();
    let version: i64 = store
        .read(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    assert_eq!(store.check().unwrap().integrity, "ok");

    // status
    let done = store.transfer_by_name("done").unwrap().unwrap();
    let moving = store.transfer_by_name("moving").unwrap().unwrap();
    assert_eq!(done.checksum, Some(ChecksumAlgo::Xxh3));
    let entries = store.entries(done.id).unwrap();
    let states: Vec<_> = entries.iter().map(|e| (e.kind, e.state)).collect();
    assert_eq!(
        states,
        [
            (EntryKind::Dir, FileState::Committed),
            (EntryKind::File, FileState::Committed),
            (EntryKind::File, FileState::Failed)
        ]
    );
    assert_eq!(entries[1].source, PathBuf::from("/old/src/1"));
    assert_eq!(entries[1].dest, PathBuf::from("/old/dst/1"));
    assert_eq!(
        entries[1].checksum,
        Checksum::from_digest(ChecksumAlgo::Xxh3, &digest)
    );
    assert_eq!(entries[2].error.as_deref(), Some("no space left on device"));
    let tally = store.entry_tally(done.id).unwrap();
    assert_eq!(tally, EntryTally::of(&entries));
    assert_eq!(
        (tally.files, tally.files_committed, tally.files_failed),
        (2, 1, 1)
    );
    let failed = store.failed_entries(done.id, None, 10).unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].dest, PathBuf::from("/old/dst/2"));

    // watch: the same log, seq for seq
    let events = old_events(&store).unwrap();
    assert_eq!(events.len(), 7);
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(events[1].context.to_string(), copied);
    assert_eq!(events[3].entry, Some(EntryIndex(2)));

    // resume: the running transfer's files move on, two events in a row
    let last = store.last_seq().unwrap();
    let checksum = Checksum::from_digest(ChecksumAlgo::Xxh3, &digest);
    store
        .apply(&[
            Change::Entry {
                id: moving.id,
                index: EntryIndex(0),
                to: FileState::Copied,
                progress_bytes_durable: Some(10),
                error: None,
                checksum,
                context: serde_json::json!({"bytes": 10, "checksum": checksum.unwrap().to_string()}),
            },
            Change::Entry {
                id: moving.id,
                index: EntryIndex(1),
                to: FileState::Copying,
                progress_bytes_durable: Some(0),
                error: None,
                checksum: None,
                context: serde_json::json!({"offset": 0}),
            },
        ])
        .unwrap();
    let new = store
        .events_since(last, &EventFilter::default(), 100)
        .unwrap();
    let seqs: Vec<_> = new.iter().map(|e| (e.seq, e.name.as_str())).collect();
    assert_eq!(
        seqs,
        [(last + 1, "file.copied"), (last + 2, "file.copying")]
    );
    assert_eq!(new[0].context.to_string(), copied);
    let moved = store.entries(moving.id).unwrap();
    assert_eq!(moved[0].state, FileState::Copied);
    assert_eq!(moved[0].checksum, checksum);
    assert_eq!(moved[1].kind, EntryKind::Symlink);
    assert_eq!(moved[0].dest, PathBuf::from("/old/dst/0"));
    assert_eq!(
        store.entry_tally(moving.id).unwrap(),
        EntryTally::of(&moved)
    );
    assert_eq!(old_events(&store).unwrap().len(), 9);
}

/// A batch's events share one row and come back one by one: every seq
/// once, in order, whatever the page size, the cursor or the filter.
#[test]
fn packed_events_read_back_one_by_one_at_any_cursor_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
    let entries: Vec<_> = (0..40).map(file_entry).collect();
    let t = store
        .create_transfer(&new_transfer(Some("packed")), &entries)
        .unwrap();
    let transfer = |to| Change::Transfer {
        id: t.id,
        to,
        owner: None,
        context: serde_json::Value::Null,
    };
    store.apply(&[transfer(TransferState::Dispatched)]).unwrap();
    let entry = |i: u32, to| Change::Entry {
        id: t.id,
        index: EntryIndex(i),
        to,
        progress_bytes_durable: None,
        error: None,
        checksum: None,
        context: serde_json::json!({"bytes": 10}),
    };
    let copying: Vec<_> = (0..40).map(|i| entry(i, FileState::Copying)).collect();
    store.apply(&copying).unwrap();
    let mut mixed: Vec<_> = (0..40).map(|i| entry(i, FileState::Copied)).collect();
    mixed.push(transfer(TransferState::Running));
    store.apply(&mixed).unwrap();
    let rows: i64 = store
        .read(|c| c.query_row("SELECT count(*) FROM events", [], |r| r.get(0)))
        .unwrap();
    assert!(rows <= 6, "{rows} rows for 84 events");
    let all = store
        .events_since(0, &EventFilter::default(), 1000)
        .unwrap();
    assert_eq!(all.len(), 84);
    let last = store.last_seq().unwrap();
    assert_eq!(all.last().unwrap().seq, last);
    assert!(all.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    for page in [1, 3, 39, 40, 41, 1000] {
        for start in [0, 2, 3, 10, 42, 43, 44, 83] {
            let mut cursor = all[start].seq - 1;
            let mut seen = Vec::new();
            loop {
                let events = store
                    .events_since(cursor, &EventFilter::default(), page)
                    .unwrap();
                assert!(events.len() <= page);
                let Some(event) = events.last() else { break };
                cursor = event.seq;
                seen.extend(events);
            }
            assert_eq!(
                seen.iter().map(|e| e.seq).collect::<Vec<_>>(),
                all[start..].iter().map(|e| e.seq).collect::<Vec<_>>(),
                "page {page} from {start}"
            );
            assert_eq!(
                seen.last().map(|e| &e.context),
                all.last().map(|e| &e.context)
            );
        }
    }
    let copied = EventFilter {
        kind: Some("file.copied".into()),
        ..EventFilter::default()
    };
    let page = store.events_since(0, &copied, 7).unwrap();
    assert_eq!(page.len(), 7, "a page is full while more events match");
    assert!(page.iter().all(|e| e.name == "file.copied"));
    let running = EventFilter {
        kind: Some("transfer.running".into()),
        ..EventFilter::default()
    };
    let page = store.events_since(0, &running, 1).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].seq, last);

    // Compaction inside a packed row: what is left reads from the horizon.
    let horizon = store.compact(all[60].seq).unwrap();
    let after = store
        .events_since(horizon, &EventFilter::default(), 1000)
        .unwrap();
    assert_eq!(after.first().map(|e| e.seq), Some(horizon + 1));
    assert_eq!(after.len() as u64, last - horizon);
    assert!(matches!(
        store.events_since(horizon - 1, &EventFilter::default(), 10),
        Err(StoreError::Compacted { .. })
    ));
}
