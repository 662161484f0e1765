//! Steps 2–6 of the commit protocol for a batch of entries whose data is
//! written: make it durable, record `copied`, rename, apply metadata, make
//! that durable, record `committed`. Each step is idempotent, so a crash
//! between any two is recovered by running the batch again.
//!
//! **Invariant:** the store never says more than the disk holds: `copied` is
//! recorded only after the data's fsync/syncfs returned, `committed` only
//! after the rename and the metadata were made durable.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, Gid, Mode, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::failpoint::{self, CommitStep};
use crate::model::{Checksum, EntryIndex, EntryKind, EntryRecord, FileState, Preserve, TransferId};
use crate::store::{Change, Store, StoreError};

use super::staging::{self, Staging};
pub use super::temp::temp_path;

/// An entry whose data is in its temporary.
#[derive(Clone, Copy, Debug)]
pub struct Ready {
    pub index: EntryIndex,
    /// Already fsynced by the worker (large files), or recorded `copied` by
    /// an earlier run.
    pub durable: bool,
    /// `copied` is already in the store (an earlier run got that far).
    pub recorded: bool,
    /// Step 5 was done by the worker, on the open temporary (a fresh copy,
    /// not read back before the rename): the rename alone places it.
    pub metadata_applied: bool,
    /// Of the bytes as read from the source (`None`: no checksums).
    pub checksum: Option<Checksum>,
}

/// What a failed sync leaves not durable.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SyncOf {
    /// A batch's data in its temporaries.
    Data,
    /// The renames and metadata of batches placed before it.
    Renames,
}

impl Ready {
    /// A hard link whose temporary was just linked to its leader's data:
    /// nothing of it is durable or recorded yet.
    pub fn linked(index: EntryIndex, checksum: Option<Checksum>) -> Ready {
        Ready {
            index,
            durable: false,
            recorded: false,
            metadata_applied: false,
            checksum,
        }
    }
}

/// What a batch commit needs to know about its transfer.
pub struct Committer<'a> {
    pub store: &'a dyn Store,
    pub id: TransferId,
    pub entries: &'a [EntryRecord],
    pub preserve: Preserve,
    pub temp_suffix: &'a str,
    pub umask: u32,
    /// Read each temporary back from disk after it is durable and compare
    /// its checksum with the source's, before the rename (`--verify`).
    pub verify: bool,
    /// Also those recorded `copied` by an earlier run (finalize).
    pub verify_recorded_too: bool,
    /// The page's directories written under a temporary name (none but
    /// in a run's page).
    pub staging: Staging<Ready>,
}

/// A batch renamed into place and given its metadata, whose sync and
/// `committed` record ride on the next batch's ([`Committer::commit_overlapped`])
/// or come with [`Committer::finish`].
#[derive(Default)]
pub struct Placed {
    ready: Vec<Ready>,
    /// Failed while placed: already reported, not yet recorded.
    failed: Vec<(EntryIndex, String)>,
    /// Staged directories renamed into place (see `staging`).
    dirs: Vec<PathBuf>,
}

impl Placed {
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.failed.is_empty() && self.dirs.is_empty()
    }

    /// Adds the entries of a batch placed after these.
    pub fn absorb(&mut self, later: Placed) {
        self.ready.extend(later.ready);
        self.failed.extend(later.failed);
        self.dirs.extend(later.dirs);
    }
}

/// What became of a batch: entries committed, and entries that failed with
/// their message (already recorded in the store).
#[derive(Default)]
pub struct BatchOutcome {
    pub committed: Vec<EntryIndex>,
    pub failed: Vec<(EntryIndex, String)>,
    /// Metadata a destination refused without failing it (an extended
    /// attribute its file system does not take), as `cp -a` warns.
    pub warnings: Vec<String>,
}

impl Committer<'_> {
    /// The entry `index`, which `entries` must hold.
    pub(super) fn entry(&self, index: EntryIndex) -> &EntryRecord {
        // By position when the entries are a run's page of the transfer (in
        // a row from the first); a distributed worker's batch holds some of
        // them, sorted by index.
        let first = self.entries.first().map_or(0, |e| e.index.0);
        match index
            .0
            .checked_sub(first)
            .and_then(|at| self.entries.get(at as usize))
        {
            Some(entry) if entry.index == index => entry,
            _ => {
                let at = self
                    .entries
                    .binary_search_by_key(&index, |e| e.index)
                    .expect("entries must be sorted by index");
                &self.entries[at]
            }
        }
    }

    /// Whether `entries` holds the entry `index`.
    pub(super) fn holds(&self, index: EntryIndex) -> bool {
        self.entries
            .binary_search_by_key(&index, |e| e.index)
            .is_ok()
    }

    /// Whether `entry` is written inside a staged directory.
    pub fn is_staged(&self, entry: &EntryRecord) -> bool {
        self.staging.dir_of(entry).is_some()
    }

    /// Where `entry`'s data is written before it is in place: its
    /// temporary name, or its own name in its staged directory.
    pub fn temp_of(&self, entry: &EntryRecord) -> PathBuf {
        match self.staging.dir_of(entry) {
            Some(dir) => staging::staged_path(
                dir,
                entry.dest.file_name().unwrap_or_default(),
                self.temp_suffix,
                self.id,
            ),
            None => temp_path(&entry.dest, self.temp_suffix, self.id),
        }
    }

    /// Commits `batch` and records `failures` (found by the workers) in the
    /// same transactions. Only store errors are returned: file errors fail
    /// that file and the batch goes on.
    pub fn commit(
        &self,
        batch: &[Ready],
        failures: Vec<(EntryIndex, String)>,
    ) -> Result<BatchOutcome, StoreError> {
        let (mut outcome, copied) = self.commit_overlapped(batch, failures, Placed::default())?;
        let (placed, placing) = self.place_batch(copied);
        outcome.failed.extend(placing.failed);
        outcome.warnings.extend(placing.warnings);
        let rest = self.finish(placed)?;
        outcome.committed = rest.committed;
        outcome.failed.extend(rest.failed);
        Ok(outcome)
    }

    /// Steps 2–3 of `batch`, and steps 5½–6 of `earlier` (batches placed
    /// before it): one sync makes this batch's data and the earlier
    /// batches' renames and metadata durable, and one transaction records
    /// this batch `copied` and the earlier ones `committed`. Half the syncs
    /// and transactions of committing each batch on its own, for the same
    /// order of steps per file. The entries committed are the earlier
    /// batches'. Returns this batch's entries now recorded `copied`, for
    /// [`Committer::place_batch`] (which may run while the next batch is
    /// synced); [`Committer::finish`] commits the last placed.
    pub fn commit_overlapped(
        &self,
        batch: &[Ready],
        failures: Vec<(EntryIndex, String)>,
        earlier: Placed,
    ) -> Result<(BatchOutcome, Vec<Ready>), StoreError> {
        let mut outcome = BatchOutcome {
            committed: Vec::new(),
            failed: failures,
            warnings: Vec::new(),
        };
        // A file the workers reported failed is never committed, even if
        // another of its ranges also reported it copied.
        let failed_now: HashSet<EntryIndex> = outcome.failed.iter().map(|(i, _)| *i).collect();
        let mut live: Vec<Ready> = batch
            .iter()
            .copied()
            .filter(|r| !failed_now.contains(&r.index))
            .collect();
        let Placed {
            ready: mut earlier,
            failed: earlier_failed,
            dirs: earlier_dirs,
        } = earlier;

        // 2. This batch's data durable, and with it 5½: the earlier batch's
        // renames and metadata.
        let data_ok = !live.iter().any(|r| !r.durable)
            || self.fail_unless(SyncOf::Data, &mut live, &mut outcome.failed, || {
                failpoint::hit(CommitStep::SyncData)
            });
        let renames_ok = (earlier.is_empty() && earlier_dirs.is_empty())
            || self.fail_unless(SyncOf::Renames, &mut earlier, &mut outcome.failed, || {
                failpoint::hit(CommitStep::SyncDir)
            });
        let unsynced: Vec<&EntryRecord> = match data_ok {
            true => live
                .iter()
                .filter(|r| !r.durable)
                .map(|r| self.entry(r.index))
                .collect(),
            false => Vec::new(),
        };
        let renamed: Vec<&EntryRecord> = match renames_ok {
            true => earlier.iter().map(|r| self.entry(r.index)).collect(),
            false => Vec::new(),
        };
        let dirs: &[PathBuf] = match renames_ok {
            true => &earlier_dirs,
            false => &[],
        };
        if let Err(e) = self.make_batch_durable(&unsynced, &renamed, dirs) {
            self.fail_unless(SyncOf::Data, &mut live, &mut outcome.failed, || {
                Err(clone_error(&e))
            });
            self.fail_unless(SyncOf::Renames, &mut earlier, &mut outcome.failed, || {
                Err(clone_error(&e))
            });
        }

        // 2b. Verify: what the disk holds is what was read, or the file
        // fails, is never renamed, and starts over on resume.
        let mut restart = HashSet::new();
        if self.verify {
            live.retain(|r| match self.verify_durable(r) {
                Ok(()) => true,
                Err(message) => {
                    restart.insert(r.index);
                    outcome.failed.push((r.index, message));
                    false
                }
            });
        }

        // 3. Record this batch copied (with the failures so far), and 6. the
        // earlier batch committed.
        failpoint::hit(CommitStep::RecordCopied).map_err(|e| self.injected(e))?;
        if !earlier.is_empty() {
            failpoint::hit(CommitStep::RecordCommitted).map_err(|e| self.injected(e))?;
        }
        let done_earlier: Vec<EntryIndex> = earlier.iter().map(|r| r.index).collect();
        let mut changes = self.committed_changes(&done_earlier, &earlier_failed, &HashSet::new());
        changes.extend(
            live.iter()
                .filter(|r| !r.recorded)
                .map(|r| self.copied_change(r.index, r.checksum)),
        );
        changes.extend(
            outcome
                .failed
                .iter()
                .map(|(index, message)| self.failed_change(*index, message, &restart)),
        );
        self.store.apply(&changes)?;
        outcome.committed = done_earlier;

        Ok((outcome, live))
    }

    /// Steps 4 and 5 of a batch recorded `copied`: rename into place, then
    /// metadata. Made durable and recorded `committed` with a later batch
    /// (`commit_overlapped`'s `earlier`), or by [`Committer::finish`]. The
    /// outcome holds the entries that failed (to report now; the returned
    /// `Placed` records them) and the warnings.
    pub fn place_batch(&self, copied: Vec<Ready>) -> (Placed, BatchOutcome) {
        let mut outcome = BatchOutcome::default();
        let (staged, mut copied): (Vec<Ready>, Vec<Ready>) = copied
            .into_iter()
            .partition(|r| self.staging.dir_of(self.entry(r.index)).is_some());
        self.place(&mut copied, &mut outcome.failed, &mut outcome.warnings);
        let mut placed = Placed::default();
        for r in staged {
            let entry = self.entry(r.index);
            let dir = self.staging.dir_of(entry).expect("a staged entry");
            if let Err(message) = self.place_staged(entry, &r, &mut outcome.warnings) {
                outcome.failed.push((r.index, message));
                continue;
            }
            let Some(all) = self.staging.hold(dir, r) else {
                continue;
            };
            // Every file of it came: they are all its children.
            let children: Vec<&EntryRecord> = all.iter().map(|r| self.entry(r.index)).collect();
            self.publish(dir, &children, all, &mut placed, &mut outcome.failed);
        }
        placed.ready.extend(copied);
        placed.failed = outcome.failed.clone();
        (placed, outcome)
    }

    /// Puts staged directory `dir` in place with its files `held` (of its
    /// `children`): into `placed`, or each into `failed` with the reason.
    fn publish(
        &self,
        dir: &Path,
        children: &[&EntryRecord],
        held: Vec<Ready>,
        placed: &mut Placed,
        failed: &mut Vec<(EntryIndex, String)>,
    ) {
        let ids: HashSet<EntryIndex> = held.iter().map(|r| r.index).collect();
        match staging::publish(dir, children, &ids, self.temp_suffix, self.id) {
            Ok(()) => {
                placed.ready.extend(held);
                placed.dirs.push(dir.to_path_buf());
            }
            Err(e) => failed.extend(held.iter().map(|r| {
                let dest = self.entry(r.index).dest.display();
                (
                    r.index,
                    format!("{dest}: cannot put its directory in place: {e}"),
                )
            })),
        }
    }

    /// Step 5 for a file of a staged directory, in that directory, where
    /// the worker could not (`--verify` read it back first). Its step 4
    /// is its directory's rename: its fail point stands for that here.
    fn place_staged(
        &self,
        entry: &EntryRecord,
        r: &Ready,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        failpoint::hit(CommitStep::Rename)
            .map_err(|e| format!("{}: cannot rename into place: {e}", entry.dest.display()))?;
        if r.metadata_applied {
            return Ok(());
        }
        let at = self.temp_of(entry);
        failpoint::hit(CommitStep::ApplyMetadata)
            .and_then(|()| {
                apply_metadata_to(
                    MetadataTarget::Path(&at),
                    entry,
                    self.preserve,
                    self.umask,
                    warnings,
                )
            })
            .map_err(|e| format!("{}: cannot apply metadata: {e}", entry.dest.display()))
    }

    /// At the end of a page: puts in place the staged directories that
    /// some of their files kept waiting (failed, or never copied: those
    /// move to their own temporary names first), with the files placed.
    /// Only when nothing is with the placer.
    pub fn publish_rest(&self) -> (Placed, BatchOutcome) {
        let mut outcome = BatchOutcome::default();
        let mut placed = Placed::default();
        let rest = self.staging.take_rest();
        if rest.is_empty() {
            return (placed, outcome);
        }
        let dirs: HashSet<&Path> = rest.iter().map(|(dir, _)| dir.as_path()).collect();
        let children = staging::children_of(self.entries, &dirs);
        for (dir, held) in rest {
            let kids = children.get(&dir).map(Vec::as_slice).unwrap_or_default();
            self.publish(&dir, kids, held, &mut placed, &mut outcome.failed);
        }
        placed.failed = outcome.failed.clone();
        (placed, outcome)
    }

    /// Steps 5½ and 6 for the batches `placed` holds: their renames and
    /// metadata durable, then recorded `committed` (and their rename
    /// failures recorded).
    pub fn finish(&self, placed: Placed) -> Result<BatchOutcome, StoreError> {
        let Placed {
            ready: mut live,
            failed,
            dirs,
        } = placed;
        let mut outcome = BatchOutcome::default();
        if live.is_empty() && failed.is_empty() && dirs.is_empty() {
            return Ok(outcome);
        }
        if !live.is_empty() || !dirs.is_empty() {
            let synced = failpoint::hit(CommitStep::SyncDir).and_then(|()| {
                let renamed: Vec<&EntryRecord> = live.iter().map(|r| self.entry(r.index)).collect();
                self.make_batch_durable(&[], &renamed, &dirs)
            });
            if let Err(e) = synced {
                self.fail_unless(SyncOf::Renames, &mut live, &mut outcome.failed, || {
                    Err(clone_error(&e))
                });
            }
        }
        failpoint::hit(CommitStep::RecordCommitted).map_err(|e| self.injected(e))?;
        let done: Vec<EntryIndex> = live.iter().map(|r| r.index).collect();
        let mut recorded_failures = failed;
        recorded_failures.extend(outcome.failed.iter().cloned());
        self.store
            .apply(&self.committed_changes(&done, &recorded_failures, &HashSet::new()))?;
        outcome.committed = done;
        Ok(outcome)
    }

    /// Runs `check` (a fail point, or a sync's outcome); if it fails, the
    /// entries of `entries` it left not durable move to `failed`: for
    /// [`SyncOf::Data`] those whose data was not durable already, for
    /// [`SyncOf::Renames`] all. Whether it passed.
    fn fail_unless(
        &self,
        of: SyncOf,
        entries: &mut Vec<Ready>,
        failed: &mut Vec<(EntryIndex, String)>,
        check: impl FnOnce() -> io::Result<()>,
    ) -> bool {
        let Err(e) = check() else { return true };
        let what = match of {
            SyncOf::Data => "the data",
            SyncOf::Renames => "the rename",
        };
        entries.retain(|r| {
            if of == SyncOf::Data && r.durable {
                return true;
            }
            let dest = self.entry(r.index).dest.display();
            failed.push((
                r.index,
                format!("{dest}: could not make {what} durable: {e}"),
            ));
            false
        });
        false
    }

    /// One sync for temporaries whose data must be durable (`unsynced`) and
    /// destinations renamed into place whose names and metadata must be
    /// (`renamed`): a single file by its own fsyncs, more by
    /// [`make_durable`].
    fn make_batch_durable(
        &self,
        unsynced: &[&EntryRecord],
        renamed: &[&EntryRecord],
        dirs: &[PathBuf],
    ) -> io::Result<()> {
        match (unsynced, renamed, dirs) {
            ([], [], []) => Ok(()),
            ([one], [], []) if one.kind == EntryKind::File => {
                let temp = self.temp_of(one);
                File::open(&temp)
                    .and_then(|f| f.sync_data())
                    .and_then(|()| sync_parent(&temp))
            }
            ([], [one], []) if one.kind == EntryKind::File => {
                sync_parent(&one.dest).and_then(|()| File::open(&one.dest)?.sync_all())
            }
            _ => {
                let temps: Vec<PathBuf> = unsynced.iter().map(|e| self.temp_of(e)).collect();
                make_durable(
                    temps
                        .iter()
                        .map(PathBuf::as_path)
                        .chain(renamed.iter().map(|e| e.dest.as_path()))
                        .chain(dirs.iter().map(PathBuf::as_path)),
                )
            }
        }
    }

    /// Reads a durable temporary back from disk (its cached pages dropped
    /// first) and compares its checksum with the one computed as the source
    /// was read. A file `copied` by an earlier run of the same process
    /// family was verified then, unless `again` (finalize --verify); there
    /// an earlier finalize may have renamed it already, so the final name
    /// is read when the temporary is gone.
    pub fn verify_durable(&self, r: &Ready) -> Result<(), String> {
        let entry = self.entry(r.index);
        let again = !self.verify_recorded_too && r.recorded;
        let (Some(expected), EntryKind::File, false) = (r.checksum, entry.kind, again) else {
            return Ok(());
        };
        let mut temp = self.temp_of(entry);
        if r.recorded && !temp.exists() {
            temp = entry.dest.clone();
        }
        match crate::verify::read_back(&temp, expected).problem() {
            None => Ok(()),
            Some(problem) => Err(format!(
                "{}: verification failed: {}: {problem}; it was not renamed",
                entry.dest.display(),
                temp.display()
            )),
        }
    }

    /// Steps 4 and 5 for entries whose data is durable in their temporary:
    /// rename into place, then metadata. Entries that fail move from `live`
    /// to `failed`. Nothing is made durable or recorded here: the caller
    /// syncs (once for many transfers, in finalize) and then records.
    pub fn place(
        &self,
        live: &mut Vec<Ready>,
        failed: &mut Vec<(EntryIndex, String)>,
        warnings: &mut Vec<String>,
    ) {
        live.retain(|r| {
            let entry = self.entry(r.index);
            let done = failpoint::hit(CommitStep::Rename)
                .and_then(|()| self.rename(entry))
                .map_err(|e| format!("{}: cannot rename into place: {e}", entry.dest.display()))
                .and_then(|()| {
                    if r.metadata_applied {
                        return Ok(());
                    }
                    failpoint::hit(CommitStep::ApplyMetadata)
                        .and_then(|()| apply_metadata(entry, self.preserve, self.umask, warnings))
                        .map_err(|e| {
                            format!("{}: cannot apply metadata: {e}", entry.dest.display())
                        })
                });
            match done {
                Ok(()) => true,
                Err(message) => {
                    failed.push((r.index, message));
                    false
                }
            }
        });
    }

    /// Step 5 for directories, once everything inside is in place: `dirs`
    /// deepest first. Those that fail move to `failed`.
    pub fn place_directories<'e>(
        &self,
        dirs: impl Iterator<Item = &'e EntryRecord>,
        failed: &mut Vec<(EntryIndex, String)>,
        warnings: &mut Vec<String>,
    ) -> Vec<&'e EntryRecord> {
        let mut done = Vec::new();
        for dir in dirs {
            let applied = failpoint::hit(CommitStep::ApplyMetadata)
                .and_then(|()| apply_metadata(dir, self.preserve, self.umask, warnings));
            match applied {
                Ok(()) => done.push(dir),
                Err(e) => failed.push((
                    dir.index,
                    format!("{}: cannot apply metadata: {e}", dir.dest.display()),
                )),
            }
        }
        done
    }

    /// Step 6's changes: `placed` committed (their renames and metadata now
    /// durable) and `failed` recorded with their messages.
    pub fn committed_changes(
        &self,
        placed: &[EntryIndex],
        failed: &[(EntryIndex, String)],
        restart: &HashSet<EntryIndex>,
    ) -> Vec<Change> {
        placed
            .iter()
            .map(|index| self.entry_change(*index, FileState::Committed, None, None))
            .chain(
                failed
                    .iter()
                    .map(|(index, message)| self.failed_change(*index, message, restart)),
            )
            .collect()
    }

    /// `failed`, keeping the durable prefix for a resume — unless the file
    /// is in `restart` (its temporary did not read back as the source was
    /// read): then its progress goes back to 0 and it is copied again.
    pub fn failed_change(
        &self,
        index: EntryIndex,
        message: &str,
        restart: &HashSet<EntryIndex>,
    ) -> Change {
        let progress = restart.contains(&index).then_some(0);
        self.entry_change(index, FileState::Failed, progress, Some(message.to_owned()))
    }

    /// Step 4, idempotent: a temporary that is gone while its destination
    /// holds the recorded size was renamed by an earlier run.
    fn rename(&self, entry: &EntryRecord) -> io::Result<()> {
        let temp = self.temp_of(entry);
        match std::fs::rename(&temp, &entry.dest) {
            // Renaming one name of an inode onto another of the same inode
            // succeeds and does nothing (POSIX): a hard link already in
            // place. The temporary name goes.
            Ok(()) if entry.link_leader.is_some() => match same_inode(&temp, &entry.dest) {
                true => std::fs::remove_file(&temp),
                false => Ok(()),
            },
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let renamed =
                    std::fs::symlink_metadata(&entry.dest).is_ok_and(|m| match entry.kind {
                        EntryKind::File => m.is_file() && m.size() == entry.meta.size,
                        EntryKind::Symlink => m.file_type().is_symlink(),
                        EntryKind::Dir => m.is_dir(),
                    });
                if renamed {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("temporary {} is missing", temp.display()),
                    ))
                }
            }
            Err(e) => Err(e),
        }
    }

    pub fn entry_change(
        &self,
        index: EntryIndex,
        to: FileState,
        progress_bytes_durable: Option<u64>,
        error: Option<String>,
    ) -> Change {
        let entry = self.entry(index);
        // Recorded for people (status, the summary, events): in words.
        let error = error.map(|message| crate::words::in_words(&message));
        let context = match (&error, to) {
            (Some(message), _) => serde_json::json!({"error": message}),
            (None, FileState::Copied) => serde_json::json!({"bytes": entry.meta.size}),
            // Where the copy (re)starts: a resume shows it did not start over.
            (None, FileState::Copying) => {
                serde_json::json!({"offset": progress_bytes_durable.unwrap_or(0)})
            }
            _ => serde_json::Value::Null,
        };
        Change::Entry {
            id: self.id,
            index,
            to,
            progress_bytes_durable,
            error,
            checksum: None,
            context,
        }
    }

    /// Step 3 for one entry: `copied`, with the checksum of what was read,
    /// which its event carries too.
    pub fn copied_change(&self, index: EntryIndex, checksum: Option<Checksum>) -> Change {
        let entry = self.entry(index);
        let mut context = serde_json::json!({"bytes": entry.meta.size});
        if let Some(checksum) = checksum {
            context["checksum"] = checksum.to_string().into();
        }
        Change::Entry {
            id: self.id,
            index,
            to: FileState::Copied,
            progress_bytes_durable: Some(entry.meta.size),
            error: None,
            checksum,
            context,
        }
    }

    fn injected(&self, e: io::Error) -> StoreError {
        StoreError::Open {
            path: self.store.location(),
            source: e,
        }
    }
}

/// Whether two names are links to one inode (false if either is missing).
fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// What step 5 writes to: a destination by name (a symlink is not
/// followed), or the temporary a worker has just written, through its open
/// descriptor — no path lookups, and the rename then carries file and
/// metadata into place together.
#[derive(Clone, Copy)]
pub enum MetadataTarget<'a> {
    Path(&'a Path),
    Temporary {
        file: &'a File,
        /// For messages.
        path: &'a Path,
        /// Its directory has a default ACL, so the new file may have
        /// inherited one: a source without an ACL means removing it.
        may_have_acl: bool,
        /// The owner, group and mode it was created with (`fstat`), when
        /// they may already be the source's: what it has is not set again.
        born: Option<Born>,
    },
}

/// What a new temporary got from `open` (see [`MetadataTarget::Temporary`]).
#[derive(Clone, Copy, Debug)]
pub struct Born {
    pub uid: u32,
    pub gid: u32,
    /// Permission and set-id bits.
    pub mode: u32,
}

impl Born {
    /// What `file` has now.
    pub fn of(file: &File) -> io::Result<Born> {
        let stat = rustix::fs::fstat(file)?;
        Ok(Born {
            uid: stat.st_uid,
            gid: stat.st_gid,
            mode: stat.st_mode & 0o7777,
        })
    }
}

impl MetadataTarget<'_> {
    fn path(&self) -> &Path {
        match self {
            MetadataTarget::Path(path) | MetadataTarget::Temporary { path, .. } => path,
        }
    }

    fn born(&self) -> Option<Born> {
        match self {
            MetadataTarget::Path(_) => None,
            MetadataTarget::Temporary { born, .. } => *born,
        }
    }

    fn may_have_acl(&self) -> bool {
        match self {
            MetadataTarget::Path(_) => true,
            MetadataTarget::Temporary { may_have_acl, .. } => *may_have_acl,
        }
    }

    fn chown(&self, uid: Option<Uid>, gid: Option<Gid>) -> rustix::io::Result<()> {
        match self {
            MetadataTarget::Path(path) => {
                rustix::fs::chownat(CWD, *path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
            }
            MetadataTarget::Temporary { file, .. } => rustix::fs::fchown(file, uid, gid),
        }
    }

    /// Removes an ACL the source does not have (an absent one is fine).
    fn remove_acl(&self, name: &[u8]) -> rustix::io::Result<()> {
        let removed = match self {
            MetadataTarget::Path(path) => rustix::fs::lremovexattr(*path, name),
            MetadataTarget::Temporary {
                may_have_acl: false,
                ..
            } => return Ok(()),
            MetadataTarget::Temporary { file, .. } => rustix::fs::fremovexattr(file, name),
        };
        match removed {
            Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn set_xattr(&self, name: &[u8], value: &[u8]) -> rustix::io::Result<()> {
        let flags = rustix::fs::XattrFlags::empty();
        match self {
            MetadataTarget::Path(path) => rustix::fs::lsetxattr(*path, name, value, flags),
            MetadataTarget::Temporary { file, .. } => {
                rustix::fs::fsetxattr(file, name, value, flags)
            }
        }
    }

    fn chmod(&self, mode: u32) -> rustix::io::Result<()> {
        let mode = Mode::from_raw_mode(mode);
        match self {
            MetadataTarget::Path(path) => rustix::fs::chmodat(CWD, *path, mode, AtFlags::empty()),
            MetadataTarget::Temporary { file, .. } => rustix::fs::fchmod(file, mode),
        }
    }

    fn set_times(&self, times: &Timestamps) -> rustix::io::Result<()> {
        match self {
            MetadataTarget::Path(path) => {
                rustix::fs::utimensat(CWD, *path, times, AtFlags::SYMLINK_NOFOLLOW)
            }
            MetadataTarget::Temporary { file, .. } => rustix::fs::futimens(file, times),
        }
    }
}

/// Whether `dest` (an existing destination, as `lstat` found it) already
/// has what step 5 would give it, so that a re-run over an unchanged tree
/// changes nothing: owner, mode, mtime to the nanosecond; no extended
/// attributes to set, and no ACL to remove (asked of the file system only
/// when the source has none to give).
pub fn metadata_in_place(
    entry: &EntryRecord,
    dest: &std::fs::Metadata,
    preserve: Preserve,
    umask: u32,
) -> bool {
    let meta = entry.meta;
    let mode = if preserve.mode {
        meta.mode
    } else {
        meta.mode & !umask & 0o777
    };
    // Not the atime, as rsync: any read moves it (ferry's own read of the
    // source among them), and rewriting every inode of a tree for it would
    // make a re-run cost a copy's metadata work.
    let times = !preserve.times
        || crate::engine::plan::time_ns(dest.mtime(), dest.mtime_nsec()) == meta.mtime_ns;
    let owner = !preserve.ownership || (dest.uid() == meta.uid && dest.gid() == meta.gid);
    if !(times && owner && dest.mode() & 0o7777 == mode) {
        return false;
    }
    let mut acls_to_drop = false;
    for (name, value) in &entry.xattrs.0 {
        let is_acl = crate::engine::plan::is_posix_acl(name);
        if !(is_acl && value.is_empty()) {
            return false;
        }
        acls_to_drop = true;
    }
    !acls_to_drop || !has_acl(&entry.dest)
}

/// Whether `path` (not followed) has a POSIX ACL; an answer the file system
/// will not give counts as yes.
fn has_acl(path: &Path) -> bool {
    let mut names = [0u8; 1024];
    match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(len) => names[..len]
            .split(|b| *b == 0)
            .any(crate::engine::plan::is_posix_acl),
        Err(Errno::NOTSUP) => false,
        Err(_) => true,
    }
}

/// Whether directory `dir` has a default ACL, so that a file created in it
/// may have inherited one ([`MetadataTarget::Temporary`]'s `may_have_acl`).
/// An answer the file system will not give counts as yes, so that the ACL
/// is removed.
pub fn has_default_acl(dir: &Path) -> bool {
    // A one-byte buffer: too small for any ACL (RANGE), so an answer
    // without one means there is none.
    match rustix::fs::getxattr(dir, super::plan::ACL_DEFAULT, &mut [0u8; 1][..]) {
        Ok(len) => len > 0,
        Err(Errno::NODATA | Errno::OPNOTSUPP) => false,
        Err(_) => true,
    }
}

/// Step 5 at `entry`'s destination, by name: see [`apply_metadata_to`].
pub fn apply_metadata(
    entry: &EntryRecord,
    preserve: Preserve,
    umask: u32,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    apply_metadata_to(
        MetadataTarget::Path(&entry.dest),
        entry,
        preserve,
        umask,
        warnings,
    )
}

/// Step 5: ownership where permitted, extended attributes (ACLs among them),
/// then mode (last, because chown clears set-id bits and an ACL sets the
/// group bits), then times to the nanosecond. Symlinks have no mode. An
/// attribute the destination refuses is a warning, as with `cp -a`.
pub fn apply_metadata_to(
    target: MetadataTarget<'_>,
    entry: &EntryRecord,
    preserve: Preserve,
    umask: u32,
    warnings: &mut Vec<String>,
) -> io::Result<()> {
    let path = target.path();
    let meta = entry.meta;
    // Set-id bits not to give back: a set-user-ID file whose owner could not
    // be kept would run as whoever copied it (cp -a clears them too).
    let mut setid_lost = 0;
    let born = target.born();
    let owned = born.is_some_and(|b| (b.uid, b.gid) == (meta.uid, meta.gid));
    if preserve.ownership && !owned {
        let both = target.chown(Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        // Like cp -a: an unprivileged user keeps what ownership they may.
        if let Err(e @ (Errno::PERM | Errno::INVAL)) = both {
            let group = target.chown(None, Some(Gid::from_raw(meta.gid)));
            setid_lost = if group.is_ok() { 0o4000 } else { 0o6000 };
            if entry.kind != EntryKind::Symlink {
                let cleared = if meta.mode & setid_lost != 0 {
                    "; its set-user-ID/set-group-ID bits are cleared"
                } else {
                    ""
                };
                let what = if group.is_ok() {
                    format!("owner {}", meta.uid)
                } else {
                    format!("owner {} and group {}", meta.uid, meta.gid)
                };
                warnings.push(format!("{}: {what} not kept: {e}{cleared}", path.display()));
            }
        } else {
            both?;
        }
    }
    if entry.kind != EntryKind::Symlink {
        for (name, value) in &entry.xattrs.0 {
            let is_acl = crate::engine::plan::is_posix_acl(name);
            if is_acl && value.is_empty() {
                // The source has no such ACL: neither will the destination.
                target.remove_acl(name)?;
                continue;
            }
            match target.set_xattr(name, value) {
                Ok(()) => {}
                Err(
                    e @ (Errno::OPNOTSUPP
                    | Errno::PERM
                    | Errno::ACCESS
                    | Errno::INVAL
                    | Errno::RANGE),
                ) => warnings.push(format!(
                    "{}: extended attribute {} not kept: {e}",
                    path.display(),
                    String::from_utf8_lossy(name)
                )),
                Err(e) => return Err(e.into()),
            }
        }
        let mode = if preserve.mode {
            meta.mode & !setid_lost
        } else {
            meta.mode & !umask & 0o777
        };
        // An ACL set or inherited moves the group bits: then always. (An
        // empty ACL only says the source has none.)
        let nothing_set = entry
            .xattrs
            .0
            .iter()
            .all(|(name, value)| crate::engine::plan::is_posix_acl(name) && value.is_empty());
        let has_mode =
            born.is_some_and(|b| b.mode == mode & 0o7777) && nothing_set && !target.may_have_acl();
        if !has_mode {
            target.chmod(mode)?;
        }
    }
    if preserve.times {
        let times = Timestamps {
            last_access: timespec(meta.atime_ns),
            last_modification: timespec(meta.mtime_ns),
        };
        target.set_times(&times)?;
    }
    Ok(())
}

fn timespec(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    }
}

pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Up to this many paths are made durable by an fsync of each and of its
/// directory, not by a `syncfs`: that also writes back every other
/// process's dirty data on the file system, which on a busy shared one
/// cost 0.6 s for the one directory at the end of a 1 GiB copy (a third
/// of `--bwlimit`'s whole deviation; see docs/benchmarks.md).
const FSYNC_PATHS_MAX: usize = 8;

/// Makes each path's data and inode, and its name in its directory,
/// durable. Batched: one `syncfs` per file system holding any of them,
/// for more than [`FSYNC_PATHS_MAX`] paths. On kernels before 5.8 `syncfs`
/// does not report writeback errors, so there (and for a few paths) each
/// file and each directory is fsynced instead: never silent.
pub fn make_durable<'p>(paths: impl Iterator<Item = &'p Path>) -> io::Result<()> {
    let paths: Vec<&Path> = paths.collect();
    let mut parents: HashMap<&Path, ()> = HashMap::new();
    let mut by_device: HashMap<u64, (&Path, File)> = HashMap::new();
    let reliable = paths.len() > FSYNC_PATHS_MAX && syncfs_reports_errors();
    for path in paths {
        if !reliable {
            // A path that is gone (a removed temporary) only needs its directory.
            match std::fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_symlink() => File::open(path)
                    .and_then(|f| f.sync_all())
                    .map_err(at(path))?,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(at(path)(e)),
            }
        }
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if parents.insert(parent, ()).is_some() {
            continue;
        }
        let dir = File::open(parent).map_err(at(parent))?;
        if !reliable {
            dir.sync_all().map_err(at(parent))?;
            continue;
        }
        let dev = dir.metadata().map_err(at(parent))?.dev();
        by_device.entry(dev).or_insert((parent, dir));
    }
    for (parent, dir) in by_device.values() {
        rustix::fs::syncfs(dir).map_err(|e| at(parent)(e.into()))?;
    }
    Ok(())
}

/// Every error of [`make_durable`] names the file or directory it came from.
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Linux reports writeback errors from `syncfs` since 5.8.
fn syncfs_reports_errors() -> bool {
    static RELIABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *RELIABLE.get_or_init(|| {
        let uname = rustix::system::uname();
        let release = uname.release().to_string_lossy();
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse::<u32>().ok());
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        version >= (5, 8)
    })
}

/// An error again, for each of the entries it fails.
fn clone_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}
