//! A transfer moved in this process (`sync`, `threads`): a [`Transfer`]
//! behind a mutex plus its [`Canceller`], so that a cancel never waits for
//! a dispatch or a wait.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use ferry::store::{Store, StoreError};
use ferry::{Canceller, Transfer, TransferId, TransferState};

use crate::FerryConfig;
use crate::boundary::{self, CError};

/// One transfer of this process (see the module).
pub struct LocalTransfer {
    transfer: Mutex<Transfer>,
    store: Arc<dyn Store>,
    canceller: Canceller,
    id: TransferId,
    reattached: bool,
    workers: usize,
    /// The last run's end, reachable without the transfer's lock (which a
    /// waiting thread holds): see [`LocalTransfer::discard`].
    ended: Mutex<Arc<ferry::RunEnded>>,
}

fn lock(transfer: &LocalTransfer) -> MutexGuard<'_, Transfer> {
    // A panic inside a call poisoned it; the transfer itself is in the store.
    transfer
        .transfer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalTransfer {
    /// Wraps a created or opened transfer, with `config`'s run options.
    pub fn new(
        store: Arc<dyn Store>,
        mut transfer: Transfer,
        config: &FerryConfig,
    ) -> LocalTransfer {
        transfer.set_clean_orphans(config.clean_orphans);
        transfer.set_check_space(config.check_space);
        transfer.set_skip(config.skip);
        transfer.set_verify(config.verify);
        if config.pause_after_bytes > 0 {
            transfer.set_after_chunk(Some(boundary::pause_after(config.pause_after_bytes)));
        }
        LocalTransfer {
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

    /// Waits for a running mover, for a close that keeps the transfer.
    pub fn finish_moving(&self) -> Result<(), CError> {
        if !lock(self).test().unwrap_or(true) {
            self.wait().map(drop)?;
        }
        Ok(())
    }
}
