//! The embedded store: one SQLite file.
//!
//! WAL on local file systems; the rollback journal on network file systems,
//! where WAL's shared memory between processes is unsafe. `synchronous=FULL`:
//! an acknowledged change survives power loss. Paths are stored as raw bytes,
//! so names that are not UTF-8 round-trip exactly.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::rules;
use super::space::{self, ReadOnlyCause, SpaceGuard};
use super::{Change, ChangeToken, EventFilter, EventPage, EventReader, Store, StoreError};
use crate::failpoint::{self, CommitStep};
use crate::model::{
    ChecksumAlgo, EntryIndex, EntryRecord, Event, FileState, NewEntry, NewTransfer, Owner,
    Preserve, TransferId, TransferRecord, TransferState,
};

/// `PRAGMA application_id`: "FRRY". Tells a ferry store from any other
/// SQLite file before we write a byte to it.
const APPLICATION_ID: i64 = 0x4652_5259;

/// Schema migrations, in order; the store's `user_version` is how many have
/// been applied. Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE transfers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    owner_host TEXT NOT NULL,
    owner_boot_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start_time INTEGER NOT NULL,
    preserve_mode INTEGER NOT NULL,
    preserve_ownership INTEGER NOT NULL,
    preserve_times INTEGER NOT NULL,
    temp_suffix TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    freed_ns INTEGER
);
CREATE UNIQUE INDEX transfers_live_name ON transfers(name) WHERE freed_ns IS NULL;

CREATE TABLE entries (
    transfer_id INTEGER NOT NULL REFERENCES transfers(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source BLOB NOT NULL,
    dest BLOB NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    link_target BLOB,
    state TEXT NOT NULL,
    progress_bytes_durable INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    -- Room for integrity and fidelity: checksums, extended attributes and
    -- ACLs, hard-link groups.
    checksum_algo TEXT,
    checksum BLOB,
    xattrs BLOB,
    link_group INTEGER,
    PRIMARY KEY (transfer_id, idx)
) WITHOUT ROWID;

CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL,
    transfer_id INTEGER,
    entry_idx INTEGER,
    request_id INTEGER,
    name TEXT NOT NULL,
    context TEXT NOT NULL
);
"#,
    r#"
-- Event log retention: events with seq <= events_horizon were compacted.
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (key, value) VALUES ('events_horizon', 0);
"#,
    r#"
-- Transfer ids start at a random point of a 2^40 range (never below what
-- was handed out): temporaries are named DEST._ferry-<id>, and the stores
-- of many MPI ranks writing one directory must not name them alike.
CREATE TEMP TABLE next_transfer_id AS SELECT max(
    coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'transfers'), 0),
    (SELECT coalesce(max(id), 0) FROM transfers),
    abs(random() % 1099511627776)
) AS seq;
DELETE FROM sqlite_sequence WHERE name = 'transfers';
INSERT INTO sqlite_sequence (name, seq) SELECT 'transfers', seq FROM next_transfer_id;
DROP TABLE next_transfer_id;
"#,
    r#"
-- The hash each copied file of a transfer gets (NULL: none). The digest
-- itself goes to entries.checksum_algo / entries.checksum.
ALTER TABLE transfers ADD COLUMN checksum_algo TEXT;
"#,
    r#"
-- HSM coordination (see crate::hsm). rank = created_ns - head start: the
-- lease query seeks hsm_requests_ready in rank order, never scans.
CREATE TABLE hsm_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    fsname TEXT NOT NULL,
    archive_id INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    data BLOB NOT NULL,
    fid TEXT NOT NULL,
    path BLOB,
    priority_ms INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before_ns INTEGER NOT NULL DEFAULT 0,
    lease_holder TEXT,
    lease_expires_ns INTEGER,
    waiters INTEGER NOT NULL DEFAULT 1,
    error TEXT,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE INDEX hsm_requests_ready ON hsm_requests(rank, id) WHERE state = 'waiting';
-- The best waiting request of one action: the weighted choice seeks here.
CREATE INDEX hsm_requests_ready_action ON hsm_requests(action, rank, id)
    WHERE state = 'waiting';
CREATE INDEX hsm_requests_leased ON hsm_requests(lease_expires_ns) WHERE state = 'started';
-- At most one live request per file and action: dedup joins it.
CREATE UNIQUE INDEX hsm_requests_live ON hsm_requests(fid, action)
    WHERE state IN ('waiting', 'started');
CREATE INDEX hsm_requests_state ON hsm_requests(state, id);

CREATE TABLE hsm_catalog (
    fid TEXT PRIMARY KEY,
    path BLOB,
    state TEXT NOT NULL,
    archive_id INTEGER NOT NULL,
    object TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    checksum TEXT,
    updated_ns INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO meta (key, value) VALUES
    ('hsm.head_start_restore_ms', 600000),
    ('hsm.head_start_remove_ms', 60000),
    ('hsm.head_start_archive_ms', 0),
    ('hsm.max_attempts', 5),
    ('hsm.backoff_base_ms', 1000),
    ('hsm.backoff_max_ms', 300000),
    ('hsm.restore_share', 4),
    -- Restores and removes leased since the last archive (the weighting).
    ('hsm.restores_since_archive', 0);
"#,
    r#"
-- A large file's piece digests below its durable progress, as read from
-- the source: a resume takes them instead of hashing the temporary.
ALTER TABLE entries ADD COLUMN piece_digests BLOB;
"#,
    r#"
-- Daemon transfers: the user they were created for (the socket peer's
-- credentials), who alone may see and control them, and whose file
-- credentials their data path runs with. NULL outside the daemon.
ALTER TABLE transfers ADD COLUMN caller_uid INTEGER;
ALTER TABLE transfers ADD COLUMN caller_gid INTEGER;
ALTER TABLE transfers ADD COLUMN caller_groups TEXT;
"#,
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a writer waits for another process's transaction.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// `statfs` magic numbers of file systems shared between hosts.
const NETWORK_FS_MAGIC: &[i64] = &[
    0x6969,                 // NFS
    0x0BD0_0BD0,            // Lustre
    0x4750_4653,            // GPFS
    0x517B,                 // SMB
    0xFF53_4D42_u32 as i64, // CIFS
    0xFE53_4D42_u32 as i64, // SMB2
    0x00C3_6400,            // Ceph
    0x1983_0326,            // BeeGFS
    0x0102_1997,            // 9P
    0x5346_414F,            // AFS
    0xAAD7_AAEA_u32 as i64, // PanFS
    0x6573_5546,            // FUSE (sshfs and friends: assume shared)
];

mod queue;

pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
    notifier: Arc<Notifier>,
    space: Arc<SpaceGuard>,
    /// Set until the first write has made sure the reserve exists: a
    /// process that only reads (status, watch) never creates one.
    reserve_unchecked: std::sync::atomic::AtomicBool,
}

/// What `ferry store check` found (see [`SqliteStore::check`]).
#[derive(Clone, Debug)]
pub struct SpaceReport {
    /// Still read-only, and why: there is not enough room yet.
    pub read_only: Option<ReadOnlyCause>,
    pub free_bytes: u64,
    /// Free space the store wants before it writes again.
    pub recover_bytes: u64,
    pub reserve_path: PathBuf,
    pub reserve_bytes: u64,
    pub reserve_present: bool,
    /// `PRAGMA quick_check`'s verdict: "ok" or the first problems.
    pub integrity: String,
}

/// Wakes this process's watchers when this process commits a write.
#[derive(Default)]
struct Notifier {
    commits: Mutex<u64>,
    changed: Condvar,
}

/// How a store is opened: see [`SqliteStore::open`] and
/// [`SqliteStore::open_deferred`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Opening {
    Durable,
    DeferredExclusive,
    DeferredShared,
}

/// Cross-process change checks back off from this to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

impl SqliteStore {
    /// Opens the store at `path`, creating it (and its directory) when
    /// missing. Refuses files that are not ferry stores, or that a newer
    /// ferry wrote, without modifying them.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, Opening::Durable)
    }

    /// Opens a store for a batch job over many stores (finalize): locked
    /// for this connection alone, commits not fsynced one by one, and no
    /// checkpoint (the database file is left untouched; commits go to the
    /// write-ahead log). The caller must make the store's files durable
    /// ([`crate::engine::commit::make_durable`] on [`SqliteStore::files`])
    /// before it reports anything as done.
    pub fn open_deferred(path: &Path) -> Result<SqliteStore, StoreError> {
        match SqliteStore::open_with(path, Opening::DeferredExclusive) {
            // Another process has it open (a live owner, a watcher): share.
            Err(StoreError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) =>
            {
                SqliteStore::open_with(path, Opening::DeferredShared)
            }
            other => other,
        }
    }

    /// Moves everything from the write-ahead log into the database file
    /// and empties the log, as a clean close does.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
    }

    /// The files a crash-safe copy of this store consists of right now.
    pub fn files(&self) -> Vec<PathBuf> {
        ["", "-wal"]
            .iter()
            .map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                PathBuf::from(p)
            })
            .filter(|p| p.exists())
            .collect()
    }

    fn open_with(path: &Path, opening: Opening) -> Result<SqliteStore, StoreError> {
        let sync_each_commit = opening == Opening::Durable;
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(open_err)?;
        }
        if path.is_dir() {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                detail: "it is a directory".into(),
            });
        }
        let conn = Connection::open(path).map_err(|e| sqlite_err(path, e))?;
        // With a rollback journal an idle connection holds no lock, so an
        // exclusive probe would succeed against a live owner: share there.
        let opening = if opening == Opening::DeferredExclusive && is_network_fs(path) {
            Opening::DeferredShared
        } else {
            opening
        };
        if opening == Opening::DeferredExclusive {
            // A batch job holds each store for a moment: one lock for the
            // whole connection, and no shared-memory file to create and map.
            // If another process has the store open, fail at once and share.
            conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE")
                .map_err(|e| sqlite_err(path, e))?;
        } else {
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| sqlite_err(path, e))?;
        }

        // Read the header before writing anything: a garbage file fails here.
        let (app_id, version, tables): (i64, i64, i64) = conn
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id()),
                        (SELECT user_version FROM pragma_user_version()),
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(|e| match e.sqlite_error_code() {
                Some(ErrorCode::NotADatabase) => StoreError::NotAStore {
                    path: path.to_path_buf(),
                    detail: "not an SQLite database".into(),
                },
                _ => sqlite_err(path, e),
            })?;
        let fresh = app_id == 0 && version == 0 && tables == 0;
        if !fresh && app_id != APPLICATION_ID {
            return Err(StoreError::NotAStore {
                path: path.to_path_buf(),
                detail: "an SQLite database of another application".into(),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }

        if opening == Opening::DeferredExclusive {
            conn.busy_timeout(BUSY_TIMEOUT)
                .map_err(|e| sqlite_err(path, e))?;
        }
        let journal = if is_network_fs(path) { "DELETE" } else { "WAL" };
        conn.pragma_update(None, "journal_mode", journal)
            .map_err(|e| sqlite_err(path, e))?;
        // Deferred (a batch job that syncs the file system itself): in WAL
        // mode with no checkpoints the database file is never written, so
        // unsynced commits can only be lost, never corrupt it; the caller's
        // sync makes them durable. With a rollback journal pages are written
        // in place, so the journal is still synced.
        let synchronous = match (opening, journal) {
            (Opening::DeferredExclusive, "WAL") => "OFF",
            // Shared: other processes see our commits at once, so each must
            // be durable before it is visible.
            _ => "FULL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous={synchronous}; PRAGMA foreign_keys=ON;"
        ))
        .map_err(|e| sqlite_err(path, e))?;
        if !sync_each_commit {
            conn.execute_batch("PRAGMA wal_autocheckpoint=0")
                .map_err(|e| sqlite_err(path, e))?;
            conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map_err(|e| sqlite_err(path, e))?;
        }

        let mut store = SqliteStore {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            notifier: Arc::default(),
            space: SpaceGuard::new(path),
            // Batch jobs over thousands of stores (finalize) never make one.
            reserve_unchecked: sync_each_commit.into(),
        };
        store.migrate(version)?;
        Ok(store)
    }

    /// Why the store is read-only, if it is (see [`StoreError::ReadOnly`]).
    pub fn read_only(&self) -> Option<ReadOnlyCause> {
        self.space.cause()
    }

    /// Blocks until the store is read-write again (the background probe
    /// found room) or `timeout` passed; returns whether it is.
    pub fn wait_read_write(&self, timeout: Duration) -> bool {
        self.space.wait_read_write(timeout)
    }

    /// `ferry store check`: returns a read-only store to read-write if its
    /// file system has room again, re-creates the reserve if it is missing,
    /// and checks the database's integrity.
    pub fn check(&self) -> Result<SpaceReport, StoreError> {
        self.space.try_recover();
        let mut read_only = self.space.cause();
        let free_bytes = self.space.free_bytes().map_err(|source| StoreError::Open {
            path: self.path.clone(),
            source,
        })?;
        if read_only.is_none() && !self.space.reserve_present() {
            // No reserve: another process released it when the disk filled.
            // Writable again only on the terms the probe applies.
            let recover = self.space.recover_bytes();
            let detail = if free_bytes < recover {
                Some(format!(
                    "its file system has {free_bytes} bytes free and it needs {recover}"
                ))
            } else {
                self.space.ensure_reserve().err().map(|e| {
                    format!(
                        "its reserve {} cannot be created: {e}",
                        self.space.reserve_path().display()
                    )
                })
            };
            read_only = detail.map(|detail| ReadOnlyCause { detail });
        }
        let integrity: Vec<String> = self.read(|conn| {
            let mut stmt = conn.prepare("PRAGMA quick_check(10)")?;
            stmt.query_map([], |row| row.get(0))?.collect()
        })?;
        Ok(SpaceReport {
            read_only,
            free_bytes,
            recover_bytes: self.space.recover_bytes(),
            reserve_path: self.space.reserve_path().to_path_buf(),
            reserve_bytes: self.space.reserve_bytes(),
            reserve_present: self.space.reserve_present(),
            integrity: integrity.join("; "),
        })
    }

    fn migrate(&mut self, from: i64) -> Result<(), StoreError> {
        if from == SCHEMA_VERSION {
            return Ok(());
        }
        let path = self.path.clone();
        let conn = self.conn.get_mut().expect("store mutex poisoned");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sqlite_err(&path, e))?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| sqlite_err(&path, e))?;
        for migration in &MIGRATIONS[now as usize..] {
            tx.execute_batch(migration)
                .map_err(|e| sqlite_err(&path, e))?;
        }
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .map_err(|e| sqlite_err(&path, e))?;
        tx.commit().map_err(|e| sqlite_err(&path, e))
    }

    /// Runs `f` in one IMMEDIATE transaction: the write lock is taken up
    /// front, so two writers never deadlock upgrading a read lock.
    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_as(Writing::Normal, f)
    }

    /// [`SqliteStore::write`]; a [`Writing::Shutdown`] is written even while
    /// the store is read-only, into the room its reserve left.
    fn write_as<T>(
        &self,
        writing: Writing,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Checked under the lock: every write of this process waits on it,
        // so none slips past a switch another thread just made.
        let mut conn = self.conn.lock().expect("store mutex poisoned");
        if writing == Writing::Normal {
            if let Some(cause) = self.space.cause() {
                return Err(self.read_only_error(cause));
            }
            // A writer keeps a reserve; with no room even for that, it is
            // read-only from its first write (as `ferry store check` says).
            if self
                .reserve_unchecked
                .swap(false, std::sync::atomic::Ordering::Relaxed)
                && let Err(e) = self.space.ensure_reserve()
                && space::is_errno_out_of_space(&e)
            {
                let cause = format!(
                    "there is no room for its reserve {} ({e})",
                    self.space.reserve_path().display()
                );
                self.space.enter_read_only(cause.clone());
                return Err(self.read_only_error(ReadOnlyCause { detail: cause }));
            }
        }
        // The probe found room while nobody wrote: said with this write.
        let recovered = self.space.take_recovery();
        let result = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err(e))?;
            if let Some(free_bytes) = recovered {
                let context = serde_json::json!({ "free_bytes": free_bytes });
                self.insert_store_event(&tx, "store.read_write", &context)?;
            }
            let value = f(&tx)?;
            failpoint::hit(CommitStep::StoreCommit).map_err(|e| self.err(injected(&e)))?;
            tx.commit().map_err(|e| self.err(e))?;
            Ok(value)
        })();
        let value = match result {
            Ok(value) => value,
            Err(e) => {
                if let Some(free_bytes) = recovered {
                    self.space.put_back_recovery(free_bytes);
                }
                let out_of_space = match &e {
                    StoreError::Sqlite { source, .. } => {
                        space::is_out_of_space(source, system_errno(&conn))
                            .then(|| format!("its disk is full ({source})"))
                    }
                    _ => None,
                };
                let Some(cause) = out_of_space else {
                    return Err(e);
                };
                if self.space.enter_read_only(cause.clone()) {
                    // Into the room the released reserve left; if even that
                    // fails, the error returned still says it all.
                    let context = serde_json::json!({ "cause": cause });
                    let recorded = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(|e| self.err(e))
                        .and_then(|tx| {
                            self.insert_store_event(&tx, "store.read_only", &context)?;
                            tx.commit().map_err(|e| self.err(e))
                        });
                    drop(conn);
                    if recorded.is_ok() {
                        self.notify_commit();
                    }
                }
                let cause = self
                    .space
                    .cause()
                    .unwrap_or(ReadOnlyCause { detail: cause });
                return Err(self.read_only_error(cause));
            }
        };
        drop(conn);
        self.notify_commit();
        Ok(value)
    }

    /// Wakes this process's watchers after a commit.
    fn notify_commit(&self) {
        *self.notifier.commits.lock().expect("notifier poisoned") += 1;
        self.notifier.changed.notify_all();
    }

    fn read_only_error(&self, cause: ReadOnlyCause) -> StoreError {
        StoreError::ReadOnly {
            path: self.path.clone(),
            cause: cause.detail,
            recover_bytes: self.space.recover_bytes(),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().expect("store mutex poisoned");
        f(&conn).map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path, e)
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    /// An event about the store itself: no transfer, no request.
    fn insert_store_event(
        &self,
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        context: &serde_json::Value,
    ) -> Result<(), StoreError> {
        tx.prepare_cached("INSERT INTO events (time_ns, name, context) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![now_ns(), name, context.to_string()]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn insert_event(
        &self,
        tx: &rusqlite::Transaction<'_>,
        transfer: TransferId,
        entry: Option<EntryIndex>,
        name: &str,
        context: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO events (time_ns, transfer_id, entry_idx, name, context)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.err(e))?;
        stmt.execute(params![
            now_ns(),
            transfer.0,
            entry.map(|i| i.0),
            name,
            context.to_string()
        ])
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Appends entries (state `pending`) to a transfer that is still
    /// `created`, and one `transfer.added` event.
    fn insert_entries(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        entries: &[NewEntry],
    ) -> Result<(), StoreError> {
        rules::check_adding(&self.path, id, self.transfer_state(tx, id)?)?;
        let first: i64 = tx
            .query_row(
                "SELECT coalesce(max(idx) + 1, 0) FROM entries WHERE transfer_id = ?1",
                [id.0],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO entries (transfer_id, idx, kind, source, dest, size, mode, uid,
                    gid, atime_ns, mtime_ns, link_target, link_group, xattrs, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 'pending')",
            )
            .map_err(|e| self.err(e))?;
        for (offset, entry) in entries.iter().enumerate() {
            let index = rules::entry_index(first, offset);
            stmt.execute(params![
                id.0,
                index,
                entry.kind.as_str(),
                entry.source.as_os_str().as_bytes(),
                entry.dest.as_os_str().as_bytes(),
                entry.meta.size as i64,
                entry.meta.mode,
                entry.meta.uid,
                entry.meta.gid,
                entry.meta.atime_ns,
                entry.meta.mtime_ns,
                entry.link_target.as_ref().map(|t| t.as_os_str().as_bytes()),
                rules::link_group_column(first, offset, entry),
                rules::xattrs_column(&entry.xattrs),
            ])
            .map_err(|e| self.err(e))?;
        }
        let context = rules::added_context(entries);
        self.insert_event(tx, id, None, rules::EVENT_ADDED, &context)
    }

    fn transfer_state(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
    ) -> Result<TransferState, StoreError> {
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM transfers WHERE id = ?1 AND freed_ns IS NULL")
            .and_then(|mut s| s.query_row([id.0], |row| row.get(0)).optional())
            .map_err(|e| self.err(e))?;
        let state = state.ok_or_else(|| rules::no_such_transfer(&self.path, id))?;
        rules::parse_transfer_state(&self.path, id, &state)
    }

    fn apply_one(
        &self,
        tx: &rusqlite::Transaction<'_>,
        change: &Change,
        checked: &mut HashMap<TransferId, ()>,
    ) -> Result<(), StoreError> {
        let now = now_ns();
        match change {
            Change::Transfer {
                id,
                to,
                owner,
                context,
            } => {
                if let Some(expected) = owner {
                    self.check_owner(tx, *id, expected)?;
                }
                let from = self.transfer_state(tx, *id)?;
                rules::check_transfer_transition(&self.path, *id, from, *to)?;
                tx.prepare_cached("UPDATE transfers SET state = ?1, updated_ns = ?2 WHERE id = ?3")
                    .and_then(|mut s| s.execute(params![to.as_str(), now, id.0]))
                    .map_err(|e| self.err(e))?;
                self.insert_event(tx, *id, None, &rules::transfer_event_name(*to), context)
            }
            Change::Reattach { id, from, owner } => {
                self.check_owner(tx, *id, from)?;
                tx.prepare_cached(
                    "UPDATE transfers SET owner_host = ?1, owner_boot_id = ?2,
                     owner_pid = ?3, owner_start_time = ?4, updated_ns = ?5 WHERE id = ?6",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        owner.host,
                        owner.boot_id,
                        owner.pid,
                        owner.start_time as i64,
                        now,
                        id.0
                    ])
                })
                .map_err(|e| self.err(e))?;
                let context = rules::reattached_context(owner);
                self.insert_event(tx, *id, None, rules::EVENT_REATTACHED, &context)
            }
            Change::Entry {
                id,
                index,
                to,
                progress_bytes_durable,
                error,
                checksum,
                context,
            } => {
                self.check_moving(tx, *id, checked)?;
                let from = self.entry_state(tx, *id, *index)?;
                rules::check_entry_transition(&self.path, *id, *index, from, *to)?;
                // Progress back to 0 restarts the file: its pieces' digests go.
                tx.prepare_cached(
                    "UPDATE entries SET state = ?1, error = ?2,
                     progress_bytes_durable = coalesce(?3, progress_bytes_durable),
                     piece_digests = CASE WHEN ?3 = 0 THEN NULL ELSE piece_digests END
                     WHERE transfer_id = ?4 AND idx = ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        to.as_str(),
                        error,
                        progress_bytes_durable.map(|p| p as i64),
                        id.0,
                        index.0
                    ])
                })
                .map_err(|e| self.err(e))?;
                if let Some(checksum) = checksum {
                    tx.prepare_cached(
                        "UPDATE entries SET checksum_algo = ?1, checksum = ?2
                         WHERE transfer_id = ?3 AND idx = ?4",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            checksum.algo.as_str(),
                            checksum.digest(),
                            id.0,
                            index.0
                        ])
                    })
                    .map_err(|e| self.err(e))?;
                }
                self.insert_event(tx, *id, Some(*index), &rules::file_event_name(*to), context)
            }
            Change::Free { id } => {
                rules::check_free(&self.path, *id, self.transfer_state(tx, *id)?)?;
                let changed = tx
                    .prepare_cached(
                        "UPDATE transfers SET freed_ns = ?1 WHERE id = ?2 AND freed_ns IS NULL",
                    )
                    .and_then(|mut s| s.execute(params![now, id.0]))
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::no_such_transfer(&self.path, *id));
                }
                self.insert_event(tx, *id, None, rules::EVENT_FREED, &serde_json::Value::Null)
            }
            Change::Progress {
                id,
                index,
                progress_bytes_durable,
                piece_digests,
            } => {
                self.check_moving(tx, *id, checked)?;
                let digests = rules::piece_digests_column(piece_digests);
                let changed = tx
                    .prepare_cached(
                        "UPDATE entries SET progress_bytes_durable = ?1, piece_digests = ?4
                         WHERE transfer_id = ?2 AND idx = ?3 AND progress_bytes_durable <= ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            *progress_bytes_durable as i64,
                            id.0,
                            index.0,
                            digests
                        ])
                    })
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::progress_refused(
                        &self.path,
                        *id,
                        *index,
                        *progress_bytes_durable,
                    ));
                }
                let context = rules::progress_context(*progress_bytes_durable);
                self.insert_event(tx, *id, Some(*index), rules::EVENT_PROGRESS, &context)
            }
        }
    }

    fn check_owner(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        expected: &Owner,
    ) -> Result<(), StoreError> {
        let owner: Option<Owner> = tx
            .prepare_cached(
                "SELECT owner_host, owner_boot_id, owner_pid, owner_start_time
                 FROM transfers WHERE id = ?1 AND freed_ns IS NULL",
            )
            .and_then(|mut s| {
                s.query_row([id.0], |row| {
                    Ok(Owner {
                        host: row.get(0)?,
                        boot_id: row.get(1)?,
                        pid: row.get(2)?,
                        start_time: row.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        rules::check_owner(&self.path, id, owner, expected)
    }

    /// Files change only while their transfer is moving: a cancel (or a
    /// finalize, or a free) stops every mover at its next store write.
    fn check_moving(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        checked: &mut HashMap<TransferId, ()>,
    ) -> Result<(), StoreError> {
        if checked.contains_key(&id) {
            return Ok(());
        }
        rules::check_moving(&self.path, id, self.transfer_state(tx, id)?)?;
        checked.insert(id, ());
        Ok(())
    }

    /// The entry's state; `None` when the transfer has no such entry.
    fn entry_state(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        index: EntryIndex,
    ) -> Result<Option<FileState>, StoreError> {
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM entries WHERE transfer_id = ?1 AND idx = ?2")
            .and_then(|mut s| {
                s.query_row(params![id.0, index.0], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        state
            .map(|state| rules::parse_file_state(&self.path, id, index, &state))
            .transpose()
    }

    /// One `transfers` row, in the column order of `query_transfers`.
    fn row_to_transfer(row: &rusqlite::Row<'_>) -> rusqlite::Result<rules::TransferRow> {
        Ok(rules::TransferRow {
            id: row.get(0)?,
            name: row.get(1)?,
            kind: row.get(2)?,
            state: row.get(3)?,
            owner_host: row.get(4)?,
            owner_boot_id: row.get(5)?,
            owner_pid: row.get(6)?,
            owner_start_time: row.get(7)?,
            preserve: Preserve {
                mode: row.get(8)?,
                ownership: row.get(9)?,
                times: row.get(10)?,
            },
            temp_suffix: row.get(11)?,
            created_ns: row.get(12)?,
            updated_ns: row.get(13)?,
            checksum_algo: row.get(14)?,
            caller_uid: row.get(15)?,
            caller_gid: row.get(16)?,
            caller_groups: row.get(17)?,
        })
    }

    /// One `entries` row, in the column order of `entries`.
    fn row_to_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<rules::EntryRow> {
        Ok(rules::EntryRow {
            index: row.get(0)?,
            kind: row.get(1)?,
            source: row.get(2)?,
            dest: row.get(3)?,
            size: row.get(4)?,
            mode: row.get(5)?,
            uid: row.get(6)?,
            gid: row.get(7)?,
            atime_ns: row.get(8)?,
            mtime_ns: row.get(9)?,
            link_target: row.get(10)?,
            state: row.get(11)?,
            progress_bytes_durable: row.get(12)?,
            error: row.get(13)?,
            checksum_algo: row.get(14)?,
            checksum: row.get(15)?,
            link_group: row.get(16)?,
            xattrs: row.get(17)?,
            piece_digests: row.get(18)?,
        })
    }

    fn query_transfers(
        &self,
        filter: &str,
        param: Option<&dyn rusqlite::ToSql>,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let sql = format!(
            "SELECT id, name, kind, state, owner_host, owner_boot_id, owner_pid, owner_start_time,
                    preserve_mode, preserve_ownership, preserve_times, temp_suffix, created_ns,
                    updated_ns, checksum_algo, caller_uid, caller_gid, caller_groups
             FROM transfers WHERE freed_ns IS NULL {filter} ORDER BY id"
        );
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = param.into_iter().collect();
            let rows = stmt.query_map(params.as_slice(), Self::row_to_transfer)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|row| row.into_record(&self.path))
            .collect()
    }
}

impl Store for SqliteStore {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn create_transfer(
        &self,
        new: &NewTransfer,
        entries: &[NewEntry],
    ) -> Result<TransferRecord, StoreError> {
        let id = self.write(|tx| {
            if let Some(name) = &new.name {
                let existing: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM transfers WHERE name = ?1 AND freed_ns IS NULL",
                        [name],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                if let Some(existing) = existing {
                    return Err(StoreError::DuplicateName {
                        path: self.path.clone(),
                        name: name.clone(),
                        id: TransferId(existing),
                    });
                }
            }
            let now = now_ns();
            // An unnamed transfer is named after its id, which exists only
            // once the row does: insert under a placeholder, then rename.
            let placeholder = format!("\u{1}unnamed-{}", new.owner.pid);
            tx.execute(
                "INSERT INTO transfers (name, kind, state, owner_host, owner_boot_id, owner_pid,
                    owner_start_time, preserve_mode, preserve_ownership, preserve_times,
                    temp_suffix, created_ns, updated_ns, checksum_algo, caller_uid, caller_gid,
                    caller_groups)
                 VALUES (?1, ?2, 'created', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13,
                    ?14, ?15)",
                params![
                    new.name.as_deref().unwrap_or(&placeholder),
                    new.kind.as_str(),
                    new.owner.host,
                    new.owner.boot_id,
                    new.owner.pid,
                    new.owner.start_time as i64,
                    new.preserve.mode,
                    new.preserve.ownership,
                    new.preserve.times,
                    new.temp_suffix,
                    now,
                    new.checksum.map(ChecksumAlgo::as_str),
                    new.caller.as_ref().map(|c| c.uid),
                    new.caller.as_ref().map(|c| c.gid),
                    new.caller.as_ref().map(rules::caller_groups_column),
                ],
            )
            .map_err(|e| self.err(e))?;
            let id = TransferId(tx.last_insert_rowid());
            let name = match &new.name {
                Some(name) => name.clone(),
                None => {
                    // `cp-ID`, unless someone chose that name already (a
                    // user of a shared daemon may): then `cp-ID-2`, -3…
                    // Bounded: a live name is taken at most once per try.
                    let taken = |name: &str| -> Result<bool, StoreError> {
                        tx.query_row(
                            "SELECT EXISTS (SELECT 1 FROM transfers
                                WHERE name = ?1 AND freed_ns IS NULL)",
                            [name],
                            |row| row.get(0),
                        )
                        .map_err(|e| self.err(e))
                    };
                    let mut n = 1;
                    let mut name = rules::unnamed_name(id, n);
                    while taken(&name)? {
                        n += 1;
                        name = rules::unnamed_name(id, n);
                    }
                    tx.execute(
                        "UPDATE transfers SET name = ?1 WHERE id = ?2",
                        params![name, id.0],
                    )
                    .map_err(|e| self.err(e))?;
                    name
                }
            };
            let context = rules::created_context(new, &name);
            self.insert_event(
                tx,
                id,
                None,
                &rules::transfer_event_name(TransferState::Created),
                &context,
            )?;
            if !entries.is_empty() {
                self.insert_entries(tx, id, entries)?;
            }
            Ok(id)
        })?;
        let record = self
            .transfer(id)?
            .ok_or_else(|| rules::no_such_transfer(&self.path, id))?;
        rules::check_created(&record, new);
        Ok(record)
    }

    fn add_entries(&self, id: TransferId, entries: &[NewEntry]) -> Result<(), StoreError> {
        self.write(|tx| self.insert_entries(tx, id, entries))
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let writing = if rules::is_shutdown(changes) {
            Writing::Shutdown
        } else {
            Writing::Normal
        };
        self.write_as(writing, |tx| {
            let mut checked = HashMap::new();
            for change in changes {
                self.apply_one(tx, change, &mut checked)?;
            }
            Ok(())
        })
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND id = ?1", Some(&id.0))?
            .into_iter()
            .next())
    }

    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND name = ?1", Some(&name))?
            .into_iter()
            .next())
    }

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        self.query_transfers("", None)
    }

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT idx, kind, source, dest, size, mode, uid, gid, atime_ns, mtime_ns,
                        link_target, state, progress_bytes_durable, error, checksum_algo,
                        checksum, link_group, xattrs, piece_digests
                 FROM entries WHERE transfer_id = ?1 ORDER BY idx",
            )?;
            let rows = stmt.query_map([id.0], Self::row_to_entry)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let records = rows
            .into_iter()
            .map(|row| row.into_record(&self.path, id))
            .collect::<Result<Vec<_>, _>>()?;
        rules::check_entries(&self.path, id, records)
    }

    fn events_since(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.conn.lock().expect("store mutex poisoned");
        query_events(&conn, &self.path, after, filter, limit).map(|page| page.events)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .map(|seq| seq as u64)
    }

    fn compact(&self, before: u64) -> Result<u64, StoreError> {
        self.write(|tx| {
            let last: i64 = tx
                .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                    row.get(0)
                })
                .map_err(|e| self.err(e))?;
            let horizon: i64 = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = 'events_horizon'",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| self.err(e))?;
            let Some(new_horizon) = rules::compact_horizon(before, last as u64, horizon as u64)
            else {
                return Ok(horizon as u64);
            };
            tx.execute("DELETE FROM events WHERE seq <= ?1", [new_horizon as i64])
                .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'events_horizon'",
                [new_horizon as i64],
            )
            .map_err(|e| self.err(e))?;
            Ok(new_horizon)
        })
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| self.err(e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        Ok(Box::new(SqliteEventReader {
            path: self.path.clone(),
            conn,
            notifier: Arc::clone(&self.notifier),
        }))
    }
}

struct SqliteEventReader {
    path: PathBuf,
    conn: Connection,
    notifier: Arc<Notifier>,
}

impl SqliteEventReader {
    fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))
            .map_err(|e| sqlite_err(&self.path, e))
    }
}

impl EventReader for SqliteEventReader {
    fn events_since(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<EventPage, StoreError> {
        query_events(&self.conn, &self.path, after, filter, limit)
    }

    fn change_token(&mut self) -> Result<ChangeToken, StoreError> {
        let local = *self.notifier.commits.lock().expect("notifier poisoned");
        Ok(ChangeToken {
            local,
            data_version: self.data_version()?,
        })
    }

    fn wait_changed(&mut self, since: ChangeToken, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut poll = POLL_MIN;
        loop {
            {
                let commits = self.notifier.commits.lock().expect("notifier poisoned");
                if *commits != since.local {
                    return Ok(true);
                }
                let wait = poll.min(deadline.saturating_duration_since(Instant::now()));
                let (commits, _) = self
                    .notifier
                    .changed
                    .wait_timeout(commits, wait)
                    .expect("notifier poisoned");
                if *commits != since.local {
                    return Ok(true);
                }
            }
            if self.data_version()? != since.data_version {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            poll = (poll * 2).min(POLL_MAX);
        }
    }
}

/// One read transaction: the horizon check and the query see the same
/// snapshot, so a compaction in between cannot open a silent gap.
fn query_events(
    conn: &Connection,
    path: &Path,
    after: u64,
    filter: &EventFilter,
    limit: usize,
) -> Result<EventPage, StoreError> {
    let err = |e| sqlite_err(path, e);
    let tx = conn.unchecked_transaction().map_err(err)?;
    let horizon: i64 = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'events_horizon'",
            [],
            |row| row.get(0),
        )
        .map_err(err)?;
    rules::check_horizon(path, after, horizon as u64)?;
    let raw: Vec<rules::EventRow> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT seq, time_ns, transfer_id, entry_idx, request_id, name, context
                 FROM events
                 WHERE seq > ?1
                   AND (?2 IS NULL OR transfer_id = ?2)
                   AND (?5 IS NULL OR request_id = ?5)
                   AND (?3 IS NULL OR name = ?3 OR substr(name, 1, length(?3) + 1) = ?3 || '.')
                 ORDER BY seq LIMIT ?4",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(
                params![
                    after as i64,
                    filter.transfer.map(|t| t.0),
                    filter.kind.as_deref(),
                    limit.min(i64::MAX as usize) as i64,
                    filter.request.map(|r| r.0),
                ],
                |row| {
                    Ok(rules::EventRow {
                        seq: row.get(0)?,
                        time_ns: row.get(1)?,
                        transfer: row.get(2)?,
                        entry: row.get(3)?,
                        request: row.get(4)?,
                        name: row.get(5)?,
                        context: row.get(6)?,
                    })
                },
            )
            .map_err(err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(err)?
    };
    let last_seq: i64 = tx
        .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
            row.get(0)
        })
        .map_err(err)?;
    tx.finish().map_err(err)?;
    let events: Vec<Event> = raw
        .into_iter()
        .map(|row| row.into_event(path))
        .collect::<Result<_, StoreError>>()?;
    rules::check_event_page(&events, after, last_seq as u64);
    Ok(EventPage {
        events,
        last_seq: last_seq as u64,
    })
}

/// Whether a write may go to a read-only store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writing {
    Normal,
    /// Transfers ending `failed` or `cancelled`: a clean shutdown.
    Shutdown,
}

/// The errno behind SQLite's last I/O error on this connection.
fn system_errno(conn: &Connection) -> i32 {
    // SAFETY: the handle is valid while `conn` is borrowed, and
    // sqlite3_system_errno only reads the connection's last error.
    unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) }
}

/// The error SQLite itself would have returned for an injected fault (fail
/// point `store.commit`), so that it takes the same path as a real one.
fn injected(e: &std::io::Error) -> rusqlite::Error {
    let code = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        rusqlite::ffi::SQLITE_FULL
    } else {
        rusqlite::ffi::SQLITE_IOERR_WRITE
    };
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        Some(format!("injected: {e}")),
    )
}

fn sqlite_err(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Whether the store's directory is on a file system shared between hosts.
fn is_network_fs(path: &Path) -> bool {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match rustix::fs::statfs(dir) {
        // f_type is i64 here but narrower on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        Ok(fs) => NETWORK_FS_MAGIC.contains(&i64::from(fs.f_type)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::new_transfer;

    fn file_entry(i: usize) -> NewEntry {
        crate::store::conformance::file_entry(i, 10)
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
    /// Store-generic test, is in `store::conformance`.)
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
}
