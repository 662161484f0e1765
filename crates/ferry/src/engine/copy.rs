//! Moving bytes: one byte range of a source into the same range of a
//! temporary, skipping holes so that sparse files stay sparse.
//!
//! `copy_file_range` when the kernel can (same file system, and some pairs of
//! file systems); otherwise — `EXDEV` between a burst buffer and a parallel
//! file system is the normal case — `pread`/`pwrite` through a large buffer.
//! Several ranges are in flight at once because the engine runs one copy per
//! worker thread. With a checksum the bytes must pass through our hands, so
//! the buffered path is taken and each buffer is hashed between its read and
//! its write (holes are hashed as the zeros they read as).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use crate::checksum::Hasher;
use crate::failpoint::{self, CommitStep};

/// Bytes per `copy_file_range` call or buffered read: large enough to
/// amortise the system call, small enough to notice a cancel quickly.
pub const CHUNK_BYTES: usize = 8 << 20;

/// The buffered path's buffer, per worker.
pub const BUFFER_BYTES: usize = 4 << 20;

/// What `O_DIRECT` needs of a buffer's address, offsets and lengths: the
/// largest logical block size in use (512 or 4096).
pub const DIRECT_ALIGN: usize = 4096;

/// Why a copy stopped early.
#[derive(Debug)]
pub enum CopyError {
    Cancelled,
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the temporary failed at offset `at`.
    Write {
        error: io::Error,
        at: u64,
    },
    /// The source ended before the size captured when it was added.
    SourceShrank {
        at: u64,
    },
}

/// Per-run state shared by the workers.
pub struct Copier<'a> {
    pub cancel: &'a AtomicBool,
    /// Bytes written this run, for progress display and reports.
    pub bytes_copied: &'a AtomicU64,
    /// See [`super::ChunkHook`].
    pub after_chunk: Option<&'a super::ChunkFn>,
    /// `--bwlimit`: paces every chunk.
    pub throttle: &'a super::throttle::Throttle<'a>,
    /// Cleared on the first `copy_file_range` refusal, so that later copies
    /// go straight to the buffered path.
    pub use_copy_file_range: AtomicBool,
}

impl Copier<'_> {
    /// Whether a copy goes through ferry's buffer rather than the kernel's
    /// `copy_file_range`: always when it is hashed.
    pub fn buffered(&self, hashed: bool) -> bool {
        hashed || !self.use_copy_file_range.load(Ordering::Relaxed)
    }

    /// Copies `[start, end)` of `src` to the same offsets of `dst`, skipping
    /// holes unless `dense` says there are none, and feeding `hasher` every
    /// byte of the range in order. Returns where the last data written
    /// ends: the caller extends `dst` when a hole ends the file.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_range(
        &self,
        src: &File,
        dst: &File,
        start: u64,
        end: u64,
        dense: bool,
        buffer: &mut Vec<u8>,
        mut hasher: Option<&mut Hasher>,
    ) -> Result<u64, CopyError> {
        if dense {
            self.copy_data(src, dst, start, end, buffer, hasher)?;
            return Ok(end);
        }
        let zeros = |hasher: &mut Option<&mut Hasher>, len: u64| {
            if let Some(h) = hasher.as_deref_mut() {
                h.update_zeros(len);
            }
        };
        let mut pos = start;
        let mut data_end = start;
        while pos < end {
            let data = match rustix::fs::seek(src, SeekFrom::Data(pos)) {
                Ok(data) => data,
                // No data after pos: the rest is a hole (the caller checks
                // afterwards that the source did not shrink).
                Err(Errno::NXIO) => {
                    zeros(&mut hasher, end - pos);
                    return Ok(data_end);
                }
                // The file system cannot tell holes: everything is data.
                Err(Errno::INVAL | Errno::OPNOTSUPP) => pos,
                Err(e) => return Err(CopyError::Read(e.into())),
            };
            if data >= end {
                zeros(&mut hasher, end - pos);
                return Ok(data_end);
            }
            zeros(&mut hasher, data - pos);
            let hole = match rustix::fs::seek(src, SeekFrom::Hole(data)) {
                Ok(hole) => hole.min(end),
                Err(_) => end,
            };
            self.copy_data(src, dst, data, hole, buffer, hasher.as_deref_mut())?;
            data_end = hole;
            pos = hole;
        }
        Ok(data_end)
    }

    fn copy_data(
        &self,
        src: &File,
        dst: &File,
        start: u64,
        end: u64,
        buffer: &mut Vec<u8>,
        mut hasher: Option<&mut Hasher>,
    ) -> Result<(), CopyError> {
        let mut pos = start;
        while pos < end {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(CopyError::Cancelled);
            }
            failpoint::hit(CommitStep::ReadSource).map_err(CopyError::Read)?;
            failpoint::hit(CommitStep::WriteData)
                .map_err(|error| CopyError::Write { error, at: pos })?;
            let want = self.throttle.chunk((end - pos).min(CHUNK_BYTES as u64)) as usize;
            let in_kernel = !self.buffered(hasher.is_some());
            let copied = if in_kernel {
                let (mut off_in, mut off_out) = (pos, pos);
                match rustix::fs::copy_file_range(
                    src,
                    Some(&mut off_in),
                    dst,
                    Some(&mut off_out),
                    want,
                ) {
                    Ok(n) => Some(n),
                    Err(
                        Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM,
                    ) if pos == start => {
                        self.use_copy_file_range.store(false, Ordering::Relaxed);
                        None
                    }
                    // copy_file_range cannot tell which side failed; ask each.
                    Err(e) => return Err(classify(e.into(), src, pos)),
                }
            } else {
                None
            };
            let copied = match copied {
                Some(n) => n,
                None => self.copy_buffered(src, dst, pos, want, buffer, hasher.as_deref_mut())?,
            };
            if copied == 0 {
                return Err(CopyError::SourceShrank { at: pos });
            }
            pos += copied as u64;
            let total = self
                .bytes_copied
                .fetch_add(copied as u64, Ordering::Relaxed)
                + copied as u64;
            if let Some(hook) = self.after_chunk {
                hook(total, self.cancel);
            }
            self.throttle.pace(copied as u64, self.cancel);
        }
        Ok(())
    }

    fn copy_buffered(
        &self,
        src: &File,
        dst: &File,
        pos: u64,
        want: usize,
        buffer: &mut Vec<u8>,
        hasher: Option<&mut Hasher>,
    ) -> Result<usize, CopyError> {
        // Grown to what the largest copy so far needed, at most the bound:
        // a run of small files never fills a 4 MiB buffer with zeros. The
        // data starts at an aligned address, for an O_DIRECT temporary.
        let len = want.min(BUFFER_BYTES);
        if buffer.len() < len + DIRECT_ALIGN {
            buffer.resize(len + DIRECT_ALIGN, 0);
        }
        let at = buffer.as_ptr().align_offset(DIRECT_ALIGN);
        let buffer = &mut buffer[at..at + len];
        let n = loop {
            match src.read_at(&mut buffer[..len], pos) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            }
        };
        if let Some(hasher) = hasher {
            hasher.update(&buffer[..n]);
        }
        if n > 0 && failpoint::corrupts(CommitStep::WriteData) {
            // The I/O seam's bit flip between what was read and what lands.
            buffer[n / 2] ^= 0x01;
        }
        // `at` counts the bytes of this chunk that did land before the
        // failure: a full disk's message and the recorded prefix say what
        // the disk holds, not where the chunk began.
        write_at(dst, &buffer[..n], pos).map_err(|(error, written)| CopyError::Write {
            error,
            at: pos + written as u64,
        })?;
        Ok(n)
    }
}

/// Writes all of `data` at `pos`; on failure, also says how many bytes did
/// land. An `O_DIRECT` temporary refuses a write that is not aligned (a
/// file's last block, a hole's edge): it is then written through the page
/// cache, as is everything after it.
fn write_at(dst: &File, data: &[u8], pos: u64) -> Result<(), (io::Error, usize)> {
    let mut written = 0;
    while written < data.len() {
        match dst.write_at(&data[written..], pos + written as u64) {
            Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written)),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(Errno::INVAL.raw_os_error()) => {
                let flags = rustix::fs::fcntl_getfl(dst).map_err(|e| (e.into(), written))?;
                if !flags.contains(rustix::fs::OFlags::DIRECT) {
                    return Err((e, written));
                }
                rustix::fs::fcntl_setfl(dst, flags - rustix::fs::OFlags::DIRECT)
                    .map_err(|e| (e.into(), written))?;
            }
            Err(e) => return Err((e, written)),
        }
    }
    Ok(())
}

/// Attributes a `copy_file_range` failure to the side that caused it.
fn classify(e: io::Error, src: &File, at: u64) -> CopyError {
    let is_write_side = matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::NOSPC | Errno::DQUOT | Errno::FBIG | Errno::ROFS)
    );
    if is_write_side || src.metadata().is_ok() && e.raw_os_error() != Some(Errno::IO.raw_os_error())
    {
        CopyError::Write { error: e, at }
    } else {
        CopyError::Read(e)
    }
}
