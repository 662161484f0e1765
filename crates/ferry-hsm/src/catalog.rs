//! The file side of the catalog: the `user.ferry.hsm` extended attribute
//! that mirrors a file's catalog state, dirty detection and release.
//!
//! The store's catalog is the truth; the attribute is a mirror for tools
//! that look at the file (written after the store, best effort: a file
//! system without user attributes still works). A file is dirty when its
//! size or modification time differ from what was archived, or its inode
//! or change time from what ferry last left (ctime cannot be set back:
//! a byte rewritten in place and `touch -d` back to the old mtime is seen).
//! Ferry's own changes (the mirror, a release's punch) are followed by a
//! new stamp; a change by someone else between ferry's change and that
//! stamp, microseconds, would go unseen if it also restored the mtime.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::{CatalogEntry, CatalogState, RequestQueue};
use ferry::error::{Error, Result};

/// The extended attribute that mirrors the catalog state.
pub const XATTR: &str = "user.ferry.hsm";

/// What identifies a file to the friendly commands: its absolute path.
pub fn fid_of(path: &Path) -> Result<(String, PathBuf)> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let fid = abs.to_str().ok_or_else(|| Error::Io {
        path: abs.clone(),
        source: io::Error::new(
            io::ErrorKind::InvalidInput,
            "HSM file identifiers must be UTF-8 paths",
        ),
    })?;
    Ok((fid.to_owned(), abs))
}

/// `(size, mtime_ns, mode)` of a file as the catalog records it.
pub fn file_meta(meta: &fs::Metadata) -> (u64, i64, u32) {
    (
        meta.len(),
        meta.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
        meta.mode() & 0o7777,
    )
}

/// `(inode, ctime_ns)`: what identifies this version of a file.
pub fn stamp_of(meta: &fs::Metadata) -> (u64, i64) {
    (
        meta.ino(),
        meta.ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec()),
    )
}

/// Whether `meta` differs from what `entry` archived, or from the stamp
/// ferry recorded (when it recorded one: entries from before did not).
pub fn changed_since(entry: &CatalogEntry, meta: &fs::Metadata) -> bool {
    let (size, mtime_ns, _) = file_meta(meta);
    size != entry.size
        || mtime_ns != entry.mtime_ns
        || (entry.ctime_ns != 0 && stamp_of(meta) != (entry.ino, entry.ctime_ns))
}

/// Records `path`'s stamp after ferry's own change to it, while its entry
/// is in `state`. Best effort (warned): a missed stamp makes the file look
/// dirty later, never clean.
pub fn restamp(queue: &dyn RequestQueue, fid: &str, state: CatalogState, path: &Path) {
    let stamped = fs::symlink_metadata(path)
        .map_err(|e| e.to_string())
        .and_then(|meta| {
            let (ino, ctime_ns) = stamp_of(&meta);
            queue
                .set_catalog_stamp(fid, state, ino, ctime_ns)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = stamped {
        eprintln!(
            "ferry: warning: {}: cannot record its change time ({e}); it will look changed \
             (dirty) until it is archived again",
            path.display()
        );
    }
}

/// Writes the mirror of `entry` on `path`.
pub fn set_xattr(path: &Path, entry: &CatalogEntry) -> io::Result<()> {
    let value = serde_json::json!({
        "state": entry.state,
        "archive_id": entry.archive_id,
        "object": entry.object,
    })
    .to_string();
    rustix::fs::setxattr(
        path,
        XATTR,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// The mirrored state on `path`, if it has one.
pub fn xattr_state(path: &Path) -> Option<CatalogState> {
    let mut buf = vec![0u8; 512];
    let n = rustix::fs::getxattr(path, XATTR, &mut buf).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&buf[..n]).ok()?;
    CatalogState::parse(value["state"].as_str()?)
}

/// Writes the mirror, warning (never failing) when the file system refuses.
pub fn mirror(path: &Path, entry: &CatalogEntry) {
    if let Err(e) = set_xattr(path, entry) {
        eprintln!(
            "ferry: warning: {}: cannot set {XATTR} ({e}); the store's catalog still holds its state ({})",
            path.display(),
            entry.state
        );
    }
}

/// Looks at the file and records it dirty when it changed since it was
/// archived. Returns the (possibly updated) catalog entry.
pub fn refresh(queue: &dyn RequestQueue, fid: &str, path: &Path) -> Result<Option<CatalogEntry>> {
    let Some(entry) = queue.catalog_entry(fid)? else {
        return Ok(None);
    };
    if entry.state != CatalogState::Archived {
        return Ok(Some(entry));
    }
    let meta = fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if !changed_since(&entry, &meta) {
        return Ok(Some(entry));
    }
    let dirty = queue.set_catalog_state(fid, CatalogState::Archived, CatalogState::Dirty)?;
    mirror(path, &dirty);
    Ok(Some(dirty))
}

/// Replaces the data of an archived, unchanged file by a sparse file of the
/// same size, mode and times. Refused (and recorded) when the file is dirty.
///
/// The catalog says `released` first, then the data goes: a crash between
/// leaves a file whose data is still there (harmless; a restore rewrites
/// it), never a hole the catalog calls archived.
pub fn release(queue: &dyn RequestQueue, fid: &str, path: &Path) -> Result<CatalogEntry> {
    let entry = refresh(queue, fid, path)?.ok_or_else(|| {
        Error::Store(ferry::store::StoreError::NotInCatalog {
            path: queue.location(),
            fid: fid.to_owned(),
        })
    })?;
    if entry.state == CatalogState::Dirty {
        return Err(Error::FileDirty {
            path: path.to_path_buf(),
        });
    }
    let released = queue.set_catalog_state(fid, CatalogState::Archived, CatalogState::Released)?;
    punch(path, &released).map_err(|e| Error::io(path, e))?;
    mirror(path, &released);
    // The punch and the mirror changed ctime: a restore compares the stub
    // with this stamp to tell data written into it since.
    restamp(queue, fid, CatalogState::Released, path);
    Ok(released)
}

/// Deallocates every byte of `path`, keeping its size (truncated to zero,
/// then extended: unlike punching holes, that frees a partial last block
/// too), then puts back the archived modification time and the access
/// time it had. Same inode, owner and mode.
fn punch(path: &Path, entry: &CatalogEntry) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let meta = file.metadata()?;
    file.set_len(0)?;
    file.set_len(meta.len())?;
    set_times(
        &file,
        meta.atime() * 1_000_000_000 + meta.atime_nsec(),
        entry.mtime_ns,
    )?;
    file.sync_all()
}

/// Sets a file's access and modification times, to the nanosecond.
pub fn set_times(file: &File, atime_ns: i64, mtime_ns: i64) -> io::Result<()> {
    let ts = |ns: i64| rustix::fs::Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000) as _,
    };
    rustix::fs::futimens(
        file,
        &rustix::fs::Timestamps {
            last_access: ts(atime_ns),
            last_modification: ts(mtime_ns),
        },
    )
    .map_err(io::Error::from)
}

/// The request the friendly commands (`ferry hsm archive PATH`) enqueue
/// for a file: its absolute path is its identifier. An archive first looks
/// at the file, so that a file changed since its last archive is recorded
/// dirty and archived again rather than skipped.
pub fn request_for_path(
    queue: &dyn RequestQueue,
    action: crate::Action,
    path: &Path,
    archive_id: u32,
    priority_ms: i64,
) -> Result<crate::NewRequest> {
    let (fid, abs) = fid_of(path)?;
    if action == crate::Action::Archive {
        let meta = fs::symlink_metadata(&abs).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::SourceNotFound { path: abs.clone() },
            _ => Error::io(&abs, e),
        })?;
        if !meta.is_file() {
            return Err(Error::UnsupportedFileType {
                path: abs,
                what: "not a regular file; HSM archives regular files",
            });
        }
        refresh(queue, &fid, &abs)?;
    }
    // A restore needs an archived copy: without one in the catalog the
    // request could only fail, so it is refused here (exit 22).
    if action == crate::Action::Restore && queue.catalog_entry(&fid)?.is_none() {
        return Err(Error::Store(ferry::store::StoreError::NotInCatalog {
            path: queue.location(),
            fid,
        }));
    }
    Ok(crate::NewRequest {
        action,
        fsname: String::new(),
        archive_id,
        flags: 0,
        data: Vec::new(),
        fid,
        path: Some(abs),
        priority_ms,
    })
}
