//! Errors of the daemon: those it answers a request with ([`ApiError`],
//! always JSON with a stable `kind`), and those that stop it from starting.

use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry::store::StoreError;

use crate::api::ErrorBody;

/// An error answer: status, a stable `kind`, a message for people.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// For a library error, [`ferry::Error::code`]: the CLI exits with it,
    /// as it would for the same error without the daemon.
    pub code: Option<u8>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            // Every error body passes here: its causes said in words.
            message: ferry::words::in_words(&message.into()),
            code: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }

    /// Over one of the daemon's bounds per user or per transfer (named in
    /// the message): waiting does not help, doing less does.
    pub fn limit(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "over_limit", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            kind: self.kind.into(),
            code: self.code,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ferry::Error> for ApiError {
    fn from(e: ferry::Error) -> ApiError {
        use StatusCode as S;
        use ferry::Error as E;
        let (status, kind) = match &e {
            E::SourceNotFound { .. } => (S::UNPROCESSABLE_ENTITY, "source_not_found"),
            E::PermissionDenied { .. } => (S::FORBIDDEN, "permission_denied"),
            E::SourceIsDirectory { .. } => (S::UNPROCESSABLE_ENTITY, "source_is_directory"),
            E::DirectoryOntoFile { .. }
            | E::FileOntoDirectory { .. }
            | E::TargetNotADirectory { .. }
            | E::DuplicateDestination { .. }
            | E::BadDestination { .. } => (S::UNPROCESSABLE_ENTITY, "destination_conflict"),
            E::SameFile { .. } | E::CopyIntoItself { .. } => (S::UNPROCESSABLE_ENTITY, "same_file"),
            E::UnsupportedFileType { .. } => (S::UNPROCESSABLE_ENTITY, "unsupported_file_type"),
            E::TransferNotFound { .. } => (S::NOT_FOUND, "transfer_not_found"),
            E::InvalidName { .. } => (S::BAD_REQUEST, "invalid_name"),
            E::OwnerAlive { .. } | E::NameInUse { .. } => (S::CONFLICT, "name_in_use"),
            E::NothingToDo { .. } | E::NotDispatched { .. } | E::NeverDispatched { .. } => {
                (S::CONFLICT, "nothing_to_do")
            }
            E::Cancelled { .. }
            | E::CancelledWhilePlanned { .. }
            | E::Store(StoreError::Cancelled { .. }) => (S::CONFLICT, "cancelled"),
            E::NotEnoughSpace { .. } => (S::INSUFFICIENT_STORAGE, "not_enough_space"),
            E::VerifyFailed { .. } => (S::CONFLICT, "verify_failed"),
            E::VerifyWithoutChecksum { .. } => (S::BAD_REQUEST, "verify_without_checksum"),
            // HSM errors: the daemon does not serve HSM requests; a bad
            // setting is the daemon's own environment, not the client's.
            E::FileDirty { .. }
            | E::Archive { .. }
            | E::BadSetting { .. }
            | E::BadOption { .. } => (S::INTERNAL_SERVER_ERROR, "internal"),
            E::Store(StoreError::ReadOnly { .. }) => (S::SERVICE_UNAVAILABLE, "store_read_only"),
            E::Store(StoreError::Compacted { .. } | StoreError::CursorAhead { .. }) => {
                (S::GONE, "bad_cursor")
            }
            E::Store(StoreError::IllegalTransition { .. } | StoreError::OwnerChanged { .. }) => {
                (S::CONFLICT, "illegal_transition")
            }
            E::Store(_) => (S::INTERNAL_SERVER_ERROR, "store_error"),
            E::Io { .. } => (S::INTERNAL_SERVER_ERROR, "io_error"),
        };
        ApiError {
            code: Some(e.code()),
            ..ApiError::new(status, kind, e.to_string())
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ferry::Error::from(e).into()
    }
}

/// Why `ferry serve` could not start or stopped.
#[derive(Debug)]
pub enum ServeError {
    AlreadyServing {
        socket: PathBuf,
    },
    Listen {
        socket: PathBuf,
        source: std::io::Error,
    },
    Runtime(std::io::Error),
    Ferry(ferry::Error),
    /// The store is not private: other users could read, replace or lock it.
    UnsafeStore {
        path: PathBuf,
        detail: String,
    },
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::AlreadyServing { socket } => write!(
                f,
                "a ferry daemon already answers on {}: stop it first, or give another --socket",
                socket.display()
            ),
            ServeError::Listen { socket, source } => {
                write!(f, "cannot listen on {}: {source}", socket.display())
            }
            ServeError::Runtime(e) => write!(f, "cannot start the daemon's runtime: {e}"),
            ServeError::Ferry(e) => e.fmt(f),
            ServeError::UnsafeStore { path, detail } => {
                write!(f, "refusing to serve store {}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for ServeError {}

impl From<ferry::Error> for ServeError {
    fn from(e: ferry::Error) -> ServeError {
        ServeError::Ferry(e)
    }
}
