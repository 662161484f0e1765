//! Fencing: the store a run writes through, which refuses every batch once
//! the run's process is no longer the transfer's owner.
//!
//! An owner that was stopped (SIGSTOP, a hung node) long enough for its
//! lease to run out may be taken over from another host; when it comes
//! back, its next write must fail rather than race the new owner. Every
//! batch therefore carries [`Change::Owned`], checked in the same
//! transaction as the batch.

use crate::model::{Owner, TransferId};
use crate::store::{Change, Store, StoreError};

pub(super) struct Fenced<'a> {
    pub inner: &'a dyn Store,
    pub id: TransferId,
    pub owner: Owner,
}

impl Store for Fenced<'_> {
    crate::store_reads_through_inner!();

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut fenced = Vec::with_capacity(changes.len() + 1);
        fenced.push(Change::Owned {
            id: self.id,
            owner: self.owner.clone(),
        });
        fenced.extend_from_slice(changes);
        self.inner.apply(&fenced)
    }
}
