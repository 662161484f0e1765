//! ferry's C API: the functions of `ferry.h`, packaged as `libferry.so` and
//! `libferry.a` by `crates/libferry`, and the boundary code the AXL layer
//! (`crates/ferry-axl`) shares with it.
//!
//! # Brief overview
//!
//! - Opaque handles: a `ferry_store` (a store, opened by path, or by a
//!   `postgres://` URL for the store many nodes share), a
//!   `ferry_config` (typed setters: kind, preserve, workers, …), a
//!   `ferry_transfer` (create — re-attaching a dead owner's transfer of that
//!   name —, add, dispatch, resume, test, wait, cancel, free) and a
//!   `ferry_watch` (the event log, polled with a timeout). Plus
//!   `ferry_finalize` over many stores.
//! - Every function returns `FERRY_OK` (0) or an error code from
//!   [`codes`] — the same numbers as the `ferry` command's exit status — and
//!   leaves a one-line message for `ferry_last_error()` on the calling thread.
//! - [`boundary`] catches panics (a panic never unwinds into C) and reads C
//!   strings; `libaxl` uses the same code.
//!
//! **Invariant:** this crate only translates between C and [`ferry`]; no
//! transfer logic lives here. `unsafe` appears only where a C pointer is read.
//!
//! `include/ferry.h` is generated from this file by cbindgen; the test
//! `tests/header.rs` fails when the checked-in header is stale.

#![allow(clippy::missing_safety_doc)] // ferry.h documents what C callers must pass.

pub mod boundary;
pub mod codes;
pub mod config;
pub mod daemon;
pub mod finalize;
pub mod local;
pub mod transfers;
pub mod watch;

pub use config::*;
pub use finalize::*;
pub use local::LocalTransfer;
pub use transfers::*;
pub use watch::*;

use std::ffi::{CString, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry::engine::skip::SkipRule;
use ferry::events::{Watch, WatchItem};
use ferry::finalize::{DeadPolicy, FinalizeOptions, Outcome};
use ferry::model::ChecksumAlgo;
use ferry::store::{EventFilter, SqliteStore, Store};
use ferry::verify::Verify;
use ferry::{Kind, Preserve, Transfer, TransferId, TransferOptions, TransferState};

use boundary::{CError, catch, last_error, opt_path_arg, opt_str_arg, path_arg, set_last_error};
use codes::*;

/// A store: where transfers and their events live (an SQLite file, or a
/// PostgreSQL schema that many nodes share).
pub struct FerryStore {
    store: Arc<dyn Store>,
}

/// The PostgreSQL URL `location` is, if it is one (else it is a path to a
/// SQLite store). The one test of the C layers, libaxl's state file too.
pub fn postgres_url(location: &Path) -> Option<&str> {
    location
        .to_str()
        .filter(|l| ferry_postgres::is_postgres_url(l))
}

/// Opens the PostgreSQL store at `url` (creating its schema if needed).
pub fn open_postgres(url: &str) -> Result<Arc<dyn Store>, CError> {
    Ok(Arc::new(ferry_postgres::PgStore::open(url)?))
}

/// How transfers are created and run; see the `ferry_config_set_*` setters.
/// Set it up in one thread; then any thread may pass it to a create.
#[derive(Clone)]
pub struct FerryConfig {
    pub kind: Kind,
    /// `FERRY_KIND_DEFAULT`: [`Kind::Daemon`] when a daemon answers on the
    /// socket at create, else `kind`.
    pub daemon_if_it_answers: bool,
    /// The daemon's socket; `None`: `ferry serve`'s default
    /// (`$FERRY_SOCKET`, …).
    pub socket: Option<PathBuf>,
    pub preserve: Preserve,
    pub workers: usize,
    pub clean_orphans: bool,
    /// See `ferry_config_set_debug_pause_after`.
    pub pause_after_bytes: u64,
    pub checksum: Option<ChecksumAlgo>,
    pub check_space: bool,
    pub skip: SkipRule,
    pub verify: Verify,
}

impl Default for FerryConfig {
    fn default() -> FerryConfig {
        FerryConfig {
            kind: Kind::Threads,
            daemon_if_it_answers: false,
            socket: None,
            preserve: Preserve::NONE,
            workers: ferry::default_workers(),
            clean_orphans: false,
            pause_after_bytes: 0,
            checksum: TransferOptions::default().checksum,
            check_space: false,
            skip: SkipRule::Never,
            verify: Verify::None,
        }
    }
}

/// One transfer: moved in this process (`sync`, `threads`) or by the
/// daemon. Any thread may use it; a cancel works while another thread is in
/// a `sync` dispatch or a wait of it.
// Always behind a Box (a C handle) or an Arc (libaxl): boxing the large
// variant would add a second allocation and save nothing.
#[allow(clippy::large_enum_variant)]
pub enum FerryTransfer {
    Local(LocalTransfer),
    Daemon(daemon::DaemonTransfer),
}

/// How a transfer's run ended (`ferry_transfer_wait`).
#[repr(C)]
#[derive(Default)]
pub struct FerryReport {
    /// A `FERRY_STATE_*` value.
    pub state: c_int,
    pub files_total: u64,
    pub files_committed: u64,
    pub files_failed: u64,
    pub bytes_total: u64,
    /// Bytes written by this run.
    pub bytes_copied: u64,
    /// Bytes an earlier run had already made durable.
    pub bytes_reused: u64,
}

/// What `ferry_finalize` did, transfers counted by outcome.
#[repr(C)]
#[derive(Default)]
pub struct FerryFinalizeSummary {
    pub finalized: u64,
    pub resumed: u64,
    pub cleaned: u64,
    pub already_finalized: u64,
    pub left_alone: u64,
    pub failed: u64,
}

/// A cursor over a store's event log. Any thread may poll it (one at a time:
/// a second waits for the first).
pub struct FerryWatch {
    inner: Mutex<WatchState>,
}

struct WatchState {
    watch: Watch,
    /// The strings the last `FerryEvent` points to.
    name: CString,
    context: CString,
}

/// One event of the log. `name` and `context_json` stay valid until the
/// next `ferry_watch_next` or `ferry_watch_close` on the same watch.
#[repr(C)]
pub struct FerryEvent {
    /// Strictly increasing; save it to watch again from here.
    pub seq: u64,
    /// Nanoseconds since 1970 (UTC).
    pub time_ns: i64,
    /// The transfer the event is about, or -1 (an HSM request's or the
    /// store's own event).
    pub transfer_id: i64,
    /// The entry (file) index, or -1 for a transfer event.
    pub entry: i64,
    /// `transfer.completed`, `file.copied`, …; `bookmark` once the backlog
    /// is delivered (everything up to `seq` was seen; live events follow).
    pub name: *const c_char,
    /// The event's context as JSON (`null` when none).
    pub context_json: *const c_char,
}

/// Runs a native API call: `FERRY_OK`, or the error's code with its message
/// kept for `ferry_last_error()`.
fn status(what: &str, f: impl FnOnce() -> Result<(), CError>) -> c_int {
    match catch(what, f) {
        Ok(()) => FERRY_OK,
        Err(e) => {
            set_last_error(&e.message);
            e.code
        }
    }
}

/// Borrows a handle argument.
///
/// # Safety
/// `ptr` is NULL or a live handle of this type, from this library.
unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Result<&'a T, CError> {
    // SAFETY: the caller passes NULL or a pointer this library handed out
    // (Box::into_raw) and did not free yet.
    unsafe { ptr.as_ref() }.ok_or_else(|| CError::invalid(format!("{what} is NULL")))
}

/// Borrows a handle argument mutably (configs only: a config is set up by
/// one thread; `ferry.h` says so).
///
/// # Safety
/// As [`handle`], and no other reference to it exists during the call.
unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, CError> {
    // SAFETY: as above; exclusive by the caller's promise.
    unsafe { ptr.as_mut() }.ok_or_else(|| CError::invalid(format!("{what} is NULL")))
}

/// Writes a result through an out-pointer.
///
/// # Safety
/// `out` is NULL or valid for writing a `T`.
unsafe fn put<T>(out: *mut T, value: T, what: &str) -> Result<(), CError> {
    if out.is_null() {
        return Err(CError::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises it is writable.
    unsafe { out.write(value) };
    Ok(())
}

impl FerryConfig {
    /// The socket of the daemon this configuration's transfers go to, if
    /// they go to one: kind daemon, or kind default while one answers.
    pub fn daemon_socket(&self) -> Option<PathBuf> {
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(ferry_serve::server::default_socket_path);
        let wanted =
            self.kind == Kind::Daemon || (self.daemon_if_it_answers && daemon::answers(&socket));
        wanted.then_some(socket)
    }
}

/// The `FERRY_STATE_*` value of a state.
pub fn state_code(state: TransferState) -> c_int {
    match state {
        TransferState::Created => FERRY_STATE_CREATED,
        TransferState::Dispatched => FERRY_STATE_DISPATCHED,
        TransferState::Running => FERRY_STATE_RUNNING,
        TransferState::Completed => FERRY_STATE_COMPLETED,
        TransferState::Failed => FERRY_STATE_FAILED,
        TransferState::Cancelled => FERRY_STATE_CANCELLED,
        TransferState::Finalized => FERRY_STATE_FINALIZED,
    }
}

impl FerryTransfer {
    /// Wraps a created or opened transfer of this process, with `config`'s
    /// run options.
    pub fn new(store: Arc<dyn Store>, transfer: Transfer, config: &FerryConfig) -> FerryTransfer {
        FerryTransfer::Local(LocalTransfer::new(store, transfer, config))
    }

    /// Its id in its store (the daemon's, for a daemon transfer).
    pub fn id(&self) -> TransferId {
        match self {
            FerryTransfer::Local(t) => t.id(),
            FerryTransfer::Daemon(t) => t.id(),
        }
    }

    pub fn reattached(&self) -> bool {
        match self {
            FerryTransfer::Local(t) => t.reattached(),
            FerryTransfer::Daemon(t) => t.reattached(),
        }
    }

    pub fn is_daemon(&self) -> bool {
        matches!(self, FerryTransfer::Daemon(_))
    }

    pub fn add(&self, source: PathBuf, dest: &std::path::Path) -> Result<usize, CError> {
        match self {
            FerryTransfer::Local(t) => t.add(source, dest),
            FerryTransfer::Daemon(t) => t.add(&source, dest),
        }
    }

    pub fn dispatch(&self) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.dispatch(),
            FerryTransfer::Daemon(t) => t.dispatch(),
        }
    }

    pub fn resume(&self) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.resume(),
            FerryTransfer::Daemon(t) => t.resume(),
        }
    }

    /// Would a wait return at once? `None` when another thread holds a
    /// transfer of this process (it is waiting for it, or dispatching it in
    /// `sync` mode).
    pub fn test(&self) -> Result<Option<bool>, CError> {
        match self {
            FerryTransfer::Local(t) => t.test(),
            FerryTransfer::Daemon(t) => t.test().map(Some),
        }
    }

    pub fn wait(&self) -> Result<ferry::RunReport, CError> {
        match self {
            FerryTransfer::Local(t) => t.wait(),
            FerryTransfer::Daemon(t) => t.wait(),
        }
    }

    /// The state its store has for it now (another thread, or the daemon,
    /// may be moving it).
    pub fn recorded_state(&self) -> Result<TransferState, CError> {
        match self {
            FerryTransfer::Local(t) => t.recorded_state(),
            FerryTransfer::Daemon(t) => t.recorded_state(),
        }
    }

    /// Cancels; a transfer that has finished already stays as it ended.
    pub fn cancel(&self) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.cancel(),
            FerryTransfer::Daemon(t) => t.cancel(),
        }
    }

    /// See [`LocalTransfer::discard`]; a daemon transfer is cancelled (the
    /// daemon removes its temporaries).
    pub fn discard(&self, timeout: std::time::Duration) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.discard(timeout).map(drop),
            FerryTransfer::Daemon(t) => t.cancel(),
        }
    }

    /// Releases the transfer in its store. A daemon transfer stays in the
    /// daemon's store (the daemon has no such request): only the handle
    /// goes, and a moving one is cancelled first, as a local one.
    pub fn free(self) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.free(),
            FerryTransfer::Daemon(t) => {
                if !t.test()? {
                    t.cancel()?;
                }
                Ok(())
            }
        }
    }

    /// Releases the handle but keeps the transfer: a local mover is waited
    /// for first; a daemon transfer goes on in the daemon.
    pub fn close(self) -> Result<(), CError> {
        match self {
            FerryTransfer::Local(t) => t.finish_moving(),
            FerryTransfer::Daemon(_) => Ok(()),
        }
    }
}
/// The message of the calling thread's last failed call ("" if none): one
/// line naming what failed. Valid until that thread's next failed call.
#[unsafe(no_mangle)]
pub extern "C" fn ferry_last_error() -> *const c_char {
    last_error()
}

/// ferry's version, e.g. "0.1.0".
#[unsafe(no_mangle)]
pub extern "C" fn ferry_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Opens (creating it if needed) the store at `path`; NULL: the default
/// store (`$FERRY_STORE`, else `$XDG_STATE_HOME/ferry/ferry.db`, …). A
/// `postgres://USER@HOST/DB?schema=NAME` URL opens the PostgreSQL store that
/// many nodes share (its schema created if needed).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_store_open(path: *const c_char, out: *mut *mut FerryStore) -> c_int {
    status("ferry_store_open", || {
        // SAFETY: C passes a string or NULL.
        let path =
            unsafe { opt_path_arg(path, "store path") }?.unwrap_or_else(ferry::default_store_path);
        let store: Arc<dyn Store> = match postgres_url(&path) {
            Some(url) => open_postgres(url)?,
            None => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| CError {
                        code: FERRY_E_STORE_OPEN,
                        message: format!("cannot create store directory {}: {e}", dir.display()),
                    })?;
                }
                Arc::new(SqliteStore::open(&path)?)
            }
        };
        let handle = Box::into_raw(Box::new(FerryStore { store }));
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(out, handle, "out") }.inspect_err(|_| {
            // SAFETY: just made by Box::into_raw, handed to nobody.
            drop(unsafe { Box::from_raw(handle) });
        })
    })
}

/// Closes a store handle. Transfers and watches opened from it stay usable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_store_close(store: *mut FerryStore) {
    if !store.is_null() {
        // SAFETY: a handle from ferry_store_open, closed once.
        let store = unsafe { Box::from_raw(store) };
        // A panic in a destructor becomes the last error, never an abort.
        let _ = catch("ferry_store_close", || {
            drop(store);
            Ok(())
        });
    }
}
