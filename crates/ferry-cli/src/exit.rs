//! Exit codes. Each user mistake has its own, listed in the README; a script
//! can tell "nothing to copy from" from "no room to copy to".

use std::process::ExitCode;

use ferry::Error;

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
}

impl From<Error> for Exit {
    fn from(e: Error) -> Exit {
        Exit::Error(e)
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
                ExitCode::from(e.code())
            }
        }
    }
}
