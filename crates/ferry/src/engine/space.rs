//! `--check-space`: refuse to start a copy that cannot fit, and reserve the
//! space of large files before their first byte is written.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::model::{EntryKind, EntryRecord, FileState};

/// Per-file allowance for the block a file's tail occupies.
const BLOCK_BYTES: u64 = 4096;

/// Sums what is left to copy per destination file system and compares it
/// with the space free there (for unprivileged users: `f_bavail`).
pub(crate) fn check(entries: &[EntryRecord]) -> Result<()> {
    // device → (a directory on it, bytes needed)
    let mut needed: HashMap<u64, (&Path, u64)> = HashMap::new();
    let mut device_of: HashMap<&Path, (u64, &Path)> = HashMap::new();
    for entry in entries {
        // Hard links take no space of their own.
        if entry.kind != EntryKind::File
            || entry.link_leader.is_some()
            || entry.state == FileState::Copied
            || entry.state.is_done()
        {
            continue;
        }
        // What a resume continues from (failed files keep theirs too).
        let durable = entry.progress_bytes_durable;
        let left = entry.meta.size.saturating_sub(durable);
        let parent = entry.dest.parent().unwrap_or(Path::new("."));
        let (device, dir) = match device_of.get(parent) {
            Some(known) => *known,
            None => {
                let dir = existing_ancestor(parent);
                let device = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?.dev();
                device_of.insert(parent, (device, dir));
                (device, dir)
            }
        };
        let slot = needed.entry(device).or_insert((dir, 0));
        slot.1 += left.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    }
    for (dir, bytes) in needed.into_values() {
        let stat = rustix::fs::statvfs(dir).map_err(|e| Error::io(dir, e.into()))?;
        let available = stat.f_bavail.saturating_mul(stat.f_frsize);
        if available < bytes {
            return Err(Error::NotEnoughSpace {
                path: dir.to_path_buf(),
                needed: bytes,
                available,
            });
        }
    }
    Ok(())
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
