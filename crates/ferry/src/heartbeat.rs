//! The owner's heartbeat: while a process holds a transfer, a thread renews
//! its lease in the store every third of the lease (see `owner`), so that
//! other hosts know it is alive. When the renewal finds another owner (its
//! lease ran out and the transfer was taken over) it stops: the mover's next
//! write is refused by the store (`engine::fence`), which ends the run with
//! that error.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::model::{Owner, TransferId};
use crate::store::{Store, StoreError};

/// Renews the lease until dropped.
pub(crate) struct Heartbeat {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Renews at once (so the lease starts with the hold), then every
    /// `lease / 3` on a thread, until dropped or the transfer turns out to
    /// have another owner or to be freed.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        id: TransferId,
        owner: Owner,
        lease: Duration,
    ) -> Heartbeat {
        let (stop, stopped) = channel();
        let thread = crate::signals::spawn_blocked(|| {
            std::thread::Builder::new()
                .name(format!("ferry-heartbeat-{id}"))
                .spawn(move || beat(store.as_ref(), id, &owner, lease, &stopped))
                .ok()
        });
        Heartbeat {
            stop: Some(stop),
            thread,
        }
    }
}

fn beat(store: &dyn Store, id: TransferId, owner: &Owner, lease: Duration, stopped: &Receiver<()>) {
    let lease_ms = lease.as_millis().min(u64::MAX as u128) as u64;
    loop {
        match store.renew_lease(id, owner, lease_ms) {
            Ok(()) => {}
            Err(StoreError::OwnerChanged { .. } | StoreError::NoSuchTransfer { .. }) => return,
            // A store that is read-only or unreachable for now: the next
            // beat tries again; if it never comes back, the lease runs out,
            // which is the truth.
            Err(_) => {}
        }
        match stopped.recv_timeout(lease / 3) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
