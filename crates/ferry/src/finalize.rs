//! Post-stage: finish what a job left behind, later, on any node, without
//! the sources — for one store per MPI rank, tens of thousands of them.
//!
//! For each transfer of each store: `completed` (or every file `copied`
//! while its owner is dead) → rename and apply saved metadata where not yet
//! done; `failed` / `cancelled` → remove temporaries; running with a dead
//! owner → `--resume` continues it, `--abort` (the default) fails it and
//! removes its temporaries; running with a live owner → left alone. Then the
//! transfer is `finalized`. Idempotent: a finalized transfer is skipped.
//!
//! Cost: the renames and metadata of many stores share one `syncfs`, and so
//! do their store commits (opened with [`SqliteStore::open_deferred`]):
//! nothing is reported finalized before that sync returned.
//!
//! A store that many nodes share (PostgreSQL) is finalized as one, its
//! transfers named or all of them ([`finalize_shared`]).
//!
//! [`stop`] is the same clean-up for one store, on demand (`stop.rs`).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::engine::commit::{self, Committer, Ready};
use crate::engine::staging;
use crate::error::{Error, Result};
use crate::model::{EntryIndex, EntryKind, EntryRecord, FileState, TransferRecord, TransferState};
use crate::owner::Liveness;
use crate::store::{Change, SqliteStore, Store};
use crate::transfer::Transfer;

mod stop;
pub use stop::{StopWhich, Stopped, discard, forget, remove_temporaries, stop};

/// Stores finalized between two syncs, per worker thread.
/// Small enough that no store is held (locked) for long.
pub const GROUP_STORES_MAX: usize = 64;

/// What to do with a transfer still running when its owner is dead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadPolicy {
    /// Fail it and remove its temporaries (the default: needs no sources).
    Abort,
    /// Continue it from what is durable (needs the sources).
    Resume,
}

#[derive(Clone, Copy, Debug)]
pub struct FinalizeOptions {
    pub dead: DeadPolicy,
    /// Treat owners on other hosts as dead (they cannot be checked from here).
    pub force: bool,
    pub jobs: usize,
    /// Read each file back before its rename and compare it with the
    /// checksum stored when it was copied; a mismatch fails it, unrenamed.
    pub verify: bool,
}

/// How one transfer came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed, renamed and metadata applied by this run.
    Finalized,
    /// Continued with `--resume`, completed and finalized.
    Resumed,
    /// Failed or cancelled (or aborted now): temporaries removed.
    Cleaned,
    /// Finalized before: nothing to do.
    AlreadyFinalized,
    /// Its owner is alive: left alone.
    LeftLive,
    /// Its owner is on another host: left alone (`--force` finalizes it).
    LeftUnknown,
    /// Something failed: see `detail`.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Finalized => "finalized",
            Outcome::Resumed => "resumed",
            Outcome::Cleaned => "cleaned",
            Outcome::AlreadyFinalized => "already finalized",
            Outcome::LeftLive => "left alone (owner alive)",
            Outcome::LeftUnknown => "left alone (owner on another host)",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TransferOutcome {
    #[serde(serialize_with = "lossy")]
    pub store: PathBuf,
    pub transfer: String,
    pub id: i64,
    pub outcome: Outcome,
    pub files_committed: usize,
    pub temporaries_removed: usize,
    /// The files whose temporaries were removed: data that never reached
    /// its final name and is gone.
    #[serde(serialize_with = "lossy_all")]
    pub removed: Vec<PathBuf>,
    /// This run failed it (its owner was dead and `--resume` not given).
    pub aborted: bool,
    pub detail: Option<String>,
}

/// A file below finalize's paths that looks like a store (named `*.db`, or
/// an SQLite database) and was not taken as one.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    #[serde(serialize_with = "lossy")]
    pub path: PathBuf,
    pub why: &'static str,
}

/// Every ferry store at or below `paths` (directories are searched
/// recursively). A store is recognised by its SQLite header and ferry's
/// application id, not by its name.
pub fn find_stores(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(find_stores_reporting(paths)?.0)
}

/// [`find_stores`], and the files that look like stores (named `*.db`, or
/// SQLite databases) that were not taken, with why.
pub fn find_stores_reporting(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Skipped>)> {
    let mut skipped = Vec::new();
    let mut found = Vec::new();
    // The same store named twice (or reached twice) is finalized once.
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(path) = stack.pop() {
        // Links are not followed: a tree of rank directories is walked as
        // it is, and a dangling link is not an error.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            // Found by the walk and gone since (a journal file, say).
            Err(e) if e.kind() == io::ErrorKind::NotFound && !paths.contains(&path) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::SourceNotFound { path });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        use std::os::unix::fs::MetadataExt;
        if meta.is_file() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        if meta.is_dir() {
            let mut children: Vec<PathBuf> = match std::fs::read_dir(&path) {
                Ok(listing) => listing.filter_map(|c| c.ok().map(|c| c.path())).collect(),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !paths.contains(&path) => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            children.sort();
            stack.extend(children.into_iter().rev());
        } else if meta.is_file() && is_ferry_store(&path) {
            found.push(path);
        } else if !paths.contains(&path) {
            if let Some(why) = looks_like_a_store(&path) {
                skipped.push(Skipped { path, why });
            }
        } else {
            // Named explicitly: say why it is not taken.
            return Err(crate::store::StoreError::NotAStore {
                path,
                detail: "no ferry store header".into(),
            }
            .into());
        }
    }
    Ok((found, skipped))
}

/// Why a file that is not a ferry store might have been meant as one.
fn looks_like_a_store(path: &Path) -> Option<&'static str> {
    let mut header = [0u8; 16];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut header));
    let named = path.extension().is_some_and(|e| e == "db");
    match read {
        Ok(()) if &header == b"SQLite format 3\0" => {
            Some("an SQLite database, but not a ferry store (another application's)")
        }
        Err(e) if named && e.kind() == io::ErrorKind::PermissionDenied => {
            Some("cannot be read (permission denied)")
        }
        _ if named => Some("not an SQLite database"),
        _ => None,
    }
}

/// The first 72 bytes: "SQLite format 3\0", and "FRRY" as application id
/// at offset 68. A store whose owner was killed before its first checkpoint
/// has that id only in its write-ahead log: then SQLite is asked, read-only.
pub fn is_ferry_store(path: &Path) -> bool {
    let mut header = [0u8; 72];
    if File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_err()
        || &header[..16] != b"SQLite format 3\0"
    {
        return false;
    }
    match &header[68..72] {
        b"FRRY" => true,
        [0, 0, 0, 0] => {
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| c.query_row("PRAGMA application_id", [], |row| row.get::<_, i64>(0)))
                .is_ok_and(|id| id == 0x4652_5259)
        }
        _ => false,
    }
}

/// Finalizes every transfer of every store, `options.jobs` stores at once.
pub fn finalize(stores: &[PathBuf], options: FinalizeOptions) -> Vec<TransferOutcome> {
    let next = AtomicUsize::new(0);
    let jobs = options.jobs.clamp(1, 256);
    let mut outcomes: Vec<TransferOutcome> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..jobs)
            .map(|_| {
                scope.spawn(|| {
                    let mut outcomes = Vec::new();
                    loop {
                        let first = next.fetch_add(GROUP_STORES_MAX, Ordering::Relaxed);
                        let Some(group) =
                            stores.get(first..(first + GROUP_STORES_MAX).min(stores.len()))
                        else {
                            return outcomes;
                        };
                        if group.is_empty() {
                            return outcomes;
                        }
                        outcomes.extend(finalize_group(group, options));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a finalize worker panicked"))
            .collect()
    });
    outcomes.sort_by(|a, b| (&a.store, a.id).cmp(&(&b.store, b.id)));
    outcomes
}

/// Transfers of a shared store finalized between two syncs: a bound on
/// the work done before anything is recorded.
pub const GROUP_TRANSFERS_MAX: usize = 64;

/// Finalizes the transfers `names` (every one, when empty) of a store that
/// many nodes share (PostgreSQL), in this thread, [`GROUP_TRANSFERS_MAX`]
/// at a time: their renames, metadata and removals, one sync, then each
/// recorded (a PostgreSQL commit is durable when it returns). A name the
/// store lacks is an error before anything is done.
pub fn finalize_shared(
    store: Arc<dyn Store>,
    names: &[String],
    options: FinalizeOptions,
) -> Result<Vec<TransferOutcome>> {
    let transfers = if names.is_empty() {
        store.transfers()?
    } else {
        names
            .iter()
            .map(|name| {
                store
                    .transfer_by_name(name)?
                    .ok_or_else(|| Error::TransferNotFound {
                        name: name.clone(),
                        store: store.location(),
                    })
            })
            .collect::<Result<Vec<_>>>()?
    };
    let mut outcomes = Vec::new();
    for group in transfers.chunks(GROUP_TRANSFERS_MAX) {
        let work = vec![Opened {
            store: Arc::clone(&store),
            sqlite: None,
            transfers: group.to_vec(),
        }];
        outcomes.extend(finalize_opened(work, options));
    }
    outcomes.sort_by_key(|o| o.id);
    Ok(outcomes)
}

/// Work done on disk for one transfer, waiting for the group's sync before
/// its store records it.
struct Pending {
    store: Arc<dyn Store>,
    /// A SQLite store, whose files are synced after it recorded (a
    /// PostgreSQL store's commits are durable when they return).
    sqlite: Option<Arc<SqliteStore>>,
    changes: Vec<Change>,
    outcome: TransferOutcome,
}

/// A store opened for finalize and the transfers of it to finalize.
struct Opened {
    store: Arc<dyn Store>,
    sqlite: Option<Arc<SqliteStore>>,
    transfers: Vec<TransferRecord>,
}

fn finalize_group(group: &[PathBuf], options: FinalizeOptions) -> Vec<TransferOutcome> {
    let mut done = Vec::new();
    let mut opened: Vec<Arc<SqliteStore>> = Vec::new();
    let mut work: Vec<Opened> = Vec::new();
    for path in group {
        let store = match SqliteStore::open_deferred(path) {
            Ok(store) => Arc::new(store),
            Err(e) => {
                done.push(store_failure(path, e.into()));
                continue;
            }
        };
        opened.push(Arc::clone(&store));
        match store.transfers() {
            Ok(transfers) => work.push(Opened {
                sqlite: Some(Arc::clone(&store)),
                store,
                transfers,
            }),
            Err(e) => done.push(store_failure(path, e.into())),
        }
    }
    done.extend(finalize_opened(work, options));
    // Everything is durable in the write-ahead logs: fold them in. A store
    // that cannot settle (another process has it open) keeps its log,
    // which is as safe, only larger.
    for store in opened {
        let _ = store.settle();
    }
    done
}

/// Finalizes the given transfers of the given stores: their renames,
/// metadata and removals first, then one sync for them all, then each store
/// records its changes, then one more sync of the stores' files; only then
/// are outcomes reported.
fn finalize_opened(work: Vec<Opened>, options: FinalizeOptions) -> Vec<TransferOutcome> {
    let mut done = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut to_sync: Vec<PathBuf> = Vec::new();
    for Opened {
        store,
        sqlite,
        transfers,
    } in work
    {
        let path = store.location();
        for transfer in transfers {
            // A bug met in one store's data must not end the other stores'
            // finalize: it becomes that transfer's failure.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                finalize_transfer(&store, &transfer, options, &mut to_sync)
            }))
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(Error::Io {
                    path: path.clone(),
                    source: io::Error::other(format!(
                        "internal error (a bug, please report it): {what}"
                    )),
                })
            });
            match step {
                Ok(Step::Done(outcome)) => done.push(outcome),
                Ok(Step::Record(changes, outcome)) => pending.push(Pending {
                    store: Arc::clone(&store),
                    sqlite: sqlite.clone(),
                    changes,
                    outcome,
                }),
                Err(e) => done.push(outcome(
                    &path,
                    &transfer,
                    Outcome::Failed,
                    Some(e.to_string()),
                )),
            }
        }
        to_sync.extend(sqlite.iter().flat_map(|s| s.files()));
    }
    // One sync for the renames, metadata and removals of the whole group...
    if let Err(e) = commit::make_durable(to_sync.iter().map(PathBuf::as_path)) {
        let message = format!("could not make the group durable: {e}");
        done.extend(pending.drain(..).map(|p| failed(p.outcome, &message)));
    }
    // ...then each store records it, and one more sync makes the records
    // durable before anything is reported.
    let mut stores_written: Vec<PathBuf> = Vec::new();
    let mut recorded = Vec::new();
    for p in pending {
        match p.store.apply(&p.changes) {
            Ok(()) => {
                stores_written.extend(p.sqlite.iter().flat_map(|s| s.files()));
                recorded.push(p.outcome);
            }
            Err(e) => done.push(failed(p.outcome, &e.to_string())),
        }
    }
    match commit::make_durable(stores_written.iter().map(PathBuf::as_path)) {
        Ok(()) => done.extend(recorded),
        Err(e) => {
            let message = format!("could not make the store durable: {e}");
            done.extend(recorded.into_iter().map(|o| failed(o, &message)));
        }
    }
    done
}

enum Step {
    Done(TransferOutcome),
    Record(Vec<Change>, TransferOutcome),
}

fn finalize_transfer(
    store: &Arc<dyn Store>,
    transfer: &TransferRecord,
    options: FinalizeOptions,
    to_sync: &mut Vec<PathBuf>,
) -> Result<Step> {
    let path = store.location();
    let state = transfer.state;
    if state == TransferState::Finalized {
        return Ok(Step::Done(outcome(
            &path,
            transfer,
            Outcome::AlreadyFinalized,
            None,
        )));
    }
    if !state.is_terminal() {
        match transfer.owner_liveness() {
            Liveness::Alive | Liveness::Me => {
                let detail = format!(
                    "owner pid {} on {} is alive",
                    transfer.owner.pid, transfer.owner.host
                );
                return Ok(Step::Done(outcome(
                    &path,
                    transfer,
                    Outcome::LeftLive,
                    Some(detail),
                )));
            }
            Liveness::Unknown if !options.force => {
                let detail = format!(
                    "owner pid {} is on {}: use --force",
                    transfer.owner.pid, transfer.owner.host
                );
                return Ok(Step::Done(outcome(
                    &path,
                    transfer,
                    Outcome::LeftUnknown,
                    Some(detail),
                )));
            }
            Liveness::Unknown | Liveness::Dead => {}
        }
    }
    let entries = store.entries(transfer.id)?;
    let data_complete = entries
        .iter()
        .all(|e| e.kind == EntryKind::Dir || e.state == FileState::Copied || e.state.is_done());
    let finish =
        matches!(state, TransferState::Completed) || (!state.is_terminal() && data_complete);
    if finish {
        return commit_remaining(store, transfer, &entries, to_sync, options.verify);
    }
    if !state.is_terminal() && options.dead == DeadPolicy::Resume {
        return resume(store, transfer, options.force);
    }
    // Aborted now: recorded first, and only if the dead owner is still the
    // owner (a compare-and-swap), so that a rank that re-attached meanwhile
    // keeps its transfer and its temporaries.
    if !state.is_terminal() {
        let aborted = store.apply(&[Change::Transfer {
            id: transfer.id,
            to: TransferState::Failed,
            owner: Some(transfer.owner.clone()),
            context: serde_json::json!({"by": "finalize", "why": "aborted: owner dead", "pid": std::process::id()}),
        }]);
        match aborted {
            Ok(()) => {}
            Err(crate::store::StoreError::OwnerChanged { host, pid, .. }) => {
                let detail = format!("re-attached meanwhile by pid {pid} on {host}");
                return Ok(Step::Done(outcome(
                    &path,
                    transfer,
                    Outcome::LeftLive,
                    Some(detail),
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Failed, cancelled, or aborted now: remove what never got its final name.
    let removed =
        staging::remove_temporaries_left(&entries, &transfer.temp_suffix, transfer.id, to_sync)?;
    let changes = vec![transfer_change(
        transfer,
        TransferState::Finalized,
        "temporaries removed",
    )];
    let mut result = outcome(&path, transfer, Outcome::Cleaned, None);
    result.temporaries_removed = removed.len();
    result.removed = removed;
    result.aborted = !state.is_terminal();
    Ok(Step::Record(changes, result))
}

/// Rename and apply metadata for every `copied` entry, directories last.
fn commit_remaining(
    store: &Arc<dyn Store>,
    transfer: &TransferRecord,
    entries: &[EntryRecord],
    to_sync: &mut Vec<PathBuf>,
    verify: bool,
) -> Result<Step> {
    let committer = Committer {
        store: store.as_ref(),
        id: transfer.id,
        entries,
        preserve: transfer.preserve,
        temp_suffix: &transfer.temp_suffix,
        umask: crate::engine::current_umask(),
        verify,
        verify_recorded_too: true,
        staging: Default::default(),
    };
    // Directories a dead run left staged go in place first, with their
    // files that are `copied` (and, under --verify, read back whole there).
    let published =
        staging::publish_left(entries, &transfer.temp_suffix, transfer.id, |entry, at| {
            !verify
                || entry
                    .checksum
                    .is_none_or(|c| crate::verify::read_back(at, c).problem().is_none())
        })?;
    to_sync.extend(published);
    let mut live: Vec<Ready> = entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir && e.state == FileState::Copied)
        .map(|e| Ready {
            index: e.index,
            durable: true,
            recorded: true,
            metadata_applied: false,
            checksum: e.checksum,
        })
        .collect();
    let mut failed: Vec<(EntryIndex, String)> = Vec::new();
    let mut restart = HashSet::new();
    if verify {
        // The stored checksums: what the copy read from the sources.
        live.retain(|r| match committer.verify_durable(r) {
            Ok(()) => true,
            Err(message) => {
                restart.insert(r.index);
                failed.push((r.index, message));
                false
            }
        });
    }
    // Attributes a destination refuses are dropped here without a word:
    // finalize reports per transfer, and cp -a would only have warned.
    let mut warnings = Vec::new();
    committer.place(&mut live, &mut failed, &mut warnings);
    let mut placed: Vec<EntryIndex> = live.iter().map(|r| r.index).collect();
    if failed.is_empty() {
        let dirs = entries
            .iter()
            .rev()
            .filter(|e| e.kind == EntryKind::Dir && e.state != FileState::Committed);
        placed.extend(
            committer
                .place_directories(dirs, &mut failed, &mut warnings)
                .iter()
                .map(|d| d.index),
        );
    }
    to_sync.extend(placed.iter().map(|i| entries[i.0 as usize].dest.clone()));
    let mut changes = committer.committed_changes(&placed, &failed, &restart);
    let path = store.location();
    let files_committed = live.len();
    if !failed.is_empty() {
        if !transfer.state.is_terminal() {
            changes.push(transfer_change(
                transfer,
                TransferState::Failed,
                "finalize could not place every file",
            ));
        }
        let detail = failed
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut result = outcome(&path, transfer, Outcome::Failed, Some(detail));
        result.files_committed = files_committed;
        return Ok(Step::Record(changes, result));
    }
    // A transfer that never got to completed is walked there, each step
    // with its event, so that the log tells the same story as the tables.
    let walk: &[TransferState] = match transfer.state {
        TransferState::Created => &[
            TransferState::Dispatched,
            TransferState::Running,
            TransferState::Completed,
        ],
        TransferState::Dispatched => &[TransferState::Running, TransferState::Completed],
        TransferState::Running => &[TransferState::Completed],
        _ => &[],
    };
    for to in walk {
        changes.push(transfer_change(
            transfer,
            *to,
            "finalize: every file was copied",
        ));
    }
    changes.push(transfer_change(
        transfer,
        TransferState::Finalized,
        "renamed and metadata applied",
    ));
    let mut result = outcome(&path, transfer, Outcome::Finalized, None);
    result.files_committed = files_committed;
    Ok(Step::Record(changes, result))
}

/// `--resume`: continue a dead owner's transfer now (needs its sources),
/// then finalize it.
fn resume(store: &Arc<dyn Store>, transfer: &TransferRecord, force: bool) -> Result<Step> {
    let mut handle = Transfer::open(Arc::clone(store), &transfer.name)?;
    // --force: an owner on another host counts as dead, as for --abort.
    handle.set_take_over_unknown_owner(force);
    handle.resume(1)?;
    let report = handle.wait()?;
    let path = store.location();
    if report.state != TransferState::Completed {
        let detail = report
            .failures
            .iter()
            .map(|f| f.error.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return Ok(Step::Done(outcome(
            &path,
            transfer,
            Outcome::Failed,
            Some(detail),
        )));
    }
    let changes = vec![transfer_change(
        transfer,
        TransferState::Finalized,
        "resumed and completed",
    )];
    let mut result = outcome(&path, transfer, Outcome::Resumed, None);
    result.files_committed = report.files_committed as usize;
    Ok(Step::Record(changes, result))
}

fn transfer_change(transfer: &TransferRecord, to: TransferState, why: &str) -> Change {
    Change::Transfer {
        id: transfer.id,
        to,
        owner: None,
        context: serde_json::json!({"by": "finalize", "why": why, "pid": std::process::id()}),
    }
}

fn outcome(
    store: &Path,
    transfer: &TransferRecord,
    outcome: Outcome,
    detail: Option<String>,
) -> TransferOutcome {
    TransferOutcome {
        store: store.to_path_buf(),
        transfer: transfer.name.clone(),
        id: transfer.id.0,
        outcome,
        files_committed: 0,
        temporaries_removed: 0,
        removed: Vec::new(),
        aborted: false,
        detail: detail.map(|d| crate::words::in_words(&d)),
    }
}

fn failed(mut outcome: TransferOutcome, message: &str) -> TransferOutcome {
    outcome.outcome = Outcome::Failed;
    outcome.detail = Some(crate::words::in_words(message));
    outcome
}

fn store_failure(path: &Path, e: Error) -> TransferOutcome {
    TransferOutcome {
        store: path.to_path_buf(),
        transfer: String::new(),
        id: 0,
        outcome: Outcome::Failed,
        files_committed: 0,
        temporaries_removed: 0,
        removed: Vec::new(),
        aborted: false,
        detail: Some(crate::words::in_words(&e.to_string())),
    }
}

fn lossy_all<S: serde::Serializer>(
    paths: &[PathBuf],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
}

fn lossy<S: serde::Serializer>(path: &Path, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&path.to_string_lossy())
}
