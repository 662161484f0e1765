//! `ferry stop` and `ferry forget`: the clean-up of one store's
//! transfers on demand (and libaxl's `discard`), beside finalize's
//! post-stage over many stores.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

use crate::engine::{commit, staging};
use crate::error::{Error, Result};
use crate::model::{TransferId, TransferRecord, TransferState};
use crate::owner::Liveness;
use crate::store::{Change, Store};

/// What `stop` did to one transfer.
#[derive(Clone, Debug, Serialize)]
pub struct Stopped {
    pub transfer: String,
    pub id: i64,
    /// Whether it was still moving and got cancelled.
    pub cancelled: bool,
    pub temporaries_removed: usize,
    /// Its owner is alive: cancelled and freed, temporaries left for it.
    pub owner_alive: bool,
}

/// Which transfers [`stop`] frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopWhich {
    /// Every one (AXL's `AXL_Stop`; `ferry stop --all`).
    All,
    /// All but the completed (and finalized) ones, whose record a user
    /// may still want (`ferry stop`).
    Unfinished,
    /// Only those whose owner is dead (`ferry stop --dead`).
    Dead,
}

/// `ferry stop [--dead|--all]`: cancel and free the store's transfers that
/// `which` names, removing the temporaries of those no live process is
/// writing. Returns what it did to each, and the transfers it left.
pub fn stop(store: &dyn Store, which: StopWhich, force: bool) -> Result<Vec<Stopped>> {
    let mut stopped = Vec::new();
    for transfer in store.transfers()? {
        let liveness = transfer.owner_liveness();
        let dead = matches!(liveness, Liveness::Dead) || (force && liveness == Liveness::Unknown);
        let finished = matches!(
            transfer.state,
            TransferState::Completed | TransferState::Finalized
        );
        let left = match which {
            StopWhich::All => false,
            StopWhich::Unfinished => finished,
            StopWhich::Dead => !dead,
        };
        if left {
            continue;
        }
        stopped.push(stop_one(store, transfer, dead)?);
    }
    Ok(stopped)
}

/// `ferry forget NAME`: free one transfer, so that its name can be used
/// again (its rows and events stay). One that is not over is cancelled
/// first and its temporaries removed; one whose owner is alive (or on
/// another host, without `force`) is refused.
pub fn forget(store: &dyn Store, name: &str, force: bool) -> Result<Stopped> {
    let transfer = store
        .transfer_by_name(name)?
        .ok_or_else(|| Error::TransferNotFound {
            name: name.to_owned(),
            store: store.location(),
        })?;
    let liveness = transfer.owner_liveness();
    let dead = matches!(liveness, Liveness::Dead) || (force && liveness == Liveness::Unknown);
    if !dead && !transfer.state.is_terminal() {
        return Err(Error::OwnerAlive {
            name: transfer.name,
            id: transfer.id,
            host: transfer.owner.host,
            pid: transfer.owner.pid,
        });
    }
    stop_one(store, transfer, dead)
}

fn stop_one(store: &dyn Store, transfer: TransferRecord, dead: bool) -> Result<Stopped> {
    let mut changes = Vec::new();
    let cancelled = !transfer.state.is_terminal();
    if cancelled {
        changes.push(Change::Transfer {
            id: transfer.id,
            to: TransferState::Cancelled,
            owner: None,
            context: serde_json::json!({"by": "stop", "pid": std::process::id()}),
        });
    }
    let owner_alive = !dead && !transfer.state.is_terminal();
    let removed = if owner_alive {
        0
    } else {
        remove_temporaries(store, &transfer)?
    };
    changes.push(Change::Free { id: transfer.id });
    store.apply(&changes)?;
    Ok(Stopped {
        transfer: transfer.name,
        id: transfer.id.0,
        cancelled,
        temporaries_removed: removed,
        owner_alive,
    })
}

/// Removes the temporaries of `transfer`'s files that are not done, and
/// makes their removal durable; how many there were. Only for a transfer
/// nobody moves any more.
pub fn remove_temporaries(store: &dyn Store, transfer: &TransferRecord) -> Result<usize> {
    let entries = store.entries(transfer.id)?;
    let mut to_sync = Vec::new();
    let removed = staging::remove_temporaries_left(
        &entries,
        &transfer.temp_suffix,
        transfer.id,
        &mut to_sync,
    )?;
    commit::make_durable(to_sync.iter().map(PathBuf::as_path))
        .map_err(|e| Error::io(store.location(), e))?;
    Ok(removed.len())
}

/// Ends a transfer for good from a thread that cannot reach its
/// `Transfer` (libaxl's signal-handler path): cancelled unless it ended,
/// its temporaries removed once `ended` says its mover stopped, then
/// freed. Errs when the mover did not stop within `timeout`.
pub fn discard(
    store: &dyn Store,
    id: TransferId,
    ended: &crate::RunEnded,
    timeout: std::time::Duration,
) -> Result<usize> {
    let Some(transfer) = store.transfer(id)? else {
        return Ok(0);
    };
    if !transfer.state.is_terminal() {
        match store.apply(&[Change::Transfer {
            id,
            to: TransferState::Cancelled,
            owner: None,
            context: serde_json::json!({"by_pid": std::process::id()}),
        }]) {
            // It ended in between.
            Err(crate::store::StoreError::IllegalTransition { .. }) | Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !ended.wait(timeout) {
        return Err(Error::Io {
            path: store.location(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the mover of transfer {id} did not stop within {timeout:?}"),
            ),
        });
    }
    let transfer = store.transfer(id)?.unwrap_or(transfer);
    let removed = if transfer.state == TransferState::Completed {
        0
    } else {
        remove_temporaries(store, &transfer)?
    };
    store.apply(&[Change::Free { id }])?;
    Ok(removed)
}
