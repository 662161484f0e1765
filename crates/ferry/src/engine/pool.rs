//! The worker threads: each takes the next unit of the work list, copies it
//! into its temporary and sends the outcome to the commit loop.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use super::Engine;
use super::commit::{Born, MetadataTarget, Ready, apply_metadata_to};
use super::copy::CopyError;
use super::dirs::OpenDirs;
use super::plan;
use super::ranges::Trackers;
use super::temp::{open_temp_at, write_error};
use super::work::{Done, SEND_WAIT, SPAN_ITEMS_MAX, Work};
use crate::checksum::{Checksum, Hasher};
use crate::failpoint::{self, CommitStep};
use crate::model::EntryRecord;

impl Engine<'_> {
    /// Takes the next span of `work` (see [`super::work::spans`]) until
    /// none is left, sending the outcomes to the commit loop a few hundred
    /// at a time.
    pub(super) fn worker(
        &self,
        work: &[Work],
        spans: &[Range<usize>],
        next: &AtomicUsize,
        trackers: &Trackers,
        tx: SyncSender<Vec<Done>>,
    ) {
        let mut buffer = Vec::new();
        let mut dirs = OpenDirs::default();
        // Outcomes go to the commit loop SPAN_ITEMS_MAX at a time, not one
        // message per file (which woke it once per file), nor held longer
        // than SEND_WAIT: spans of one file each (a file per directory,
        // a large file's ranges) are gathered too.
        let mut done: Vec<Done> = Vec::new();
        let mut first_done: Option<Instant> = None;
        loop {
            let s = next.fetch_add(1, Ordering::Relaxed);
            let Some(span) = spans.get(s) else { break };
            if !done.is_empty() && done.len() + span.len() > SPAN_ITEMS_MAX {
                if tx.send(std::mem::take(&mut done)).is_err() {
                    return;
                }
                first_done = None;
            }
            let cancelled = work[span.clone()].iter().any(|item| {
                if self.options.cancel.load(Ordering::Relaxed) {
                    return true;
                }
                done.extend(self.work_on(item, trackers, &mut buffer, &mut dirs));
                false
            });
            if cancelled {
                break;
            }
            if !done.is_empty() {
                first_done.get_or_insert_with(Instant::now);
            }
            let due = first_done.is_some_and(|t| t.elapsed() >= SEND_WAIT);
            if done.len() >= SPAN_ITEMS_MAX || due {
                if tx.send(std::mem::take(&mut done)).is_err() {
                    return;
                }
                first_done = None;
            }
        }
        if !done.is_empty() {
            let _ = tx.send(done);
        }
    }

    /// One item of the work list; `None` when there is nothing to report
    /// (cancelled, or a range that is not the file's last).
    fn work_on(
        &self,
        item: &Work,
        trackers: &Trackers,
        buffer: &mut Vec<u8>,
        dirs: &mut OpenDirs,
    ) -> Option<Done> {
        match *item {
            Work::Whole(index) => {
                let entry = self.committer.entry(index);
                match self.copy_whole(entry, buffer, dirs) {
                    Ok((checksum, metadata_applied)) => Some(Done::Copied(Ready {
                        index,
                        durable: false,
                        recorded: false,
                        metadata_applied,
                        checksum,
                    })),
                    Err(None) => None,
                    Err(Some(message)) => Some(Done::Failed(index, message)),
                }
            }
            Work::Symlink(index) => {
                let entry = self.committer.entry(index);
                Some(match self.make_symlink(entry) {
                    Ok(()) => Done::Copied(Ready {
                        index,
                        durable: false,
                        recorded: false,
                        metadata_applied: false,
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
                let entry = self.committer.entry(index);
                let tracker = trackers.get(&index).expect("a range without its tracker");
                // Once per range (RANGE_BYTES of data): no contention.
                let mut named = self.options.progress.large_file.lock().expect("progress");
                if named.as_deref() != Some(entry.dest.as_path()) {
                    *named = Some(entry.dest.clone());
                }
                drop(named);
                self.copy_range(entry, tracker, slot, start..end, buffer, dirs)
            }
            Work::Rehash { index, piece } => {
                let entry = self.committer.entry(index);
                let tracker = trackers.get(&index).expect("a piece without its tracker");
                self.rehash(entry, tracker, piece, buffer)
            }
        }
    }

    /// Step 1 for a small file, with its checksum; and step 5 on the open
    /// temporary when nothing reads it back before the rename (then `true`).
    /// `Err(None)`: cancelled.
    fn copy_whole(
        &self,
        entry: &EntryRecord,
        buffer: &mut Vec<u8>,
        dirs: &mut OpenDirs,
    ) -> Result<(Option<Checksum>, bool), Option<String>> {
        let size = entry.meta.size;
        let source = self.open_source(entry, dirs).map_err(Some)?;
        let (src, dense) = (&source.file, source.dense);
        let temp = self.committer.temp_of(entry);
        // In a staged directory (0700, this run's) nobody else reaches the
        // file: it is created with its permissions, and step 5 sets only
        // what it does not have yet (one fstat for a fchown and a fchmod).
        let staged = self.committer.is_staged(entry);
        let mode = match staged {
            true => entry.meta.mode & 0o777,
            false => 0o600,
        };
        let dst = dirs
            .dest(&temp)
            .and_then(|(at, name)| open_temp_at(at, name, true, mode))
            .map_err(|e| Some(write_error(&temp, &e, 0, size)))?;
        let mut hasher = self.transfer.checksum.map(Hasher::new);
        let data_end = self
            .copier
            .copy_range(src, &dst, 0, size, dense, buffer, hasher.as_mut())
            .map_err(|e| self.copy_error(entry, &temp, e))?;
        // Trailing holes: the length comes from the size, not the last write.
        if data_end < size {
            dst.set_len(size)
                .map_err(|e| Some(write_error(&temp, &e, data_end, size)))?;
        }
        self.check_source_at_end(entry, &source, dirs)
            .map_err(Some)?;
        // `--verify` reads the temporary back first, which would move the
        // atime just set: then the committer applies it after the rename.
        let applied = !self.committer.verify;
        if applied {
            self.apply_metadata_to_temporary(entry, &dst, &temp, staged)
                .map_err(Some)?;
        }
        Ok((hasher.map(Hasher::finish), applied))
    }

    /// Step 5 on a temporary a worker has just written, through its
    /// descriptor: the rename then places file and metadata together.
    fn apply_metadata_to_temporary(
        &self,
        entry: &EntryRecord,
        file: &File,
        temp: &Path,
        staged: bool,
    ) -> Result<(), String> {
        let target = MetadataTarget::Temporary {
            file,
            path: &entry.dest,
            may_have_acl: self.inherits_default_acl(temp),
            born: staged.then(|| Born::of(file).ok()).flatten(),
        };
        let mut warnings = Vec::new();
        let applied = failpoint::hit(CommitStep::ApplyMetadata).and_then(|()| {
            apply_metadata_to(
                target,
                entry,
                self.transfer.preserve,
                self.committer.umask,
                &mut warnings,
            )
        });
        if !warnings.is_empty() {
            self.warnings
                .lock()
                .expect("warnings poisoned")
                .extend(warnings);
        }
        applied.map_err(|e| format!("{}: cannot apply metadata: {e}", entry.dest.display()))
    }

    /// Whether a file created at `path` may have inherited an ACL: its
    /// directory has a default ACL. Asked once per directory (a run's
    /// directories hold their defaults until their own metadata is applied,
    /// after every file); an answer the file system will not give counts as
    /// yes, so that the ACL is removed as before.
    fn inherits_default_acl(&self, path: &Path) -> bool {
        let Some(dir) = path.parent() else {
            return true;
        };
        let mut known = self.default_acls.lock().expect("default ACLs poisoned");
        if let Some(&has) = known.get(dir) {
            return has;
        }
        let has = super::commit::has_default_acl(dir);
        // Bounded by the run's directories, which the run holds anyway.
        known.insert(dir.to_path_buf(), has);
        has
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
    pub(super) fn open_source(
        &self,
        entry: &EntryRecord,
        dirs: &mut OpenDirs,
    ) -> Result<OpenSource, String> {
        let (file, meta) = open_source_file(&entry.source, dirs)?;
        let mtime_ns = plan::time_ns(meta.mtime(), meta.mtime_nsec());
        self.check_source_unchanged(entry, meta.size(), mtime_ns)?;
        Ok(OpenSource {
            dense: meta.blocks().saturating_mul(512) >= meta.size(),
            identity: (meta.dev(), meta.ino()),
            file,
        })
    }

    /// Size and mtime as captured when the entry was added: checked when a
    /// copy starts and again when it ends, so that a source truncated,
    /// grown or rewritten meanwhile fails instead of arriving mixed.
    fn check_source_unchanged(
        &self,
        entry: &EntryRecord,
        size: u64,
        mtime_ns: i64,
    ) -> Result<(), String> {
        if size != entry.meta.size || mtime_ns != entry.meta.mtime_ns {
            return Err(format!(
                "source {} changed during transfer (size {} when added, {size} now; or its mtime changed): add it again",
                entry.source.display(),
                entry.meta.size,
            ));
        }
        Ok(())
    }

    /// After the last byte: still the file at its path (a source deleted or
    /// replaced mid-copy reads fine through the open descriptor, but is no
    /// longer what the caller asked for), and unchanged. One `lstat` of the
    /// path answers both: when it names the inode that was opened, its size
    /// and mtime are that inode's now.
    pub(super) fn check_source_at_end(
        &self,
        entry: &EntryRecord,
        source: &OpenSource,
        dirs: &mut OpenDirs,
    ) -> Result<(), String> {
        let now = dirs.source(&entry.source).and_then(|(at, name)| {
            rustix::fs::statat(at, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(io::Error::from)
        });
        match now {
            Ok(now) if (now.st_dev, now.st_ino) == source.identity => {
                let mtime_ns = plan::time_ns(now.st_mtime, now.st_mtime_nsec as i64);
                self.check_source_unchanged(entry, now.st_size as u64, mtime_ns)
            }
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

    pub(super) fn copy_error(
        &self,
        entry: &EntryRecord,
        temp: &Path,
        e: CopyError,
    ) -> Option<String> {
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
}

/// A source open for reading.
pub(super) struct OpenSource {
    pub file: File,
    /// All its blocks are allocated: no holes to look for.
    pub dense: bool,
    /// Device and inode, to tell at the end whether its path still names it.
    identity: (u64, u64),
}

/// Opens a source for reading without following a symlink and without
/// blocking (a FIFO or device swapped in after `add` would hold a worker in
/// `open` forever), then checks through the descriptor that it is a regular
/// file before a byte is read. Reads of a regular file never block, so the
/// descriptor keeps `O_NONBLOCK`.
pub(super) fn open_source_file(
    source: &Path,
    dirs: &mut OpenDirs,
) -> Result<(File, std::fs::Metadata), String> {
    use rustix::fs::{Mode, OFlags};
    let file = dirs
        .source(source)
        .and_then(|(at, name)| {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            rustix::fs::openat(at, name, flags, Mode::empty())
                .map(File::from)
                .map_err(io::Error::from)
        })
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                format!(
                    "source {} changed since it was added: it is now a symbolic link, which is \
                     not followed; add it again",
                    source.display()
                )
            } else {
                format!("cannot open source {}: {e}", source.display())
            }
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat source {}: {e}", source.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "source {} changed since it was added: it is no longer a regular file (a FIFO, \
             device, socket or directory now); nothing was read from it",
            source.display()
        ));
    }
    Ok((file, meta))
}
