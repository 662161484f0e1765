//! Fencing: the store a run writes through, which refuses every batch once
//! the run's process is no longer the transfer's owner.
//!
//! An owner that was stopped (SIGSTOP, a hung node) long enough for its
//! lease to run out may be taken over from another host; when it comes
//! back, its next write must fail rather than race the new owner. Every
//! batch therefore carries [`Change::Owned`], checked in the same
//! transaction as the batch.

use std::path::PathBuf;

use crate::model::{EntryRecord, Event, NewEntry, NewTransfer, Owner, TransferId, TransferRecord};
use crate::store::{Change, EventFilter, EventReader, Store, StoreError};

pub(super) struct Fenced<'a> {
    pub inner: &'a dyn Store,
    pub id: TransferId,
    pub owner: Owner,
}

impl Store for Fenced<'_> {
    fn location(&self) -> PathBuf {
        self.inner.location()
    }

    fn create_transfer(
        &self,
        new: &NewTransfer,
        entries: &[NewEntry],
    ) -> Result<TransferRecord, StoreError> {
        self.inner.create_transfer(new, entries)
    }

    fn add_entries(&self, id: TransferId, entries: &[NewEntry]) -> Result<(), StoreError> {
        self.inner.add_entries(id, entries)
    }

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

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError> {
        self.inner.transfer(id)
    }

    fn renew_lease(&self, id: TransferId, owner: &Owner, lease_ms: u64) -> Result<(), StoreError> {
        self.inner.renew_lease(id, owner, lease_ms)
    }

    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError> {
        self.inner.transfer_by_name(name)
    }

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        self.inner.transfers()
    }

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        self.inner.entries(id)
    }

    fn events_since(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.inner.events_since(after, filter, limit)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq()
    }

    fn compact(&self, before: u64) -> Result<u64, StoreError> {
        self.inner.compact(before)
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        self.inner.event_reader()
    }
}
