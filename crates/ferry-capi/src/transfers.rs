//! `ferry_transfer_*`: create or re-attach, add, dispatch, resume, test,
//! wait, cancel, free.

use super::*;

/// Creates a transfer named `name` (NULL: `cp-<id>`) in `store`. If the
/// store holds a live transfer of that name whose owner process is dead, it
/// is re-attached instead (see `ferry_transfer_reattached`) so that it can
/// be resumed, cancelled or freed; a live owner's name is
/// `FERRY_E_NAME_IN_USE`. `config` may be NULL (defaults). With kind
/// daemon (or default, while a daemon answers) the transfer is created in
/// the daemon, by name, and `store` is not used (it may be NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_create(
    store: *const FerryStore,
    name: *const c_char,
    config: *const FerryConfig,
    out: *mut *mut FerryTransfer,
) -> c_int {
    status("ferry_transfer_create", || {
        // SAFETY: C passes a string or NULL.
        let name = unsafe { opt_str_arg(name, "name")? };
        let config = if config.is_null() {
            FerryConfig::default()
        } else {
            // SAFETY: C passes a config handle.
            unsafe { handle(config, "config") }?.clone()
        };
        let transfer = match config.daemon_socket() {
            Some(socket) => {
                FerryTransfer::Daemon(daemon::DaemonTransfer::create(&socket, name, &config)?)
            }
            None => {
                // SAFETY: C passes a store handle or NULL.
                let store: Arc<dyn Store> = unsafe { handle(store, "store") }?.store.clone();
                let options = TransferOptions {
                    name,
                    kind: config.kind,
                    preserve: config.preserve,
                    checksum: config.checksum,
                    caller: None,
                };
                let transfer = Transfer::create_with(store.clone(), &options, &[])?;
                FerryTransfer::new(store, transfer, &config)
            }
        };
        let handle = Box::into_raw(Box::new(transfer));
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
    unsafe { transfer.as_ref() }.map_or(0, |t| c_int::from(t.reattached()))
}

/// The transfer's id in its store (-1 for NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_id(transfer: *const FerryTransfer) -> i64 {
    // SAFETY: C passes a transfer handle or NULL.
    unsafe { transfer.as_ref() }.map_or(-1, |t| t.id().0)
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
        let state_now = unsafe { handle(transfer, "transfer") }?.recorded_state()?;
        // SAFETY: C passes a writable pointer (checked for NULL).
        unsafe { put(state, state_code(state_now), "state") }
    })
}

/// Releases the transfer in its store (its name may be used again; a moving
/// transfer is cancelled first) and frees the handle, which is gone even
/// when this fails. A daemon transfer stays in the daemon's store (cancelled
/// if it was moving).
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
/// resume or `ferry finalize`). A running mover of this process is waited
/// for first; a daemon transfer goes on in the daemon.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ferry_transfer_close(transfer: *mut FerryTransfer) {
    if transfer.is_null() {
        return;
    }
    // SAFETY: a handle from ferry_transfer_create/open, closed once.
    let transfer = unsafe { Box::from_raw(transfer) };
    let _ = catch("ferry_transfer_close", || transfer.close());
}
