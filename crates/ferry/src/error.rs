//! Errors a caller can act on. Every variant names the thing (path, transfer,
//! store) and, where there is one, what to do about it.

use std::io;
use std::path::PathBuf;

use crate::model::{TransferId, TransferState};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot stat {path}: no such file or directory")]
    SourceNotFound { path: PathBuf },

    #[error("{path}: permission denied ({action})")]
    PermissionDenied { path: PathBuf, action: &'static str },

    #[error("{path} is a directory: use -r to copy directories")]
    SourceIsDirectory { path: PathBuf },

    #[error("cannot overwrite non-directory {dest} with directory {from}")]
    DirectoryOntoFile { from: PathBuf, dest: PathBuf },

    #[error("cannot overwrite directory {dest} with non-directory {from}")]
    FileOntoDirectory { from: PathBuf, dest: PathBuf },

    #[error("target {path} is not a directory (several sources need a directory to copy into)")]
    TargetNotADirectory { path: PathBuf },

    #[error("{first} and {second} would both be copied to {dest}: copy them to different places")]
    DuplicateDestination {
        first: PathBuf,
        second: PathBuf,
        dest: PathBuf,
    },

    #[error("{from} and {dest} are the same file")]
    SameFile { from: PathBuf, dest: PathBuf },

    #[error("cannot copy directory {from} into itself ({dest})")]
    CopyIntoItself { from: PathBuf, dest: PathBuf },

    #[error("{path}: unsupported file type ({what}); ferry copies files, directories and symlinks")]
    UnsupportedFileType { path: PathBuf, what: &'static str },

    #[error("no transfer named {name} in store {store}: `ferry status` lists them")]
    TransferNotFound { name: String, store: PathBuf },

    #[error(
        "transfer {name} (id {id}) belongs to a live process, pid {pid} on {host}: \
         wait for it or cancel it first"
    )]
    OwnerAlive {
        name: String,
        id: TransferId,
        host: String,
        pid: u32,
    },

    #[error(
        "a transfer named {name} already exists in store {store} (id {id}, {state}): \
         `ferry resume {name}` continues it, `ferry forget {name}` frees the name, or choose \
         another --name"
    )]
    NameInUse {
        name: String,
        id: TransferId,
        state: TransferState,
        store: PathBuf,
    },

    #[error(
        "{name:?} cannot name a transfer: {why}; a name is 1 to {max} printable characters",
        max = crate::model::NAME_BYTES_MAX
    )]
    InvalidName { name: String, why: &'static str },

    /// Refused before anything is written: a destination that cannot be.
    #[error("cannot copy to {path}: {why}")]
    BadDestination { path: PathBuf, why: String },

    #[error("transfer {name} (id {id}) is {state}: nothing to {action}")]
    NothingToDo {
        name: String,
        id: TransferId,
        state: TransferState,
        action: &'static str,
    },

    #[error("transfer {name} (id {id}) was cancelled")]
    Cancelled { name: String, id: TransferId },

    #[error(
        "transfer {name} (id {id}) was cancelled while it was planned: nothing of it was \
         copied, and its partial plan is dropped; run the same command again to copy anew"
    )]
    CancelledWhilePlanned { name: String, id: TransferId },

    #[error(
        "transfer {name} (id {id}) was never dispatched: its owner, process {pid} on {host}, \
         died before dispatching it (while planning it), so its list of files may be \
         incomplete; run the command that made it again (it plans the copy anew), or \
         `ferry forget {name}`"
    )]
    NeverDispatched {
        name: String,
        id: TransferId,
        pid: u32,
        host: String,
    },

    #[error("transfer {id} was not dispatched: dispatch it before {action}")]
    NotDispatched {
        id: TransferId,
        action: &'static str,
    },

    #[error(
        "not enough space on the file system of {path}: {needed} bytes to copy, {available} \
         available; free space there or copy less (--check-space refused to start)"
    )]
    NotEnoughSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },

    #[error(
        "{problems} of {checked} files do not hold what was copied (each is named above): \
         copy them again: `ferry cp -a --skip checksum SRC DST` recopies exactly those that differ"
    )]
    VerifyFailed { checked: usize, problems: usize },

    #[error(
        "transfer {name} keeps no checksums (--checksum none), so --verify has nothing to \
         compare with: drop --verify, or copy with a checksum"
    )]
    VerifyWithoutChecksum { name: String },

    #[error(
        "{path} changed since it was archived (it is dirty now): archive it again \
         (`ferry hsm archive`) before releasing it"
    )]
    FileDirty { path: PathBuf },

    #[error("archive {spec}: {reason}")]
    Archive { spec: String, reason: String },

    #[error("{name}={value} is not {expected}")]
    BadSetting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    /// A command-line option whose value cannot be used (a pattern, a
    /// file list): named, with why.
    #[error("{option}: {why}")]
    BadOption { option: &'static str, why: String },

    #[error(transparent)]
    Store(#[from] StoreError),

    #[error("{path}: {}", crate::words::cause(.source))]
    Io { path: PathBuf, source: io::Error },
}

impl Error {
    /// A number for each kind of error, the same as the CLI's exit status
    /// and the C API's return code, so that a script or a C caller can tell
    /// "nothing to copy from" from "no room to copy to". The table in
    /// docs/user-guide.md ("Exit codes") lists them; keep the two in step.
    pub fn code(&self) -> u8 {
        match self {
            Error::SourceNotFound { .. } => 3,
            Error::PermissionDenied { .. } => 4,
            Error::SourceIsDirectory { .. } => 5,
            Error::DirectoryOntoFile { .. }
            | Error::FileOntoDirectory { .. }
            | Error::TargetNotADirectory { .. }
            | Error::DuplicateDestination { .. } => 6,
            Error::SameFile { .. } | Error::CopyIntoItself { .. } => 7,
            Error::Store(StoreError::NotAStore { .. } | StoreError::Corrupt { .. }) => 8,
            Error::Store(StoreError::TooNew { .. }) => 9,
            Error::TransferNotFound { .. } => 10,
            Error::OwnerAlive { .. } | Error::NameInUse { .. } => 11,
            Error::Cancelled { .. }
            | Error::CancelledWhilePlanned { .. }
            | Error::Store(StoreError::Cancelled { .. }) => 12,
            Error::NothingToDo { .. }
            | Error::NotDispatched { .. }
            | Error::NeverDispatched { .. } => 13,
            Error::UnsupportedFileType { .. } => 14,
            Error::Store(
                StoreError::Open { .. }
                | StoreError::Unreachable { .. }
                | StoreError::NoStore { .. },
            ) => 15,
            Error::InvalidName { .. } => 29,
            Error::BadDestination { .. } => 37,
            Error::Store(StoreError::Compacted { .. } | StoreError::CursorAhead { .. }) => 17,
            Error::Store(StoreError::ReadOnly { .. }) => 19,
            Error::NotEnoughSpace { .. } => 20,
            Error::VerifyFailed { .. } => 21,
            Error::VerifyWithoutChecksum { .. }
            | Error::BadSetting { .. }
            | Error::BadOption { .. } => 2,
            Error::Store(StoreError::NoSuchRequest { .. } | StoreError::NotInCatalog { .. }) => 22,
            Error::Store(StoreError::StaleLease { .. } | StoreError::StaleItem { .. }) => 23,
            Error::FileDirty { .. } | Error::Store(StoreError::CatalogConflict { .. }) => 24,
            Error::Store(StoreError::RequestTransition { .. }) => 26,
            Error::Archive { .. } => 27,
            Error::Store(_) => 16,
            Error::Io { .. } => 74,
        }
    }

    /// An I/O error on `path`; a refused permission is its own error.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Error {
        let path = path.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            return Error::PermissionDenied {
                path,
                action: "open",
            };
        }
        Error::Io { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
