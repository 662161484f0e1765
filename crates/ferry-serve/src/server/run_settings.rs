//! A dispatch's or resume's options as the daemon takes them: checked once
//! from the request into the library's `ferry::RunSettings`, which the
//! `transfer.dispatched` event records, and read back from that event when
//! a restarted daemon resumes the transfer (one record, one reader).

use ferry::Transfer;
use ferry::engine::skip::SkipRule;
use ferry::verify::Verify;

use crate::api::{RunRequest, THREADS_DEFAULT, THREADS_MAX, UMASK_DEFAULT};
use crate::error::ApiError;

/// A dispatch's or resume's options, checked.
pub(super) struct RunSettings {
    pub(super) threads: u16,
    settings: ferry::RunSettings,
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            threads: THREADS_DEFAULT,
            settings: ferry::RunSettings {
                workers: Some(THREADS_DEFAULT.into()),
                umask: Some(UMASK_DEFAULT),
                ..ferry::RunSettings::default()
            },
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
            settings: ferry::RunSettings {
                workers: Some(threads.into()),
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
                umask: Some(umask),
                update: request.update,
                no_clobber: request.no_clobber,
                bwlimit: request.bwlimit.filter(|&rate| rate > 0),
                // The command line's --delete and filters are not in the
                // daemon's API yet (the CLI refuses them).
                ..ferry::RunSettings::default()
            },
        })
    }

    /// What a transfer's last dispatch recorded; a value out of the API's
    /// bounds (an older or damaged record) falls back to the default.
    pub(super) fn recorded(recorded: ferry::RunSettings) -> RunSettings {
        let threads = recorded
            .workers
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| (1..=THREADS_MAX).contains(n))
            .unwrap_or(THREADS_DEFAULT);
        RunSettings {
            threads,
            settings: ferry::RunSettings {
                workers: Some(threads.into()),
                umask: recorded.umask.or(Some(UMASK_DEFAULT)),
                ..recorded
            },
        }
    }

    pub(super) fn apply(&self, transfer: &mut Transfer) {
        transfer.apply_settings(&self.settings);
    }
}
