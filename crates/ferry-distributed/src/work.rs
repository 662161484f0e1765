//! What a worker does with each kind of item. Files go through the engine's
//! commit protocol ([`Committer`]) through a store that fences every write
//! by the item's lease ([`Leased`]).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;

use ferry::engine::commit::{self, Committer, MetadataTarget, Ready};
use ferry::engine::copy::{Copier, CopyError};
use ferry::engine::temp::{open_temp, write_error};
use ferry::engine::throttle::Throttle;
use ferry::failpoint::{self, CommitStep};
use ferry::model::{
    EntryIndex, EntryKind, EntryRecord, FileState, NewEntry, TransferId, TransferRecord,
    TransferState,
};
use ferry::store::{Change, Store, StoreError};
use ferry_postgres::PgStore;
use ferry_postgres::items::{ItemKind, ItemLease, LISTING_DIR_ENTRIES_MAX, LISTING_ENTRIES_BUDGET};
use serde_json::json;

/// The fewest files of a batch item committed together (but the last
/// ones) while the next ones are copied: at most
/// [`BATCH_FILES_MAX`](ferry_postgres::items::BATCH_FILES_MAX) / this
/// commits (and twice as many `syncfs`) per item; a chunk grows past it
/// while the commit before it runs.
const COMMIT_CHUNK_FILES_MIN: usize = 64;

/// Files copied into their temporaries, and those that failed, for one
/// commit.
#[derive(Default)]
struct Chunk {
    ready: Vec<Ready>,
    failures: Vec<(EntryIndex, String)>,
}

pub(crate) struct Item<'a> {
    pub store: &'a PgStore,
    pub lease: &'a ItemLease,
    /// The item's transfer.
    pub transfer: &'a TransferRecord,
    /// Lease the worker's next item (for this many ms) in the transaction
    /// that completes this one; `None`: the worker leases on its own.
    pub next: Option<u64>,
    /// Set when the lease is lost: the copy stops at its next chunk.
    pub cancel: &'a AtomicBool,
}

impl Item<'_> {
    pub fn run(&self) -> Result<Option<ItemLease>, StoreError> {
        let transfer = self.transfer;
        match self.lease.kind {
            ItemKind::Dir => return self.list(transfer),
            ItemKind::Commit => return self.commit_large(transfer),
            ItemKind::Finish => return self.finish(transfer),
            ItemKind::Batch | ItemKind::Range => {}
        }
        // Only what copies data reads the event log's end, for this:
        // `--bwlimit` is not taken by distributed copies (yet): a throttle
        // without a rate, which looks for `ferry limit`s after this event.
        let throttle = Throttle::new(self.store, transfer.id, None, self.store.last_seq()?, None);
        let bytes_copied = AtomicU64::new(0);
        let copier = Copier {
            cancel: self.cancel,
            bytes_copied: &bytes_copied,
            after_chunk: None,
            throttle: &throttle,
            use_copy_file_range: AtomicBool::new(true),
        };
        if self.lease.kind == ItemKind::Batch {
            self.batch(transfer, &copier)
        } else {
            self.range(transfer, &copier)
        }
    }

    fn leased(&self) -> Leased<'_> {
        Leased {
            inner: self.store,
            lease: self.lease,
        }
    }

    fn committer<'e>(
        &'e self,
        store: &'e Leased<'e>,
        transfer: &'e TransferRecord,
        entries: &'e [EntryRecord],
    ) -> Committer<'e> {
        Committer {
            store,
            id: transfer.id,
            entries,
            preserve: transfer.preserve,
            temp_suffix: &transfer.temp_suffix,
            umask: ferry::engine::current_umask(),
            verify: false,
            verify_recorded_too: false,
            staging: Default::default(),
        }
    }

    /// Directories (siblings, up to
    /// [`DIR_ITEM_DIRS_MAX`](ferry_postgres::items::DIR_ITEM_DIRS_MAX)): each recorded
    /// `copied` (by its parent's listing, but for a root) and created
    /// owner-only (as the engine's), then listed, until the listings hold
    /// [`LISTING_ENTRIES_BUDGET`] entries; the listings' entries and items,
    /// the directories left for other items, the failures and this item's
    /// end are one transaction.
    fn list(&self, transfer: &TransferRecord) -> Result<Option<ItemLease>, StoreError> {
        let dirs = self.store.entries_at(transfer.id, &self.lease.entries)?;
        if dirs.is_empty() {
            return Err(self.missing_entries(transfer.id));
        }
        let store = self.leased();
        let committer = self.committer(&store, transfer, &dirs);
        let roots: Vec<Change> = dirs
            .iter()
            .filter(|d| !matches!(d.state, FileState::Copied | FileState::Committed))
            .map(|d| committer.entry_change(d.index, FileState::Copied, None, None))
            .collect();
        store.apply(&roots)?;
        let mut listed = Vec::new();
        let mut failed = Vec::new();
        let mut deferred = Vec::new();
        for dir in &dirs {
            // Never listed twice: a failure is recorded with the item's end.
            if matches!(dir.state, FileState::Failed | FileState::Committed) {
                continue;
            }
            if listed.len() >= LISTING_ENTRIES_BUDGET {
                deferred.push(dir.index);
                continue;
            }
            self.check_lease()?;
            match make_dir(&dir.dest).and_then(|()| list(&dir.source, &dir.dest)) {
                Ok(entries) => listed.extend(entries),
                Err(message) => {
                    failed.push(committer.failed_change(dir.index, &message, &HashSet::new()))
                }
            }
        }
        self.store
            .complete_listing(self.lease, &listed, &failed, &deferred, self.next)
    }

    /// Small files: each copied whole into its temporary, and committed
    /// in chunks of [`COMMIT_CHUNK_FILES_MIN`] or more (one `syncfs`, `copied`,
    /// renames, metadata, `committed`) by a second thread while the next
    /// chunk is copied, as the single-process engine's committer does: a
    /// worker's one copying thread never waits on the store's answers.
    /// Entries an earlier attempt recorded are not copied again.
    fn batch(
        &self,
        transfer: &TransferRecord,
        copier: &Copier<'_>,
    ) -> Result<Option<ItemLease>, StoreError> {
        let entries = self.store.entries_at(transfer.id, &self.lease.entries)?;
        let store = self.leased();
        let committer = self.committer(&store, transfer, &entries);
        // A chunk is handed over only to a waiting commit thread: one
        // chunk commits while the next is copied, no more.
        let (chunks, to_commit) = mpsc::sync_channel::<Chunk>(0);
        std::thread::scope(|scope| {
            let committing = scope.spawn(|| -> Result<(), StoreError> {
                for chunk in to_commit {
                    committer.commit(&chunk.ready, chunk.failures)?;
                }
                Ok(())
            });
            let copied = self.copy_batch(&entries, &committer, copier, &chunks);
            drop(chunks);
            let committed = committing.join().expect("the commit thread does not panic");
            // The commit's error first: the copy stopped because of it.
            committed.and(copied)
        })?;
        self.store.complete_and_lease(self.lease, &[], self.next)
    }

    /// The copying half of [`Self::batch`]: hands a chunk of at least
    /// [`COMMIT_CHUNK_FILES_MIN`] entries to the commit thread when it
    /// waits for one, and what is left at the end.
    fn copy_batch(
        &self,
        entries: &[EntryRecord],
        committer: &Committer<'_>,
        copier: &Copier<'_>,
        chunks: &mpsc::SyncSender<Chunk>,
    ) -> Result<(), StoreError> {
        let mut chunk = Chunk::default();
        let mut buffer = Vec::new();
        // Whether each destination directory has a default ACL: asked
        // once per directory of the batch.
        let mut default_acls: HashMap<&Path, bool> = HashMap::new();
        for entry in entries {
            match entry.state {
                FileState::Committed | FileState::Skipped => continue,
                FileState::Copied => chunk.ready.push(Ready {
                    index: entry.index,
                    durable: true,
                    recorded: true,
                    metadata_applied: false,
                    checksum: None,
                }),
                _ => {
                    let temp = committer.temp_of(entry);
                    let copied = match entry.kind {
                        EntryKind::Symlink => make_symlink(entry, &temp).map(|()| false),
                        _ => {
                            let may_have_acl = match entry.dest.parent() {
                                Some(dir) => *default_acls
                                    .entry(dir)
                                    .or_insert_with(|| commit::has_default_acl(dir)),
                                None => true,
                            };
                            copy_whole(copier, committer, entry, &temp, may_have_acl, &mut buffer)
                                .map(|()| true)
                        }
                    };
                    match copied {
                        Ok(metadata_applied) => chunk.ready.push(Ready {
                            index: entry.index,
                            durable: false,
                            recorded: false,
                            metadata_applied,
                            checksum: None,
                        }),
                        Err(message) => chunk.failures.push((entry.index, message)),
                    }
                    self.check_lease()?;
                }
            }
            // To the commit thread as soon as it is free: a chunk grows
            // while the last one commits, so commits are as large as the
            // copy is fast against them.
            if chunk.ready.len() + chunk.failures.len() >= COMMIT_CHUNK_FILES_MIN {
                match chunks.try_send(std::mem::take(&mut chunk)) {
                    Ok(()) => {}
                    Err(mpsc::TrySendError::Full(back)) => chunk = back,
                    // The commit thread stopped on an error: it says which.
                    Err(mpsc::TrySendError::Disconnected(_)) => return Ok(()),
                }
            }
        }
        if !chunk.ready.is_empty() || !chunk.failures.is_empty() {
            // An error here is the commit thread's, returned by it.
            let _ = chunks.send(chunk);
        }
        Ok(())
    }

    /// One range of a large file into its temporary (never truncated: other
    /// workers write its other ranges), made durable before the item ends.
    fn range(
        &self,
        transfer: &TransferRecord,
        copier: &Copier<'_>,
    ) -> Result<Option<ItemLease>, StoreError> {
        let entry = self.only_entry(transfer.id)?;
        let (start, end) = self.lease.range.expect("a range item has its range");
        if matches!(
            entry.state,
            FileState::Copied | FileState::Committed | FileState::Failed
        ) {
            return self.store.complete_and_lease(self.lease, &[], self.next);
        }
        let store = self.leased();
        let committer = self.committer(&store, transfer, std::slice::from_ref(&entry));
        let temp = committer.temp_of(&entry);
        let mut buffer = Vec::new();
        let copied = (|| {
            let src = File::open(&entry.source)
                .map_err(|e| format!("{}: cannot open: {e}", entry.source.display()))?;
            let dst =
                open_temp(&temp, false).map_err(|e| write_error(&temp, &e, 0, entry.meta.size))?;
            copier
                .copy_range(&src, &dst, start, end, false, &mut buffer, None)
                .map_err(|e| copy_error(&entry, &temp, e))?;
            dst.sync_data()
                .map_err(|e| format!("{}: cannot make durable: {e}", temp.display()))
        })();
        self.check_lease()?;
        match copied {
            Ok(()) => self.store.complete_and_lease(self.lease, &[], self.next),
            Err(message) => {
                let change = committer.failed_change(entry.index, &message, &HashSet::new());
                self.store
                    .complete_and_lease(self.lease, &[change], self.next)
            }
        }
    }

    /// A large file whose ranges are all durable: its length (a hole may end
    /// it), then the commit protocol from step 2.
    fn commit_large(&self, transfer: &TransferRecord) -> Result<Option<ItemLease>, StoreError> {
        let entry = self.only_entry(transfer.id)?;
        if matches!(entry.state, FileState::Committed | FileState::Failed) {
            return self.store.complete_and_lease(self.lease, &[], self.next);
        }
        let store = self.leased();
        let committer = self.committer(&store, transfer, std::slice::from_ref(&entry));
        let temp = committer.temp_of(&entry);
        let recorded = entry.state == FileState::Copied;
        let mut failures = Vec::new();
        if !recorded {
            let sized = open_temp(&temp, false).and_then(|f| {
                if f.metadata()?.len() < entry.meta.size {
                    f.set_len(entry.meta.size)?;
                }
                Ok(())
            });
            if let Err(e) = sized {
                failures.push((entry.index, write_error(&temp, &e, 0, entry.meta.size)));
            }
        }
        let ready = Ready {
            index: entry.index,
            durable: recorded,
            recorded,
            metadata_applied: false,
            checksum: None,
        };
        let ready = if failures.is_empty() {
            vec![ready]
        } else {
            Vec::new()
        };
        committer.commit(&ready, failures)?;
        self.store.complete_and_lease(self.lease, &[], self.next)
    }

    /// Every other item is done: the directories get their metadata,
    /// deepest first, made durable; then the transfer ends, in the same
    /// transaction as this item.
    fn finish(&self, transfer: &TransferRecord) -> Result<Option<ItemLease>, StoreError> {
        let dirs = self.store.dir_entries(transfer.id)?;
        let store = self.leased();
        let committer = self.committer(&store, transfer, &dirs);
        let mut failed = Vec::new();
        let mut warnings = Vec::new();
        // Listed after their parents: by index, reversed, children first.
        let open = dirs.iter().rev().filter(|d| d.state == FileState::Copied);
        let mut done: Vec<EntryIndex> = committer
            .place_directories(open, &mut failed, &mut warnings)
            .iter()
            .map(|d| d.index)
            .collect();
        let paths: Vec<PathBuf> = done
            .iter()
            .filter_map(|i| dirs.iter().find(|d| d.index == *i))
            .map(|d| d.dest.clone())
            .collect();
        if let Err(e) = commit::make_durable(paths.iter().map(PathBuf::as_path)) {
            for index in done.drain(..) {
                failed.push((index, format!("could not make metadata durable: {e}")));
            }
        }
        let mut changes = committer.committed_changes(&done, &failed, &HashSet::new());
        let files_failed = self.store.failed_entries(transfer.id)? + failed.len() as u64;
        let to = if files_failed == 0 {
            TransferState::Completed
        } else {
            TransferState::Failed
        };
        changes.push(Change::Transfer {
            id: transfer.id,
            to,
            owner: None,
            context: json!({"files_failed": files_failed, "warnings": warnings,
                            "host": self.lease.host}),
        });
        self.store
            .complete_and_lease(self.lease, &changes, self.next)
    }

    fn only_entry(&self, id: TransferId) -> Result<EntryRecord, StoreError> {
        self.store
            .entries_at(id, &self.lease.entries)?
            .pop()
            .ok_or_else(|| self.missing_entries(id))
    }

    fn missing_entries(&self, id: TransferId) -> StoreError {
        StoreError::Corrupt {
            path: self.store.location(),
            detail: format!(
                "work item {} of transfer {id} names entries {:?} that do not exist",
                self.lease.item, self.lease.entries
            ),
        }
    }

    /// The heartbeat found the lease taken over: stop here, write nothing.
    fn check_lease(&self) -> Result<(), StoreError> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StoreError::StaleItem {
                path: self.store.location(),
                id: self.lease.transfer,
                item: self.lease.item,
                attempt: self.lease.attempt,
                current: self.lease.attempt + 1,
                done: false,
            });
        }
        Ok(())
    }
}

trait DirBuilderExt {
    fn mode_0700(&mut self) -> &mut Self;
}

impl DirBuilderExt for std::fs::DirBuilder {
    fn mode_0700(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// `dest` made owner-only, or found a directory (made by an earlier attempt).
fn make_dir(dest: &Path) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode_0700().create(dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dest.is_dir() => Ok(()),
        Err(e) => Err(format!("{}: cannot create directory: {e}", dest.display())),
    }
}

/// The entries of directory `source`, by name, landing under `dest`. What
/// is neither file, directory nor symlink is left out (and said).
fn list(source: &Path, dest: &Path) -> Result<Vec<NewEntry>, String> {
    let read = std::fs::read_dir(source)
        .map_err(|e| format!("{}: cannot list directory: {e}", source.display()))?;
    let mut names = Vec::new();
    for child in read {
        let child =
            child.map_err(|e| format!("{}: cannot list directory: {e}", source.display()))?;
        names.push(child.file_name());
        if names.len() > LISTING_DIR_ENTRIES_MAX {
            return Err(format!(
                "{}: more than {LISTING_DIR_ENTRIES_MAX} entries in one directory: \
                 distributed copies list at most that many",
                source.display()
            ));
        }
    }
    names.sort();
    let mut entries = Vec::with_capacity(names.len());
    for name in names {
        let path = source.join(&name);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match ferry::engine::plan::entry(&path, &meta, dest.join(&name)) {
            Ok(entry) => entries.push(entry),
            Err(ferry::Error::UnsupportedFileType { path, what }) => {
                eprintln!("ferry worker: {} is {what}: not copied", path.display());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(entries)
}

/// `entry` copied into its temporary `temp`, which then gets the entry's
/// metadata through its open descriptor (as the engine's workers do): the
/// rename carries file and metadata into place together.
fn copy_whole(
    copier: &Copier<'_>,
    committer: &Committer<'_>,
    entry: &EntryRecord,
    temp: &Path,
    may_have_acl: bool,
    buffer: &mut Vec<u8>,
) -> Result<(), String> {
    let size = entry.meta.size;
    let src = File::open(&entry.source)
        .map_err(|e| format!("{}: cannot open: {e}", entry.source.display()))?;
    let dst = open_temp(temp, true).map_err(|e| write_error(temp, &e, 0, size))?;
    let data_end = copier
        .copy_range(&src, &dst, 0, size, false, buffer, None)
        .map_err(|e| copy_error(entry, temp, e))?;
    if data_end < size {
        dst.set_len(size)
            .map_err(|e| write_error(temp, &e, data_end, size))?;
    }
    let target = MetadataTarget::Temporary {
        file: &dst,
        path: &entry.dest,
        may_have_acl,
        born: None,
    };
    // A refused attribute is a warning, as in the commit's step 5; a worker
    // has no one to tell but its log.
    let mut warnings = Vec::new();
    let applied = failpoint::hit(CommitStep::ApplyMetadata).and_then(|()| {
        commit::apply_metadata_to(
            target,
            entry,
            committer.preserve,
            committer.umask,
            &mut warnings,
        )
    });
    for warning in warnings {
        eprintln!("ferry worker: {warning}");
    }
    applied.map_err(|e| format!("{}: cannot apply metadata: {e}", entry.dest.display()))
}

fn make_symlink(entry: &EntryRecord, temp: &Path) -> Result<(), String> {
    let target = entry.link_target.as_deref().unwrap_or(Path::new(""));
    match std::fs::remove_file(temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", temp.display())),
    }
    std::os::unix::fs::symlink(target, temp)
        .map_err(|e| format!("{}: cannot create symlink: {e}", temp.display()))
}

fn copy_error(entry: &EntryRecord, temp: &Path, e: CopyError) -> String {
    match e {
        CopyError::Read(e) => format!("{}: cannot read: {e}", entry.source.display()),
        CopyError::Write { error, at } => write_error(temp, &error, at, entry.meta.size),
        CopyError::SourceShrank { at } => format!(
            "{}: changed during transfer (ended at {at} of {} bytes)",
            entry.source.display(),
            entry.meta.size
        ),
        CopyError::Cancelled => format!("{}: lease lost", entry.source.display()),
    }
}

/// The store a worker's commit writes through: every batch of changes is
/// applied only if the item's lease still holds ([`PgStore::apply_leased`]).
struct Leased<'a> {
    inner: &'a PgStore,
    lease: &'a ItemLease,
}

impl Store for Leased<'_> {
    ferry::store_reads_through_inner!();

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.inner.apply_leased(self.lease, changes)
    }
}
