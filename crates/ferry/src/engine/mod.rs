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
//! prefix is recorded every [`CHECKPOINT_BYTES`] and at a failure (to the
//! last byte that landed), after an `fdatasync`, so a resume continues from
//! there.
//!
//! **Invariant:** the engine changes state only through the store's
//! [`Store::apply`], and never records a file before the disk holds it.
//!
//! This file holds the public surface and a run's orchestration; the
//! `Engine`'s other steps live by what they are: `pool` (the workers),
//! `ranges` (large files), `directories`, `batches` (the commit loop, skipped
//! files, hard links) and `outcome` (final checks and the report).

pub mod commit;
pub mod copy;
pub mod delete;
pub mod files_from;
pub mod filter;
pub mod plan;
pub mod settle;
pub mod skip;
pub mod throttle;

mod batches;
mod directories;
mod dirs;
mod fence;
mod outcome;
mod pages;
mod pool;
mod ranges;
mod space;
pub mod staging;
mod stale;
pub mod temp;
mod work;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::checksum::{self, Checksum};
use crate::error::{Error, Result};
use crate::model::{
    EntryIndex, EntryKind, EntryRecord, FileState, TransferId, TransferRecord, TransferState,
};
use crate::store::{Change, Store, StoreError};
use crate::verify::Verify;
use commit::{Committer, Ready};
use copy::Copier;
use ranges::{RangeTracker, decode_pieces};
use skip::SkipRule;
use work::{Done, Work};

pub use commit::temp_path;
pub use pages::PAGE_ENTRIES;
pub(crate) use pages::pages_read;
#[cfg(test)]
pub(crate) use pages::paging;

/// Files this large or larger are split into ranges (and hashed in pieces:
/// a range is a checksum piece).
pub const SPLIT_BYTES_MIN: u64 = checksum::PIECED_FROM_BYTES;
/// The unit of work for large files.
pub const RANGE_BYTES: u64 = checksum::PIECE_BYTES;
/// A large file's durable prefix is recorded each time it grows this much.
pub const CHECKPOINT_BYTES: u64 = 32 << 20;
/// At most this many files are committed in one batch (one syncfs and one
/// store transaction, shared with the batch before: see
/// `Committer::commit_overlapped`). 2,048 rather than 512 took a third off
/// the committer's time on 100,000 × 4 KiB (fewer, larger syncs).
pub const BATCH_FILES_MAX: usize = 2048;
/// A batch waits at most this long for more files before it is committed.
pub const BATCH_WAIT: Duration = Duration::from_millis(200);
/// Workers a run may start.
pub const WORKERS_MAX: usize = 256;
/// Messages in flight from the workers to the committer: each holds at
/// most `work::SPAN_ITEMS_MAX` outcomes, so at most four batches' worth of
/// files are copied ahead of their commit.
const CHANNEL_BOUND: usize = 4 * BATCH_FILES_MAX / work::SPAN_ITEMS_MAX;

/// Live counters of a run, for progress bars. Updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct Progress {
    pub files_total: AtomicU64,
    /// Files in place: copied or skipped, by this run or an earlier one.
    pub files_done: AtomicU64,
    /// Of `files_done`, those skipped (already at the destination).
    pub files_skipped: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Bytes that needed no copy: committed or durable before this run.
    pub bytes_reused: AtomicU64,
    /// Bytes written by this run.
    pub bytes_copied: AtomicU64,
    /// The large file (split in ranges) whose range a worker took last:
    /// what a bar names while the file count stands still.
    pub large_file: std::sync::Mutex<Option<std::path::PathBuf>>,
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub id: TransferId,
    pub name: String,
    pub state: TransferState,
    pub files_total: u64,
    /// Files in place: copied or skipped, by this run or an earlier one.
    pub files_committed: u64,
    /// Of `files_committed`, those skipped (already at the destination).
    pub files_skipped: u64,
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

impl RunReport {
    /// Where the files are, as `ferry status` counts them.
    pub fn counts(&self) -> crate::model::FileCounts {
        crate::model::FileCounts {
            files: self.files_total,
            copied: self.files_committed.saturating_sub(self.files_skipped),
            skipped: self.files_skipped,
            failed: self.failures.len() as u64,
        }
    }
}

impl Progress {
    /// Where the files are so far (failures are known at the end only).
    pub fn counts(&self) -> crate::model::FileCounts {
        let done = self.files_done.load(Ordering::Relaxed);
        let skipped = self.files_skipped.load(Ordering::Relaxed);
        crate::model::FileCounts {
            files: self.files_total.load(Ordering::Relaxed),
            copied: done.saturating_sub(skipped),
            skipped,
            failed: 0,
        }
    }
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
    /// `--update`: a destination newer than its source is kept as it is.
    pub update: bool,
    /// `--no-clobber`: an existing destination is kept as it is.
    pub no_clobber: bool,
    /// `--delete`: once every file is committed, what the destination's
    /// directories hold that the transfer does not is removed, but for what
    /// this filter excludes (protected, as rsync does).
    pub delete: Option<filter::Filter>,
    /// `--bwlimit`: bytes per second for the whole run, `None` for none.
    pub bwlimit: Option<u64>,
    /// A node-wide limit this run shares with others (`ferry serve
    /// --bwlimit`), kept to as well as its own.
    pub shared_pace: Option<Arc<throttle::SharedPace>>,
    pub cancel: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    /// Called by a worker after each chunk it writes; see [`ChunkHook`].
    pub after_chunk: Option<ChunkHook>,
    /// The umask that modes are computed with when they are not preserved:
    /// the caller's (the daemon's callers send theirs); `None` is this
    /// process's.
    pub umask: Option<u32>,
}

/// A debugging hook (the C layer's `AXL_DEBUG_PAUSE_AFTER`): called from a
/// worker thread after each chunk with the bytes this run has copied so far
/// and the run's cancel flag. It may block — until that flag is set, say —
/// so that a test can kill or cancel a transfer surely mid-copy.
pub type ChunkHook = Arc<ChunkFn>;
/// The function behind a [`ChunkHook`].
pub type ChunkFn = dyn Fn(u64, &AtomicBool) + Send + Sync;

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
    let fenced = fence::Fenced {
        inner: store,
        id,
        owner: transfer.owner.clone(),
    };
    let store: &dyn Store = &fenced;
    // A `ferry limit` from here on changes the rate this run starts with.
    let throttle = throttle::Throttle::new(
        store,
        id,
        options.bwlimit,
        store.last_seq()?,
        options.shared_pace.clone(),
    );
    store.apply(&[Change::Transfer {
        id,
        to: TransferState::Running,
        owner: None,
        context: serde_json::json!({"pid": std::process::id()}),
    }])?;
    let run = Run {
        store,
        transfer: &transfer,
        options,
        umask: options.umask.unwrap_or_else(current_umask),
        throttle: &throttle,
        warnings: Mutex::new(Vec::new()),
        default_acls: Mutex::new(HashMap::new()),
        page_max: if store.reads_entry_ranges() {
            pages::page_entries()
        } else {
            usize::MAX
        },
    };
    let result = run.all();
    match &result {
        Err(Error::Store(StoreError::Cancelled { .. })) => {
            return run.engine(&[]).report(TransferState::Cancelled, Vec::new());
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

/// What the pages of one run share.
struct Run<'a> {
    store: &'a dyn Store,
    transfer: &'a TransferRecord,
    options: &'a RunOptions,
    umask: u32,
    throttle: &'a throttle::Throttle<'a>,
    warnings: Mutex<Vec<String>>,
    /// Destination directories, and whether each has a default ACL (see
    /// `pool::inherits_default_acl`).
    default_acls: Mutex<HashMap<PathBuf, bool>>,
    /// Entries read at once.
    page_max: usize,
}

impl Run<'_> {
    /// The engine over `entries`: a page, the directories, or none.
    fn engine<'e>(&'e self, entries: &'e [EntryRecord]) -> Engine<'e> {
        #[cfg(test)]
        paging::held(entries.len());
        let options = self.options;
        Engine {
            store: self.store,
            transfer: self.transfer,
            committer: Committer {
                store: self.store,
                id: self.transfer.id,
                entries,
                preserve: self.transfer.preserve,
                temp_suffix: &self.transfer.temp_suffix,
                umask: self.umask,
                verify: options.verify != Verify::None,
                verify_recorded_too: false,
                staging: Default::default(),
            },
            options,
            warnings: &self.warnings,
            default_acls: &self.default_acls,
            copier: Copier {
                cancel: &options.cancel,
                bytes_copied: &options.progress.bytes_copied,
                after_chunk: options.after_chunk.as_deref(),
                throttle: self.throttle,
                use_copy_file_range: AtomicBool::new(true),
            },
            page_max: self.page_max,
        }
    }

    fn all(&self) -> Result<RunReport> {
        let progress = &self.options.progress;
        // Files as `FileCounts` counts them: directories aside.
        let tally = self.store.entry_tally(self.transfer.id)?;
        progress.files_total.store(tally.files, Ordering::Relaxed);
        progress.bytes_total.store(tally.bytes, Ordering::Relaxed);
        if self.options.verify != Verify::None && self.transfer.checksum.is_none() {
            return Err(Error::VerifyWithoutChecksum {
                name: self.transfer.name.clone(),
            });
        }
        if self.options.check_space {
            let mut needed = space::Needed::default();
            self.pages(|page| needed.add(page))?;
            needed.check()?;
        }
        let mut failed = Vec::new();
        let mut left_alone = HashSet::new();
        self.run_pages(&mut failed, &mut left_alone)?;

        let engine = self.engine(&[]);
        if self.options.cancel.load(Ordering::Relaxed) {
            return engine.report(TransferState::Cancelled, failed);
        }
        engine.check_every_file_ended(&mut failed)?;
        let mut removed = 0;
        if failed.is_empty() {
            // After every commit, before directories get their times.
            if let Some(filter) = &self.options.delete {
                // What is not an entry is an extra: compared with all.
                let entries = self.store.entries(self.transfer.id)?;
                removed = self.engine(&entries).delete_extras(&entries, filter)?;
            }
            let dirs = self.store.directory_entries(self.transfer.id)?;
            self.engine(&dirs)
                .finish_directories(&dirs, &left_alone, &mut failed)?;
        }
        if self.options.verify == Verify::Full {
            engine.verify_finished(&mut failed)?;
        }
        let state = if failed.is_empty() {
            TransferState::Completed
        } else {
            TransferState::Failed
        };
        // A change made at a destination after this is recorded must show
        // a later ctime than anything this run wrote (see `settle`).
        settle::wait_past_last_write();
        self.store.apply(&[Change::Transfer {
            id: self.transfer.id,
            to: state,
            owner: None,
            context: serde_json::json!({
                "files_failed": failed.len(),
                // For a caller that was not there (the daemon's): the first
                // few, so that the event stays small.
                "warnings": self.warnings.lock().expect("warnings poisoned")
                    .iter().take(WARNINGS_RECORDED_MAX).collect::<Vec<_>>(),
                "bytes_copied": self.options.progress.bytes_copied.load(Ordering::Relaxed),
                "removed": removed,
            }),
        }])?;
        engine.report(state, failed)
    }
}

struct Engine<'a> {
    store: &'a dyn Store,
    transfer: &'a TransferRecord,
    /// Holds the entries this engine works on (a page of the transfer).
    committer: Committer<'a>,
    options: &'a RunOptions,
    warnings: &'a Mutex<Vec<String>>,
    default_acls: &'a Mutex<HashMap<PathBuf, bool>>,
    copier: Copier<'a>,
    /// Entries the run reads at once (see [`PAGE_ENTRIES`]).
    page_max: usize,
}

impl Engine<'_> {
    /// Copies and commits the entries of one page (`self.committer`'s),
    /// adding what failed to `failed` and the directories left as they
    /// were to `left_alone`. `workers_gone` is dropped when the last worker
    /// is done, before the last batch is committed: the next page may start.
    fn run_page(
        &self,
        failed: &mut Vec<(EntryIndex, String)>,
        left_alone: &mut HashSet<EntryIndex>,
        workers_gone: std::sync::mpsc::Sender<()>,
    ) -> Result<()> {
        let entries = self.committer.entries;
        let progress = &self.options.progress;
        let mut failures: Vec<(EntryIndex, String)> = Vec::new();

        // Directories first, so that files have somewhere to go.
        left_alone.extend(self.create_directories(entries, &mut failures)?);
        let found = stale::clean(
            self.store,
            self.transfer,
            entries,
            self.options.clean_orphans,
        )?;
        self.warnings
            .lock()
            .expect("warnings poisoned")
            .extend(found.warnings);

        // Then the work list, and what earlier runs already copied.
        let mut work = Vec::new();
        let mut ready = Vec::new();
        let mut trackers = ranges::Trackers::new();
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
                && let Some(kept_by) =
                    skip::kept(entry, self.options.update, self.options.no_clobber)
            {
                skipped.push(batches::Skipped {
                    entry,
                    checksum: None,
                    kept_by: Some(kept_by),
                    found: None,
                });
                continue;
            }
            if may_skip
                && let Ok(Some(matched)) =
                    skip::matches(entry, self.options.skip, self.transfer.checksum)
            {
                skipped.push(batches::Skipped {
                    entry,
                    checksum: matched.checksum,
                    kept_by: None,
                    found: Some(matched.dest),
                });
                continue;
            }
            match (entry.kind, entry.state) {
                (EntryKind::Dir, _) | (_, FileState::Committed | FileState::Skipped) => {
                    if entry.kind != EntryKind::Dir {
                        progress.files_done.fetch_add(1, Ordering::Relaxed);
                        if entry.state == FileState::Skipped {
                            progress.files_skipped.fetch_add(1, Ordering::Relaxed);
                        }
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
                        metadata_applied: false,
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
                                let end = ranges::range_end(start, entry.meta.size);
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
                                    // The pieces wholly below `first` (a failure
                                    // records a prefix anywhere in a piece).
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
                            let tracker = RangeTracker::new(first, slot, digests);
                            let complete_now = tracker.finished;
                            trackers.insert(entry.index, Mutex::new(tracker));
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
                                    metadata_applied: false,
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
        let skipped_now: HashMap<EntryIndex, Option<Checksum>> = skipped
            .iter()
            .map(|s| (s.entry.index, s.checksum))
            .collect();
        self.record_skipped(skipped, &found.ours, &mut failures)?;
        let followers_of =
            self.link_ready_followers(followers, &skipped_now, &mut ready, &mut failures)?;

        let spans = work::spans(&work, |index| {
            let dest = &self.committer.entry(index).dest;
            dest.parent().unwrap_or(dest)
        });
        let workers = self
            .options
            .workers
            .clamp(1, WORKERS_MAX)
            .min(spans.len().max(1));
        let next = AtomicUsize::new(0);
        let (tx, rx) = sync_channel::<Vec<Done>>(CHANNEL_BOUND);
        let committed = std::thread::scope(|scope| {
            for _ in 0..workers {
                let (tx, gone) = (tx.clone(), workers_gone.clone());
                let (work, spans, next, trackers) = (&work, &spans, &next, &trackers);
                crate::signals::spawn_blocked(|| {
                    scope.spawn(move || {
                        self.worker(work, spans, next, trackers, tx);
                        drop(gone);
                    })
                });
            }
            drop((tx, workers_gone));
            self.commit_loop(rx, ready, std::mem::take(&mut failures), &followers_of)
        });
        failed.extend(committed?);
        Ok(())
    }
}

/// Warnings (attributes or ownership not kept…) carried in a transfer's
/// final event, at most.
pub const WARNINGS_RECORDED_MAX: usize = 64;

/// The process umask, read without changing it (`umask(2)` can only set).
pub fn current_umask() -> u32 {
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
