//! The embedded store: one SQLite file.
//!
//! WAL on local file systems; the rollback journal on network file systems,
//! where WAL's shared memory between processes is unsafe. `synchronous=FULL`:
//! an acknowledged change survives power loss. Paths are stored as raw bytes,
//! so names that are not UTF-8 round-trip exactly.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};

use super::rules;
use super::space::{self, ReadOnlyCause, SpaceGuard};
use super::{
    Change, ChangeToken, EntryTally, EventFilter, EventPage, EventReader, FailedEntry, Store,
    StoreError,
};
use crate::failpoint::{self, CommitStep};
use crate::model::{
    ChecksumAlgo, EntryIndex, EntryRecord, Event, FileState, NewEntry, NewTransfer, Owner,
    Preserve, TransferId, TransferRecord, TransferState,
};

/// `PRAGMA application_id`: "FRRY". Tells a ferry store from any other
/// SQLite file before we write a byte to it.
const APPLICATION_ID: i64 = 0x4652_5259;

mod events;
mod packed;
mod schema;
mod tallies;
#[cfg(test)]
mod tests;
mod transfers;

use schema::MIGRATIONS;

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
        SqliteStore::open_with(path, Opening::Durable, true)
    }

    /// [`SqliteStore::open`] with no reserve file: for a store at a path
    /// the user chose for one transfer (an AXL state file), where a
    /// `STORE.reserve` of up to 4 MiB appearing beside it would surprise.
    /// A full disk still turns it read-only; without a reserve, recording
    /// that switch and the clean end of its transfer may fail too.
    pub fn open_without_reserve(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, Opening::Durable, false)
    }

    /// [`SqliteStore::open`], creating the store file when missing but
    /// never its directory: a mistyped `--store /nonexistent/dir/x.db` is
    /// refused, not made.
    pub fn open_in_existing_dir(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::Open {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "its directory {} does not exist; create it first (ferry creates only \
                         the default store's directory)",
                        parent.display()
                    ),
                ),
            });
        }
        SqliteStore::open(path)
    }

    /// [`SqliteStore::open`] of a store that must exist already (commands
    /// that only read, or act on transfers a store holds): nothing is
    /// created.
    pub fn open_existing(path: &Path) -> Result<SqliteStore, StoreError> {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(StoreError::NoStore {
                path: path.to_path_buf(),
            });
        }
        SqliteStore::open(path)
    }

    /// Opens a store for a batch job over many stores (finalize): locked
    /// for this connection alone, commits not fsynced one by one, and no
    /// checkpoint (the database file is left untouched; commits go to the
    /// write-ahead log). The caller must make the store's files durable
    /// (the engine's `commit::make_durable` on [`SqliteStore::files`])
    /// before it reports anything as done.
    pub fn open_deferred(path: &Path) -> Result<SqliteStore, StoreError> {
        match SqliteStore::open_with(path, Opening::DeferredExclusive, true) {
            // Another process has it open (a live owner, a watcher): share.
            Err(StoreError::Sqlite { source, .. })
                if source.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) =>
            {
                SqliteStore::open_with(path, Opening::DeferredShared, true)
            }
            other => other,
        }
    }

    /// Moves everything from the write-ahead log into the database file
    /// and empties the log, as a clean close does.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
    }

    /// Empties the write-ahead log into the database file, as SQLite does
    /// when the last connection closes, for a process that ends with the
    /// store still open (threads of a finished run may hold it): after a
    /// copy the store is the database file alone, not megabytes of log.
    /// One sync per call, never per file. Waits for nobody: while another
    /// process reads or writes the store, its log is left as it is (the
    /// last to close it empties it).
    pub fn empty_log(&self) -> Result<bool, StoreError> {
        self.read(|conn| {
            conn.busy_timeout(Duration::ZERO)?;
            let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            });
            conn.busy_timeout(BUSY_TIMEOUT)?;
            match done {
                Ok(busy) => Ok(busy == 0),
                Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// Leaves the store as a clean, last close would: every commit moved
    /// into the database file (synced before the log is emptied) and the
    /// store switched to a rollback journal, which removes its `-wal` and
    /// `-shm` files; the next open returns it to WAL. Finalize does this
    /// to each store it opened alone, so that ten thousand rank stores do
    /// not leave twenty thousand journal files behind. Refused (busy) while
    /// another process has the store open: then it stays as it is. A store
    /// whose every transfer is finalized has nothing left to shut down, so
    /// its reserve goes too (a per-rank store then takes tens of KiB, not
    /// megabytes); the next process that writes to it makes one again.
    pub fn settle(&self) -> Result<(), StoreError> {
        let (journal, locking): (String, String) = self.read(|conn| {
            conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA wal_checkpoint(TRUNCATE);")?;
            let journal = conn.query_row("PRAGMA journal_mode=DELETE", [], |row| row.get(0))?;
            let locking = conn.query_row("PRAGMA locking_mode", [], |row| row.get(0))?;
            Ok((journal, locking))
        })?;
        // The `-shm` a WAL-mode process left is only an index of a log
        // that is gone now; held exclusively, nobody else maps it.
        if journal.eq_ignore_ascii_case("delete") && locking.eq_ignore_ascii_case("exclusive") {
            let mut shm = self.path.clone().into_os_string();
            shm.push("-shm");
            match std::fs::remove_file(&shm) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::Open {
                        path: PathBuf::from(shm),
                        source,
                    });
                }
            }
            let transfers = self.transfers()?;
            if transfers
                .iter()
                .all(|t| t.state == TransferState::Finalized)
            {
                self.reserve_unchecked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.space
                    .remove_reserve()
                    .map_err(|source| StoreError::Open {
                        path: self.space.reserve_path().to_path_buf(),
                        source,
                    })?;
            }
        }
        Ok(())
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

    fn open_with(
        path: &Path,
        opening: Opening,
        with_reserve: bool,
    ) -> Result<SqliteStore, StoreError> {
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
        // A new store is its owner's alone (the paths it names are theirs
        // to show); SQLite gives its -wal and -shm files the same mode.
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            && e.kind() != std::io::ErrorKind::AlreadyExists
        {
            return Err(open_err(e));
        }
        let conn = Connection::open(path).map_err(|e| open_err_cause(path, e))?;
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
                _ => open_err_cause(path, e),
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
        set_journal_mode(&conn, journal).map_err(|e| open_err_cause(path, e))?;
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
            space: SpaceGuard::new(path, with_reserve),
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
        if read_only.is_none() {
            // The terms the probe and a writer's first write apply, whether
            // the reserve is there or another process released it.
            let detail = self.space.room_verdict().or_else(|| {
                self.space.ensure_reserve().err().map(|e| {
                    format!(
                        "its reserve {} cannot be created: {e}",
                        self.space.reserve_path().display()
                    )
                })
            });
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
    ///
    /// This and [`SqliteStore::read`] are how a crate that keeps its own
    /// tables in this store (ferry-hsm's request queue) reaches them: it
    /// writes each change with its event inside `f`, so the read-only
    /// switch, the commit fail point and the watchers' wake-up apply to it
    /// as to every transfer change.
    pub fn write<T>(
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
            // A writer keeps a reserve. Without one (a process released it
            // when the disk filled), it writes only on the terms the probe
            // and `ferry store check` apply, else it is read-only from its
            // first write; with no room even for the reserve, too.
            if self
                .reserve_unchecked
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                let released = !self.space.reserve_present();
                let verdict = if released {
                    self.space.room_verdict()
                } else {
                    None
                };
                let cause = verdict.or_else(|| {
                    self.space
                        .ensure_reserve()
                        .err()
                        .filter(space::is_errno_out_of_space)
                        .map(|e| {
                            format!(
                                "there is no room for its reserve {} ({e})",
                                self.space.reserve_path().display()
                            )
                        })
                });
                if let Some(cause) = cause {
                    self.space.enter_read_only(cause.clone());
                    return Err(self.read_only_error(ReadOnlyCause { detail: cause }));
                }
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

    /// Runs `f` on the store's connection, outside any write transaction.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.read_checked(|conn| f(conn).map_err(|e| self.err(e)))
    }

    /// [`SqliteStore::read`] for a reader that checks what it reads (and so
    /// returns the store's own errors).
    pub fn read_checked<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().expect("store mutex poisoned");
        f(&conn)
    }

    /// An SQLite error, as this store reports it (naming the store).
    pub fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path, e)
    }

    /// A row that breaks the schema's rules, as this store reports it.
    pub fn corrupt(&self, detail: String) -> StoreError {
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

/// SQLite's "unable to open database file" says nothing of why: find the
/// cause (the file's or its directory's permissions, a missing directory)
/// and name it, as [`StoreError::Open`].
fn open_err_cause(path: &Path, e: rusqlite::Error) -> StoreError {
    let cannot = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly | ErrorCode::PermissionDenied)
    );
    if !cannot {
        return sqlite_err(path, e);
    }
    use rustix::fs::Access;
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => parent.to_path_buf(),
        None => PathBuf::from("."),
    };
    let rw = Access::READ_OK | Access::WRITE_OK;
    let cause = if let Err(errno) = rustix::fs::access(&dir, Access::EXEC_OK) {
        format!(
            "its directory {}: {}",
            dir.display(),
            std::io::Error::from(errno)
        )
    } else if path.exists()
        && let Err(errno) = rustix::fs::access(path, rw)
    {
        format!(
            "the file: {}; the store needs read and write access",
            std::io::Error::from(errno)
        )
    } else if let Err(errno) = rustix::fs::access(&dir, Access::WRITE_OK | Access::EXEC_OK) {
        format!(
            "its directory {}: {} (the store writes its journal beside it)",
            dir.display(),
            std::io::Error::from(errno)
        )
    } else {
        e.to_string()
    };
    StoreError::Open {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, cause),
    }
}

/// Switches the store to `journal` mode. Going from a rollback journal to
/// WAL upgrades a read lock to an exclusive one, and SQLite refuses that at
/// once (no busy handler: it could deadlock) while another process holds a
/// read lock, as when twenty processes open one new store together. Such a
/// reader lets go within a statement, so the switch is tried again, with a
/// growing pause, for at most [`BUSY_TIMEOUT`] as every other lock wait.
fn set_journal_mode(conn: &Connection, journal: &str) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_micros(500);
    loop {
        match conn.pragma_update(None, "journal_mode", journal) {
            Err(e)
                if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() + pause < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn sqlite_err(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

pub fn now_ns() -> i64 {
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
