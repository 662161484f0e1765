//! Fresh leaf directories written whole under a temporary name.
//!
//! A directory this run creates, that holds only small regular files of
//! this page (no subdirectories, links or split files), is made as
//! `DIR<suffix><id>` and its files are written there under their final
//! names: no temporary name and no rename per file. When every one of its
//! files is durable and recorded `copied`, one rename puts the directory in
//! place, and its files are recorded `committed` with the sync that follows
//! — so nothing is visible under a final path until it is complete, as with
//! a temporary per file. A file that did not get that far (failed,
//! cancelled) is renamed to its own temporary name inside the directory
//! first, where a resume finds it as usual.
//!
//! A directory left under its temporary name by a run that died is found
//! again by the next (its entry is recorded `copied` before it is made):
//! its `copied` files are placed with it, the rest copied again.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rustix::fs::{CWD, RenameFlags};
use rustix::io::Errno;

use super::temp::temp_path;
use crate::error::{Error, Result};
use crate::model::{EntryIndex, EntryKind, EntryRecord, FileState, TransferId};

/// A page's staged directories, shared by the workers (where to write) and
/// the placer (what waits for which directory).
pub struct Staging<T> {
    /// The staged directories' final paths, with their number of files;
    /// set once, before any worker starts.
    dirs: OnceLock<HashMap<PathBuf, usize>>,
    /// Files placed (durable, recorded `copied`) whose directory is not in
    /// place yet, by directory (at most the page's files); and the
    /// directories whose files all came, handed on to be put in place.
    waiting: Mutex<Waiting<T>>,
}

struct Waiting<T> {
    held: HashMap<PathBuf, Vec<T>>,
    handed_on: HashSet<PathBuf>,
}

impl<T> Default for Staging<T> {
    fn default() -> Self {
        Staging {
            dirs: OnceLock::new(),
            waiting: Mutex::new(Waiting {
                held: HashMap::new(),
                handed_on: HashSet::new(),
            }),
        }
    }
}

impl<T> Staging<T> {
    /// Sets the page's staged directories (final path → files in it).
    pub fn set(&self, dirs: HashMap<PathBuf, usize>) {
        assert!(
            self.dirs.set(dirs).is_ok(),
            "a page's staged directories are set once"
        );
    }

    /// The staged directory `entry` is written in, if any.
    pub fn dir_of<'e>(&self, entry: &'e EntryRecord) -> Option<&'e Path> {
        let dirs = self.dirs.get()?;
        if entry.kind != EntryKind::File {
            return None;
        }
        entry.dest.parent().filter(|p| dirs.contains_key(*p))
    }

    /// Holds `ready` (of staged directory `dir`) until its directory is
    /// complete; then returns all of that directory's, to publish.
    pub fn hold(&self, dir: &Path, ready: T) -> Option<Vec<T>> {
        let expected = self.dirs.get().and_then(|d| d.get(dir)).copied()?;
        let mut waiting = self.waiting.lock().expect("staging poisoned");
        // A path allocated once per directory, not per file.
        let held = match waiting.held.get_mut(dir) {
            Some(held) => held,
            None => waiting.held.entry(dir.to_path_buf()).or_default(),
        };
        held.push(ready);
        debug_assert!(held.len() <= expected, "more files than {dir:?} holds");
        if held.len() < expected {
            return None;
        }
        waiting.handed_on.insert(dir.to_path_buf());
        waiting.held.remove(dir)
    }

    /// The staged directories not published yet (their files that failed,
    /// or were never copied, keep them waiting), with the files held for
    /// each; none is held any more.
    pub fn take_rest(&self) -> Vec<(PathBuf, Vec<T>)> {
        let Some(dirs) = self.dirs.get() else {
            return Vec::new();
        };
        let mut waiting = self.waiting.lock().expect("staging poisoned");
        let Waiting { held, handed_on } = &mut *waiting;
        let mut rest: Vec<(PathBuf, Vec<T>)> = dirs
            .keys()
            // One whose files all came was put in place (or failed to be)
            // when the last came.
            .filter(|dir| !handed_on.contains(*dir))
            .map(|dir| (dir.clone(), held.remove(dir).unwrap_or_default()))
            .collect();
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        rest
    }
}

/// Which of `candidates` (directories of the page `entries` that do not
/// exist) to stage, with their number of files: those whose contents in
/// the page are one or more small regular files and nothing else. When
/// the page is `full`, the directory of its last entry may go on in the
/// next page, and is not staged.
pub fn choose(
    entries: &[EntryRecord],
    candidates: &[&EntryRecord],
    full: bool,
    split_from: u64,
) -> HashMap<PathBuf, usize> {
    let wanted: HashSet<&Path> = candidates.iter().map(|d| d.dest.as_path()).collect();
    let leaders: HashSet<EntryIndex> = entries.iter().filter_map(|e| e.link_leader).collect();
    let mut files: HashMap<&Path, Option<usize>> = HashMap::new();
    for entry in entries {
        let Some(parent) = entry.dest.parent().filter(|p| wanted.contains(p)) else {
            continue;
        };
        let plain = entry.kind == EntryKind::File
            && entry.link_leader.is_none()
            && !leaders.contains(&entry.index)
            && entry.meta.size < split_from
            && !entry.state.is_done();
        let count = files.entry(parent).or_insert(Some(0));
        *count = match (plain, *count) {
            (true, Some(n)) => Some(n + 1),
            _ => None,
        };
    }
    if full && let Some(parent) = entries.last().and_then(|e| e.dest.parent()) {
        files.insert(parent, None);
    }
    files
        .into_iter()
        .filter_map(|(dir, n)| Some((dir.to_path_buf(), n.filter(|n| *n > 0)?)))
        .collect()
}

/// Makes staged directory `dir`'s temporary, owner-only until its
/// contents are in place. One an earlier run left is taken up: but a
/// symlink planted at the name is removed, never followed, and what that
/// run left of the page's files (`entries`) under their own temporary
/// names inside goes, as they are written again.
pub fn make(dir: &Path, entries: &[EntryRecord], suffix: &str, id: TransferId) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let staged = temp_path(dir, suffix, id);
    let mkdir = || std::fs::DirBuilder::new().mode(0o700).create(&staged);
    match mkdir() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        other => return other.map_err(|e| at(&staged, e)),
    }
    match std::fs::symlink_metadata(&staged) {
        Ok(m) if m.is_dir() => {
            for child in entries.iter().filter(|e| e.dest.parent() == Some(dir)) {
                let name = child.dest.file_name().unwrap_or_default();
                match std::fs::remove_file(temp_path(&staged.join(name), suffix, id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&staged, e)),
                    _ => {}
                }
            }
            Ok(())
        }
        _ => {
            std::fs::remove_file(&staged).map_err(|e| at(&staged, e))?;
            mkdir().map_err(|e| at(&staged, e))
        }
    }
}

/// Where a file of staged directory `dir` is written: under its final name
/// in the directory's temporary.
pub fn staged_path(dir: &Path, name: &OsStr, suffix: &str, id: TransferId) -> PathBuf {
    temp_path(dir, suffix, id).join(name)
}

/// `dir`'s staged temporary, if one is there: a directory, as `lstat`
/// finds it (a symlink at that name is never taken for one).
pub fn left_staged(dir: &Path, suffix: &str, id: TransferId) -> Option<PathBuf> {
    let staged = temp_path(dir, suffix, id);
    std::fs::symlink_metadata(&staged)
        .is_ok_and(|m| m.is_dir())
        .then_some(staged)
}

/// Puts staged directory `dir` in place. Its files in `children` that are
/// not `placed` first move to their own temporary names inside it (a
/// resume continues them there). The directory's temporary is renamed
/// over nothing: if `dir` appeared meanwhile, the files move into it one
/// by one instead, as files with their own temporaries would have.
pub fn publish(
    dir: &Path,
    children: &[&EntryRecord],
    placed: &HashSet<EntryIndex>,
    suffix: &str,
    id: TransferId,
) -> io::Result<()> {
    let staged = temp_path(dir, suffix, id);
    let mut moved = Vec::new();
    for child in children.iter().filter(|c| !placed.contains(&c.index)) {
        let name = child.dest.file_name().unwrap_or_default();
        let from = staged.join(name);
        let to = temp_path(&from, suffix, id);
        // Written with its own mode inside the owner-only directory, it
        // becomes a temporary like any other: owner-only until complete.
        let owner_only = std::fs::Permissions::from_mode(0o600);
        match std::fs::set_permissions(&from, owner_only).and_then(|()| std::fs::rename(&from, &to))
        {
            Ok(()) => moved.push((from, to)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(&from, e)),
        }
    }
    let renamed = match rustix::fs::renameat_with(CWD, &staged, CWD, dir, RenameFlags::NOREPLACE) {
        // A file system without rename flags (NFS, many FUSE ones): a
        // plain rename, which fails over a directory that is not empty.
        Err(Errno::INVAL | Errno::NOSYS) if !dir.exists() => {
            rustix::fs::renameat(CWD, &staged, CWD, dir)
        }
        other => other,
    };
    match renamed {
        Ok(()) => Ok(()),
        Err(Errno::EXIST | Errno::NOTEMPTY) => {
            for child in children {
                let name = child.dest.file_name().unwrap_or_default();
                let (from, to) = match placed.contains(&child.index) {
                    true => (staged.join(name), child.dest.clone()),
                    false => {
                        let from = temp_path(&staged.join(name), suffix, id);
                        let to = temp_path(&child.dest, suffix, id);
                        (from, to)
                    }
                };
                match std::fs::rename(&from, &to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(at(&from, e)),
                }
            }
            std::fs::remove_dir(&staged).map_err(|e| at(&staged, e))
        }
        Err(e) => {
            // Still staged: its files back under their own names, where a
            // resume, finalize or cancel looks for them.
            for (from, to) in moved {
                let _ = std::fs::rename(to, from);
            }
            Err(at(&staged, e.into()))
        }
    }
}

fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Where a run that is over left the temporary of `entry` (a file not
/// done): under its own name in its directory's staged temporary when that
/// exists, else beside its destination. `staged` remembers the directories
/// asked about.
pub fn temporary_left(
    entry: &EntryRecord,
    suffix: &str,
    id: TransferId,
    staged: &mut HashMap<PathBuf, bool>,
) -> PathBuf {
    if let (EntryKind::File, Some(dir), Some(name)) =
        (entry.kind, entry.dest.parent(), entry.dest.file_name())
    {
        let is_staged = *staged
            .entry(dir.to_path_buf())
            .or_insert_with(|| left_staged(dir, suffix, id).is_some());
        if is_staged {
            return staged_path(dir, name, suffix, id);
        }
    }
    temp_path(&entry.dest, suffix, id)
}

/// Removes what a run that is over left of `entries` not done: each
/// file's temporary ([`temporary_left`]), then the staged directories that
/// held some. Adds to `to_sync` what must be synced for the removals to be
/// durable, and returns the destinations whose temporaries were removed.
pub fn remove_temporaries_left(
    entries: &[EntryRecord],
    suffix: &str,
    id: TransferId,
    to_sync: &mut Vec<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut staged = HashMap::new();
    let mut synced = Vec::new();
    for entry in entries
        .iter()
        .filter(|e| e.kind != EntryKind::Dir && !e.state.is_done())
    {
        let temp = temporary_left(entry, suffix, id, &mut staged);
        match std::fs::remove_file(&temp) {
            Ok(()) => {
                removed.push(entry.dest.clone());
                synced.push(temp);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&temp, e)),
        }
    }
    let mut gone = HashSet::new();
    for dir in entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir && !e.state.is_done())
    {
        let Some(staged) = left_staged(&dir.dest, suffix, id) else {
            continue;
        };
        // Whole: a run killed while putting it in place may have left
        // files under their own temporary names inside.
        match std::fs::remove_dir_all(&staged) {
            Ok(()) => {
                gone.insert(staged);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&staged, e)),
        }
    }
    // What was inside a staged directory is durably gone with it: the
    // directory's parent is synced, not the directory.
    synced.retain(|p| !p.parent().is_some_and(|dir| gone.contains(dir)));
    to_sync.extend(synced);
    to_sync.extend(gone);
    Ok(removed)
}

/// For finalize, which may find directories a dead run left staged: puts
/// each in place ([`publish`]) with its files recorded `copied` that `keep`
/// accepts (given the file's path inside the staged directory, so that
/// `--verify` reads it before it is visible); its other files move to
/// their own temporaries inside it. Returns the directories put in place.
pub fn publish_left(
    entries: &[EntryRecord],
    suffix: &str,
    id: TransferId,
    mut keep: impl FnMut(&EntryRecord, &Path) -> bool,
) -> Result<Vec<PathBuf>> {
    let mut left: Vec<&Path> = entries
        .iter()
        .filter(|e| e.kind == EntryKind::Dir && !e.state.is_done())
        .map(|e| e.dest.as_path())
        .filter(|dir| left_staged(dir, suffix, id).is_some())
        .collect();
    if left.is_empty() {
        return Ok(Vec::new());
    }
    left.sort();
    let children = children_of(entries, &left.iter().copied().collect());
    let mut published = Vec::new();
    for dir in left {
        let staged = temp_path(dir, suffix, id);
        let kids = children.get(dir).map(Vec::as_slice).unwrap_or_default();
        let placed: HashSet<EntryIndex> = kids
            .iter()
            .filter(|e| {
                let name = e.dest.file_name().unwrap_or_default();
                e.state == FileState::Copied && keep(e, &staged.join(name))
            })
            .map(|e| e.index)
            .collect();
        publish(dir, kids, &placed, suffix, id).map_err(|e| Error::io(dir, e))?;
        published.push(dir.to_path_buf());
    }
    Ok(published)
}

/// The files of a page that a staged directory holds, by directory.
pub fn children_of<'e>(
    entries: &'e [EntryRecord],
    dirs: &HashSet<&Path>,
) -> HashMap<PathBuf, Vec<&'e EntryRecord>> {
    let mut children: HashMap<PathBuf, Vec<&EntryRecord>> = HashMap::new();
    for entry in entries {
        if let Some(parent) = entry.dest.parent().filter(|p| dirs.contains(p)) {
            children
                .entry(parent.to_path_buf())
                .or_default()
                .push(entry);
        }
    }
    children
}
