//! Large files, copied in ranges by several workers at once: what each
//! file has made durable, its checkpoints and its piece digests.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use super::commit::{self, Ready};
use super::copy::CopyError;
use super::dirs::OpenDirs;
use super::temp::{open_range_temp, open_temp, write_error};
use super::work::Done;
use super::{CHECKPOINT_BYTES, Engine, RANGE_BYTES, space};
use crate::checksum::{self, Checksum, ChecksumAlgo, Hasher};
use crate::failpoint::{self, CommitStep};
use crate::model::{EntryIndex, EntryRecord};
use crate::store::{Change, StoreError};

/// The trackers of a run's large files, by entry: only large files have
/// one (a slot per entry cost 144 bytes for each small file).
pub(super) type Trackers = std::collections::HashMap<EntryIndex, Mutex<RangeTracker>>;

/// The ranges of one large file in flight, and its durable prefix.
///
/// Ranges are aligned to checksum pieces: the first runs from `first` (a
/// resume's durable prefix, anywhere in a piece) to the next piece
/// boundary, each other is one piece.
pub(super) struct RangeTracker {
    pub(super) first: u64,
    pub(super) done: Vec<bool>,
    /// How far each range got before it failed (absolute offsets; 0: not
    /// failed), so that the prefix recorded at a failure runs to the last
    /// byte that landed, not to the last whole range.
    pub(super) reached: Vec<u64>,
    pub(super) recorded: u64,
    pub(super) failed: bool,
    /// Ranges being copied now. A failure is reported by the last of them
    /// to stop, once every byte that will land has landed, so that the
    /// prefix it records and names is what the disk holds.
    pub(super) in_flight: usize,
    /// The file's first failure, until it is reported.
    pub(super) failure: Option<RangeFailure>,
    /// One per piece of the whole file, when the transfer has checksums.
    pub(super) digests: Vec<Option<Checksum>>,
    /// Reported copied (or failed): nothing more to send.
    pub(super) finished: bool,
}

/// Why a large file's range failed, kept until the report.
pub(super) enum RangeFailure {
    /// A write to the temporary failed (a full disk): the message names
    /// the durable prefix, known only at the report. The offset is how far
    /// the range got.
    Write(io::Error, u64),
    Other(String),
}

impl RangeTracker {
    pub(super) fn new(first: u64, ranges: usize, digests: Vec<Option<Checksum>>) -> RangeTracker {
        RangeTracker {
            first,
            done: vec![false; ranges],
            reached: vec![0; ranges],
            recorded: first,
            failed: false,
            in_flight: 0,
            failure: None,
            finished: ranges == 0 && digests.iter().all(Option::is_some),
            digests,
        }
    }

    fn range_end(&self, slot: usize, size: u64) -> u64 {
        ((self.first / RANGE_BYTES + 1 + slot as u64) * RANGE_BYTES).min(size)
    }

    fn prefix(&self, size: u64) -> u64 {
        let ranges = self.done.iter().take_while(|d| **d).count();
        let whole = match ranges {
            0 => self.first,
            n => self.range_end(n - 1, size),
        };
        // The next range's bytes that landed before it failed.
        match self.reached.get(ranges) {
            Some(&reached) if reached > whole => reached.min(size),
            _ => whole,
        }
    }
}

/// The end of the range that starts at `start`: the next piece boundary.
pub(super) fn range_end(start: u64, size: u64) -> u64 {
    ((start / RANGE_BYTES + 1) * RANGE_BYTES).min(size)
}

impl Engine<'_> {
    /// Creates or re-opens a large file's temporary, checks what an earlier
    /// run made durable, and returns the offset to continue from.
    pub(super) fn prepare_large(&self, entry: &EntryRecord) -> Result<u64, String> {
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

    pub(super) fn copy_range(
        &self,
        entry: &EntryRecord,
        tracker: &Mutex<RangeTracker>,
        slot: usize,
        bytes: std::ops::Range<u64>,
        buffer: &mut Vec<u8>,
        dirs: &mut OpenDirs,
    ) -> Option<Done> {
        let std::ops::Range { start, end } = bytes;
        {
            let mut tracker = tracker.lock().expect("tracker poisoned");
            if tracker.failed {
                return None;
            }
            tracker.in_flight += 1;
        }
        let temp = self.committer.temp_of(entry);
        let mut hasher = self.transfer.checksum.map(Hasher::new);
        let copied =
            self.open_source(entry, dirs)
                .map_err(|m| Some(RangeFailure::Other(m)))
                .and_then(|source| {
                    let dst = open_range_temp(&temp, self.copier.buffered(hasher.is_some()))
                        .map_err(|e| {
                            Some(RangeFailure::Other(write_error(
                                &temp,
                                &e,
                                start,
                                entry.meta.size,
                            )))
                        })?;
                    if let Some(hasher) = hasher.as_mut() {
                        // A resume's first range starts inside a piece: the
                        // piece's durable head is hashed as the temporary holds it.
                        hash_head(&temp, start, hasher, buffer).map_err(|e| {
                            Some(RangeFailure::Other(format!(
                                "cannot read back the durable part of {}: {e}",
                                temp.display()
                            )))
                        })?;
                    }
                    self.copier
                        .copy_range(
                            &source.file,
                            &dst,
                            start,
                            end,
                            source.dense,
                            buffer,
                            hasher.as_mut(),
                        )
                        .map_err(|e| match e {
                            CopyError::Write { error, at } => Some(RangeFailure::Write(error, at)),
                            e => self.copy_error(entry, &temp, e).map(RangeFailure::Other),
                        })?;
                    self.check_source_at_end(entry, &source, dirs)
                        .map_err(|m| Some(RangeFailure::Other(m)))?;
                    Ok(dst)
                });
        let mut tracker = tracker.lock().expect("tracker poisoned");
        tracker.in_flight -= 1;
        let dst = match copied {
            Ok(dst) if !tracker.failed => dst,
            // Another range of this file failed meanwhile: this one's bytes
            // count towards the prefix that failure records.
            Ok(_) => {
                tracker.done[slot] = true;
                if let Some(hasher) = hasher {
                    tracker.digests[(start / RANGE_BYTES) as usize] = Some(hasher.finish());
                }
                return self.report_failure(entry, &temp, &mut tracker);
            }
            Err(failure) => {
                let first_failure = !tracker.failed;
                tracker.failed = true;
                if let Some(RangeFailure::Write(_, at)) = failure {
                    tracker.reached[slot] = at;
                }
                if first_failure {
                    tracker.failure = failure;
                }
                return self.report_failure(entry, &temp, &mut tracker);
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

    /// A large file failed (its disk is full, say): once no range of it is
    /// in flight, make what did land durable and record it, so that a
    /// resume copies only what is missing, then report the failure once,
    /// naming that prefix.
    fn report_failure(
        &self,
        entry: &EntryRecord,
        temp: &Path,
        tracker: &mut RangeTracker,
    ) -> Option<Done> {
        if tracker.in_flight > 0 {
            return None;
        }
        let failure = tracker.failure.take()?;
        self.record_prefix(entry, temp, tracker);
        let message = match failure {
            RangeFailure::Write(error, _) => {
                write_error(temp, &error, tracker.recorded, entry.meta.size)
            }
            RangeFailure::Other(message) => message,
        };
        Some(Done::Failed(entry.index, message))
    }

    /// Best effort: failing here only means a resume copies more, and the
    /// message names the smaller prefix that was recorded.
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

    /// All piece digests of a large file, when they are all known.
    pub(super) fn pieces_of(
        &self,
        trackers: &Trackers,
        index: EntryIndex,
    ) -> Option<Vec<Checksum>> {
        let tracker = trackers.get(&index)?.lock().ok()?;
        tracker.digests.iter().copied().collect()
    }

    /// Hashes a piece an earlier run made durable, from the temporary.
    pub(super) fn rehash(
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
            metadata_applied: false,
            checksum,
        }))
    }
}

/// Feeds `hasher` the bytes of `start`'s piece below `start`, read from the
/// temporary (where an earlier run made them durable); nothing when
/// `start` is a piece boundary.
fn hash_head(temp: &Path, start: u64, hasher: &mut Hasher, buffer: &mut Vec<u8>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut pos = start - start % RANGE_BYTES;
    if pos == start {
        return Ok(());
    }
    let file = File::open(temp)?;
    let len = usize::try_from(start - pos).map_or(4 << 20, |n| n.min(4 << 20));
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    while pos < start {
        let want = ((start - pos) as usize).min(buffer.len());
        let n = file.read_at(&mut buffer[..want], pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("it ends at byte {pos}, before {start}"),
            ));
        }
        hasher.update(&buffer[..n]);
        pos += n as u64;
    }
    Ok(())
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
pub(super) fn decode_pieces(algo: ChecksumAlgo, raw: &[u8], n: usize) -> Option<Vec<Checksum>> {
    let len = algo.digest_len();
    if n == 0 || raw.len() < n * len {
        return None;
    }
    raw.chunks_exact(len)
        .take(n)
        .map(|d| Checksum::from_digest(algo, d))
        .collect()
}
