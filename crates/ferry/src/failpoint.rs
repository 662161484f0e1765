//! Fail points: the seam through which tests crash ferry, or make an I/O
//! call fail, at a chosen step of the commit protocol.
//!
//! `FERRY_FAILPOINT=STEP[:N][=ACTION]` arms one point: at the N-th time
//! (default 1) the engine reaches STEP, ACTION happens: `crash` (default,
//! the process SIGKILLs itself, exactly as an outside `kill -9`), `eio` or
//! `enospc` (the step fails with that error), `pause` (the step waits until
//! the FIFO named by `FERRY_FAILPOINT_FIFO` has been opened for writing and
//! closed again, so that a test can change the world mid-step: opening it
//! returns once ferry is paused there, closing it lets ferry go on),
//! `corrupt` (at `commit.write_data` only: a bit of the N-th buffer written
//! is flipped after it was hashed, so the temporary differs from the source). STEP is a [`CommitStep`] name
//! such as `commit.rename`. Unset, a fail point costs one relaxed load.
//!
//! A hand-written seam rather than the `fail` crate: that crate needs a cargo
//! feature compiled into the binary the tests run, and we need exactly one
//! point armed per process, by environment, in the release binary.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The steps of the commit protocol, in order (SPEC "Transfer lifecycle"),
/// each a place where a crash or an I/O error can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Before each chunk of a source is read (an `eio` here is a failing
    /// source disk).
    ReadSource,
    /// Before each chunk of data is written to a temporary.
    WriteData,
    /// Before progress of a large file is recorded (after its fdatasync).
    RecordProgress,
    /// Before the data of a batch is made durable (fsync or syncfs).
    SyncData,
    /// Before `copied` is recorded for a batch.
    RecordCopied,
    /// Before each temporary is renamed to its final name.
    Rename,
    /// Before each destination gets its saved metadata.
    ApplyMetadata,
    /// Before renames and metadata are made durable (directory fsync).
    SyncDir,
    /// Before `committed` is recorded for a batch.
    RecordCommitted,
    /// Before each transaction of the store commits (its write and sync):
    /// `enospc` fails it as SQLITE_FULL, `eio` as an I/O error.
    StoreCommit,
    /// HSM: before each chunk of an archive object is written.
    ArchiveData,
    /// HSM: before a finished archive object is renamed to its name.
    ArchiveRename,
    /// HSM: before each chunk of a restored file is written.
    RestoreData,
    /// `--delete`: before each extra file or directory is removed.
    RemoveExtra,
    /// Before each batch of a plan is added to its new transfer.
    PlanBatch,
    /// Before a planned transfer is dispatched (its plan whole, nothing
    /// copied yet).
    Dispatch,
}

impl CommitStep {
    pub const ALL: [CommitStep; 10] = [
        CommitStep::ReadSource,
        CommitStep::WriteData,
        CommitStep::RecordProgress,
        CommitStep::SyncData,
        CommitStep::RecordCopied,
        CommitStep::Rename,
        CommitStep::ApplyMetadata,
        CommitStep::SyncDir,
        CommitStep::RecordCommitted,
        CommitStep::StoreCommit,
    ];

    /// The steps of the HSM archive and restore protocols (same shape:
    /// temporary, sync, rename).
    pub const HSM: [CommitStep; 3] = [
        CommitStep::ArchiveData,
        CommitStep::ArchiveRename,
        CommitStep::RestoreData,
    ];

    /// The steps of `--delete`, after every commit.
    pub const DELETE: [CommitStep; 1] = [CommitStep::RemoveExtra];

    /// The steps of planning a copy into the store.
    pub const PLAN: [CommitStep; 2] = [CommitStep::PlanBatch, CommitStep::Dispatch];

    pub fn name(self) -> &'static str {
        match self {
            CommitStep::ReadSource => "source.read",
            CommitStep::WriteData => "commit.write_data",
            CommitStep::RecordProgress => "commit.record_progress",
            CommitStep::SyncData => "commit.sync_data",
            CommitStep::RecordCopied => "commit.record_copied",
            CommitStep::Rename => "commit.rename",
            CommitStep::ApplyMetadata => "commit.apply_metadata",
            CommitStep::SyncDir => "commit.sync_dir",
            CommitStep::RecordCommitted => "commit.record_committed",
            CommitStep::StoreCommit => "store.commit",
            CommitStep::ArchiveData => "hsm.archive_data",
            CommitStep::ArchiveRename => "hsm.archive_rename",
            CommitStep::RestoreData => "hsm.restore_data",
            CommitStep::RemoveExtra => "delete.remove",
            CommitStep::PlanBatch => "plan.add_batch",
            CommitStep::Dispatch => "plan.dispatch",
        }
    }
}

#[derive(Debug)]
enum Action {
    Crash,
    Pause,
    Corrupt,
    Error(i32),
}

#[derive(Debug)]
struct Armed {
    step: &'static str,
    nth: u64,
    action: Action,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("FERRY_FAILPOINT").ok()?;
            parse(&spec)
        })
        .as_ref()
}

fn parse(spec: &str) -> Option<Armed> {
    let (point, action) = spec.split_once('=').unwrap_or((spec, "crash"));
    let (step, nth) = point.split_once(':').unwrap_or((point, "1"));
    let step = CommitStep::ALL
        .into_iter()
        .chain(CommitStep::HSM)
        .chain(CommitStep::DELETE)
        .chain(CommitStep::PLAN)
        .find(|s| s.name() == step)?
        .name();
    let action = match action {
        "crash" => Action::Crash,
        "pause" => Action::Pause,
        "corrupt" => Action::Corrupt,
        "eio" => Action::Error(rustix::io::Errno::IO.raw_os_error()),
        "enospc" => Action::Error(rustix::io::Errno::NOSPC.raw_os_error()),
        _ => return None,
    };
    Some(Armed {
        step,
        nth: nth.parse().ok()?,
        action,
    })
}

/// `corrupt` (only at `commit.write_data`): whether the data about to be
/// written should have a bit flipped, so that it differs from what was read
/// and hashed. Counts its own hits.
pub fn corrupts(step: CommitStep) -> bool {
    static HITS: AtomicU64 = AtomicU64::new(0);
    match armed() {
        Some(armed) if armed.step == step.name() && matches!(armed.action, Action::Corrupt) => {
            HITS.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth
        }
        _ => false,
    }
}

/// Called by the engine just before it performs `step`.
pub fn hit(step: CommitStep) -> io::Result<()> {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(armed) = armed() else {
        return Ok(());
    };
    if armed.step != step.name() || matches!(armed.action, Action::Corrupt) {
        return Ok(());
    }
    let n = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if n != armed.nth {
        return Ok(());
    }
    match armed.action {
        Action::Corrupt => Ok(()),
        Action::Crash => {
            // SIGKILL cannot be caught: nothing runs after this line, exactly
            // as when the process is killed from outside.
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            unreachable!("SIGKILL returned");
        }
        Action::Pause => {
            // Opening blocks until the test opens the other end; reading
            // returns end-of-file once it closes it.
            use std::io::Read;
            let fifo = std::env::var_os("FERRY_FAILPOINT_FIFO").ok_or_else(|| {
                io::Error::other("the pause fail point needs FERRY_FAILPOINT_FIFO")
            })?;
            std::fs::File::open(fifo)?.read_to_end(&mut Vec::new())?;
            Ok(())
        }
        Action::Error(errno) => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let a = parse("commit.rename:3=eio").unwrap();
        assert_eq!((a.step, a.nth), ("commit.rename", 3));
        assert!(matches!(a.action, Action::Error(_)));
        let b = parse("commit.sync_data").unwrap();
        assert_eq!(b.nth, 1);
        assert!(matches!(b.action, Action::Crash));
        assert!(parse("no.such.step").is_none());
        assert_eq!(parse("hsm.archive_data:2").unwrap().nth, 2);
        assert!(parse("commit.rename=explode").is_none());
    }
}
