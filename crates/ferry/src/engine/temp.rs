//! The temporaries: how a worker opens one (owner-only, never through a
//! symlink; a large file's ranges with `O_DIRECT`), and what a failed
//! write says.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::model::TransferId;

/// Opens a temporary for writing, owner-only, never through a symlink: a
/// link planted at the predictable name is removed, not followed. A whole
/// file (`truncate`) always starts in a new inode: an earlier attempt may
/// have given its temporary the final mode, owner, ACL or extended
/// attributes (step 5 on the open temporary) before it was killed, and
/// rewriting that inode would show partial data to whom they admit.
pub fn open_temp(temp: &Path, truncate: bool) -> io::Result<File> {
    open_temp_at(rustix::fs::CWD, temp.as_os_str(), truncate, 0o600)
}

/// [`open_temp`] by its name in an open directory `at`, created with
/// `mode` (less the umask): other than owner-only only where nobody else
/// can reach it.
pub fn open_temp_at(
    at: BorrowedFd<'_>,
    temp: &OsStr,
    truncate: bool,
    mode: u32,
) -> io::Result<File> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let open = |fresh: bool| {
        let mut flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::CREATE;
        if fresh {
            flags |= OFlags::EXCL;
        } else if truncate {
            flags |= OFlags::TRUNC;
        }
        rustix::fs::openat(at, temp, flags, Mode::from_raw_mode(mode)).map(File::from)
    };
    let unlink = || rustix::fs::unlinkat(at, temp, AtFlags::empty());
    if truncate {
        // One open when there is none (the first copy); else unlink (the
        // old inode, or a planted link) and create.
        return match open(true) {
            Err(rustix::io::Errno::EXIST) => {
                unlink()?;
                open(true)
            }
            other => other,
        }
        .map_err(io::Error::from);
    }
    match open(false) {
        Err(rustix::io::Errno::LOOP) => {
            unlink()?;
            open(true)
        }
        other => other,
    }
    .map_err(io::Error::from)
}

pub fn write_error(temp: &Path, e: &io::Error, written: u64, size: u64) -> String {
    match e.raw_os_error().map(rustix::io::Errno::from_raw_os_error) {
        Some(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => format!(
            "no space left writing {}: {written} of {size} bytes written, {} more needed",
            temp.display(),
            size.saturating_sub(written)
        ),
        _ => format!("cannot write {}: {e}", temp.display()),
    }
}

/// Opens a large file's temporary to write one of its ranges. When the
/// bytes pass through ferry's buffer anyway (`direct`: they are hashed, or
/// the kernel cannot copy between these file systems), it is opened
/// `O_DIRECT`: the data is not copied a second time into the page cache
/// and written back later, which made checksums cost 10–20 % against an
/// in-kernel copy. A file system that refuses `O_DIRECT` (tmpfs) gets the
/// page cache.
pub(super) fn open_range_temp(temp: &Path, direct: bool) -> io::Result<File> {
    let open = |flags: rustix::fs::OFlags| {
        OpenOptions::new()
            .write(true)
            .custom_flags((rustix::fs::OFlags::NOFOLLOW | flags).bits() as i32)
            .open(temp)
    };
    if direct {
        match open(rustix::fs::OFlags::DIRECT) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            other => return other,
        }
    }
    open(rustix::fs::OFlags::empty())
}

/// `DEST` → `DEST<suffix><id>`, beside it: the temporary name of `dest`
/// for transfer `id`.
pub fn temp_path(dest: &Path, suffix: &str, id: TransferId) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_owned();
    name.push(format!("{suffix}{id}"));
    dest.with_file_name(name)
}
