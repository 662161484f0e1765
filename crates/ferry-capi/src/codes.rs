//! The C API's return codes and constants. An error's code is the same
//! number as the `ferry` command's exit status for it (docs/user-guide.md,
//! "Exit codes").

use std::ffi::c_int;

/// Success.
pub const FERRY_OK: c_int = 0;
/// The transfer ran and some files failed (`ferry_transfer_wait`), or a
/// finalize failed some transfers (`ferry_finalize`).
pub const FERRY_E_TRANSFER_FAILED: c_int = 1;
/// A NULL, empty or non-UTF-8 argument, or a value out of range.
pub const FERRY_E_INVALID_ARGUMENT: c_int = 2;
/// A source does not exist.
pub const FERRY_E_SOURCE_NOT_FOUND: c_int = 3;
/// Permission denied on a source or a directory to list.
pub const FERRY_E_PERMISSION_DENIED: c_int = 4;
/// A source is a directory where a file was expected.
pub const FERRY_E_SOURCE_IS_DIRECTORY: c_int = 5;
/// Directory onto a file, file onto a directory, or two sources with one destination.
pub const FERRY_E_DESTINATION: c_int = 6;
/// Source and destination are the same file, or a directory would be copied into itself.
pub const FERRY_E_SAME_FILE: c_int = 7;
/// The store is not a ferry store, or is corrupt.
pub const FERRY_E_NOT_A_STORE: c_int = 8;
/// The store was written by a newer ferry.
pub const FERRY_E_STORE_TOO_NEW: c_int = 9;
/// No transfer of that name in the store.
pub const FERRY_E_NO_SUCH_TRANSFER: c_int = 10;
/// The name belongs to a live transfer (its owner runs), or to a finished one.
pub const FERRY_E_NAME_IN_USE: c_int = 11;
/// The transfer was cancelled.
pub const FERRY_E_CANCELLED: c_int = 12;
/// Nothing to do: already completed, or never dispatched.
pub const FERRY_E_NOTHING_TO_DO: c_int = 13;
/// A source is a named pipe, socket or device.
pub const FERRY_E_UNSUPPORTED_FILE_TYPE: c_int = 14;
/// The store cannot be opened or written.
pub const FERRY_E_STORE_OPEN: c_int = 15;
/// Any other store error.
pub const FERRY_E_STORE: c_int = 16;
/// A watch cursor below the compaction horizon or past the newest event.
pub const FERRY_E_CURSOR: c_int = 17;
/// Finalize left transfers alone because their owner is alive.
pub const FERRY_E_LEFT_ALONE: c_int = 18;
/// The store is read-only because its disk (or quota) is full: free space there.
pub const FERRY_E_STORE_READ_ONLY: c_int = 19;
/// Check-space: a destination file system has less free space than is left to copy.
pub const FERRY_E_NOT_ENOUGH_SPACE: c_int = 20;
/// Verify: a file does not hold what was copied, or is missing or unreadable.
pub const FERRY_E_VERIFY_FAILED: c_int = 21;
/// `ferry_watch_next`: no event came within the timeout (not a failure).
/// C only, like 2 and 70 (ETIMEDOUT's number on Linux).
pub const FERRY_E_TIMEOUT: c_int = 110;
/// No daemon answers on the socket (kind daemon). The daemon's other
/// refusals have the CLI's codes too: 31 forbidden, 32 bad request, 33
/// busy, 34 an unexpected answer, 40 over a limit.
pub const FERRY_E_NO_DAEMON: c_int = 30;
/// A bug in ferry (a caught panic); the message says where.
pub const FERRY_E_INTERNAL: c_int = 70;
/// Any other I/O error.
pub const FERRY_E_IO: c_int = 74;

/// `ferry_config_set_kind`: dispatch copies in the caller's thread and
/// returns when done.
pub const FERRY_KIND_SYNC: c_int = 0;
/// `ferry_config_set_kind`: a pool of threads; dispatch returns at once.
pub const FERRY_KIND_THREADS: c_int = 1;
/// `ferry_config_set_kind`: handed to `ferry serve`, which moves it, also
/// after the caller exits.
pub const FERRY_KIND_DAEMON: c_int = 2;
/// `ferry_config_set_kind`: the daemon when one answers on the socket at
/// create, else threads.
pub const FERRY_KIND_DEFAULT: c_int = 3;

/// Transfer states (`ferry_transfer_state`, `FerryReport::state`).
pub const FERRY_STATE_CREATED: c_int = 0;
pub const FERRY_STATE_DISPATCHED: c_int = 1;
pub const FERRY_STATE_RUNNING: c_int = 2;
pub const FERRY_STATE_COMPLETED: c_int = 3;
pub const FERRY_STATE_FAILED: c_int = 4;
pub const FERRY_STATE_CANCELLED: c_int = 5;
pub const FERRY_STATE_FINALIZED: c_int = 6;

/// `ferry_finalize` flag: continue dead owners' running transfers (needs
/// the sources) instead of aborting them.
pub const FERRY_FINALIZE_RESUME: u32 = 1;
/// `ferry_finalize` flag: treat owners on other hosts as dead.
pub const FERRY_FINALIZE_FORCE: u32 = 2;
/// `ferry_finalize` flag: read each file back against its stored checksum
/// before renaming it (`ferry finalize --verify`).
pub const FERRY_FINALIZE_VERIFY: u32 = 4;

/// `ferry_config_set_checksum`.
pub const FERRY_CHECKSUM_NONE: c_int = 0;
pub const FERRY_CHECKSUM_XXH3: c_int = 1;
pub const FERRY_CHECKSUM_BLAKE3: c_int = 2;

/// `ferry_config_set_skip`.
pub const FERRY_SKIP_NEVER: c_int = 0;
pub const FERRY_SKIP_EXISTS: c_int = 1;
pub const FERRY_SKIP_SIZE: c_int = 2;
pub const FERRY_SKIP_MTIME: c_int = 3;
pub const FERRY_SKIP_CHECKSUM: c_int = 4;

/// `ferry_config_set_verify`.
pub const FERRY_VERIFY_NONE: c_int = 0;
pub const FERRY_VERIFY_COPIED: c_int = 1;
pub const FERRY_VERIFY_FULL: c_int = 2;
