//! Exit codes. Each user mistake has its own, listed in the README; a script
//! can tell "nothing to copy from" from "no room to copy to".

use std::process::ExitCode;

use ferry::Error;
use ferry::store::StoreError;
use ferry_serve::ServeError;
use ferry_serve::client::ClientError;

pub enum Exit {
    Ok,
    /// The transfer ran, and some files failed (each was named on stderr).
    TransferFailed,
    Cancelled,
    /// finalize left transfers with live owners alone (and nothing failed).
    LeftAlone,
    /// `ferry hsm … --wait`: a request failed.
    RequestFailed,
    /// `ferry hsm … --wait`: a request was canceled.
    RequestCanceled,
    Error(Error),
    /// A request to the daemon failed.
    Daemon(ClientError),
    /// `ferry serve` could not start, or failed.
    Serve(ServeError),
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        Exit::Error(e)
    }
}

/// The code for each error; the README's table is generated from the same
/// list by hand, so keep them in step.
pub fn code(e: &Error) -> u8 {
    match e {
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
        Error::Cancelled { .. } | Error::Store(StoreError::Cancelled { .. }) => 12,
        Error::NothingToDo { .. } | Error::NotDispatched { .. } => 13,
        Error::UnsupportedFileType { .. } => 14,
        Error::Store(StoreError::Open { .. }) => 15,
        Error::Store(StoreError::Compacted { .. } | StoreError::CursorAhead { .. }) => 17,
        Error::Store(StoreError::ReadOnly { .. }) => 19,
        Error::NotEnoughSpace { .. } => 20,
        Error::VerifyFailed { .. } => 21,
        Error::Store(StoreError::NoSuchRequest { .. } | StoreError::NotInCatalog { .. }) => 22,
        Error::Store(StoreError::StaleLease { .. }) => 23,
        Error::FileDirty { .. } | Error::Store(StoreError::CatalogConflict { .. }) => 24,
        Error::Store(StoreError::RequestTransition { .. }) => 26,
        Error::Archive { .. } => 27,
        Error::Store(_) => 16,
        Error::Io { .. } => 74,
    }
}

/// The code for a daemon error: the daemon's `kind` where it means what
/// a local error means (a missing source is 3 either way), else 30–39.
pub fn daemon_code(e: &ClientError) -> u8 {
    match e {
        ClientError::NoDaemon { .. } => 30,
        ClientError::Protocol { .. } => 34,
        ClientError::Api { kind, .. } => match kind.as_str() {
            "source_not_found" => 3,
            "permission_denied" => 4,
            "source_is_directory" => 5,
            "destination_conflict" => 6,
            "same_file" => 7,
            "transfer_not_found" => 10,
            "name_in_use" => 11,
            "cancelled" => 12,
            "nothing_to_do" => 13,
            "unsupported_file_type" => 14,
            "bad_cursor" => 17,
            "store_read_only" => 19,
            "not_enough_space" => 20,
            "verify_failed" => 21,
            "forbidden" | "not_a_daemon_transfer" => 31,
            "bad_request" | "bad_json" | "body_too_large" | "invalid_path" | "no_such_route" => 32,
            "busy" => 33,
            _ => 34,
        },
    }
}

/// `ferry serve`'s own failures.
pub fn serve_code(e: &ServeError) -> u8 {
    match e {
        ServeError::AlreadyServing { .. } => 35,
        ServeError::Listen { .. } => 36,
        ServeError::Runtime(_) => 74,
        ServeError::Ferry(e) => code(e),
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        match exit {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::TransferFailed => ExitCode::from(1),
            Exit::Cancelled => ExitCode::from(12),
            Exit::LeftAlone => ExitCode::from(18),
            Exit::RequestFailed => ExitCode::from(23),
            Exit::RequestCanceled => ExitCode::from(25),
            Exit::Error(e) => {
                eprintln!("ferry: {e}");
                ExitCode::from(code(&e))
            }
            Exit::Daemon(e) => {
                eprintln!("ferry: {e}");
                ExitCode::from(daemon_code(&e))
            }
            Exit::Serve(e) => {
                eprintln!("ferry: {e}");
                ExitCode::from(serve_code(&e))
            }
        }
    }
}
