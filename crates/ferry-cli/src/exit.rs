//! Exit codes. Each user mistake has its own, listed in docs/user-guide.md; a script
//! can tell "nothing to copy from" from "no room to copy to".

use std::process::ExitCode;

use ferry::Error;
use ferry::model::Kind;
use ferry::words::in_words;
use ferry_serve::ServeError;
use ferry_serve::client::ClientError;

pub enum Exit {
    Ok,
    /// The transfer ran, and some files failed (each was named on stderr).
    TransferFailed,
    Cancelled,
    /// finalize left transfers with live owners alone (and nothing failed).
    LeftAlone,
    /// finalize aborted a transfer or removed partial data (each named).
    DataRemoved,
    /// `ferry hsm … --wait`: a request failed.
    RequestFailed,
    /// `ferry hsm … --wait`: a request was canceled.
    RequestCanceled,
    /// `wait`, `watch --until-done`: the transfer is not over and its owner
    /// is dead, so nothing will end it.
    /// The transfer and its store's location (a PostgreSQL store's URL
    /// without its password), for the command that continues it.
    OwnerDead(Box<ferry::model::TransferRecord>, std::path::PathBuf),
    /// `cp`, `resume`: stopped by a signal (the code is 128 + its number;
    /// what to do was said).
    Interrupted(u8),
    Error(Error),
    /// A request to the daemon failed.
    Daemon(ClientError),
    /// Refused by this command before anything was asked of the daemon:
    /// the message and its code.
    Refused {
        code: u8,
        message: String,
    },
    /// `ferry serve` could not start, or failed.
    Serve(ServeError),
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        Exit::Error(e)
    }
}

/// `wait` and `watch --until-done` on a transfer whose owner died.
pub const OWNER_DEAD: u8 = 28;

/// A bad command line (clap's own code for it).
pub const USAGE: u8 = 2;

/// A request the daemon would refuse as malformed (a non-UTF-8 path).
pub const DAEMON_MALFORMED: u8 = 32;

/// `ferry serve`'s own failures.
pub fn serve_code(e: &ServeError) -> u8 {
    match e {
        ServeError::AlreadyServing { .. } => 35,
        ServeError::Listen { .. } => 36,
        ServeError::UnsafeStore { .. } => 39,
        ServeError::Runtime(_) => 74,
        ServeError::Ferry(e) => e.code(),
    }
}

/// A lease as `--lease` takes it: `10s`, `500ms`.
fn lease_words(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        match exit {
            Exit::Ok => ExitCode::SUCCESS,
            Exit::TransferFailed => ExitCode::from(1),
            Exit::Cancelled => ExitCode::from(12),
            Exit::LeftAlone => ExitCode::from(18),
            Exit::DataRemoved => ExitCode::from(38),
            Exit::RequestFailed => ExitCode::from(23),
            Exit::RequestCanceled => ExitCode::from(25),
            Exit::OwnerDead(t, store) if t.kind == Kind::Distributed => {
                let lease = lease_words(t.lease.map_or(0, |l| l.lease_ms));
                eprintln!(
                    "ferry: transfer {} (id {}) is {} but every `ferry worker` on it is gone \
                     (none renewed its {lease} lease): nothing moves it now; \
                     `ferry worker --store '{}' --transfer {}` on any node continues it, \
                     `ferry cancel {}` ends it",
                    t.name,
                    t.id,
                    t.state,
                    store.display(),
                    t.name,
                    t.name
                );
                ExitCode::from(OWNER_DEAD)
            }
            Exit::OwnerDead(t, _) => {
                eprintln!(
                    "ferry: transfer {} (id {}) is {} but its owner (pid {} on {}) is dead: \
                     nothing will move it; `ferry resume {}` continues it, `ferry cancel {}` ends it",
                    t.name, t.id, t.state, t.owner.pid, t.owner.host, t.name, t.name
                );
                ExitCode::from(OWNER_DEAD)
            }
            Exit::Interrupted(code) => ExitCode::from(code),
            Exit::Error(e) => {
                eprintln!("ferry: {}", in_words(&e.to_string()));
                ExitCode::from(e.code())
            }
            Exit::Refused { code, message } => {
                eprintln!("ferry: {}", in_words(&message));
                ExitCode::from(code)
            }
            Exit::Daemon(e) => {
                eprintln!("ferry: {}", in_words(&e.to_string()));
                ExitCode::from(e.code())
            }
            Exit::Serve(e) => {
                eprintln!("ferry: {}", in_words(&e.to_string()));
                ExitCode::from(serve_code(&e))
            }
        }
    }
}
