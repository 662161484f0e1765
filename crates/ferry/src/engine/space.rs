//! `--check-space`: refuse to start a copy that cannot fit, and reserve the
//! space of large files before their first byte is written.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{EntryKind, EntryRecord, FileState};

/// Per-file allowance for the block a file's tail occupies.
const BLOCK_BYTES: u64 = 4096;

/// What is left to copy per destination file system, summed over pages of
/// a transfer's entries (a run never holds them all), then compared with
/// the space free there (for unprivileged users: `f_bavail`): one slot
/// per file system, and one per destination directory.
#[derive(Default)]
pub(crate) struct Needed {
    /// device → (a directory on it, bytes needed)
    needed: HashMap<u64, (PathBuf, u64)>,
    /// A destination's parent → its device, looked up once.
    device_of: HashMap<PathBuf, u64>,
}

impl Needed {
    pub(crate) fn add(&mut self, entries: &[EntryRecord]) -> Result<()> {
        for entry in entries {
            self.add_one(entry)?;
        }
        Ok(())
    }

    fn add_one(&mut self, entry: &EntryRecord) -> Result<()> {
        // Hard links take no space of their own.
        if entry.kind != EntryKind::File
            || entry.link_leader.is_some()
            || entry.state == FileState::Copied
            || entry.state.is_done()
        {
            return Ok(());
        }
        // What a resume continues from (failed files keep theirs too).
        let durable = entry.progress_bytes_durable;
        let left = entry.meta.size.saturating_sub(durable);
        let parent = entry.dest.parent().unwrap_or(Path::new("."));
        let device = match self.device_of.get(parent) {
            Some(known) => *known,
            None => {
                let dir = existing_ancestor(parent);
                let device = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?.dev();
                self.device_of.insert(parent.to_path_buf(), device);
                self.needed
                    .entry(device)
                    .or_insert_with(|| (dir.to_path_buf(), 0));
                device
            }
        };
        let slot = self
            .needed
            .get_mut(&device)
            .expect("inserted with its device");
        slot.1 += left.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
        Ok(())
    }

    /// Refuses when a file system has less free than it needs.
    pub(crate) fn check(self) -> Result<()> {
        for (dir, bytes) in self.needed.into_values() {
            let stat = rustix::fs::statvfs(&dir).map_err(|e| Error::io(&dir, e.into()))?;
            let available = stat.f_bavail.saturating_mul(stat.f_frsize);
            if available < bytes {
                return Err(Error::NotEnoughSpace {
                    path: dir,
                    needed: bytes,
                    available,
                });
            }
        }
        Ok(())
    }
}

/// Allocates `[first, size)` of a large file's temporary, so that the copy
/// cannot run out of space half-way. Not for a sparse source, whose holes
/// must stay holes; not where the file system has no fallocate.
pub(crate) fn reserve(source: &Path, temp: &File, first: u64, size: u64) -> io::Result<()> {
    let dense = std::fs::metadata(source)
        .map(|m| m.blocks().saturating_mul(512) >= m.size())
        .unwrap_or(false);
    if !dense || first >= size {
        return Ok(());
    }
    match rustix::fs::fallocate(
        temp,
        rustix::fs::FallocateFlags::KEEP_SIZE,
        first,
        size - first,
    ) {
        Ok(()) | Err(rustix::io::Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The nearest directory at or above `path` that exists: where a
/// destination directory not created yet will live.
fn existing_ancestor(path: &Path) -> &Path {
    let mut dir = path;
    loop {
        if dir.as_os_str().is_empty() {
            return Path::new(".");
        }
        if dir.exists() {
            return dir;
        }
        match dir.parent() {
            Some(parent) => dir = parent,
            None => return dir,
        }
    }
}
