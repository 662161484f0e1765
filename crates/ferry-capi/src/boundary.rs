//! What every `extern "C"` function of ferry's C libraries (`libferry`,
//! `libaxl`) does at the boundary: catch panics, turn errors into a code and
//! a message, read C strings. Shared by both libraries so that they behave
//! the same.

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char, c_int};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};
use std::time::Duration;

use ferry::ChunkHook;

use crate::codes::{FERRY_E_INTERNAL, FERRY_E_INVALID_ARGUMENT};

/// An error on its way to C: a code from [`crate::codes`] and one line
/// naming what failed.
#[derive(Debug)]
pub struct CError {
    pub code: c_int,
    pub message: String,
}

impl CError {
    pub fn invalid(message: impl Into<String>) -> CError {
        CError {
            code: FERRY_E_INVALID_ARGUMENT,
            message: message.into(),
        }
    }
}

impl From<ferry::Error> for CError {
    fn from(e: ferry::Error) -> CError {
        CError {
            code: c_int::from(e.code()),
            message: e.to_string(),
        }
    }
}

impl From<ferry::store::StoreError> for CError {
    fn from(e: ferry::store::StoreError) -> CError {
        ferry::Error::from(e).into()
    }
}

/// Runs `f`, turning a panic into [`FERRY_E_INTERNAL`] so that it never
/// unwinds into C. `what` names the function for the message.
pub fn catch<T>(what: &str, f: impl FnOnce() -> Result<T, CError>) -> Result<T, CError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CError {
                code: FERRY_E_INTERNAL,
                message: format!("{what}: internal error ({detail}); this is a bug in ferry"),
            })
        }
    }
}

thread_local! {
    /// The message of this thread's last failed call, for `ferry_last_error`.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Remembers `message` as this thread's last error.
pub fn set_last_error(message: &str) {
    // A message never holds NUL in practice (paths cannot); cut there if so.
    let bytes = message.as_bytes();
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = CString::new(&bytes[..end]).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// This thread's last error message; valid until this thread's next failed call.
pub fn last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// A path argument: any bytes but NUL, as Unix paths are.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that lives through the call.
pub unsafe fn path_arg(ptr: *const c_char, what: &str) -> Result<PathBuf, CError> {
    if ptr.is_null() {
        return Err(CError::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    if bytes.is_empty() {
        return Err(CError::invalid(format!("{what} is empty")));
    }
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}

/// An optional path argument: NULL is `None`.
///
/// # Safety
/// As [`path_arg`].
pub unsafe fn opt_path_arg(ptr: *const c_char, what: &str) -> Result<Option<PathBuf>, CError> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: as promised by our caller.
    unsafe { path_arg(ptr, what) }.map(Some)
}

/// An optional text argument (a transfer name): NULL is `None`; must be UTF-8.
///
/// # Safety
/// As [`path_arg`].
pub unsafe fn opt_str_arg(ptr: *const c_char, what: &str) -> Result<Option<String>, CError> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: not NULL, and the caller promises a NUL-terminated string.
    let text = unsafe { CStr::from_ptr(ptr) }.to_str();
    match text {
        Ok("") => Err(CError::invalid(format!("{what} is empty"))),
        Ok(text) => Ok(Some(text.to_owned())),
        Err(_) => Err(CError::invalid(format!("{what} is not valid UTF-8"))),
    }
}

/// How often a paused worker looks at its cancel flag.
const PAUSE_POLL: Duration = Duration::from_millis(5);

/// The `AXL_DEBUG_PAUSE_AFTER` hook: once a run has copied at least `bytes`,
/// every worker stops at its next chunk and stays there until the transfer
/// is cancelled (or the process killed), so that a test can cancel or kill
/// it surely mid-transfer. Says so once on stderr, which is how a test
/// knows the moment has come.
pub fn pause_after(bytes: u64) -> ChunkHook {
    let said = Arc::new(Once::new());
    Arc::new(move |copied: u64, cancel: &AtomicBool| {
        if copied < bytes {
            return;
        }
        said.call_once(|| {
            // A closed stderr must not stop the pause (eprintln! would panic).
            let _ = writeln!(
                std::io::stderr(),
                "ferry: paused after {copied} bytes (debug pause at {bytes})"
            );
        });
        // Bounded by the cancel (or the kill) the caller asked for.
        while !cancel.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(PAUSE_POLL);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::FERRY_E_SOURCE_NOT_FOUND;

    #[test]
    fn a_panic_becomes_an_internal_error_not_an_unwind() {
        let result: Result<(), CError> = catch("ferry_test_call", || panic!("boom {}", 42));
        let e = result.expect_err("a panic is an error");
        assert_eq!(e.code, FERRY_E_INTERNAL);
        assert!(
            e.message.contains("ferry_test_call") && e.message.contains("boom 42"),
            "{}",
            e.message
        );
    }

    #[test]
    fn library_errors_keep_their_code_and_message() {
        let e = CError::from(ferry::Error::SourceNotFound {
            path: "/nowhere/x".into(),
        });
        assert_eq!(e.code, FERRY_E_SOURCE_NOT_FOUND);
        assert!(e.message.contains("/nowhere/x"));
    }

    #[test]
    fn the_last_error_is_per_thread() {
        set_last_error("main thread's");
        std::thread::spawn(|| {
            // SAFETY: last_error points to this thread's NUL-terminated message.
            assert_eq!(unsafe { CStr::from_ptr(last_error()) }.to_bytes(), b"");
            set_last_error("other thread's");
        })
        .join()
        .expect("thread");
        // SAFETY: as above.
        assert_eq!(
            unsafe { CStr::from_ptr(last_error()) }.to_bytes(),
            b"main thread's"
        );
    }
}
