//! The same copy run again is the same transfer.
//!
//! `cp -r SRC DST` nests the second time (`DST` exists by then, so it
//! receives `DST/SRC`). For a job script re-run after a kill that would copy
//! everything again into a new place and leave the first run's half tree
//! beside it. So before `cp`'s destination rule is applied, the store is
//! asked for a live transfer that copied these sources to this destination
//! — with `DST` as the target itself, or as the directory receiving them —
//! and the caller continues it, or brings that destination up to date.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::plan::DestRule;
use crate::error::{Error, Result};
use crate::model::{
    EntryKind, EntryRecord, FileState, NewEntry, Preserve, TransferRecord, TransferState,
};
use crate::store::Store;
use crate::transfer::Transfer;

/// A live transfer found for the same sources and destination.
#[derive(Debug)]
pub struct SameCopy {
    pub record: TransferRecord,
    /// How its sources were placed: [`DestRule::Exactly`] when its one
    /// source became the destination itself (`cp`'s rule would nest now).
    pub rule: DestRule,
    /// Every completed transfer of the store that copied the same paths,
    /// oldest first (`record` first when it completed). A re-run compares
    /// the sources with what they recorded ([`changed_since`]).
    pub copies: Vec<TransferRecord>,
}

/// What a re-run does with the [`SameCopy`] it found.
pub enum Rerun {
    /// Not over yet (its owner died), or it failed or was cancelled: this
    /// process took it over; resume it.
    Continue(Box<Transfer>),
    /// It completed: copy again onto the same destinations under `rule`,
    /// skipping what already matches.
    UpToDate(Box<SameCopy>),
    /// It was never dispatched and its owner died: it is cancelled and
    /// freed; plan the copy anew.
    Abandoned(Box<TransferRecord>),
}

/// The live transfer of `store` whose recorded roots are `sources`, each
/// copied to `dest` itself or to `dest/BASENAME`: the first one found, by
/// id, that is not over, else the first that completed (with every other
/// completed one in [`SameCopy::copies`]). With a `name` (the caller's
/// `--name`, part of its command line) only a transfer of that name
/// counts, when there is one.
/// Paths are compared as [`crate::plan`] records them (absolute, symlinks
/// not resolved). Reads one entry of each live transfer, and all of those
/// whose first root matches when there are several sources.
pub fn find_same_copy(
    store: &dyn Store,
    name: Option<&str>,
    sources: &[PathBuf],
    dest: &Path,
) -> Result<Option<SameCopy>> {
    find_same_copy_among(store, name, sources, dest, &|_| true)
}

/// [`find_same_copy`] among the transfers `keep` admits (the daemon: the
/// caller's own, not the one being filled).
pub fn find_same_copy_among(
    store: &dyn Store,
    name: Option<&str>,
    sources: &[PathBuf],
    dest: &Path,
    keep: &dyn Fn(&TransferRecord) -> bool,
) -> Result<Option<SameCopy>> {
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let dest = absolute(dest)?;
    let sources: Vec<PathBuf> = sources.iter().map(|s| absolute(s)).collect::<Result<_>>()?;
    if sources.is_empty() {
        return Ok(None);
    }
    // A name that no transfer has yet does not make the copy another one:
    // `--name` added to a re-run must not nest it into what the first
    // run created (it brings that copy up to date under the new name).
    let (candidates, named_anew) =
        match name.map(|name| store.transfer_by_name(name)).transpose()? {
            Some(Some(named)) => (vec![named], false),
            Some(None) => (store.transfers()?, true),
            None => (store.transfers()?, false),
        };
    let mut unfinished: Option<(TransferRecord, DestRule)> = None;
    let mut completed: Option<SameCopy> = None;
    for record in candidates.into_iter().filter(|r| keep(r)) {
        let Some(rule) = same_roots(store, &record, &sources, &dest)? else {
            continue;
        };
        if !matches!(
            record.state,
            TransferState::Completed | TransferState::Finalized
        ) {
            // Another name's unfinished copy is not taken over by this one.
            if !named_anew {
                unfinished.get_or_insert((record, rule));
            }
            continue;
        }
        match &mut completed {
            Some(first) => first.copies.push(record),
            None => {
                completed = Some(SameCopy {
                    copies: vec![record.clone()],
                    record,
                    rule,
                })
            }
        }
    }
    // One not over is continued; the completed ones say it was bringing
    // their copy up to date (its skip rule, were it never dispatched).
    Ok(match unfinished {
        Some((record, rule)) => Some(SameCopy {
            record,
            rule,
            copies: completed.map(|c| c.copies).unwrap_or_default(),
        }),
        None => completed,
    })
}

/// Whether `record` copied `sources` (absolute) to `dest`, and under which
/// rule.
fn same_roots(
    store: &dyn Store,
    record: &TransferRecord,
    sources: &[PathBuf],
    dest: &Path,
) -> Result<Option<DestRule>> {
    let first = &sources[0];
    // The first source's root is the transfer's first entry (the plan
    // lists each source's tree in order, its root first).
    let Some(root) = store.first_entry(record.id)? else {
        return Ok(None);
    };
    let is_root = |source: &Path, entry: &EntryRecord| {
        entry.source == source
            && (entry.dest == dest
                || source
                    .file_name()
                    .is_some_and(|base| entry.dest == dest.join(base)))
    };
    if !is_root(first, &root) {
        return Ok(None);
    }
    if sources.len() > 1 {
        let entries = store.entries(record.id)?;
        if !sources[1..]
            .iter()
            .all(|source| entries.iter().any(|e| is_root(source, e)))
        {
            return Ok(None);
        }
    }
    // Its one source became DST itself: `cp`'s rule would nest now that
    // DST exists, so the re-run must not apply it.
    Ok(Some(if sources.len() == 1 && root.dest == dest {
        DestRule::Exactly
    } else {
        DestRule::Cp
    }))
}

/// Takes up `found` for a re-run: a transfer that is not over, or that
/// failed or was cancelled, is taken over from its (dead) owner and
/// continued; a completed one is brought up to date by a new transfer. A
/// live owner's transfer is refused ([`Error::OwnerAlive`]), as a second
/// `create` of its name would be.
pub fn take_up(store: Arc<dyn Store>, found: SameCopy) -> Result<Rerun> {
    match found.record.state {
        TransferState::Completed | TransferState::Finalized => Ok(Rerun::UpToDate(Box::new(found))),
        // Killed while its plan was added (see `Transfer::create_planned`):
        // its entries may be part of the copy only, and none was copied.
        TransferState::Created => {
            let record = found.record.clone();
            Transfer::abandon_undispatched(&store, found.record)?;
            Ok(Rerun::Abandoned(Box::new(record)))
        }
        _ => {
            let transfer = Transfer::take_over(store, found.record)?;
            Ok(Rerun::Continue(Box::new(transfer)))
        }
    }
}

/// What a re-run of a completed copy still has to do.
#[derive(Debug)]
pub struct Refresh {
    /// The fresh plan, in its order.
    pub planned: Vec<NewEntry>,
    /// For each planned entry: it changed since a copy recorded it, or is
    /// new, or is a directory above one of those.
    pub changed: Vec<bool>,
}

impl Refresh {
    /// Planned entries that match what a copy recorded, at the source and
    /// at the destination.
    pub fn unchanged(&self) -> usize {
        self.changed.iter().filter(|changed| !**changed).count()
    }

    /// The changed entries, in plan order.
    pub fn into_changed(self) -> Vec<NewEntry> {
        self.planned
            .into_iter()
            .zip(self.changed)
            .filter_map(|(entry, changed)| changed.then_some(entry))
            .collect()
    }
}

/// Sorts `planned` (a fresh plan of the same copy; no extended attributes
/// needed) into what changed since `same`'s copies and what did not, as
/// rsync's second run does, but with one `lstat` per destination and no
/// store write for what did not change.
///
/// An entry is unchanged when a copy recorded it committed or skipped with
/// the same kind, destination, size, mode, owner, mtime and link target; its
/// source's inode has not changed (ctime) since that copy was created; and
/// its destination is still what that copy made: the same kind and size
/// and, as `preserve` asks, mtime, mode and (as root, the only one who
/// gives files away) owner, its inode unchanged (ctime) since the copy
/// ended. Extended attributes are not read: changing them changes the
/// ctime. A changed entry brings the directories
/// above it (their metadata is applied again after it), and a hard link
/// its whole group.
pub fn changed_since<E: From<Error> + Send>(
    store: &dyn Store,
    same: &SameCopy,
    plan: impl FnOnce() -> std::result::Result<Vec<NewEntry>, E>,
    preserve: Preserve,
) -> std::result::Result<Refresh, E> {
    let margin_ns = crate::engine::settle::margin_ns();
    // The store is read while the sources are listed.
    let (recorded, planned) = std::thread::scope(|scope| {
        // Keyed by the path's bytes: a `Path` hashes and compares component
        // by component, which cost a re-run a tenth of its instructions.
        let reading = scope.spawn(|| -> Result<HashMap<OsString, Recorded>> {
            // Sized once: growing it holds the old table and the new.
            let mut entries = 0;
            for copy in &same.copies {
                entries += store.entry_tally(copy.id)?.entries;
            }
            let mut recorded = HashMap::with_capacity(entries as usize);
            for copy in &same.copies {
                let when = Copied {
                    began_ns: copy.created_ns,
                    ended_ns: copy.updated_ns - margin_ns,
                };
                // A page at a time where the store reads ranges, so that
                // the records read are never all held at once.
                let page = match store.reads_entry_ranges() {
                    true => crate::engine::PAGE_ENTRIES,
                    false => usize::MAX,
                };
                crate::engine::pages_read(
                    |from, limit| store.entries_compared_from(copy.id, from, limit),
                    page,
                    |entries| {
                        for entry in entries {
                            let (source, entry) = Recorded::of(entry, when);
                            recorded.insert(source, entry);
                        }
                        Ok(true)
                    },
                )?;
            }
            Ok(recorded)
        });
        let planned = plan();
        let recorded = reading.join().expect("the store reader panicked");
        (recorded, planned)
    });
    let (recorded, planned) = (recorded?, planned?);
    let as_root = rustix::process::geteuid().is_root();
    // One lstat per destination, on the cores in turn: each part of the
    // plan (a run of whole directories, mostly) opens each directory once.
    let parts = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, COMPARE_THREADS_MAX);
    let part_len = planned.len().div_ceil(parts).max(1);
    let mut changed: Vec<bool> = std::thread::scope(|scope| {
        let recorded = &recorded;
        let workers: Vec<_> = planned
            .chunks(part_len)
            .map(|part| {
                scope.spawn(move || {
                    let mut dirs = DirCache::default();
                    part.iter()
                        .map(|entry| match recorded.get(entry.source.as_os_str()) {
                            Some(old) => !unchanged(entry, old, preserve, as_root, &mut dirs),
                            None => true,
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a comparing thread panicked"))
            .collect()
    });
    assert_eq!(changed.len(), planned.len());
    drop(recorded);
    // A hard link's group is copied together, or its links would part.
    let groups: HashSet<(u64, u64)> = planned
        .iter()
        .zip(&changed)
        .filter(|(_, changed)| **changed)
        .filter_map(|(entry, _)| entry.shared_inode)
        .collect();
    for (entry, changed) in planned.iter().zip(changed.iter_mut()) {
        *changed |= entry
            .shared_inode
            .is_some_and(|inode| groups.contains(&inode));
    }
    {
        // Directories come before what they hold (the plan is pre-order),
        // so a directory marked here had its own parents marked already.
        let dirs: HashMap<&[u8], usize> = planned
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.kind == EntryKind::Dir)
            .map(|(at, entry)| (path_key(&entry.dest), at))
            .collect();
        for at in 0..planned.len() {
            if !changed[at] {
                continue;
            }
            let mut above = planned[at].dest.parent();
            while let Some(parent) = above {
                match dirs.get(path_key(parent)) {
                    Some(&dir) if !changed[dir] => {
                        changed[dir] = true;
                        above = parent.parent();
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(Refresh { planned, changed })
}

/// A directory's path as a map key: its bytes, without a trailing slash
/// (a root given as `dst/` is the parent of `dst/x`).
fn path_key(path: &Path) -> &[u8] {
    let bytes = path.as_os_str().as_bytes();
    match bytes {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => bytes,
    }
}

/// What a re-run compares of an entry a copy recorded, and when that copy
/// ran: a fifth of an [`EntryRecord`], as a re-run holds one per entry.
struct Recorded {
    dest: Box<[u8]>,
    link_target: Option<Box<[u8]>>,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    kind: EntryKind,
    /// Committed or skipped: in place when that copy ended.
    in_place: bool,
    copied: Copied,
}

impl Recorded {
    /// The record's source (the key it is found by), and what is compared.
    fn of(entry: EntryRecord, copied: Copied) -> (OsString, Recorded) {
        let bytes = |path: PathBuf| path.into_os_string().into_vec().into_boxed_slice();
        let recorded = Recorded {
            dest: bytes(entry.dest),
            link_target: entry.link_target.map(bytes),
            size: entry.meta.size,
            mtime_ns: entry.meta.mtime_ns,
            mode: entry.meta.mode,
            uid: entry.meta.uid,
            gid: entry.meta.gid,
            kind: entry.kind,
            in_place: matches!(entry.state, FileState::Committed | FileState::Skipped),
            copied,
        };
        (entry.source.into_os_string(), recorded)
    }
}

/// See [`changed_since`].
fn unchanged(
    entry: &NewEntry,
    old: &Recorded,
    preserve: Preserve,
    as_root: bool,
    dirs: &mut DirCache,
) -> bool {
    let recorded_same = old.in_place
        && old.kind == entry.kind
        && *old.dest == *entry.dest.as_os_str().as_bytes()
        && old.size == entry.meta.size
        && old.mtime_ns == entry.meta.mtime_ns
        && old.mode == entry.meta.mode
        && old.uid == entry.meta.uid
        && old.gid == entry.meta.gid
        && old.link_target.as_deref()
            == entry.link_target.as_ref().map(|t| t.as_os_str().as_bytes())
        && entry.inode_changed_ns < old.copied.began_ns;
    recorded_same && destination_as_made(entry, old.copied, preserve, as_root, dirs)
}

/// When the copy that recorded an entry was created, and when it last
/// changed (it completed then, or later) less the margin its run left
/// after its last write (`engine::settle`).
#[derive(Clone, Copy, Debug)]
struct Copied {
    began_ns: i64,
    ended_ns: i64,
}

/// Threads comparing a re-run's plan with the store, at most.
const COMPARE_THREADS_MAX: usize = 8;

/// The destination directory last looked in, open: an entry's `lstat` is
/// then a lookup of one name, not of its whole path.
#[derive(Default)]
struct DirCache {
    open: Option<(PathBuf, rustix::fd::OwnedFd)>,
}

impl DirCache {
    fn lstat(&mut self, path: &Path) -> Option<rustix::fs::Stat> {
        use rustix::fs::{AtFlags, CWD, Mode, OFlags};
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return rustix::fs::lstat(path).ok();
        };
        if self.open.as_ref().is_none_or(|(open, _)| open != parent) {
            self.open = None;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
            let fd = rustix::fs::openat(CWD, parent, flags, Mode::empty()).ok()?;
            self.open = Some((parent.to_path_buf(), fd));
        }
        let (_, fd) = self.open.as_ref()?;
        rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()
    }
}

/// Whether `entry`'s destination is still what copying it made.
fn destination_as_made(
    entry: &NewEntry,
    copied: Copied,
    preserve: Preserve,
    as_root: bool,
    dirs: &mut DirCache,
) -> bool {
    use rustix::fs::FileType;
    let Some(found) = dirs.lstat(&entry.dest) else {
        return false;
    };
    let kind = FileType::from_raw_mode(found.st_mode);
    let size = found.st_size as u64;
    let same_kind = match entry.kind {
        EntryKind::File => kind == FileType::RegularFile && size == entry.meta.size,
        EntryKind::Dir => kind == FileType::Directory,
        EntryKind::Symlink => {
            // A link's size is its target's length.
            kind == FileType::Symlink
                && entry
                    .link_target
                    .as_ref()
                    .is_some_and(|t| t.as_os_str().len() as u64 == size)
        }
    };
    // A symlink's own mode and times are not kept (nor compared).
    let is_link = entry.kind == EntryKind::Symlink;
    let mtime_ns = crate::engine::plan::time_ns(found.st_mtime, found.st_mtime_nsec as i64);
    // Its inode changed after the copy ended: a chmod, chown, ACL or
    // extended attribute given since, which the copy must put back.
    let ctime_ns = crate::engine::plan::time_ns(found.st_ctime, found.st_ctime_nsec as i64);
    same_kind
        && ctime_ns <= copied.ended_ns
        && (is_link || !preserve.times || mtime_ns == entry.meta.mtime_ns)
        && (is_link || !preserve.mode || found.st_mode & 0o7777 == entry.meta.mode)
        && (!preserve.ownership
            || !as_root
            || (found.st_uid == entry.meta.uid && found.st_gid == entry.meta.gid))
}
