//! A dispatch's or resume's options as the daemon keeps them: checked once
//! from the request, recorded with `transfer.dispatched`, applied again
//! when a restarted daemon resumes the transfer.

use ferry::Transfer;
use ferry::engine::skip::SkipRule;
use ferry::verify::Verify;

use crate::api::{RunRequest, THREADS_DEFAULT, THREADS_MAX, UMASK_DEFAULT};
use crate::error::ApiError;

/// A dispatch's or resume's options, checked.
pub(super) struct RunSettings {
    pub(super) threads: u16,
    skip: SkipRule,
    verify: Verify,
    check_space: bool,
    clean_orphans: bool,
    umask: u32,
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            threads: THREADS_DEFAULT,
            skip: SkipRule::Never,
            verify: Verify::None,
            check_space: false,
            clean_orphans: false,
            umask: UMASK_DEFAULT,
        }
    }
}

impl RunSettings {
    pub(super) fn from(request: &RunRequest) -> Result<RunSettings, ApiError> {
        let threads = match request.threads {
            None => THREADS_DEFAULT,
            Some(n @ 1..=THREADS_MAX) => n,
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "threads must be 1 to {THREADS_MAX} ({n} given)"
                )));
            }
        };
        let umask = match request.umask {
            None => UMASK_DEFAULT,
            Some(u @ 0..=0o777) => u,
            Some(u) => {
                return Err(ApiError::bad_request(format!(
                    "umask must be 0 to 511 (0o777) ({u} given)"
                )));
            }
        };
        let skip = request.skip.as_deref().unwrap_or("never");
        let verify = request.verify.as_deref().unwrap_or("none");
        Ok(RunSettings {
            threads,
            skip: SkipRule::parse(skip).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "skip must be never, exists, size, mtime or checksum ({skip:?} given)"
                ))
            })?,
            verify: Verify::parse(verify).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "verify must be none, copied or full ({verify:?} given)"
                ))
            })?,
            check_space: request.check_space,
            clean_orphans: request.clean_orphans,
            umask,
        })
    }

    pub(super) fn apply(&self, transfer: &mut Transfer) {
        transfer.set_skip(self.skip);
        transfer.set_verify(self.verify);
        transfer.set_check_space(self.check_space);
        transfer.set_clean_orphans(self.clean_orphans);
        transfer.set_umask(Some(self.umask));
    }
}
