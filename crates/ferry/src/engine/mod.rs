//! The mover: copies a transfer's entries with a pool of worker threads and
//! commits them in batches through [`commit::Committer`].
//!
//! ```text
//!  entries ─▶ work list ─▶ workers (copy data into DEST._ferry-ID) ─▶ channel
//!                                 │ large files: fdatasync + progress        │
//!                                 ▼                                          ▼
//!                               store ◀── committer: sync, copied, rename, metadata, committed
//! ```
//!
//! Small files are copied whole by one worker and made durable together (one
//! `syncfs` per batch). Files of at least [`SPLIT_BYTES_MIN`] are split into
//! [`RANGE_BYTES`] ranges copied by several workers at once; their durable
//! prefix is recorded every [`CHECKPOINT_BYTES`], after an `fdatasync`, so a
//! resume continues from there.
//!
//! **Invariant:** the engine changes state only through the store's
//! [`Store::apply`], and never records a file before the disk holds it.

pub mod commit;
pub mod copy;
pub mod plan;
pub mod skip;
mod space;
mod stale;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::checksum::{self, Checksum, ChecksumAlgo, Hasher};
use crate::error::{Error, Result};
use crate::failpoint::{self, CommitStep};
use crate::model::{
    EntryIndex, EntryKind, EntryRecord, FileState, TransferId, TransferRecord, TransferState,
};
use crate::store::{Change, Store, StoreError};
use crate::verify::Verify;
use commit::{Committer, Ready};
use copy::{Copier, CopyError};
use skip::SkipRule;

pub use commit::temp_path;

/// Files this large or larger are split into ranges (and hashed in pieces:
/// a range is a checksum piece).
pub const SPLIT_BYTES_MIN: u64 = checksum::PIECED_FROM_BYTES;
/// The unit of work for large files.
pub const RANGE_BYTES: u64 = checksum::PIECE_BYTES;
/// A large file's durable prefix is recorded each time it grows this much.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// At most this many files are committed in one batch (one syncfs, two
/// store transactions).
pub const BATCH_FILES_MAX: usize = 512;
/// A batch waits at most this long for more files before it is committed.
pub const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Workers a run may start.
pub const WORKERS_MAX: usize = 256;
/// Messages in flight from the workers to the committer.
const CHANNEL_BOUND: usize = 4 * BATCH_FILES_MAX;

/// Live counters of a run, for progress bars. Updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Bytes that needed no copy: committed or durable before this run.
    pub bytes_reused: AtomicU64,
    /// Bytes written by this run.
    pub bytes_copied: AtomicU64,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub id: TransferId,
    pub name: String,
    pub state: TransferState,
    pub files_total: u64,
    pub files_committed: u64,
    pub bytes_total: u64,
    /// Bytes written by this run.
    pub bytes_copied: u64,
    /// Bytes this run did not copy because an earlier run made them durable.
    pub bytes_reused: u64,
    pub failures: Vec<FileFailure>,
    /// Things worth saying that failed nothing: stale temporaries of other
    /// transfers found at our destinations, and what was done with them.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FileFailure {
    pub path: PathBuf,
    pub error: String,
}

/// Options of one run.
pub struct RunOptions {
    pub workers: usize,
    /// Remove temporaries at our destinations that no transfer of this
    /// store wrote.
    pub clean_orphans: bool,
    /// Refuse to start without room for what is left to copy, and reserve
    /// the space of large files up front.
    pub check_space: bool,
    /// Destinations that already match are recorded `skipped`, not copied.
    pub skip: SkipRule,
    /// Read back what was written, from disk, and compare checksums.
    pub verify: Verify,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    /// Called by a worker after each chunk it writes; see [`ChunkHook`].
    pub after_chunk: Option<ChunkHook>,
}

/// A debugging hook (the C layer's `AXL_DEBUG_PAUSE_AFTER`): called from a
/// worker thread after each chunk with the bytes this run has copied so far
/// and the run's cancel flag. It may block — until that flag is set, say —
/// so that a test can kill or cancel a transfer surely mid-copy.
pub type ChunkHook = Arc<ChunkFn>;
/// The function behind a [`ChunkHook`].
pub type ChunkFn = dyn Fn(u64, &AtomicBool) + Send + Sync;

/// One unit of work for a worker.
#[derive(Clone, Copy, Debug)]
enum Work {
    Whole(EntryIndex),
    Range {
        index: EntryIndex,
        /// Which range of the file's [`RangeTracker`].
        slot: usize,
        start: u64,
        end: u64,
    },
    Symlink(EntryIndex),
    /// A piece of a large file that an earlier run made durable: hashed
    /// from the temporary, so the file's checksum is the same as if it had
    /// been copied in one go. Never reads the source.
    Rehash {
        index: EntryIndex,
        piece: usize,
    },
}

enum Done {
    Copied(Ready),
    Failed(EntryIndex, String),
}

/// The ranges of one large file in flight, and its durable prefix.
struct RangeTracker {
    first: u64,
    done: Vec<bool>,
    recorded: u64,
    failed: bool,
    /// One per piece of the whole file, when the transfer has checksums.
    digests: Vec<Option<Checksum>>,
    /// Reported copied (or failed): nothing more to send.
    finished: bool,
}

impl RangeTracker {
    fn prefix(&self, size: u64) -> u64 {
        let ranges = self.done.iter().take_while(|d| **d).count() as u64;
        (self.first + ranges * RANGE_BYTES).min(size)
    }
}

/// Moves every entry of transfer `id` that is not committed yet, then sets
/// the transfer's final state. The transfer must be `dispatched` or
/// `running`; the caller put it there.
pub fn run(store: &dyn Store, id: TransferId, options: &RunOptions) -> Result<RunReport> {
    let transfer = store
        .transfer(id)?
        .ok_or_else(|| StoreError::NoSuchTransfer {
            path: store.location(),
            id,
        })?;
    let entries = store.entries(id)?;
    store.apply(&[Change::Transfer {
        id,
        to: TransferState::Running,
        owner: None,
        context: serde_json::json!({"pid": std::process::id()}),
    }])?;
    let engine = Engine {
        store,
        transfer: &transfer,
        committer: Committer {
            store,
            id,
            entries: &entries,
            preserve: transfer.preserve,
            temp_suffix: &transfer.temp_suffix,
            umask: current_umask(),
            verify: options.verify != Verify::None,
            verify_recorded_too: false,
        },
        options,
        warnings: Mutex::new(Vec::new()),
        copier: Copier {
            cancel: &options.cancel,
            bytes_copied: &options.progress.bytes_copied,
            after_chunk: options.after_chunk.as_deref(),
            use_copy_file_range: AtomicBool::new(true),
        },
    };
    let result = engine.run(&entries);
    match &result {
        Err(Error::Store(StoreError::Cancelled { .. })) => {
            return engine.report(TransferState::Cancelled, Vec::new());
        }
        // A clean shutdown: the read-only store still takes this one record
        // (its reserve made room for it), so the transfer reads `failed`
        // rather than `running` under a dead owner. Resume continues it.
        Err(
            e @ (Error::Store(StoreError::ReadOnly { .. })
            | Error::NotEnoughSpace { .. }
            | Error::VerifyWithoutChecksum { .. }),
        ) => {
            let _ = store.apply(&[Change::Transfer {
                id,
                to: TransferState::Failed,
                owner: None,
                context: serde_json::json!({ "error": e.to_string() }),
            }]);
        }
        _ => {}
    }
    result
}

struct Engine<'a> {
    store: &'a dyn Store,
    transfer: &'a TransferRecord,
    committer: Committer<'a>,
    options: &'a RunOptions,
    warnings: Mutex<Vec<String>>,
    copier: Copier<'a>,
}

impl Engine<'_> {
    fn run(&self, entries: &[EntryRecord]) -> Result<RunReport> {
        let progress = &self.options.progress;
        progress
            .files_total
            .store(entries.len() as u64, Ordering::Relaxed);
        progress
            .bytes_total
            .store(entries.iter().map(|e| e.meta.size).sum(), Ordering::Relaxed);
        let mut failures: Vec<(EntryIndex, String)> = Vec::new();
        if self.options.verify != Verify::None && self.transfer.checksum.is_none() {
            return Err(Error::VerifyWithoutChecksum {
                name: self.transfer.name.clone(),
            });
        }
        if self.options.check_space {
            space::check(entries)?;
        }

        // Directories first, so that files have somewhere to go.
        let left_alone = self.create_directories(entries, &mut failures)?;
        let warnings = stale::clean(
            self.store,
            self.transfer,
            entries,
            self.options.clean_orphans,
        )?;
        self.warnings
            .lock()
            .expect("warnings poisoned")
            .extend(warnings);

        // Then the work list, and what earlier runs already copied.
        let mut work = Vec::new();
        let mut ready = Vec::new();
        let mut trackers: Vec<Option<Mutex<RangeTracker>>> =
            (0..entries.len()).map(|_| None).collect();
        let mut copying = Vec::new();
        let mut skipped = Vec::new();
        let mut followers = Vec::new();
        for entry in entries {
            let unfinished = matches!(
                entry.state,
                FileState::Pending | FileState::Copying | FileState::Failed
            );
            if entry.link_leader.is_some() && unfinished {
                // A hard link: its data comes with its leader's.
                followers.push(entry);
                continue;
            }
            let may_skip = entry.kind == EntryKind::File
                && matches!(
                    entry.state,
                    FileState::Pending | FileState::Copying | FileState::Failed
                );
            if may_skip
                && let Ok(Some(matched)) =
                    skip::matches(entry, self.options.skip, self.transfer.checksum)
            {
                skipped.push((entry, matched.checksum));
                continue;
            }
            match (entry.kind, entry.state) {
                (EntryKind::Dir, _) | (_, FileState::Committed | FileState::Skipped) => {
                    if entry.kind != EntryKind::Dir {
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        progress
                            .bytes_reused
                            .fetch_add(entry.meta.size, Ordering::Relaxed);
                    }
                }
                (_, FileState::Copied) => {
                    progress
                        .bytes_reused
                        .fetch_add(entry.meta.size, Ordering::Relaxed);
                    ready.push(Ready {
                        index: entry.index,
                        durable: true,
                        recorded: true,
                        checksum: entry.checksum,
                    });
                }
                (EntryKind::Symlink, _) => work.push(Work::Symlink(entry.index)),
                (EntryKind::File, _) if entry.meta.size >= SPLIT_BYTES_MIN => {
                    match self.prepare_large(entry) {
                        Ok(first) => {
                            progress.bytes_reused.fetch_add(first, Ordering::Relaxed);
                            let mut slot = 0;
                            let mut start = first;
                            while start < entry.meta.size {
                                let end = (start + RANGE_BYTES).min(entry.meta.size);
                                work.push(Work::Range {
                                    index: entry.index,
                                    slot,
                                    start,
                                    end,
                                });
                                slot += 1;
                                start = end;
                            }
                            let pieces = checksum::pieces(entry.meta.size) as usize;
                            let mut digests = vec![None; pieces];
                            let whole = match self.transfer.checksum {
                                None => {
                                    digests.clear();
                                    None
                                }
                                // Fully durable and its checksum recorded
                                // at `copied` by an earlier run.
                                Some(_) if first == entry.meta.size && entry.checksum.is_some() => {
                                    digests.clear();
                                    entry.checksum
                                }
                                Some(algo) => {
                                    // `first` is a multiple of a piece, or the size.
                                    let durable = if first == entry.meta.size {
                                        pieces
                                    } else {
                                        (first / RANGE_BYTES) as usize
                                    };
                                    // The durable pieces' digests of the bytes as
                                    // read from the source, recorded with the
                                    // progress; else (an older record) hashed
                                    // from the temporary.
                                    match decode_pieces(algo, &entry.piece_digests, durable) {
                                        Some(recorded) => {
                                            for (slot, d) in digests.iter_mut().zip(recorded) {
                                                *slot = Some(d);
                                            }
                                        }
                                        None => {
                                            work.extend((0..durable).map(|piece| Work::Rehash {
                                                index: entry.index,
                                                piece,
                                            }))
                                        }
                                    }
                                    None
                                }
                            };
                            let complete_now = slot == 0 && digests.iter().all(Option::is_some);
                            trackers[entry.index.0 as usize] = Some(Mutex::new(RangeTracker {
                                first,
                                done: vec![false; slot],
                                recorded: first,
                                failed: false,
                                digests,
                                finished: complete_now,
                            }));
                            copying.push(self.committer.entry_change(
                                entry.index,
                                FileState::Copying,
                                Some(first),
                                None,
                            ));
                            if complete_now {
                                // Everything was durable already (else the
                                // last rehash reports it).
                                let checksum = whole.or_else(|| {
                                    let algo = self.transfer.checksum?;
                                    let pieces = self.pieces_of(&trackers, entry.index)?;
                                    Some(checksum::combine(algo, &pieces))
                                });
                                ready.push(Ready {
                                    index: entry.index,
                                    durable: true,
                                    recorded: false,
                                    checksum,
                                });
                            }
                        }
                        Err(message) => failures.push((entry.index, message)),
                    }
                }
                (EntryKind::File, _) => work.push(Work::Whole(entry.index)),
            }
        }
        // Large files say "copying" (with the offset they resume from) in one
        // transaction; small files go straight to "copied".
        self.store.apply(&copying)?;
        let skipped_now: HashMap<EntryIndex, Option<Checksum>> =
            skipped.iter().map(|(e, c)| (e.index, *c)).collect();
        self.record_skipped(skipped, &mut failures)?;
        let followers_of =
            self.link_ready_followers(entries, followers, &skipped_now, &mut ready, &mut failures);

        let workers = self
            .options
            .workers
            .clamp(1, WORKERS_MAX)
            .min(work.len().max(1));
        let next = AtomicUsize::new(0);
        let (tx, rx) = sync_channel::<Done>(CHANNEL_BOUND);
        let committed = std::thread::scope(|scope| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (work, next, trackers) = (&work, &next, &trackers);
                scope.spawn(move || self.worker(work, next, trackers, entries, tx));
            }
            drop(tx);
            self.commit_loop(rx, ready, std::mem::take(&mut failures), &followers_of)
        });
        let mut failed = committed?;

        if self.options.cancel.load(Ordering::Relaxed) {
            return self.report(TransferState::Cancelled, failed);
        }
        self.check_every_file_ended(&mut failed)?;
        if failed.is_empty() {
            self.finish_directories(entries, &left_alone, &mut failed)?;
        }
        if self.options.verify == Verify::Full {
            self.verify_finished(&mut failed)?;
        }
        let state = if failed.is_empty() {
            TransferState::Completed
        } else {
            TransferState::Failed
        };
        self.store.apply(&[Change::Transfer {
            id: self.transfer.id,
            to: state,
            owner: None,
            context: serde_json::json!({
                "files_failed": failed.len(),
                "bytes_copied": self.options.progress.bytes_copied.load(Ordering::Relaxed),
            }),
        }])?;
        self.report(state, failed)
    }

    fn report(&self, state: TransferState, failed: Vec<(EntryIndex, String)>) -> Result<RunReport> {
        let entries = self.committer.entries;
        let progress = &self.options.progress;
        let files: Vec<_> = entries
            .iter()
            .filter(|e| e.kind != EntryKind::Dir)
            .collect();
        Ok(RunReport {
            id: self.transfer.id,
            name: self.transfer.name.clone(),
            state,
            files_total: files.len() as u64,
            files_committed: progress.files_done.load(Ordering::Relaxed),
            bytes_total: files.iter().map(|e| e.meta.size).sum(),
            bytes_copied: progress.bytes_copied.load(Ordering::Relaxed),
            bytes_reused: progress.bytes_reused.load(Ordering::Relaxed),
            failures: failed
                .into_iter()
                .map(|(index, error)| FileFailure {
                    path: entries[index.0 as usize].dest.clone(),
                    error,
                })
                .collect(),
            warnings: std::mem::take(&mut *self.warnings.lock().expect("warnings poisoned")),
        })
    }

    /// Creates the transfer's directories (and missing parents of its
    /// entries, as `mkdir -p`). Returns the directories that existed before
    /// and are left as they are: without `-p`, cp does not touch an
    /// existing directory's mode or times.
    fn create_directories(
        &self,
        entries: &[EntryRecord],
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> Result<HashSet<EntryIndex>> {
        let dirs: HashSet<&Path> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| e.dest.as_path())
            .collect();
        let preserve = self.transfer.preserve;
        let preserving = preserve.mode || preserve.ownership || preserve.times;
        let mut parents_made: HashSet<&Path> = HashSet::new();
        let mut changes = Vec::new();
        let mut to_create = Vec::new();
        let mut left_alone = HashSet::new();
        for entry in entries {
            if entry.state.is_done() {
                continue;
            }
            // Parents outside the transfer's own directories, as `mkdir -p`.
            if let Some(parent) = entry.dest.parent().filter(|p| !p.as_os_str().is_empty())
                && !dirs.contains(parent)
                && parents_made.insert(parent)
                && let Err(e) = std::fs::create_dir_all(parent)
            {
                failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", parent.display()),
                ));
                continue;
            }
            if entry.kind != EntryKind::Dir {
                continue;
            }
            match std::fs::symlink_metadata(&entry.dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => to_create.push(entry),
                Ok(m) if m.is_dir() => {
                    // `copied` or `failed`: an earlier run of ours made it.
                    // `pending`: it was there before this transfer.
                    if entry.state == FileState::Copied {
                        continue;
                    }
                    changes.push(self.committer.entry_change(
                        entry.index,
                        FileState::Copied,
                        None,
                        None,
                    ));
                    if entry.state == FileState::Pending && !preserving {
                        changes.push(self.committer.entry_change(
                            entry.index,
                            FileState::Committed,
                            None,
                            None,
                        ));
                        left_alone.insert(entry.index);
                    }
                }
                Ok(_) => failures.push((
                    entry.index,
                    format!(
                        "cannot create directory {}: a file of that name exists",
                        entry.dest.display()
                    ),
                )),
                Err(e) => failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", entry.dest.display()),
                )),
            }
        }
        // Recorded before they exist, so that a crash right after mkdir
        // still knows these are ours (and get their mode at the end); a
        // directory carries no data, so this claims nothing about content.
        changes.extend(
            to_create
                .iter()
                .filter(|e| e.state != FileState::Copied)
                .map(|e| {
                    self.committer
                        .entry_change(e.index, FileState::Copied, None, None)
                }),
        );
        self.store.apply(&changes)?;
        for entry in to_create {
            // Owner-only until its contents are in place; its own mode last.
            match std::fs::DirBuilder::new().mode(0o700).create(&entry.dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && entry.dest.is_dir() => {}
                Err(e) => failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", entry.dest.display()),
                )),
            }
        }
        Ok(left_alone)
    }

    /// Directory metadata goes on after everything inside is in place,
    /// deepest first (entries are in pre-order), as `cp -a` does.
    fn finish_directories(
        &self,
        entries: &[EntryRecord],
        left_alone: &HashSet<EntryIndex>,
        failed: &mut Vec<(EntryIndex, String)>,
    ) -> Result<()> {
        let dirs = entries.iter().rev().filter(|e| {
            e.kind == EntryKind::Dir
                && e.state != FileState::Committed
                && !left_alone.contains(&e.index)
        });
        let first_failure = failed.len();
        let mut done: Vec<EntryIndex> = self
            .committer
            .place_directories(
                dirs,
                failed,
                &mut self.warnings.lock().expect("warnings poisoned"),
            )
            .iter()
            .map(|d| d.index)
            .collect();
        if done.is_empty() && failed.len() == first_failure {
            return Ok(());
        }
        let synced = failpoint::hit(CommitStep::SyncDir).and_then(|()| {
            commit::make_durable(done.iter().map(|i| entries[i.0 as usize].dest.as_path()))
        });
        if let Err(e) = synced {
            for index in done.drain(..) {
                let dest = &entries[index.0 as usize].dest;
                failed.push((
                    index,
                    format!("{}: could not make metadata durable: {e}", dest.display()),
                ));
            }
        }
        failpoint::hit(CommitStep::RecordCommitted).map_err(|e| Error::Io {
            path: self.store.location(),
            source: e,
        })?;
        self.store.apply(&self.committer.committed_changes(
            &done,
            &failed[first_failure..],
            &HashSet::new(),
        ))?;
        Ok(())
    }

    /// Every file either reached the committer or failed: one that did
    /// neither is a bug in the engine, and must not let the transfer say
    /// `completed`.
    fn check_every_file_ended(&self, failed: &mut Vec<(EntryIndex, String)>) -> Result<()> {
        let failed_now: HashSet<EntryIndex> = failed.iter().map(|(i, _)| *i).collect();
        for entry in self.store.entries(self.transfer.id)? {
            let ended = entry.kind == EntryKind::Dir
                || entry.state.is_done()
                || entry.state == FileState::Failed
                || failed_now.contains(&entry.index);
            if !ended {
                failed.push((
                    entry.index,
                    format!(
                        "{}: left {} by this run (a bug in ferry: please report it); resume retries it",
                        entry.dest.display(),
                        entry.state
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `--verify full`: every finished file of the transfer, read back from
    /// its final name (from disk) and compared with its stored checksum. A
    /// mismatch fails the transfer; the file keeps its state, since what is
    /// wrong is the disk, not the record.
    fn verify_finished(&self, failed: &mut Vec<(EntryIndex, String)>) -> Result<()> {
        let entries = self.store.entries(self.transfer.id)?;
        for entry in entries.iter().filter(|e| e.state.is_done()) {
            let Some(expected) = entry.checksum else {
                continue;
            };
            if let Some(problem) = crate::verify::read_back(&entry.dest, expected).problem() {
                failed.push((
                    entry.index,
                    format!("{}: verification failed: {problem}", entry.dest.display()),
                ));
            }
        }
        Ok(())
    }

    /// Creates or re-opens a large file's temporary, checks what an earlier
    /// run made durable, and returns the offset to continue from.
    fn prepare_large(&self, entry: &EntryRecord) -> Result<u64, String> {
        let temp = self.committer.temp_of(entry);
        let size = entry.meta.size;
        // Not truncated: its durable prefix is what a resume continues from.
        let file = open_temp(&temp, false).map_err(|e| write_error(&temp, &e, 0, size))?;
        let length = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Continue only from a prefix the store recorded as durable and the
        // temporary still holds; anything else restarts from zero.
        let first = if entry.progress_bytes_durable > 0 && length >= entry.progress_bytes_durable {
            entry.progress_bytes_durable
        } else {
            0
        };
        // Cut what is past the prefix, so that holes of the source stay holes,
        // then give the file its full length so ranges can land anywhere. The
        // directory entry is made durable once, so that the progress recorded
        // later never points at a temporary a crash could lose.
        file.set_len(first)
            .and_then(|()| file.set_len(size))
            .and_then(|()| commit::sync_parent(&temp))
            .map_err(|e| write_error(&temp, &e, first, size))?;
        if self.options.check_space {
            space::reserve(&entry.source, &file, first, size)
                .map_err(|e| write_error(&temp, &e, first, size))?;
        }
        Ok(first)
    }

    fn worker(
        &self,
        work: &[Work],
        next: &AtomicUsize,
        trackers: &[Option<Mutex<RangeTracker>>],
        entries: &[EntryRecord],
        tx: SyncSender<Done>,
    ) {
        let mut buffer = Vec::new();
        loop {
            if self.options.cancel.load(Ordering::Relaxed) {
                return;
            }
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = work.get(i) else { return };
            let done = match *item {
                Work::Whole(index) => {
                    let entry = &entries[index.0 as usize];
                    match self.copy_whole(entry, &mut buffer) {
                        Ok(checksum) => Some(Done::Copied(Ready {
                            index,
                            durable: false,
                            recorded: false,
                            checksum,
                        })),
                        Err(None) => None,
                        Err(Some(message)) => Some(Done::Failed(index, message)),
                    }
                }
                Work::Symlink(index) => {
                    let entry = &entries[index.0 as usize];
                    Some(match self.make_symlink(entry) {
                        Ok(()) => Done::Copied(Ready {
                            index,
                            durable: false,
                            recorded: false,
                            checksum: None,
                        }),
                        Err(message) => Done::Failed(index, message),
                    })
                }
                Work::Range {
                    index,
                    slot,
                    start,
                    end,
                } => {
                    let entry = &entries[index.0 as usize];
                    let tracker = trackers[index.0 as usize]
                        .as_ref()
                        .expect("a range without its tracker");
                    self.copy_range(entry, tracker, slot, start, end, &mut buffer)
                }
                Work::Rehash { index, piece } => {
                    let entry = &entries[index.0 as usize];
                    let tracker = trackers[index.0 as usize]
                        .as_ref()
                        .expect("a piece without its tracker");
                    self.rehash(entry, tracker, piece, &mut buffer)
                }
            };
            if let Some(done) = done
                && tx.send(done).is_err()
            {
                return;
            }
        }
    }

    /// Step 1 for a small file, with its checksum. `Err(None)`: cancelled.
    fn copy_whole(
        &self,
        entry: &EntryRecord,
        buffer: &mut Vec<u8>,
    ) -> Result<Option<Checksum>, Option<String>> {
        let size = entry.meta.size;
        let (src, dense) = self.open_source(entry).map_err(Some)?;
        let temp = self.committer.temp_of(entry);
        let dst = open_temp(&temp, true).map_err(|e| Some(write_error(&temp, &e, 0, size)))?;
        let mut hasher = self.transfer.checksum.map(Hasher::new);
        let data_end = self
            .copier
            .copy_range(&src, &dst, 0, size, dense, buffer, hasher.as_mut())
            .map_err(|e| self.copy_error(entry, &temp, e))?;
        // Trailing holes: the length comes from the size, not the last write.
        if data_end < size {
            dst.set_len(size)
                .map_err(|e| Some(write_error(&temp, &e, data_end, size)))?;
        }
        self.check_source_at_end(entry, &src).map_err(Some)?;
        Ok(hasher.map(Hasher::finish))
    }

    /// Destinations found already matching: their metadata applied and made
    /// durable, then recorded `skipped` in one transaction. One whose
    /// metadata cannot be applied fails (it is not copied over).
    fn record_skipped(
        &self,
        skipped: Vec<(&EntryRecord, Option<Checksum>)>,
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> Result<()> {
        if skipped.is_empty() {
            return Ok(());
        }
        let progress = &self.options.progress;
        let mut done = Vec::with_capacity(skipped.len());
        for (entry, checksum) in skipped {
            // An earlier run's temporary of this file is not needed now.
            match std::fs::remove_file(self.committer.temp_of(entry)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    failures.push((
                        entry.index,
                        format!("{}: cannot remove its temporary: {e}", entry.dest.display()),
                    ));
                    continue;
                }
            }
            let mut warnings = Vec::new();
            let applied = commit::apply_metadata(
                entry,
                self.transfer.preserve,
                self.committer.umask,
                &mut warnings,
            );
            self.warnings
                .lock()
                .expect("warnings poisoned")
                .extend(warnings);
            match applied {
                Ok(()) => done.push((entry, checksum)),
                Err(e) => failures.push((
                    entry.index,
                    format!("{}: cannot apply metadata: {e}", entry.dest.display()),
                )),
            }
        }
        let synced = commit::make_durable(done.iter().map(|(e, _)| e.dest.as_path()));
        if let Err(e) = synced {
            for (entry, _) in done.drain(..) {
                failures.push((
                    entry.index,
                    format!(
                        "{}: could not make metadata durable: {e}",
                        entry.dest.display()
                    ),
                ));
            }
        }
        let rule = self.options.skip.as_str();
        let changes: Vec<Change> = done
            .iter()
            .map(|(entry, checksum)| {
                let mut context = serde_json::json!({"rule": rule});
                if let Some(c) = checksum {
                    context["checksum"] = c.to_string().into();
                }
                Change::Entry {
                    id: self.transfer.id,
                    index: entry.index,
                    to: FileState::Skipped,
                    progress_bytes_durable: None,
                    error: None,
                    checksum: *checksum,
                    context,
                }
            })
            .collect();
        self.store.apply(&changes)?;
        for (entry, _) in &done {
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            progress
                .bytes_reused
                .fetch_add(entry.meta.size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Hard links whose leader's data is already in place (committed,
    /// skipped, or copied by an earlier run) are linked now and join the
    /// first batch; the others wait for their leader in the commit loop,
    /// which gets them back here, by leader.
    fn link_ready_followers(
        &self,
        entries: &[EntryRecord],
        followers: Vec<&EntryRecord>,
        skipped_now: &HashMap<EntryIndex, Option<Checksum>>,
        ready: &mut Vec<Ready>,
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> HashMap<EntryIndex, Vec<EntryIndex>> {
        let mut waiting: HashMap<EntryIndex, Vec<EntryIndex>> = HashMap::new();
        let ready_now: HashMap<EntryIndex, Option<Checksum>> =
            ready.iter().map(|r| (r.index, r.checksum)).collect();
        let failed_now: HashSet<EntryIndex> = failures.iter().map(|(i, _)| *i).collect();
        for follower in followers {
            let leader_index = follower.link_leader.expect("followers have a leader");
            let leader = &entries[leader_index.0 as usize];
            let from = if failed_now.contains(&leader.index) {
                failures.push((
                    follower.index,
                    format!(
                        "{}: a hard link to {}, which failed",
                        follower.dest.display(),
                        leader.dest.display()
                    ),
                ));
                continue;
            } else if leader.state.is_done() || skipped_now.contains_key(&leader.index) {
                leader.dest.clone()
            } else if leader.state == FileState::Copied || ready_now.contains_key(&leader.index) {
                // Its data is durable in its temporary (or, copied by an
                // earlier run, maybe renamed already).
                let temp = self.committer.temp_of(leader);
                if temp.exists() {
                    temp
                } else {
                    leader.dest.clone()
                }
            } else {
                waiting
                    .entry(leader.index)
                    .or_default()
                    .push(follower.index);
                continue;
            };
            match self.link_follower(&from, follower) {
                Ok(()) => ready.push(Ready {
                    index: follower.index,
                    durable: false,
                    recorded: false,
                    checksum: ready_now
                        .get(&leader.index)
                        .or(skipped_now.get(&leader.index))
                        .copied()
                        .flatten()
                        .or(leader.checksum),
                }),
                Err(message) => failures.push((follower.index, message)),
            }
        }
        waiting
    }

    /// Step 1 for a hard link: its temporary is a link to its leader's data.
    fn link_follower(&self, from: &Path, follower: &EntryRecord) -> Result<(), String> {
        let temp = self.committer.temp_of(follower);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", temp.display())),
        }
        std::fs::hard_link(from, &temp)
            .map_err(|e| format!("{}: cannot link to {}: {e}", temp.display(), from.display()))?;
        self.options
            .progress
            .bytes_reused
            .fetch_add(follower.meta.size, Ordering::Relaxed);
        Ok(())
    }

    /// All piece digests of a large file, when they are all known.
    fn pieces_of(
        &self,
        trackers: &[Option<Mutex<RangeTracker>>],
        index: EntryIndex,
    ) -> Option<Vec<Checksum>> {
        let tracker = trackers[index.0 as usize].as_ref()?.lock().ok()?;
        tracker.digests.iter().copied().collect()
    }

    /// Hashes a piece an earlier run made durable, from the temporary.
    fn rehash(
        &self,
        entry: &EntryRecord,
        tracker: &Mutex<RangeTracker>,
        piece: usize,
        buffer: &mut Vec<u8>,
    ) -> Option<Done> {
        let algo = self.transfer.checksum?;
        let temp = self.committer.temp_of(entry);
        let start = piece as u64 * RANGE_BYTES;
        let end = (start + RANGE_BYTES).min(entry.meta.size);
        let digest =
            File::open(&temp).and_then(|f| checksum::hash_range(&f, algo, start, end, buffer));
        let mut tracker = tracker.lock().expect("tracker poisoned");
        match digest {
            Ok(digest) => {
                tracker.digests[piece] = Some(digest);
                self.complete(entry, &mut tracker, None)
            }
            Err(e) if !tracker.failed => {
                tracker.failed = true;
                Some(Done::Failed(
                    entry.index,
                    format!(
                        "cannot read back the durable part of {}: {e}",
                        temp.display()
                    ),
                ))
            }
            Err(_) => None,
        }
    }

    /// A large file whose every range is written (and, with checksums,
    /// every piece hashed): made durable here, by the worker that finished
    /// it, so the committer's batch need not wait; reported once.
    fn complete(
        &self,
        entry: &EntryRecord,
        tracker: &mut RangeTracker,
        dst: Option<&File>,
    ) -> Option<Done> {
        let size = entry.meta.size;
        let hashed = tracker.digests.iter().all(Option::is_some);
        if tracker.finished || tracker.failed || tracker.prefix(size) < size || !hashed {
            return None;
        }
        tracker.finished = true;
        let temp = self.committer.temp_of(entry);
        let synced = failpoint::hit(CommitStep::SyncData).and_then(|()| match dst {
            Some(dst) => dst.sync_data(),
            None => File::open(&temp).and_then(|f| f.sync_data()),
        });
        if let Err(e) = synced {
            tracker.failed = true;
            return Some(Done::Failed(
                entry.index,
                write_error(&temp, &e, tracker.recorded, size),
            ));
        }
        let checksum = self.transfer.checksum.map(|algo| {
            let pieces: Vec<Checksum> = tracker.digests.iter().flatten().copied().collect();
            checksum::combine(algo, &pieces)
        });
        Some(Done::Copied(Ready {
            index: entry.index,
            durable: true,
            recorded: false,
            checksum,
        }))
    }

    fn copy_range(
        &self,
        entry: &EntryRecord,
        tracker: &Mutex<RangeTracker>,
        slot: usize,
        start: u64,
        end: u64,
        buffer: &mut Vec<u8>,
    ) -> Option<Done> {
        if tracker.lock().expect("tracker poisoned").failed {
            return None;
        }
        let temp = self.committer.temp_of(entry);
        let mut hasher = self.transfer.checksum.map(Hasher::new);
        let copied = self
            .open_source(entry)
            .map_err(Some)
            .and_then(|(src, dense)| {
                let dst = open_range_temp(&temp, self.copier.buffered(hasher.is_some()))
                    .map_err(|e| Some(write_error(&temp, &e, start, entry.meta.size)))?;
                self.copier
                    .copy_range(&src, &dst, start, end, dense, buffer, hasher.as_mut())
                    .map_err(|e| self.copy_error(entry, &temp, e))?;
                self.check_source_at_end(entry, &src).map_err(Some)?;
                Ok(dst)
            });
        let mut tracker = tracker.lock().expect("tracker poisoned");
        let dst = match copied {
            Ok(dst) if !tracker.failed => dst,
            // Another range of this file failed meanwhile: it reported it.
            Ok(_) => return None,
            Err(message) => {
                let first_failure = !tracker.failed;
                tracker.failed = true;
                if first_failure && message.is_some() {
                    self.record_prefix(entry, &temp, &mut tracker);
                }
                return match message {
                    Some(message) if first_failure => Some(Done::Failed(entry.index, message)),
                    _ => None,
                };
            }
        };
        tracker.done[slot] = true;
        if let Some(hasher) = hasher {
            tracker.digests[(start / RANGE_BYTES) as usize] = Some(hasher.finish());
        }
        let size = entry.meta.size;
        let prefix = tracker.prefix(size);
        let recorded = tracker.recorded;
        let durable_error = |e: io::Error| {
            Some(Done::Failed(
                entry.index,
                write_error(&temp, &e, recorded, size),
            ))
        };
        if prefix == size {
            // The last range (unless a rehash of an earlier run's pieces
            // is still going: then that one completes the file).
            return self.complete(entry, &mut tracker, Some(&dst));
        }
        if prefix - tracker.recorded >= CHECKPOINT_BYTES {
            // Holding the tracker's lock keeps recorded progress monotonic.
            if let Err(e) = dst.sync_data() {
                tracker.failed = true;
                return durable_error(e);
            }
            if let Err(e) = failpoint::hit(CommitStep::RecordProgress) {
                tracker.failed = true;
                return durable_error(e);
            }
            match self.store.apply(&[Change::Progress {
                id: self.transfer.id,
                index: entry.index,
                progress_bytes_durable: prefix,
                piece_digests: prefix_digests(&tracker, prefix),
            }]) {
                Ok(()) => tracker.recorded = prefix,
                Err(StoreError::Cancelled { .. }) => {
                    self.options.cancel.store(true, Ordering::Relaxed)
                }
                // Progress is an optimisation: a store that cannot take it
                // now only means a resume copies more.
                Err(_) => {}
            }
        }
        None
    }

    /// A large file failed (its disk is full, say): make the ranges that
    /// did complete durable and record them, so that a resume copies only
    /// what is missing. Best effort: failing here only means a resume
    /// copies more.
    fn record_prefix(&self, entry: &EntryRecord, temp: &Path, tracker: &mut RangeTracker) {
        let prefix = tracker.prefix(entry.meta.size);
        if prefix <= tracker.recorded {
            return;
        }
        let synced = File::open(temp).and_then(|f| f.sync_data());
        if synced.is_ok()
            && self
                .store
                .apply(&[Change::Progress {
                    id: self.transfer.id,
                    index: entry.index,
                    progress_bytes_durable: prefix,
                    piece_digests: prefix_digests(tracker, prefix),
                }])
                .is_ok()
        {
            tracker.recorded = prefix;
        }
    }

    fn make_symlink(&self, entry: &EntryRecord) -> Result<(), String> {
        let temp = self.committer.temp_of(entry);
        let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", temp.display())),
        }
        std::os::unix::fs::symlink(target, &temp)
            .map_err(|e| format!("{}: cannot create symlink: {e}", temp.display()))
    }

    /// Opens a source and checks it is still what was added. Also says
    /// whether it is dense (all its blocks allocated), in which case looking
    /// for holes is a waste of two system calls.
    fn open_source(&self, entry: &EntryRecord) -> Result<(File, bool), String> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&entry.source)
            .map_err(|e| format!("cannot open source {}: {e}", entry.source.display()))?;
        let meta = self.check_source_unchanged(entry, &file)?;
        Ok((file, meta.blocks().saturating_mul(512) >= meta.size()))
    }

    /// Size and mtime as captured when the entry was added: checked when a
    /// copy starts and again when it ends, so that a source truncated,
    /// grown or rewritten meanwhile fails instead of arriving mixed.
    fn check_source_unchanged(
        &self,
        entry: &EntryRecord,
        file: &File,
    ) -> Result<std::fs::Metadata, String> {
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot stat source {}: {e}", entry.source.display()))?;
        let mtime_ns = plan::time_ns(meta.mtime(), meta.mtime_nsec());
        if meta.size() != entry.meta.size || mtime_ns != entry.meta.mtime_ns {
            return Err(format!(
                "source {} changed during transfer (size {} when added, {} now; or its mtime changed): add it again",
                entry.source.display(),
                entry.meta.size,
                meta.size()
            ));
        }
        Ok(meta)
    }

    /// After the last byte: unchanged, and still the file at its path (a
    /// source deleted or replaced mid-copy reads fine through the open
    /// descriptor, but is no longer what the caller asked for).
    fn check_source_at_end(&self, entry: &EntryRecord, file: &File) -> Result<(), String> {
        let meta = self.check_source_unchanged(entry, file)?;
        match std::fs::symlink_metadata(&entry.source) {
            Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => Ok(()),
            Ok(_) => Err(format!(
                "source {} changed during transfer: it was replaced by another file; add it again",
                entry.source.display()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
                "source {} changed during transfer: it was deleted",
                entry.source.display()
            )),
            Err(e) => Err(format!(
                "cannot stat source {}: {e}",
                entry.source.display()
            )),
        }
    }

    fn copy_error(&self, entry: &EntryRecord, temp: &Path, e: CopyError) -> Option<String> {
        match e {
            CopyError::Cancelled => None,
            CopyError::Read(e) => Some(format!(
                "cannot read source {}: {e}",
                entry.source.display()
            )),
            CopyError::Write { error, at } => Some(write_error(temp, &error, at, entry.meta.size)),
            CopyError::SourceShrank { at } => Some(format!(
                "source {} changed during transfer: it ended at byte {at} of {}",
                entry.source.display(),
                entry.meta.size
            )),
        }
    }

    /// Receives finished copies and commits them in batches until every
    /// worker is done. Returns the entries that failed.
    fn commit_loop(
        &self,
        rx: Receiver<Done>,
        mut batch: Vec<Ready>,
        mut failures: Vec<(EntryIndex, String)>,
        followers_of: &HashMap<EntryIndex, Vec<EntryIndex>>,
    ) -> Result<Vec<(EntryIndex, String)>> {
        let mut failed = Vec::new();
        let mut flush =
            |batch: &mut Vec<Ready>, failures: &mut Vec<(EntryIndex, String)>| -> Result<()> {
                if batch.is_empty() && failures.is_empty() {
                    return Ok(());
                }
                let outcome = self.committer.commit(batch, std::mem::take(failures));
                batch.clear();
                let outcome = outcome?;
                let progress = &self.options.progress;
                progress
                    .files_done
                    .fetch_add(outcome.committed.len() as u64, Ordering::Relaxed);
                self.warnings
                    .lock()
                    .expect("warnings poisoned")
                    .extend(outcome.warnings);
                failed.extend(outcome.failed);
                Ok(())
            };
        // A batch is committed when it is full, or BATCH_WAIT after its
        // first file arrived, whichever is first.
        let mut batch_started: Option<Instant> = (!batch.is_empty()).then(Instant::now);
        let result = loop {
            let due = batch_started.is_some_and(|t| t.elapsed() >= BATCH_WAIT);
            if batch.len() >= BATCH_FILES_MAX || due {
                if let Err(e) = flush(&mut batch, &mut failures) {
                    break Err(e);
                }
                batch_started = None;
            }
            let wait = batch_started.map_or(BATCH_WAIT, |t| BATCH_WAIT.saturating_sub(t.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(done) => {
                    batch_started.get_or_insert_with(Instant::now);
                    let index = match &done {
                        Done::Copied(ready) => ready.index,
                        Done::Failed(index, _) => *index,
                    };
                    let leader = &self.committer.entries[index.0 as usize];
                    // Its hard links share the temporary's inode, and so
                    // its batch: the data is never copied twice.
                    for follower in followers_of.get(&index).into_iter().flatten() {
                        let follower = &self.committer.entries[follower.0 as usize];
                        match &done {
                            Done::Copied(ready) => {
                                let from = self.committer.temp_of(leader);
                                match self.link_follower(&from, follower) {
                                    Ok(()) => batch.push(Ready {
                                        index: follower.index,
                                        durable: false,
                                        recorded: false,
                                        checksum: ready.checksum,
                                    }),
                                    Err(message) => failures.push((follower.index, message)),
                                }
                            }
                            Done::Failed(..) => failures.push((
                                follower.index,
                                format!(
                                    "{}: a hard link to {}, which failed",
                                    follower.dest.display(),
                                    leader.dest.display()
                                ),
                            )),
                        }
                    }
                    match done {
                        Done::Copied(ready) => batch.push(ready),
                        Done::Failed(index, message) => failures.push((index, message)),
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break flush(&mut batch, &mut failures),
            }
        };
        if result.is_err() {
            // Stop the workers, and keep receiving so none blocks on a full
            // channel while the scope waits for it.
            self.options.cancel.store(true, Ordering::Relaxed);
            for _ in rx.iter() {}
        }
        result.map(|()| failed)
    }
}

/// The digests of the pieces below `prefix`, to record with it; empty when
/// the transfer has no checksums or some are not known yet (a resume then
/// hashes those pieces from the temporary).
fn prefix_digests(tracker: &RangeTracker, prefix: u64) -> Vec<Checksum> {
    let n = (prefix / RANGE_BYTES) as usize;
    tracker
        .digests
        .get(..n)
        .and_then(|d| d.iter().copied().collect::<Option<Vec<_>>>())
        .unwrap_or_default()
}

/// The first `n` piece digests recorded with a file's progress, if they
/// are all there and of `algo`'s length.
fn decode_pieces(algo: ChecksumAlgo, raw: &[u8], n: usize) -> Option<Vec<Checksum>> {
    let len = algo.digest_len();
    if n == 0 || raw.len() < n * len {
        return None;
    }
    raw.chunks_exact(len)
        .take(n)
        .map(|d| Checksum::from_digest(algo, d))
        .collect()
}

/// Opens a temporary for writing, owner-only, never through a symlink: a
/// link planted at the predictable name is removed, not followed.
fn open_temp(temp: &Path, truncate: bool) -> io::Result<File> {
    let open = |fresh: bool| {
        OpenOptions::new()
            .write(true)
            .create(!fresh)
            .create_new(fresh)
            .truncate(truncate && !fresh)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(temp)
    };
    match open(false) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            std::fs::remove_file(temp)?;
            open(true)
        }
        other => other,
    }
}

/// Opens a large file's temporary to write one of its ranges. When the
/// bytes pass through ferry's buffer anyway (`direct`: they are hashed, or
/// the kernel cannot copy between these file systems), it is opened
/// `O_DIRECT`: the data is not copied a second time into the page cache
/// and written back later, which made checksums cost 10–20 % against an
/// in-kernel copy. A file system that refuses `O_DIRECT` (tmpfs) gets the
/// page cache.
fn open_range_temp(temp: &Path, direct: bool) -> io::Result<File> {
    let open = |flags: rustix::fs::OFlags| {
        OpenOptions::new()
            .write(true)
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | flags).bits() as i32)
            .open(temp)
    };
    if direct {
        match open(rustix::fs::OFlags::DIRECT) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            other => return other,
        }
    }
    open(rustix::fs::OFlags::empty())
}

fn write_error(temp: &Path, e: &io::Error, written: u64, size: u64) -> String {
    match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => format!(
            "no space left writing {}: {written} of {size} bytes written, {} more needed",
            temp.display(),
            size.saturating_sub(written)
        ),
        _ => format!("cannot write {}: {e}", temp.display()),
    }
}

/// The process umask, read without changing it (`umask(2)` can only set).
pub(crate) fn current_umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}
