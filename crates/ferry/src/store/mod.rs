//! The durable state store: transfers, their entries and the event log.
//!
//! [`Store`] is the interface; [`SqliteStore`] the embedded implementation.
//! A PostgreSQL implementation (crate `ferry-postgres`) satisfies the same
//! trait; [`rules`] holds the decisions both make, and the crate's
//! `conformance` module the tests both pass.
//!
//! **Invariant:** every state change goes through [`Store::apply`] (or
//! [`Store::create_transfer`] / [`Store::add_entries`], which are the
//! "created" changes), and each writes the change and its event row in one
//! transaction. The HSM request queue and catalog (crate `ferry-hsm`, whose
//! SQLite queue writes its own tables of this store through
//! [`SqliteStore::write`]) follow the same rule. Nothing else writes state.

#[doc(hidden)]
pub mod rules;
mod space;
mod sqlite;

use std::path::PathBuf;

pub use space::{RESERVE_BYTES_DEFAULT, RESERVE_ENV, ReadOnlyCause};
pub use sqlite::{SCHEMA_VERSION, SpaceReport, SqliteStore, now_ns};

use crate::model::{
    CatalogState, Checksum, EntryIndex, EntryRecord, Event, FileState, NewEntry, NewTransfer,
    Owner, RequestId, RequestState, TransferId, TransferRecord, TransferState,
};

/// A transfer's entries counted ([`Store::entry_tally`]). Files are the
/// entries that are not directories.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryTally {
    pub entries: u64,
    pub files: u64,
    pub files_committed: u64,
    pub files_failed: u64,
    pub files_skipped: u64,
    /// The files' sizes.
    pub bytes: u64,
    /// Of those, what is durable: copied and committed files whole, the
    /// others' durable progress.
    pub bytes_durable: u64,
}

impl EntryTally {
    pub fn of(entries: &[EntryRecord]) -> EntryTally {
        let mut tally = EntryTally::default();
        for e in entries {
            tally.add(e.state, e.kind != crate::EntryKind::Dir, e.meta.size, 1, {
                match e.state {
                    FileState::Copied | FileState::Committed => e.meta.size,
                    _ => e.progress_bytes_durable,
                }
            });
        }
        tally
    }

    /// `n` entries in `state` with `bytes` in all, `durable` of them durable.
    pub fn add(&mut self, state: FileState, is_file: bool, bytes: u64, n: u64, durable: u64) {
        self.entries += n;
        if is_file {
            self.files += n;
            self.bytes += bytes;
            self.bytes_durable += durable;
            match state {
                FileState::Committed => self.files_committed += n,
                FileState::Failed => self.files_failed += n,
                FileState::Skipped => self.files_skipped += n,
                _ => {}
            }
        }
    }
}

/// A failed entry, as a status lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedEntry {
    pub index: EntryIndex,
    pub dest: PathBuf,
    pub error: String,
}

/// One state change. [`Store::apply`] writes a batch of them, each with its
/// event, in one transaction: all or none.
#[derive(Clone, Debug)]
pub enum Change {
    /// A transfer enters `to`; refused unless its current state is one of
    /// `to.allowed_from()`, and, when `owner` is given, unless that is the
    /// recorded owner (so only the owner dispatches: never two movers).
    Transfer {
        id: TransferId,
        to: TransferState,
        owner: Option<Owner>,
        context: serde_json::Value,
    },
    /// `owner` takes over a transfer whose recorded owner is `from` (gone):
    /// compare-and-swap, so of two processes re-attaching at once one wins
    /// and the other gets [`StoreError::OwnerChanged`].
    Reattach {
        id: TransferId,
        from: Owner,
        owner: Owner,
    },
    /// An entry enters `to`. `progress_bytes_durable` replaces the recorded
    /// progress when given (a restarted file goes back to 0).
    Entry {
        id: TransferId,
        index: EntryIndex,
        to: FileState,
        progress_bytes_durable: Option<u64>,
        error: Option<String>,
        /// Recorded with the entry when given (at `copied`, or `skipped`
        /// after a checksum comparison).
        checksum: Option<Checksum>,
        context: serde_json::Value,
    },
    /// Writes nothing: refuses the whole batch with
    /// [`StoreError::OwnerChanged`] unless `owner` is still the recorded
    /// owner. A mover puts it first in each batch, so an owner that lost its
    /// lease (stopped, then taken over from another host) never writes
    /// again: fencing.
    Owned { id: TransferId, owner: Owner },
    /// The transfer is released: it leaves `transfers()` and its name may
    /// be used again. Its rows and events stay, for the record.
    Free { id: TransferId },
    /// A transfer still `created` takes `name`, which no live transfer may
    /// hold: after a [`Change::Free`] of its holder in the same batch, a
    /// re-run's plan takes over a fixed name only once it is whole.
    Named { id: TransferId, name: String },
    /// `ferry limit`: the transfer's bandwidth limit is now
    /// `bytes_per_second` (`None`: none); an event only, in any state, so
    /// that a resume takes it too.
    Limit {
        id: TransferId,
        bytes_per_second: Option<u64>,
    },
    /// `--delete` removed `path` from a destination directory (it was made
    /// durable first): an event only, on a moving transfer.
    Removed { id: TransferId, path: PathBuf },
    /// More of an entry's temporary is durable. Progress never goes back
    /// except through an `Entry` change that restarts the file.
    Progress {
        id: TransferId,
        index: EntryIndex,
        progress_bytes_durable: u64,
        /// The digests of the pieces below that offset, as read from the
        /// source (empty: not known), so a resume need not trust the
        /// temporary for them.
        piece_digests: Vec<Checksum>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a ferry store ({detail}): give another --store path, or move it away")]
    NotAStore { path: PathBuf, detail: String },

    #[error(
        "store {path} has schema version {found}, newer than this ferry understands ({supported}): \
         use a newer ferry"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    #[error(
        "no store at {path}: nothing was copied with this store yet (`ferry cp` creates it); \
         give --store or $FERRY_STORE to use another"
    )]
    NoStore { path: PathBuf },

    #[error("cannot open store {path}: {}", crate::words::cause(.source))]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// A database server's store (PostgreSQL) could not be reached.
    #[error(
        "cannot reach store {path}: {detail}: check that the server runs and that the URL (host, \
         port, database, user) is right"
    )]
    Unreachable { path: PathBuf, detail: String },

    /// Any other error a database server's store reported.
    #[error("store {path}: {source}")]
    Server {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("store {path}: transfer {id} cannot become {to} from {from}")]
    IllegalTransition {
        path: PathBuf,
        id: TransferId,
        from: String,
        to: String,
    },

    #[error("store {path}: transfer {id} has another owner now (pid {pid} on {host})")]
    OwnerChanged {
        path: PathBuf,
        id: TransferId,
        host: String,
        pid: u32,
    },

    #[error("store {path}: transfer {id} was cancelled")]
    Cancelled { path: PathBuf, id: TransferId },

    #[error("store {path}: no transfer with id {id}")]
    NoSuchTransfer { path: PathBuf, id: TransferId },

    #[error("store {path}: a transfer named {name} already exists (id {id})")]
    DuplicateName {
        path: PathBuf,
        name: String,
        id: TransferId,
    },

    #[error(
        "store {path}: events up to {horizon} were compacted away, so a watcher cannot continue \
         after {requested}: start again from a snapshot (`ferry status`) and --since {horizon}"
    )]
    Compacted {
        path: PathBuf,
        requested: u64,
        horizon: u64,
    },

    #[error(
        "store {path}: cursor {requested} is past the newest event ({last}): it is not from this \
         store's log; use --since {last} or less"
    )]
    CursorAhead {
        path: PathBuf,
        requested: u64,
        last: u64,
    },

    #[error("store {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },

    /// The store's disk (or quota) filled up: nothing more is written until
    /// there is room again. Reads keep working.
    #[error(
        "store {path} is read-only: {cause}; nothing more is written to it until its file \
         system has {recover_bytes} bytes free: free space there (ferry notices by itself, or \
         run `ferry store check`), or on a small disk set FERRY_STORE_RESERVE to a smaller \
         reserve (in bytes); status and watch still work"
    )]
    ReadOnly {
        path: PathBuf,
        cause: String,
        recover_bytes: u64,
    },
    #[error("store {path}: no HSM request with id {id}: `ferry hsm list` shows them")]
    NoSuchRequest { path: PathBuf, id: RequestId },

    #[error("store {path}: HSM request {id} cannot become {to} from {from}")]
    RequestTransition {
        path: PathBuf,
        id: RequestId,
        from: RequestState,
        to: RequestState,
    },

    #[error(
        "store {path}: HSM request {id} attempt {attempt} is stale (the request is {state} at \
         attempt {current}): its lease expired or it was cancelled; the work is discarded"
    )]
    StaleLease {
        path: PathBuf,
        id: RequestId,
        attempt: u32,
        current: u32,
        state: RequestState,
    },

    #[error(
        "store {path}: work item {item} of transfer {id}, attempt {attempt}, is stale (the item is \
         at attempt {current}, done: {done}): its lease expired and another worker took it; the \
         work is discarded"
    )]
    StaleItem {
        path: PathBuf,
        id: TransferId,
        item: i64,
        attempt: u32,
        current: u32,
        done: bool,
    },

    #[error("store {path}: {fid} is {state} in the HSM catalog, not {expected}: {hint}")]
    CatalogConflict {
        path: PathBuf,
        fid: String,
        state: String,
        expected: CatalogState,
        hint: &'static str,
    },

    #[error(
        "store {path}: {fid} is not in the HSM catalog: archive it first (`ferry hsm archive`)"
    )]
    NotInCatalog { path: PathBuf, fid: String },
}

/// Inside an `impl Store for W`, every method but `apply`, passed to
/// `self.inner` (anything that derefs to a `Store`; called as the trait's,
/// whatever inherent methods of the same name it has): for a store that only
/// adds something to the writes (fencing by owner, by lease). The counts
/// and pages are passed on too, not left to the defaults that read every
/// entry.
#[macro_export]
macro_rules! store_reads_through_inner {
    () => {
        fn location(&self) -> ::std::path::PathBuf {
            $crate::store::Store::location(&*self.inner)
        }

        fn create_transfer(
            &self,
            new: &$crate::model::NewTransfer,
            entries: &[$crate::model::NewEntry],
        ) -> Result<$crate::model::TransferRecord, $crate::store::StoreError> {
            $crate::store::Store::create_transfer(&*self.inner, new, entries)
        }

        fn add_entries(
            &self,
            id: $crate::model::TransferId,
            entries: &[$crate::model::NewEntry],
        ) -> Result<(), $crate::store::StoreError> {
            $crate::store::Store::add_entries(&*self.inner, id, entries)
        }

        fn transfer(
            &self,
            id: $crate::model::TransferId,
        ) -> Result<Option<$crate::model::TransferRecord>, $crate::store::StoreError> {
            $crate::store::Store::transfer(&*self.inner, id)
        }

        fn renew_lease(
            &self,
            id: $crate::model::TransferId,
            owner: &$crate::model::Owner,
            lease_ms: u64,
        ) -> Result<(), $crate::store::StoreError> {
            $crate::store::Store::renew_lease(&*self.inner, id, owner, lease_ms)
        }

        fn transfer_by_name(
            &self,
            name: &str,
        ) -> Result<Option<$crate::model::TransferRecord>, $crate::store::StoreError> {
            $crate::store::Store::transfer_by_name(&*self.inner, name)
        }

        fn transfers(
            &self,
        ) -> Result<Vec<$crate::model::TransferRecord>, $crate::store::StoreError> {
            $crate::store::Store::transfers(&*self.inner)
        }

        fn entries(
            &self,
            id: $crate::model::TransferId,
        ) -> Result<Vec<$crate::model::EntryRecord>, $crate::store::StoreError> {
            $crate::store::Store::entries(&*self.inner, id)
        }

        fn first_entry(
            &self,
            id: $crate::model::TransferId,
        ) -> Result<Option<$crate::model::EntryRecord>, $crate::store::StoreError> {
            $crate::store::Store::first_entry(&*self.inner, id)
        }

        fn entries_from(
            &self,
            id: $crate::model::TransferId,
            from: $crate::model::EntryIndex,
            limit: usize,
        ) -> Result<Vec<$crate::model::EntryRecord>, $crate::store::StoreError> {
            $crate::store::Store::entries_from(&*self.inner, id, from, limit)
        }

        fn entries_compared_from(
            &self,
            id: $crate::model::TransferId,
            from: $crate::model::EntryIndex,
            limit: usize,
        ) -> Result<Vec<$crate::model::EntryRecord>, $crate::store::StoreError> {
            $crate::store::Store::entries_compared_from(&*self.inner, id, from, limit)
        }

        fn reads_entry_ranges(&self) -> bool {
            $crate::store::Store::reads_entry_ranges(&*self.inner)
        }

        fn directory_entries(
            &self,
            id: $crate::model::TransferId,
        ) -> Result<Vec<$crate::model::EntryRecord>, $crate::store::StoreError> {
            $crate::store::Store::directory_entries(&*self.inner, id)
        }

        fn entry_tally(
            &self,
            id: $crate::model::TransferId,
        ) -> Result<$crate::store::EntryTally, $crate::store::StoreError> {
            $crate::store::Store::entry_tally(&*self.inner, id)
        }

        fn failed_entries(
            &self,
            id: $crate::model::TransferId,
            after: Option<$crate::model::EntryIndex>,
            limit: usize,
        ) -> Result<Vec<$crate::store::FailedEntry>, $crate::store::StoreError> {
            $crate::store::Store::failed_entries(&*self.inner, id, after, limit)
        }

        fn unfinished_entries_of_caller(&self, uid: u32) -> Result<u64, $crate::store::StoreError> {
            $crate::store::Store::unfinished_entries_of_caller(&*self.inner, uid)
        }

        fn events_since(
            &self,
            after: u64,
            filter: &$crate::store::EventFilter,
            limit: usize,
        ) -> Result<Vec<$crate::model::Event>, $crate::store::StoreError> {
            $crate::store::Store::events_since(&*self.inner, after, filter, limit)
        }

        fn last_seq(&self) -> Result<u64, $crate::store::StoreError> {
            $crate::store::Store::last_seq(&*self.inner)
        }

        fn compact(&self, before: u64) -> Result<u64, $crate::store::StoreError> {
            $crate::store::Store::compact(&*self.inner, before)
        }

        fn event_reader(
            &self,
        ) -> Result<Box<dyn $crate::store::EventReader>, $crate::store::StoreError> {
            $crate::store::Store::event_reader(&*self.inner)
        }
    };
}

/// Where the state of transfers lives. Implementations must be safe to share
/// between the threads of one process and, through the database, between
/// processes.
pub trait Store: Send + Sync {
    /// Where this store is, for messages.
    fn location(&self) -> PathBuf;

    /// Creates a transfer in state `created` with its first entries, and
    /// their events, in one transaction: a crash never leaves a transfer
    /// that lost the entries it was created with.
    fn create_transfer(
        &self,
        new: &NewTransfer,
        entries: &[NewEntry],
    ) -> Result<TransferRecord, StoreError>;

    /// Appends entries (state `pending`) and one `transfer.added` event.
    fn add_entries(&self, id: TransferId, entries: &[NewEntry]) -> Result<(), StoreError>;

    /// Writes every change and its event in one transaction. Fails with
    /// [`StoreError::Cancelled`] when an entry change targets a cancelled
    /// transfer, so that a mover in another process learns of a cancel.
    /// While the store is read-only ([`StoreError::ReadOnly`]) only a clean
    /// shutdown is written: changes that all end transfers as `failed` or
    /// `cancelled`.
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError>;

    /// The owner's heartbeat: records now as `owner`'s last sign of life,
    /// promised to hold for `lease_ms`. Not a state change and no event (it
    /// is written every few seconds). [`StoreError::OwnerChanged`] when
    /// `owner` is no longer the owner, [`StoreError::NoSuchTransfer`] when
    /// the transfer was freed: either way the lease is lost.
    fn renew_lease(&self, id: TransferId, owner: &Owner, lease_ms: u64) -> Result<(), StoreError>;

    /// The live (not freed) transfer with this name.
    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError>;

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError>;

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError>;

    /// [`Store::entries`] with only what a re-run compares
    /// ([`crate::rerun::changed_since`]): index, kind, paths, size, mode,
    /// owner, mtime, link target and state. Extended attributes, checksum,
    /// error, progress, atime and hard-link group are left empty (a
    /// store may fill them in): these records are never written back.
    fn entries_compared(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        self.entries(id)
    }

    /// The transfer's first entry (its first source's root), without
    /// reading the others: how a re-run tells, among many transfers, the
    /// one that copied the same paths (see [`crate::rerun`]).
    fn first_entry(&self, id: TransferId) -> Result<Option<EntryRecord>, StoreError> {
        Ok(self.entries(id)?.into_iter().next())
    }

    /// At most `limit` of the transfer's entries, from index `from` on, in
    /// index order: how a run holds a bounded part of a transfer of any
    /// size. The default reads every entry (see
    /// [`Store::reads_entry_ranges`]).
    fn entries_from(
        &self,
        id: TransferId,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        Ok(self
            .entries(id)?
            .into_iter()
            .skip(from.0 as usize)
            .take(limit)
            .collect())
    }

    /// [`Store::entries_compared`], at most `limit` of them from index
    /// `from` on ([`Store::entries_from`]'s range): a re-run holds what it
    /// compares, not the records it is read from.
    fn entries_compared_from(
        &self,
        id: TransferId,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        self.entries_from(id, from, limit)
    }

    /// Whether [`Store::entries_from`] reads only the range it returns.
    /// When it does not (the default), a run reads its entries in one
    /// page rather than reading them all once per page.
    fn reads_entry_ranges(&self) -> bool {
        false
    }

    /// The transfer's directories, in index order: what a run's last pass
    /// (their modes and times) needs, without the files.
    fn directory_entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        Ok(self
            .entries(id)?
            .into_iter()
            .filter(|e| e.kind == crate::model::EntryKind::Dir)
            .collect())
    }

    /// A transfer's entries counted by state. The SQLite store keeps the
    /// counts as entries change, so this costs the same for any size.
    fn entry_tally(&self, id: TransferId) -> Result<EntryTally, StoreError> {
        Ok(EntryTally::of(&self.entries(id)?))
    }

    /// A page of a transfer's failed entries: those with an index above
    /// `after`, in index order, at most `limit`.
    fn failed_entries(
        &self,
        id: TransferId,
        after: Option<EntryIndex>,
        limit: usize,
    ) -> Result<Vec<FailedEntry>, StoreError> {
        Ok(self
            .entries(id)?
            .into_iter()
            .filter(|e| e.state == FileState::Failed && after.is_none_or(|a| e.index > a))
            .take(limit)
            .map(|e| FailedEntry {
                index: e.index,
                dest: e.dest,
                error: e.error.unwrap_or_default(),
            })
            .collect())
    }

    /// The entries of every unfinished transfer made for `uid` (a daemon's
    /// user), together.
    fn unfinished_entries_of_caller(&self, uid: u32) -> Result<u64, StoreError> {
        let mut total = 0;
        for t in self.transfers()? {
            if t.caller.as_ref().map(|c| c.uid) == Some(uid) && !t.state.is_terminal() {
                total += self.entry_tally(t.id)?.entries;
            }
        }
        Ok(total)
    }

    /// Events with `seq > after` that pass `filter`, oldest first, at most
    /// `limit` of them. [`StoreError::Compacted`] when events after `after`
    /// were compacted away: never a silent gap.
    fn events_since(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The newest event's sequence number (0 when there is none).
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// Deletes the events with `seq < before` (clamped so the newest event
    /// stays) and raises the compaction horizon. Returns the new horizon:
    /// the highest sequence number no longer readable.
    fn compact(&self, before: u64) -> Result<u64, StoreError>;

    /// A reader of the event log with its own connection, for watchers: it
    /// never holds up writers, and it can block until the log changes.
    fn event_reader(&self) -> Result<Box<dyn EventReader>, StoreError>;
}

/// Which events a reader wants. Empty: all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub transfer: Option<TransferId>,
    /// Only this HSM request's events.
    pub request: Option<RequestId>,
    /// An event name (`transfer.completed`) or a family (`transfer`, `file`).
    pub kind: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &Event) -> bool {
        self.transfer.is_none_or(|t| Some(t) == event.transfer)
            && self.request.is_none_or(|r| Some(r) == event.request)
            && self.kind.as_deref().is_none_or(|kind| {
                event.name == kind
                    || event
                        .name
                        .strip_prefix(kind)
                        .is_some_and(|rest| rest.starts_with('.'))
            })
    }
}

/// Something that changes whenever the store commits a write, in this
/// process or any other. Compare two to learn whether anything happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeToken {
    pub local: u64,
    pub data_version: i64,
}

/// Events read in one snapshot of the log.
#[derive(Clone, Debug)]
pub struct EventPage {
    pub events: Vec<Event>,
    /// The newest event in that snapshot, matching the filter or not. When
    /// the page is not full, every matching event up to here is in it.
    pub last_seq: u64,
}

/// See [`Store::event_reader`].
pub trait EventReader: Send {
    fn events_since(
        &mut self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<EventPage, StoreError>;

    /// Take this *before* reading, then [`EventReader::wait_changed`] with
    /// it after finding nothing new: a write in between is never missed.
    fn change_token(&mut self) -> Result<ChangeToken, StoreError>;

    /// Blocks until the store changed since `since`, or `timeout` passed.
    /// Writers in this process wake it at once; writers in other processes
    /// are noticed by a cheap check (SQLite's `data_version`) with bounded
    /// back-off, or (PostgreSQL) by a notification at their commit.
    /// Returns whether a change was seen.
    fn wait_changed(
        &mut self,
        since: ChangeToken,
        timeout: std::time::Duration,
    ) -> Result<bool, StoreError>;
}
