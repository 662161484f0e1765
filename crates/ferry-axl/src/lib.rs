//! libaxl: AXL 0.9's C interface (`include/axl.h`) over ferry, so that
//! programs written for AXL (SCR, VeloC) link with `-laxl` unchanged.
//!
//! # Brief overview
//!
//! - AXL names transfers by C `int`; [`Table`] maps each id to a
//!   [`FerryTransfer`] (the same handle `ferry.h` uses) and bounds how many
//!   are open ([`HANDLES_MAX`]).
//! - The state file is a ferry store: `AXL_Create` with an existing state
//!   file re-attaches the transfer of that name, which is what lets a
//!   restarted program resume after a crash. Without a state file, the
//!   transfers of this process live in one private store in `$TMPDIR`,
//!   removed by the last `AXL_Finalize`.
//! - [`AxlConfig`] is read from the environment by the first `AXL_Init`.
//! - Every function returns `AXL_SUCCESS` (0) or -1, after printing one line
//!   on stderr that names what failed (`AXL: …`).
//!
//! **Invariant:** this crate only translates AXL's calls and conventions to
//! `ferry-capi`/`ferry` calls; no transfer logic lives here. libaxl also
//! exports the `ferry_*` functions of `ferry.h` (the same code as libferry),
//! so a program that wants both links `-laxl` alone.

#![allow(non_snake_case)] // AXL's function names.
#![allow(clippy::missing_safety_doc)] // axl.h documents what C callers must pass.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

mod config;
mod state;

use ferry::store::{SqliteStore, Store};
use ferry::{Kind, Preserve, Transfer};
use ferry_capi::boundary::{CError, catch, opt_path_arg, opt_str_arg, path_arg};
use ferry_capi::daemon::DaemonTransfer;
use ferry_capi::{FerryConfig, FerryTransfer, run_outcome};
use state::AxlState;

/// `AXL_SUCCESS`; AXL's failure value is -1.
pub const AXL_SUCCESS: c_int = 0;
const AXL_FAILURE: c_int = -1;

/// `axl_xfer_t`, values 0..8 in AXL's order.
pub const AXL_XFER_NULL: c_int = 0;
pub const AXL_XFER_DEFAULT: c_int = 1;
pub const AXL_XFER_SYNC: c_int = 2;
pub const AXL_XFER_ASYNC_DAEMON: c_int = 3;
pub const AXL_XFER_ASYNC_DW: c_int = 4;
pub const AXL_XFER_ASYNC_BBAPI: c_int = 5;
pub const AXL_XFER_NATIVE: c_int = 6;
pub const AXL_XFER_PTHREAD: c_int = 7;
pub const AXL_XFER_STATE_FILE: c_int = 8;

/// How long `AXL_Free` or `AXL_Finalize` called from a signal handler waits
/// for the interrupted transfer's mover to stop before it gives up.
pub const HANDLER_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

thread_local! {
    /// The id this thread is inside `AXL_Wait` (or a `sync` `AXL_Dispatch`)
    /// of, or -1. If `AXL_Free`/`AXL_Finalize` runs on a thread that is
    /// inside a wait, it runs in a signal handler that interrupted that
    /// wait: the wait holds the transfer and will never return.
    static WAITING: std::cell::Cell<c_int> = const { std::cell::Cell::new(-1) };
}

/// Marks this thread as waiting for `id` while `f` runs.
fn waiting<T>(id: c_int, f: impl FnOnce() -> T) -> T {
    let outer = WAITING.with(|w| w.replace(id));
    let value = f();
    WAITING.with(|w| w.set(outer));
    value
}

fn interrupted_wait_of(id: c_int) -> bool {
    WAITING.with(|w| w.get()) == id
}

/// At most this many AXL ids are open at once in a process; `AXL_Create`
/// fails beyond (SCR keeps a handful).
pub const HANDLES_MAX: usize = 4096;

/// What `AXL_Init` read from the environment.
#[derive(Clone, Debug)]
pub struct AxlConfig {
    /// `AXL_DEBUG` (0): print what each call does on stderr.
    pub debug: bool,
    /// `AXL_MKDIR` (1): create missing destination directories; with 0 a
    /// destination whose parent directory is missing is refused.
    pub mkdir: bool,
    /// `AXL_USE_EXTENSION` (0). ferry always writes to a temporary name and
    /// renames it when complete and durable, so both values behave alike.
    pub use_extension: bool,
    /// `AXL_COPY_METADATA` (0): give destinations the source's mode,
    /// ownership (where permitted) and times.
    pub copy_metadata: bool,
    /// `FILE_BUF_SIZE` of `AXL_Config` (32 MiB): reported and kept;
    /// ferry's movers size their own chunks.
    pub file_buf_size: u64,
    /// `RANK` of `AXL_Config` (0): reported and kept (AXL uses it in its
    /// messages).
    pub rank: u64,
    /// `AXL_DEBUG_PAUSE_AFTER` (0: never): movers pause after this many
    /// bytes until cancelled, so tests can kill or cancel mid-transfer.
    pub pause_after_bytes: u64,
}

impl AxlConfig {
    fn from_env() -> Result<AxlConfig, CError> {
        fn number(name: &str, default: u64) -> Result<u64, CError> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(value) if value.trim().is_empty() => Ok(default),
                Ok(value) => value.trim().parse().map_err(|_| {
                    CError::invalid(format!("{name}={value} is not a non-negative integer"))
                }),
            }
        }
        Ok(AxlConfig {
            debug: number("AXL_DEBUG", 0)? != 0,
            mkdir: number("AXL_MKDIR", 1)? != 0,
            use_extension: number("AXL_USE_EXTENSION", 0)? != 0,
            copy_metadata: number("AXL_COPY_METADATA", 0)? != 0,
            file_buf_size: 32 << 20,
            rank: 0,
            pause_after_bytes: number("AXL_DEBUG_PAUSE_AFTER", 0)?,
        })
    }
}

/// One AXL id.
struct Handle {
    transfer: Arc<FerryTransfer>,
    state: AxlState,
    /// The store's path, so that one transfer is never open under two ids.
    store: PathBuf,
}

/// The state of the AXL layer in this process: AXL's interface is a set of
/// global functions over `int` ids, so this is global too (and private to
/// libaxl: libferry has no global state).
struct Table {
    inits: usize,
    config: Option<AxlConfig>,
    handles: BTreeMap<c_int, Handle>,
    next_id: c_int,
    /// The private store of transfers created without a state file.
    scratch: Option<Arc<SqliteStore>>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    inits: 0,
    config: None,
    handles: BTreeMap::new(),
    next_id: 0,
    scratch: None,
});

fn table() -> MutexGuard<'static, Table> {
    // A panic while it was held poisoned it; the table itself is consistent
    // (every change to it is one insert or remove).
    TABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs an AXL call: `AXL_SUCCESS`, or -1 after one line on stderr.
fn axl(what: &str, f: impl FnOnce() -> Result<c_int, CError>) -> c_int {
    match catch(what, f) {
        Ok(value) => value,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "AXL: {what}: {}", e.message);
            AXL_FAILURE
        }
    }
}

fn debug(message: impl FnOnce() -> String) {
    if table().config.as_ref().is_some_and(|c| c.debug) {
        let _ = writeln!(std::io::stderr(), "AXL: {}", message());
    }
}

/// The configuration; before `AXL_Init` (or after the last
/// `AXL_Finalize`) the environment's, as AXL's calls work then too.
fn config() -> Result<AxlConfig, CError> {
    match table().config.clone() {
        Some(config) => Ok(config),
        None => AxlConfig::from_env(),
    }
}

fn lookup(id: c_int) -> Result<Arc<FerryTransfer>, CError> {
    lookup_in(id, |_| true, "")
}

/// The transfer of `id` if its AXL state passes `allowed` (as AXL checks
/// before each call), else what AXL says: an invalid state for `what`.
fn lookup_in(
    id: c_int,
    allowed: impl Fn(AxlState) -> bool,
    what: &str,
) -> Result<Arc<FerryTransfer>, CError> {
    let table = table();
    let handle = table
        .handles
        .get(&id)
        .ok_or_else(|| CError::invalid(format!("no transfer with id {id}")))?;
    if !allowed(handle.state) {
        return Err(CError::invalid(format!(
            "transfer {id} is {}: invalid state to {what} (as in AXL)",
            handle.state.name()
        )));
    }
    Ok(Arc::clone(&handle.transfer))
}

/// Records `id`'s AXL state after a call (the id may be gone: freed by a
/// signal handler meanwhile).
fn set_state(id: c_int, state: AxlState) {
    if let Some(handle) = table().handles.get_mut(&id) {
        handle.state = state;
    }
}

/// The ferry kind of an AXL type (`None`: the type recorded in the state
/// file). The types AXL runs on a vendor's or its own daemon, and the "best
/// available" ones, go to `ferry serve` while one answers ([`daemon_socket`]);
/// these are their kind otherwise: threads, as AXL falls back to pthreads.
fn kind_of(xtype: c_int) -> Result<Option<Kind>, CError> {
    match xtype {
        AXL_XFER_SYNC => Ok(Some(Kind::Sync)),
        AXL_XFER_PTHREAD
        | AXL_XFER_DEFAULT
        | AXL_XFER_NATIVE
        | AXL_XFER_ASYNC_DW
        | AXL_XFER_ASYNC_BBAPI
        | AXL_XFER_ASYNC_DAEMON => Ok(Some(Kind::Threads)),
        AXL_XFER_STATE_FILE => Ok(None),
        other => Err(CError::invalid(format!("unknown transfer type {other}"))),
    }
}

/// The socket of the daemon an AXL type goes to: `ASYNC_DAEMON`,
/// `ASYNC_DW`, `ASYNC_BBAPI`, `DEFAULT` and `NATIVE` while a daemon answers
/// on `$FERRY_SOCKET` (else `ferry serve`'s default); `None` otherwise.
fn daemon_socket(xtype: c_int) -> Option<PathBuf> {
    match xtype {
        AXL_XFER_ASYNC_DAEMON
        | AXL_XFER_ASYNC_DW
        | AXL_XFER_ASYNC_BBAPI
        | AXL_XFER_DEFAULT
        | AXL_XFER_NATIVE => FerryConfig {
            daemon_if_it_answers: true,
            ..FerryConfig::default()
        }
        .daemon_socket(),
        _ => None,
    }
}

/// Reads the environment (first call) and counts the call.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Init() -> c_int {
    axl("AXL_Init", || {
        let mut table = table();
        if table.inits == 0 {
            table.config = Some(AxlConfig::from_env()?);
        }
        table.inits += 1;
        Ok(AXL_SUCCESS)
    })
}

/// Counts down `AXL_Init`; the last one frees whatever ids are left (a
/// daemon transfer's id only: the daemon goes on moving it) and removes the
/// private store.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Finalize() -> c_int {
    axl("AXL_Finalize", || {
        let mut table = table();
        match table.inits {
            // AXL returns success here too (its count goes negative).
            0 => return Ok(AXL_SUCCESS),
            1 => {}
            _ => {
                table.inits -= 1;
                return Ok(AXL_SUCCESS);
            }
        }
        table.inits = 0;
        table.config = None;
        let handles = std::mem::take(&mut table.handles);
        let scratch = table.scratch.take();
        drop(table);
        let mut failed = Vec::new();
        for (id, handle) in handles {
            // A daemon transfer goes on after this process (the burst
            // buffer's post-stage): only the id goes.
            if handle.transfer.is_daemon() {
                continue;
            }
            // A thread still in AXL_Wait returns once it is cancelled.
            let _ = handle.transfer.cancel();
            if let Err(e) = free_or_discard(id, handle) {
                failed.push(format!("id {id}: {}", e.message));
            }
        }
        if let Some(store) = scratch {
            remove_store(&store);
        }
        if failed.is_empty() {
            Ok(AXL_SUCCESS)
        } else {
            Err(CError::invalid(format!(
                "freeing left-over transfers: {}",
                failed.join("; ")
            )))
        }
    })
}

/// The files of a private store, removed.
fn remove_store(store: &SqliteStore) {
    for file in store.files() {
        let _ = std::fs::remove_file(file);
    }
    // The scratch store's own directory (with its reserve file).
    if let Some(dir) = store.location().parent()
        && dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("ferry-axl-"))
    {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory only this user can enter, under `$TMPDIR`, made new (never
/// one that someone else put at a predictable name).
fn private_dir() -> Result<std::path::PathBuf, CError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = None;
    // Bounded: a name taken is someone else's; try a few others.
    for attempt in 0..16u32 {
        let dir = base.join(format!(
            "ferry-axl-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt.wrapping_mul(0x9e37_79b9))
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) => last = Some(e),
        }
    }
    let e = last.expect("at least one attempt");
    Err(CError::from(ferry::Error::Io {
        path: base,
        source: e,
    }))
}

/// The private store of this process's transfers without a state file.
fn scratch_store() -> Result<Arc<SqliteStore>, CError> {
    let mut table = table();
    if let Some(store) = &table.scratch {
        return Ok(Arc::clone(store));
    }
    let store = Arc::new(SqliteStore::open(&private_dir()?.join("transfers.db"))?);
    table.scratch = Some(Arc::clone(&store));
    Ok(store)
}

/// A new transfer (or, with an existing state file, the one recorded there
/// under `name`, when its owner is gone). Returns its id, or -1.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn AXL_Create(
    xtype: c_int,
    name: *const c_char,
    state_file: *const c_char,
) -> c_int {
    axl("AXL_Create", || {
        let config = config()?;
        // SAFETY: C passes strings or NULL.
        let (name, state_file) = unsafe {
            (
                opt_str_arg(name, "name")?,
                opt_path_arg(state_file, "state file")?,
            )
        };
        let kind = kind_of(xtype)?;
        if let Some(socket) = daemon_socket(xtype) {
            // In the daemon's store, by name; the state file is not used.
            let daemon_config = ferry_config(&config, Kind::Daemon);
            let transfer = DaemonTransfer::create(&socket, name, &daemon_config)?;
            let id = insert(Handle {
                transfer: Arc::new(FerryTransfer::Daemon(transfer)),
                state: AxlState::Created,
                store: socket,
            })?;
            debug(|| format!("AXL_Create: id {id}, in the daemon"));
            return Ok(id);
        }
        let (store, store_path, name, ended) = match &state_file {
            Some(path) => {
                // A URL names the PostgreSQL store many nodes share; it is
                // shown (in messages, and as the handle's store) without
                // its password.
                let (store, shown): (Arc<dyn Store>, PathBuf) = match ferry_capi::postgres_url(path)
                {
                    Some(url) => {
                        let store = ferry_capi::open_postgres(url)?;
                        let shown = store.location();
                        (store, shown)
                    }
                    None => {
                        let exists = path.try_exists().unwrap_or(true);
                        if kind.is_none() && !exists {
                            return Err(CError::invalid(format!(
                                "AXL_XFER_STATE_FILE needs an existing state file, and {} \
                                     does not exist",
                                path.display()
                            )));
                        }
                        // No reserve file beside the user's state file
                        // (SqliteStore::open_without_reserve).
                        let store = Arc::new(SqliteStore::open_without_reserve(path)?);
                        // One file however it is spelled (`state.db`,
                        // `./state.db`, a link).
                        (store, std::fs::canonicalize(path).unwrap_or(path.clone()))
                    }
                };
                let name = name
                    .ok_or_else(|| CError::invalid("a transfer with a state file needs a name"))?;
                let existing = store.transfer_by_name(&name)?;
                // A transfer that ended but was never freed (its program died
                // between AXL_Wait and AXL_Free) is opened as it is, to be freed.
                let ended = existing.as_ref().is_some_and(|r| r.state.is_terminal());
                // Checked before Transfer::create, which would take it over.
                match (kind, existing) {
                    (None, None) => {
                        return Err(CError::invalid(format!(
                            "state file {} holds no transfer named {name} to reload",
                            shown.display()
                        )));
                    }
                    (Some(kind), Some(recorded)) if recorded.kind != kind => {
                        return Err(CError::invalid(format!(
                            "state file {} records transfer {name} as {}, not {}: \
                             create it with AXL_XFER_STATE_FILE",
                            shown.display(),
                            recorded.kind.as_str(),
                            kind.as_str()
                        )));
                    }
                    _ => {}
                }
                (store, shown, Some(name), ended)
            }
            // Without a state file the name is only a label, as in AXL:
            // several transfers may share it.
            None => {
                let store = scratch_store()?;
                let path = store.location();
                (store as Arc<dyn Store>, path, None, false)
            }
        };
        let preserve = ferry_config(&config, Kind::Threads).preserve;
        let transfer = match name.as_deref() {
            Some(name) if ended => Transfer::open(Arc::clone(&store), name)?,
            name => Transfer::create(
                Arc::clone(&store),
                name,
                kind.unwrap_or(Kind::Threads),
                preserve,
                &[],
            )?,
        };
        let recorded = transfer.record().kind;
        let ferry_config = ferry_config(&config, recorded);
        let handle = Handle {
            transfer: Arc::new(FerryTransfer::new(store, transfer, &ferry_config)),
            state: AxlState::Created,
            store: store_path,
        };
        let id = insert(handle)?;
        debug(|| format!("AXL_Create: id {id}"));
        Ok(id)
    })
}

fn ferry_config(config: &AxlConfig, kind: Kind) -> FerryConfig {
    FerryConfig {
        kind,
        preserve: if config.copy_metadata {
            Preserve::ALL
        } else {
            Preserve::NONE
        },
        pause_after_bytes: config.pause_after_bytes,
        ..FerryConfig::default()
    }
}

/// Gives `handle` a free id.
fn insert(handle: Handle) -> Result<c_int, CError> {
    let mut table = table();
    if table.handles.len() >= HANDLES_MAX {
        return Err(CError::invalid(format!(
            "{HANDLES_MAX} transfers are open: free some with AXL_Free"
        )));
    }
    let id_in_store = handle.transfer.id();
    if let Some((id, _)) = table
        .handles
        .iter()
        .find(|(_, h)| h.store == handle.store && h.transfer.id() == id_in_store)
    {
        return Err(CError::invalid(format!(
            "transfer {id_in_store} of {} is already open as id {id}",
            handle.store.display()
        )));
    }
    // Ids count up and wrap; with at most HANDLES_MAX taken, a free one is
    // found within HANDLES_MAX + 1 steps.
    let mut id = table.next_id;
    while table.handles.contains_key(&id) {
        id = id.checked_add(1).unwrap_or(0);
    }
    table.next_id = id.checked_add(1).unwrap_or(0);
    table.handles.insert(id, handle);
    Ok(id)
}

/// Adds `source` to go to `destination` (AXL's and `cp -r`'s rules).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn AXL_Add(
    id: c_int,
    source: *const c_char,
    destination: *const c_char,
) -> c_int {
    axl("AXL_Add", || {
        let transfer = lookup(id)?;
        // SAFETY: C passes strings or NULL.
        let (source, dest) = unsafe {
            (
                path_arg(source, "source")?,
                path_arg(destination, "destination")?,
            )
        };
        if !config()?.mkdir {
            check_parent(&dest)?;
        }
        let added = transfer.add(source.clone(), &dest)?;
        debug(|| {
            format!(
                "AXL_Add: id {id}: {} -> {}: {added} entries",
                source.display(),
                dest.display()
            )
        });
        Ok(AXL_SUCCESS)
    })
}

/// With `AXL_MKDIR=0` the destination's directory must exist.
fn check_parent(dest: &Path) -> Result<(), CError> {
    if dest.is_dir() {
        return Ok(());
    }
    match dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) if !parent.is_dir() => Err(CError::invalid(format!(
            "directory {} does not exist and AXL_MKDIR=0",
            parent.display()
        ))),
        _ => Ok(()),
    }
}

/// Starts the transfer (and, for AXL_XFER_SYNC, finishes it).
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Dispatch(id: c_int) -> c_int {
    axl("AXL_Dispatch", || {
        let transfer = lookup_in(id, AxlState::may_dispatch, "dispatch")?;
        // Before the call: a sync dispatch moves the files here, and
        // another thread (or a handler) may cancel it meanwhile.
        set_state(id, AxlState::Dispatched);
        let dispatched = waiting(id, || transfer.dispatch());
        if dispatched.is_err()
            && transfer.recorded_state().ok() == Some(ferry::TransferState::Created)
        {
            // Refused before it started: still only created.
            set_state(id, AxlState::Created);
        }
        dispatched?;
        debug(|| format!("AXL_Dispatch: id {id}"));
        Ok(AXL_SUCCESS)
    })
}

/// Continues a reloaded transfer from what is durable; like
/// `AXL_Dispatch` when nothing was in progress.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Resume(id: c_int) -> c_int {
    axl("AXL_Resume", || {
        let transfer = lookup_in(id, AxlState::may_dispatch, "resume")?;
        set_state(id, AxlState::Dispatched);
        // Reloaded after it had completed (an SCR restart after the flush
        // finished): nothing to resume, and AXL_Wait reports success.
        if transfer.recorded_state()? == ferry::TransferState::Completed {
            debug(|| format!("AXL_Resume: id {id}: completed already"));
            return Ok(AXL_SUCCESS);
        }
        if let Err(e) = transfer.resume() {
            if transfer.recorded_state().ok() != Some(ferry::TransferState::Running) {
                set_state(id, AxlState::Created);
            }
            return Err(e);
        }
        debug(|| format!("AXL_Resume: id {id}"));
        Ok(AXL_SUCCESS)
    })
}

/// `AXL_SUCCESS` when `AXL_Wait` would not block (also when it failed); -1
/// while it runs, and (with a message) before dispatch.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Test(id: c_int) -> c_int {
    axl("AXL_Test", || match lookup(id)?.test()? {
        Some(true) => Ok(AXL_SUCCESS),
        Some(false) | None => Ok(AXL_FAILURE),
    })
}

/// Blocks until the transfer is done: `AXL_SUCCESS` only if every file is
/// in place, complete and durable, with its metadata when asked.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Wait(id: c_int) -> c_int {
    axl("AXL_Wait", || {
        let transfer = lookup_in(id, AxlState::may_wait, "wait")?;
        set_state(id, AxlState::Waiting);
        let waited = waiting(id, || transfer.wait());
        // Whatever the wait says, as AXL: waited for (a cancel meanwhile
        // included).
        set_state(id, AxlState::Completed);
        let run = match waited {
            Ok(run) => run,
            // Not moving in this process: the store says how it ended.
            Err(e) => match transfer.recorded_state()? {
                ferry::TransferState::Completed => return Ok(AXL_SUCCESS),
                _ => return Err(e),
            },
        };
        debug(|| format!("AXL_Wait: id {id}: {}", run.state));
        run_outcome(&run)?;
        Ok(AXL_SUCCESS)
    })
}

/// Stops a dispatched transfer; `AXL_Wait` must still be called.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Cancel(id: c_int) -> c_int {
    axl("AXL_Cancel", || {
        // As AXL: only a dispatched transfer not yet waited for.
        let transfer = lookup_in(id, AxlState::may_cancel, "cancel")?;
        // A transfer that had finished stays so: AXL_Wait reports how.
        if transfer.recorded_state()?.is_terminal() {
            return Ok(AXL_SUCCESS);
        }
        transfer.cancel()?;
        set_state(id, AxlState::Canceled);
        debug(|| format!("AXL_Cancel: id {id}"));
        Ok(AXL_SUCCESS)
    })
}

/// Releases an id (after create, wait or cancel). The transfer leaves its
/// store; a state file stays for the record.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Free(id: c_int) -> c_int {
    axl("AXL_Free", || {
        let handle = {
            let mut table = table();
            let handle = table
                .handles
                .get(&id)
                .ok_or_else(|| CError::invalid(format!("no transfer with id {id}")))?;
            // As AXL: not while dispatched and not waited for (or cancelled).
            if !handle.state.may_free() && !interrupted_wait_of(id) {
                return Err(CError::invalid(format!(
                    "transfer {id} is {}: invalid state to free (as in AXL: \
                     AXL_Wait or AXL_Cancel it first)",
                    handle.state.name()
                )));
            }
            // Ids are looked up under this lock, so no new user can appear;
            // the one exception is the wait this handler interrupted.
            if Arc::strong_count(&handle.transfer) > 1 && !interrupted_wait_of(id) {
                return Err(busy());
            }
            table.handles.remove(&id).expect("present")
        };
        free_or_discard(id, handle)?;
        debug(|| format!("AXL_Free: id {id}"));
        Ok(AXL_SUCCESS)
    })
}

/// [`free`], or, in a signal handler that interrupted `AXL_Wait(id)`, end
/// the transfer without its lock: cancelled, its mover stopped, its
/// temporaries removed, freed.
fn free_or_discard(id: c_int, handle: Handle) -> Result<(), CError> {
    if interrupted_wait_of(id) {
        handle.transfer.discard(HANDLER_STOP_WAIT)?;
        return Ok(());
    }
    free(handle)
}

fn free(handle: Handle) -> Result<(), CError> {
    match Arc::try_unwrap(handle.transfer) {
        Ok(transfer) => transfer.free(),
        Err(_) => Err(busy()),
    }
}

fn busy() -> CError {
    CError::invalid("another thread is in AXL_Wait or AXL_Dispatch of this transfer")
}

/// Cancels and frees every transfer of this process.
#[unsafe(no_mangle)]
pub extern "C" fn AXL_Stop() -> c_int {
    axl("AXL_Stop", || {
        // As AXL's: cancel every id, wait for every id, free every id, and
        // fail if any of those failed (so an id never dispatched, which
        // cannot be cancelled, fails it; it is freed all the same).
        let ids: Vec<c_int> = table().handles.keys().copied().collect();
        let mut ok = true;
        for &id in &ids {
            ok &= AXL_Cancel(id) == AXL_SUCCESS;
        }
        for &id in &ids {
            ok &= AXL_Wait(id) == AXL_SUCCESS;
        }
        for &id in &ids {
            ok &= AXL_Free(id) == AXL_SUCCESS;
        }
        if ok {
            Ok(AXL_SUCCESS)
        } else {
            Err(CError::invalid(
                "some transfers could not be cancelled, waited for or freed (each said why above)",
            ))
        }
    })
}
