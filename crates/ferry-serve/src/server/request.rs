//! A request's body and inputs, checked before a handler acts on them,
//! and the blocking thread a handler's store and file work runs on.

use std::path::PathBuf;

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::{NAME_BYTES_MAX, PATH_BYTES_MAX};
use crate::api::BODY_BYTES_MAX;
use crate::error::ApiError;

/// A JSON request body: refused with a clear 4xx when it is too large, not
/// JSON, of the wrong shape or has unknown fields. An empty body is `{}`.
pub(super) struct ApiJson<T>(pub(super) T);

/// A body over [`BODY_BYTES_MAX`] is read on and dropped up to this much,
/// so that its sender is still reading when the 413 comes (a socket closed
/// with unread data is reset, and the sender sees no answer at all). Past
/// this, the connection is closed.
const BODY_DRAINED_MAX: usize = 16 * BODY_BYTES_MAX;

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        use futures_util::StreamExt;
        let mut stream = request.into_body().into_data_stream();
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            seen = seen.saturating_add(chunk.len());
            if seen <= BODY_BYTES_MAX {
                bytes.extend_from_slice(&chunk);
            } else if seen > BODY_DRAINED_MAX {
                break;
            }
        }
        if seen > BODY_BYTES_MAX {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the request body is larger than {BODY_BYTES_MAX} bytes"),
            ));
        }
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        // serde reads a struct from an array too (`[]` as `{}`).
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                "the request body must be a JSON object ({…}), or empty",
            ));
        }
        serde_json::from_slice(bytes).map(ApiJson).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("the request body is not what this route takes: {e}"),
            )
        })
    }
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's thread failed: {e}")))?
}

pub(super) fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ApiError::bad_request(format!(
            "invalid transfer name {name:?}: 1 to {NAME_BYTES_MAX} bytes, no '/' and no control \
             characters"
        )));
    }
    Ok(())
}

pub(super) fn check_path(what: &str, path: &str) -> Result<PathBuf, ApiError> {
    if path.contains('\0') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} {path:?} contains a NUL byte, which no path may contain"),
        ));
    }
    if path.len() > PATH_BYTES_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!("{what} is longer than {PATH_BYTES_MAX} bytes"),
        ));
    }
    if !path.starts_with('/') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            format!(
                "{what} {path:?} is relative: the daemon does not know your working directory; \
                 send absolute paths"
            ),
        ));
    }
    Ok(PathBuf::from(path))
}
