//! `ferry_watch_*`: following a store's ordered event log from C.

use super::*;

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
