//! ferry's C API: the functions of `ferry.h`, packaged as `libferry.so` and
//! `libferry.a` by `crates/libferry`, and the boundary code the AXL layer
//! (`crates/ferry-axl`) shares with it.
//!
//! # Brief overview
//!
//! - Opaque handles: a `ferry_store` (a store, opened by path), a
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

use std::ffi::{CString, c_char, c_int};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry::engine::skip::SkipRule;
use ferry::events::{Watch, WatchItem};
use ferry::finalize::{DeadPolicy, FinalizeOptions, Outcome};
use ferry::model::ChecksumAlgo;
use ferry::store::{EventFilter, SqliteStore, Store, StoreError};
use ferry::verify::Verify;
use ferry::{Canceller, Kind, Preserve, Transfer, TransferId, TransferOptions, TransferState};

use boundary::{CError, catch, last_error, opt_path_arg, opt_str_arg, path_arg, set_last_error};
use codes::*;

/// A store: where transfers and their events live (an SQLite file).
pub struct FerryStore {
    store: Arc<SqliteStore>,
}

/// How transfers are created and run; see the `ferry_config_set_*` setters.
/// Set it up in one thread; then any thread may pass it to a create.
#[derive(Clone)]
pub struct FerryConfig {
    pub kind: Kind,
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

/// One transfer. Any thread may use it; a cancel works while another thread
/// is in a `sync` dispatch or a wait of it.
pub struct FerryTransfer {
    transfer: Mutex<Transfer>,
    store: Arc<dyn Store>,
    canceller: Canceller,
    id: TransferId,
    reattached: bool,
    workers: usize,
    /// The last run's end, reachable without the transfer's lock (which a
    /// waiting thread holds): see [`FerryTransfer::discard`].
    ended: Mutex<Arc<ferry::RunEnded>>,
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

fn lock(transfer: &FerryTransfer) -> MutexGuard<'_, Transfer> {
    // A panic inside a call poisoned it; the transfer itself is in the store.
    transfer
        .transfer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// Wraps a created or opened transfer, with `config`'s run options.
    pub fn new(
        store: Arc<dyn Store>,
        mut transfer: Transfer,
        config: &FerryConfig,
    ) -> FerryTransfer {
        transfer.set_clean_orphans(config.clean_orphans);
        transfer.set_check_space(config.check_space);
        transfer.set_skip(config.skip);
        transfer.set_verify(config.verify);
        if config.pause_after_bytes > 0 {
            transfer.set_after_chunk(Some(boundary::pause_after(config.pause_after_bytes)));
        }
        FerryTransfer {
            store,
            canceller: transfer.canceller(),
            id: transfer.record().id,
            reattached: transfer.reattached(),
            workers: config.workers,
            ended: Mutex::new(transfer.run_ended()),
            transfer: Mutex::new(transfer),
        }
    }

    pub fn id(&self) -> TransferId {
        self.id
    }

    pub fn reattached(&self) -> bool {
        self.reattached
    }

    pub fn kind(&self) -> Kind {
        lock(self).record().kind
    }

    pub fn add(&self, source: PathBuf, dest: &std::path::Path) -> Result<usize, CError> {
        Ok(lock(self).add(&[source], dest, true)?)
    }

    pub fn dispatch(&self) -> Result<(), CError> {
        let mut transfer = lock(self);
        let dispatched = transfer.dispatch(self.workers);
        self.note_run(&transfer);
        Ok(dispatched?)
    }

    pub fn resume(&self) -> Result<(), CError> {
        let mut transfer = lock(self);
        let resumed = transfer.resume(self.workers);
        self.note_run(&transfer);
        Ok(resumed?)
    }

    fn note_run(&self, transfer: &Transfer) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = transfer.run_ended();
    }

    /// Cancels, waits (at most `timeout`) for the mover to stop, removes the
    /// temporaries and frees the transfer in the store — without the
    /// transfer's lock, for a signal handler that interrupted the thread
    /// waiting for it (which holds that lock and will never return).
    pub fn discard(&self, timeout: std::time::Duration) -> Result<usize, CError> {
        let ended = Arc::clone(&self.ended.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(ferry::finalize::discard(
            self.store.as_ref(),
            self.id,
            &ended,
            timeout,
        )?)
    }

    /// Would a wait return at once? `None` when another thread holds the
    /// transfer (it is waiting for it, or dispatching it in `sync` mode).
    pub fn test(&self) -> Result<Option<bool>, CError> {
        match self.transfer.try_lock() {
            Ok(transfer) => Ok(Some(transfer.test()?)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(Some(p.into_inner().test()?)),
            Err(std::sync::TryLockError::WouldBlock) => Ok(None),
        }
    }

    pub fn wait(&self) -> Result<ferry::RunReport, CError> {
        Ok(lock(self).wait()?)
    }

    /// Cancels; a transfer that has finished already stays as it ended.
    /// The state the store has for it now (another thread may be moving it).
    pub fn recorded_state(&self) -> Result<TransferState, CError> {
        let record = self.store.transfer(self.id)?.ok_or_else(|| {
            CError::from(ferry::Error::Store(StoreError::NoSuchTransfer {
                path: self.store.location(),
                id: self.id,
            }))
        })?;
        Ok(record.state)
    }

    pub fn cancel(&self) -> Result<(), CError> {
        match self.canceller.cancel() {
            Err(ferry::Error::Store(StoreError::IllegalTransition { .. })) => Ok(()),
            other => Ok(other?),
        }
    }

    pub fn free(self) -> Result<(), CError> {
        let transfer = self
            .transfer
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(transfer.free()?)
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
/// store (`$FERRY_STORE`, else `$XDG_STATE_HOME/ferry/ferry.db`, …).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_store_open(path: *const c_char, out: *mut *mut FerryStore) -> c_int {
    status("ferry_store_open", || {
        // SAFETY: C passes a string or NULL.
        let path =
            unsafe { opt_path_arg(path, "store path") }?.unwrap_or_else(ferry::default_store_path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| CError {
                code: FERRY_E_STORE_OPEN,
                message: format!("cannot create store directory {}: {e}", dir.display()),
            })?;
        }
        let store = Arc::new(SqliteStore::open(&path)?);
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

/// A configuration with the defaults: kind threads, nothing preserved, one
/// worker per core. Free it with `ferry_config_free`.
#[unsafe(no_mangle)]
pub extern "C" fn ferry_config_new() -> *mut FerryConfig {
    Box::into_raw(Box::new(FerryConfig::default()))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_free(config: *mut FerryConfig) {
    if !config.is_null() {
        // SAFETY: a handle from ferry_config_new, freed once.
        let config = unsafe { Box::from_raw(config) };
        let _ = catch("ferry_config_free", || {
            drop(config);
            Ok(())
        });
    }
}

/// `FERRY_KIND_SYNC` (dispatch copies and returns when done) or
/// `FERRY_KIND_THREADS` (a pool of threads; wait for it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_kind(config: *mut FerryConfig, kind: c_int) -> c_int {
    status("ferry_config_set_kind", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.kind = match kind {
            FERRY_KIND_SYNC => Kind::Sync,
            FERRY_KIND_THREADS => Kind::Threads,
            other => return Err(CError::invalid(format!("unknown kind {other}"))),
        };
        Ok(())
    })
}

/// Which source metadata destinations get (as `cp -p`; all three is `-a`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_preserve(
    config: *mut FerryConfig,
    mode: bool,
    ownership: bool,
    times: bool,
) -> c_int {
    status("ferry_config_set_preserve", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.preserve = Preserve {
            mode,
            ownership,
            times,
        };
        Ok(())
    })
}

/// Worker threads of a `threads` transfer, 1 to 256.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_workers(config: *mut FerryConfig, workers: u32) -> c_int {
    status("ferry_config_set_workers", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        if workers == 0 || workers as usize > ferry::engine::WORKERS_MAX {
            return Err(CError::invalid(format!(
                "workers {workers}: give 1 to {}",
                ferry::engine::WORKERS_MAX
            )));
        }
        config.workers = workers as usize;
        Ok(())
    })
}

/// Whether dispatch removes temporaries at the destinations that no
/// transfer of this store wrote (they are only reported otherwise).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_clean_orphans(
    config: *mut FerryConfig,
    clean: bool,
) -> c_int {
    status("ferry_config_set_clean_orphans", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.clean_orphans = clean;
        Ok(())
    })
}

/// The checksum every copied file gets, computed as its bytes are read:
/// `FERRY_CHECKSUM_XXH3` (the default), `FERRY_CHECKSUM_BLAKE3` or
/// `FERRY_CHECKSUM_NONE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_checksum(
    config: *mut FerryConfig,
    checksum: c_int,
) -> c_int {
    status("ferry_config_set_checksum", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.checksum = match checksum {
            FERRY_CHECKSUM_NONE => None,
            FERRY_CHECKSUM_XXH3 => Some(ChecksumAlgo::Xxh3),
            FERRY_CHECKSUM_BLAKE3 => Some(ChecksumAlgo::Blake3),
            other => return Err(CError::invalid(format!("unknown checksum {other}"))),
        };
        Ok(())
    })
}

/// Whether dispatch first checks that the destinations have room for what
/// is left to copy (`FERRY_E_NOT_ENOUGH_SPACE` otherwise) and reserves the
/// space of large files (`ferry cp --check-space`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_check_space(
    config: *mut FerryConfig,
    check: bool,
) -> c_int {
    status("ferry_config_set_check_space", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.check_space = check;
        Ok(())
    })
}

/// Which destinations count as already there (recorded skipped, no data
/// copied): `FERRY_SKIP_NEVER` (the default), `FERRY_SKIP_EXISTS`,
/// `FERRY_SKIP_SIZE`, `FERRY_SKIP_MTIME` (size and mtime) or
/// `FERRY_SKIP_CHECKSUM` (size and checksum) — `ferry cp --skip`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_skip(config: *mut FerryConfig, skip: c_int) -> c_int {
    status("ferry_config_set_skip", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.skip = match skip {
            FERRY_SKIP_NEVER => SkipRule::Never,
            FERRY_SKIP_EXISTS => SkipRule::Exists,
            FERRY_SKIP_SIZE => SkipRule::Size,
            FERRY_SKIP_MTIME => SkipRule::Mtime,
            FERRY_SKIP_CHECKSUM => SkipRule::Checksum,
            other => return Err(CError::invalid(format!("unknown skip rule {other}"))),
        };
        Ok(())
    })
}

/// How much a run reads back what it wrote: `FERRY_VERIFY_NONE` (the
/// default), `FERRY_VERIFY_COPIED` (each file before its rename) or
/// `FERRY_VERIFY_FULL` (and every file at the end) — `ferry cp --verify`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_verify(config: *mut FerryConfig, verify: c_int) -> c_int {
    status("ferry_config_set_verify", || {
        // SAFETY: C passes a config handle or NULL.
        let config = unsafe { handle_mut(config, "config") }?;
        config.verify = match verify {
            FERRY_VERIFY_NONE => Verify::None,
            FERRY_VERIFY_COPIED => Verify::Copied,
            FERRY_VERIFY_FULL => Verify::Full,
            other => return Err(CError::invalid(format!("unknown verify mode {other}"))),
        };
        Ok(())
    })
}

/// For tests: once a run has copied at least `bytes` (0: never), its movers
/// stop and wait for a cancel, after saying so on stderr.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_config_set_debug_pause_after(
    config: *mut FerryConfig,
    bytes: u64,
) -> c_int {
    status("ferry_config_set_debug_pause_after", || {
        // SAFETY: C passes a config handle or NULL.
        unsafe { handle_mut(config, "config") }?.pause_after_bytes = bytes;
        Ok(())
    })
}

/// Creates a transfer named `name` (NULL: `cp-<id>`) in `store`. If the
/// store holds a live transfer of that name whose owner process is dead, it
/// is re-attached instead (see `ferry_transfer_reattached`) so that it can
/// be resumed, cancelled or freed; a live owner's name is
/// `FERRY_E_NAME_IN_USE`. `config` may be NULL (defaults).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_create(
    store: *const FerryStore,
    name: *const c_char,
    config: *const FerryConfig,
    out: *mut *mut FerryTransfer,
) -> c_int {
    status("ferry_transfer_create", || {
        // SAFETY: C passes handles (or NULL) and a string (or NULL).
        let (store, name) = unsafe { (handle(store, "store")?, opt_str_arg(name, "name")?) };
        let config = if config.is_null() {
            FerryConfig::default()
        } else {
            // SAFETY: C passes a config handle.
            unsafe { handle(config, "config") }?.clone()
        };
        let store: Arc<dyn Store> = store.store.clone();
        let options = TransferOptions {
            name,
            kind: config.kind,
            preserve: config.preserve,
            checksum: config.checksum,
            caller: None,
        };
        let transfer = Transfer::create_with(store.clone(), &options, &[])?;
        let handle = Box::into_raw(Box::new(FerryTransfer::new(store, transfer, &config)));
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(out, handle, "out") }.inspect_err(|_| {
            // SAFETY: just made by Box::into_raw, handed to nobody.
            drop(unsafe { Box::from_raw(handle) });
        })
    })
}

/// Opens the live transfer named `name`, without taking it over (a resume
/// takes over a dead owner's transfer). `config` may be NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_open(
    store: *const FerryStore,
    name: *const c_char,
    config: *const FerryConfig,
    out: *mut *mut FerryTransfer,
) -> c_int {
    status("ferry_transfer_open", || {
        // SAFETY: C passes handles (or NULL) and a string (or NULL).
        let (store, name) = unsafe { (handle(store, "store")?, opt_str_arg(name, "name")?) };
        let name = name.ok_or_else(|| CError::invalid("name is NULL"))?;
        let config = if config.is_null() {
            FerryConfig::default()
        } else {
            // SAFETY: C passes a config handle.
            unsafe { handle(config, "config") }?.clone()
        };
        let store: Arc<dyn Store> = store.store.clone();
        let transfer = Transfer::open(store.clone(), &name)?;
        let handle = Box::into_raw(Box::new(FerryTransfer::new(store, transfer, &config)));
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(out, handle, "out") }.inspect_err(|_| {
            // SAFETY: just made by Box::into_raw, handed to nobody.
            drop(unsafe { Box::from_raw(handle) });
        })
    })
}

/// 1 if `ferry_transfer_create` found this transfer left by a dead owner, else 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_reattached(transfer: *const FerryTransfer) -> c_int {
    // SAFETY: C passes a transfer handle or NULL.
    unsafe { transfer.as_ref() }.map_or(0, |t| c_int::from(t.reattached))
}

/// The transfer's id in its store (-1 for NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_id(transfer: *const FerryTransfer) -> i64 {
    // SAFETY: C passes a transfer handle or NULL.
    unsafe { transfer.as_ref() }.map_or(-1, |t| t.id.0)
}

/// Adds `source` (a file, or a directory: recursively) to be copied to
/// `destination`, with `cp -r`'s rules: an existing directory receives
/// `source`'s base name; missing parent directories are created.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_add(
    transfer: *const FerryTransfer,
    source: *const c_char,
    destination: *const c_char,
) -> c_int {
    status("ferry_transfer_add", || {
        // SAFETY: C passes a handle and two strings (or NULLs).
        let (transfer, source, dest) = unsafe {
            (
                handle(transfer, "transfer")?,
                path_arg(source, "source")?,
                path_arg(destination, "destination")?,
            )
        };
        transfer.add(source, &dest).map(drop)
    })
}

/// Starts moving: returns when done for `sync`, at once for `threads`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_dispatch(transfer: *const FerryTransfer) -> c_int {
    status("ferry_transfer_dispatch", || {
        // SAFETY: C passes a transfer handle or NULL.
        unsafe { handle(transfer, "transfer") }?.dispatch()
    })
}

/// Continues from what the store says is durable (taking over a dead
/// owner's transfer); like dispatch for a transfer never started.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_resume(transfer: *const FerryTransfer) -> c_int {
    status("ferry_transfer_resume", || {
        // SAFETY: C passes a transfer handle or NULL.
        unsafe { handle(transfer, "transfer") }?.resume()
    })
}

/// Sets `*done` to whether `ferry_transfer_wait` would return at once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_test(
    transfer: *const FerryTransfer,
    done: *mut bool,
) -> c_int {
    status("ferry_transfer_test", || {
        // SAFETY: C passes a transfer handle or NULL.
        let finished = unsafe { handle(transfer, "transfer") }?
            .test()?
            .unwrap_or(false);
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(done, finished, "done") }
    })
}

/// Blocks until the transfer's mover is done. `FERRY_OK` when it completed,
/// `FERRY_E_TRANSFER_FAILED` (each failed file in the message) or
/// `FERRY_E_CANCELLED` otherwise. `report` may be NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_wait(
    transfer: *const FerryTransfer,
    report: *mut FerryReport,
) -> c_int {
    status("ferry_transfer_wait", || {
        // SAFETY: C passes a transfer handle or NULL.
        let run = unsafe { handle(transfer, "transfer") }?.wait()?;
        if !report.is_null() {
            let summary = FerryReport {
                state: state_code(run.state),
                files_total: run.files_total,
                files_committed: run.files_committed,
                files_failed: run.failures.len() as u64,
                bytes_total: run.bytes_total,
                bytes_copied: run.bytes_copied,
                bytes_reused: run.bytes_reused,
            };
            // SAFETY: C passes a writable pointer (checked for NULL).
            unsafe { put(report, summary, "report") }?;
        }
        run_outcome(&run)
    })
}

/// A run's end as an error, when it did not complete.
pub fn run_outcome(run: &ferry::RunReport) -> Result<(), CError> {
    match run.state {
        TransferState::Completed => Ok(()),
        TransferState::Cancelled => Err(CError {
            code: FERRY_E_CANCELLED,
            message: format!("transfer {} (id {}) was cancelled", run.name, run.id),
        }),
        state => {
            let files: Vec<String> = run
                .failures
                .iter()
                .map(|f| format!("{}: {}", f.path.display(), f.error))
                .collect();
            Err(CError {
                code: FERRY_E_TRANSFER_FAILED,
                message: format!(
                    "transfer {} (id {}) {state}: {} file(s) failed: {}; resume it to retry",
                    run.name,
                    run.id,
                    files.len(),
                    files.join("; ")
                ),
            })
        }
    }
}

/// Cancels the transfer from any thread: recorded at once, the movers stop
/// at their next chunk; `ferry_transfer_wait` must still be called. A
/// transfer that has finished stays as it ended.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_cancel(transfer: *const FerryTransfer) -> c_int {
    status("ferry_transfer_cancel", || {
        // SAFETY: C passes a transfer handle or NULL.
        unsafe { handle(transfer, "transfer") }?.cancel()
    })
}

/// Sets `*state` to the transfer's recorded `FERRY_STATE_*`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_state(
    transfer: *const FerryTransfer,
    state: *mut c_int,
) -> c_int {
    status("ferry_transfer_state", || {
        // SAFETY: C passes a transfer handle or NULL.
        let transfer = unsafe { handle(transfer, "transfer") }?;
        let record = transfer
            .store
            .transfer(transfer.id)?
            .ok_or_else(|| CError {
                code: FERRY_E_NO_SUCH_TRANSFER,
                message: format!(
                    "store {}: no transfer with id {}",
                    transfer.store.location().display(),
                    transfer.id
                ),
            })?;
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(state, state_code(record.state), "state") }
    })
}

/// Releases the transfer in its store (its name may be used again; a moving
/// transfer is cancelled first) and frees the handle, which is gone even
/// when this fails.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_free(transfer: *mut FerryTransfer) -> c_int {
    status("ferry_transfer_free", || {
        if transfer.is_null() {
            return Err(CError::invalid("transfer is NULL"));
        }
        // SAFETY: a handle from ferry_transfer_create/open, freed once.
        unsafe { Box::from_raw(transfer) }.free()
    })
}

/// Frees the handle but leaves the transfer in its store (for a later
/// resume or `ferry finalize`). A running mover is waited for first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_close(transfer: *mut FerryTransfer) {
    if transfer.is_null() {
        return;
    }
    // SAFETY: a handle from ferry_transfer_create/open, closed once.
    let transfer = unsafe { Box::from_raw(transfer) };
    let _ = catch("ferry_transfer_close", || {
        if !lock(&transfer).test().unwrap_or(true) {
            transfer.wait().map(drop)?;
        }
        drop(transfer);
        Ok(())
    });
}

/// Post-stage finalize of `count` stores or directories holding stores
/// (searched recursively): see `ferry finalize`. `flags`: `FERRY_FINALIZE_RESUME`
/// (continue dead owners' transfers instead of aborting them),
/// `FERRY_FINALIZE_FORCE` (treat owners on other hosts as dead),
/// `FERRY_FINALIZE_VERIFY` (read each file back against its stored checksum
/// before the rename). `jobs` 0:
/// one per core. `FERRY_OK`, `FERRY_E_TRANSFER_FAILED` when anything failed,
/// `FERRY_E_LEFT_ALONE` when live transfers were left alone. `summary` may be NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_finalize(
    paths: *const *const c_char,
    count: usize,
    flags: u32,
    jobs: u32,
    summary: *mut FerryFinalizeSummary,
) -> c_int {
    status("ferry_finalize", || {
        if paths.is_null() || count == 0 {
            return Err(CError::invalid("no paths to finalize"));
        }
        let mut roots = Vec::with_capacity(count);
        for i in 0..count {
            // SAFETY: C passes `count` string pointers.
            roots.push(unsafe { path_arg(*paths.add(i), "path") }?);
        }
        let stores = ferry::finalize::find_stores(&roots)?;
        let options = FinalizeOptions {
            dead: if flags & FERRY_FINALIZE_RESUME != 0 {
                DeadPolicy::Resume
            } else {
                DeadPolicy::Abort
            },
            force: flags & FERRY_FINALIZE_FORCE != 0,
            verify: flags & FERRY_FINALIZE_VERIFY != 0,
            jobs: if jobs == 0 {
                ferry::default_workers()
            } else {
                jobs as usize
            },
        };
        let mut counts = FerryFinalizeSummary::default();
        let mut failures = Vec::new();
        for outcome in ferry::finalize::finalize(&stores, options) {
            match outcome.outcome {
                Outcome::Finalized => counts.finalized += 1,
                Outcome::Resumed => counts.resumed += 1,
                Outcome::Cleaned => counts.cleaned += 1,
                Outcome::AlreadyFinalized => counts.already_finalized += 1,
                Outcome::LeftLive | Outcome::LeftUnknown => counts.left_alone += 1,
                Outcome::Failed => {
                    counts.failed += 1;
                    failures.push(format!(
                        "{} {}: {}",
                        outcome.store.display(),
                        outcome.transfer,
                        outcome.detail.unwrap_or_default()
                    ));
                }
            }
        }
        let (failed, left) = (counts.failed, counts.left_alone);
        if !summary.is_null() {
            // SAFETY: C passes a writable pointer (checked for NULL).
            unsafe { put(summary, counts, "summary") }?;
        }
        if failed > 0 {
            return Err(CError {
                code: FERRY_E_TRANSFER_FAILED,
                message: format!(
                    "finalize: {failed} transfer(s) failed: {}",
                    failures.join("; ")
                ),
            });
        }
        if left > 0 {
            return Err(CError {
                code: FERRY_E_LEFT_ALONE,
                message: format!("finalize: {left} transfer(s) left alone: their owner is alive"),
            });
        }
        Ok(())
    })
}

/// Watches `store`'s events with `seq > since` (0: from the start), of one
/// transfer (`transfer_id` ≥ 0) or all (-1).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_watch_open(
    store: *const FerryStore,
    since: u64,
    transfer_id: i64,
    out: *mut *mut FerryWatch,
) -> c_int {
    status("ferry_watch_open", || {
        // SAFETY: C passes a store handle or NULL.
        let store = unsafe { handle(store, "store") }?;
        let filter = EventFilter {
            transfer: (transfer_id >= 0).then_some(TransferId(transfer_id)),
            ..EventFilter::default()
        };
        let watch = Watch::new(store.store.as_ref(), since, filter)?;
        let handle = Box::into_raw(Box::new(FerryWatch {
            inner: Mutex::new(WatchState {
                watch,
                name: CString::default(),
                context: CString::default(),
            }),
        }));
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(out, handle, "out") }.inspect_err(|_| {
            // SAFETY: just made by Box::into_raw, handed to nobody.
            drop(unsafe { Box::from_raw(handle) });
        })
    })
}

/// The next event, waiting at most `timeout_ms` for one: `FERRY_OK` with
/// `*event` filled, or `FERRY_E_TIMEOUT` when none came.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_watch_next(
    watch: *const FerryWatch,
    timeout_ms: u32,
    event: *mut FerryEvent,
) -> c_int {
    status("ferry_watch_next", || {
        // SAFETY: C passes a watch handle or NULL.
        let watch = unsafe { handle(watch, "watch") }?;
        let mut watch = watch.inner.lock().unwrap_or_else(|p| p.into_inner());
        let item = watch
            .watch
            .next_timeout(Some(Duration::from_millis(u64::from(timeout_ms))))?;
        let (seq, time_ns, transfer, entry, name, context) = match item {
            None => {
                return Err(CError {
                    code: FERRY_E_TIMEOUT,
                    message: format!("no event within {timeout_ms} ms"),
                });
            }
            Some(WatchItem::CaughtUp(seq)) => {
                (seq, 0, -1, -1, "bookmark".to_owned(), "null".to_owned())
            }
            Some(WatchItem::Event(e)) => (
                e.seq,
                e.time_ns,
                e.transfer.map_or(-1, |t| t.0),
                e.entry.map_or(-1, |i| i64::from(i.0)),
                e.name,
                e.context.to_string(),
            ),
        };
        watch.name = CString::new(name).unwrap_or_default();
        watch.context = CString::new(context).unwrap_or_default();
        let filled = FerryEvent {
            seq,
            time_ns,
            transfer_id: transfer,
            entry,
            name: watch.name.as_ptr(),
            context_json: watch.context.as_ptr(),
        };
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(event, filled, "event") }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_watch_close(watch: *mut FerryWatch) {
    if !watch.is_null() {
        // SAFETY: a handle from ferry_watch_open, closed once.
        let watch = unsafe { Box::from_raw(watch) };
        let _ = catch("ferry_watch_close", || {
            drop(watch);
            Ok(())
        });
    }
}
