use super::*;
use crate::conformance::new_transfer;

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
