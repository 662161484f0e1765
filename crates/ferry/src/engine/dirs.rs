//! The directories a worker works in, kept open: the files of a span share
//! a destination directory (and, most often, a source directory), so each
//! file is opened, created and checked by its name in them instead of
//! walking its whole path again. Three path walks per file of a W4 copy
//! (14 lookups of path components) were a twentieth of ferry's CPU time.
//!
//! A directory is opened by its path, as the files were before: a symlink
//! among its components is followed, the file's own name never is. It is
//! kept while the worker's files are in it: a source directory renamed
//! meanwhile is still read from (its files are what was planned, and each
//! is checked against its recorded size and mtime as before).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};

/// The source and destination directories of the file a worker opened
/// last (`O_PATH`: nothing is read through them but names).
#[derive(Default)]
pub(super) struct OpenDirs {
    source: Option<(PathBuf, OwnedFd)>,
    dest: Option<(PathBuf, OwnedFd)>,
}

impl OpenDirs {
    /// `path`'s directory, open, and `path`'s name in it.
    pub fn source<'p>(&mut self, path: &'p Path) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        open_dir_of(&mut self.source, path)
    }

    /// As [`OpenDirs::source`], for a file the worker writes.
    pub fn dest<'p>(&mut self, path: &'p Path) -> io::Result<(BorrowedFd<'_>, &'p OsStr)> {
        open_dir_of(&mut self.dest, path)
    }
}

fn open_dir_of<'d, 'p>(
    slot: &'d mut Option<(PathBuf, OwnedFd)>,
    path: &'p Path,
) -> io::Result<(BorrowedFd<'d>, &'p OsStr)> {
    let Some(name) = path.file_name() else {
        return Ok((CWD, path.as_os_str()));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if slot.as_ref().is_none_or(|(open, _)| open != dir) {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        *slot = Some((dir.to_path_buf(), fd));
    }
    let (_, fd) = slot.as_ref().expect("opened above");
    Ok((fd.as_fd(), name))
}
