//! The durable state store: transfers, their entries and the event log.
//!
//! [`Store`] is the interface; [`SqliteStore`] the embedded implementation.
//! A PostgreSQL implementation satisfies the same trait.
//!
//! **Invariant:** every state change goes through [`Store::apply`] (or
//! [`Store::create_transfer`] / [`Store::add_entries`], which are the
//! "created" changes), and each writes the change and its event row in one
//! transaction. Nothing else in ferry writes state.

mod sqlite;

use std::path::PathBuf;

pub use sqlite::SqliteStore;

use crate::model::{
    EntryIndex, EntryRecord, Event, FileState, NewEntry, NewTransfer, Owner, TransferId,
    TransferRecord, TransferState,
};

/// One state change. [`Store::apply`] writes a batch of them, each with its
/// event, in one transaction: all or none.
#[derive(Clone, Debug)]
pub enum Change {
    /// A transfer enters `to`; refused unless its current state is one of
    /// `to.allowed_from()`.
    Transfer {
        id: TransferId,
        to: TransferState,
        context: serde_json::Value,
    },
    /// A new owner takes over a transfer whose owner is gone (re-attach).
    Reattach { id: TransferId, owner: Owner },
    /// An entry enters `to`. `progress_bytes_durable` replaces the recorded
    /// progress when given (a restarted file goes back to 0).
    Entry {
        id: TransferId,
        index: EntryIndex,
        to: FileState,
        progress_bytes_durable: Option<u64>,
        error: Option<String>,
        context: serde_json::Value,
    },
    /// More of an entry's temporary is durable. Progress never goes back
    /// except through an `Entry` change that restarts the file.
    Progress {
        id: TransferId,
        index: EntryIndex,
        progress_bytes_durable: u64,
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

    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },

    #[error("store {path}: transfer {id} cannot become {to} from {from}")]
    IllegalTransition {
        path: PathBuf,
        id: TransferId,
        from: String,
        to: String,
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

    #[error("store {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
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
    fn apply(&self, changes: &[Change]) -> Result<(), StoreError>;

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError>;

    /// The live (not freed) transfer with this name.
    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError>;

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError>;

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError>;

    /// Events with `seq > after`, oldest first, at most `limit` of them.
    fn events_since(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError>;
}
