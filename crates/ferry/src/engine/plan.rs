//! From `SRC… DST` to the list of entries of a transfer, with `cp`'s
//! destination rules and its refusals (directory without `-r`, directory onto
//! a file, a file onto itself, a directory into itself).
//!
//! Metadata is captured here, from `lstat`, so that nothing later needs the
//! source's metadata again.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::filter::Filter;
use crate::error::{Error, Result};
use crate::model::{EntryKind, LinkLeader, NewEntry, SourceMeta, Xattrs};

/// Upper bound on the entries of one transfer; the store numbers them in u32.
pub const ENTRIES_MAX: usize = 1 << 30;

/// What `cp -a` keeps beyond mode, ownership and times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fidelity {
    /// Hard links among the sources stay hard links (data copied once).
    pub hard_links: bool,
    pub xattrs: XattrMode,
}

impl Fidelity {
    /// `cp -a`: hard links, and every extended attribute.
    pub const ARCHIVE: Fidelity = Fidelity {
        hard_links: true,
        xattrs: XattrMode::All,
    };
}

/// Which extended attributes (POSIX ACLs are `system.posix_acl_*` ones) are
/// captured and given to the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XattrMode {
    #[default]
    None,
    /// All that can be read (`trusted.*` only as root).
    All,
    /// All but Lustre's own (`lustre.*`, and its layout and identity
    /// attributes under `trusted.`), which describe the source file system.
    NoLustre,
}

impl XattrMode {
    pub fn parse(s: &str) -> Option<XattrMode> {
        Some(match s {
            "none" => XattrMode::None,
            "all" => XattrMode::All,
            "no-lustre" => XattrMode::NoLustre,
            _ => return None,
        })
    }

    fn keeps(self, name: &[u8]) -> bool {
        const LUSTRE: [&[u8]; 6] = [
            b"lustre.",
            b"trusted.lov",
            b"trusted.lma",
            b"trusted.link",
            b"trusted.fid",
            b"trusted.som",
        ];
        match self {
            XattrMode::None => false,
            XattrMode::All => true,
            XattrMode::NoLustre => !LUSTRE.iter().any(|p| name.starts_with(p)),
        }
    }
}

/// [`plan`], then what `fidelity` asks for: hard-link groups (by device and
/// inode, among this transfer's files) and extended attributes, captured now
/// so that finalize applies them without the sources.
pub fn plan_with(
    sources: &[PathBuf],
    dest: &Path,
    recursive: bool,
    fidelity: Fidelity,
) -> Result<Vec<NewEntry>> {
    plan_onto(
        sources,
        dest,
        recursive,
        fidelity,
        DestRule::Cp,
        &Filter::default(),
    )
}

/// Where the sources land.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestRule {
    /// `cp`'s: an existing directory receives each source's base name.
    Cp,
    /// The one source becomes the destination itself, even when that is an
    /// existing directory: a re-run of a copy whose first run created it
    /// (see `crate::rerun`), which `cp`'s rule would nest.
    Exactly,
}

/// [`plan_with`] under `rule`, leaving out what `filter` excludes.
pub fn plan_onto(
    sources: &[PathBuf],
    dest: &Path,
    recursive: bool,
    fidelity: Fidelity,
    rule: DestRule,
    filter: &Filter,
) -> Result<Vec<NewEntry>> {
    let mut all = Vec::new();
    let mut gather = |batch: &mut Vec<NewEntry>| {
        all.append(batch);
        Ok(())
    };
    plan_streaming(
        sources,
        dest,
        recursive,
        fidelity,
        rule,
        filter,
        &mut gather,
    )?;
    Ok(all)
}

/// [`plan_onto`] that stops listing at `bound + 1` entries: `None` when
/// the sources hold more than `bound`. Memory stays bounded by `bound`
/// whatever the sources hold (a daemon's request must not list a whole
/// file system before refusing it).
pub fn plan_bounded(
    sources: &[PathBuf],
    dest: &Path,
    recursive: bool,
    fidelity: Fidelity,
    rule: DestRule,
    filter: &Filter,
    bound: usize,
) -> Result<Option<Vec<NewEntry>>> {
    let mut all = Vec::new();
    let mut gather = |batch: &mut Vec<NewEntry>| {
        all.append(batch);
        Ok(())
    };
    let mut planner = Planner::new(fidelity, &mut gather)?;
    if !plan_by(sources, dest, recursive, rule, filter, bound, &mut planner)? {
        return Ok(None);
    }
    Ok(Some(all))
}

/// [`plan_onto`] in bounded memory: the entries are handed to `sink` in
/// batches of at most [`PLAN_BATCH`], in the plan's order, each finished
/// (absolute paths, hard-link leaders, extended attributes) as
/// [`plan_onto`] finishes its list: a leader is `LinkLeader::InBatch` of
/// its position in the whole plan, which may be in an earlier batch. Returns how
/// many were planned. A refusal found after the first batch was handed
/// on (a duplicate destination, a source that vanished) is an error as
/// it is for [`plan_onto`]; what was handed on is the caller's to drop.
pub fn plan_streaming(
    sources: &[PathBuf],
    dest: &Path,
    recursive: bool,
    fidelity: Fidelity,
    rule: DestRule,
    filter: &Filter,
    sink: &mut dyn FnMut(&mut Vec<NewEntry>) -> Result<()>,
) -> Result<usize> {
    let mut planner = Planner::new(fidelity, sink)?;
    if !plan_by(
        sources,
        dest,
        recursive,
        rule,
        filter,
        ENTRIES_MAX,
        &mut planner,
    )? {
        return Err(over_entries_max(sources));
    }
    Ok(planner.handed)
}

/// Entries handed on at once by [`plan_streaming`]: what planning holds,
/// about 400 bytes each, whatever the size of the tree.
pub const PLAN_BATCH: usize = 4096;

/// Where a walk puts the entries it lists.
pub(super) trait EntrySink {
    fn push(&mut self, entry: NewEntry) -> Result<()>;
    /// Entries pushed so far.
    fn count(&self) -> usize;
}

impl EntrySink for Vec<NewEntry> {
    fn push(&mut self, entry: NewEntry) -> Result<()> {
        Vec::push(self, entry);
        Ok(())
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// A plan's entries as they are listed, finished and handed on a batch at
/// a time, so that nothing in it grows with the tree but the hard-link
/// groups (one slot per source inode with more than one link) and, only
/// when two sources land on overlapping destinations, the destinations.
struct Planner<'s> {
    pending: Vec<NewEntry>,
    /// Entries handed to `sink` so far: the position of the next.
    handed: usize,
    fidelity: Fidelity,
    leaders: LinkLeaders,
    cwd: PathBuf,
    /// Destinations seen, when they can repeat (see [`plan_by`]).
    seen: Option<std::collections::HashMap<Vec<u8>, PathBuf>>,
    sink: &'s mut dyn FnMut(&mut Vec<NewEntry>) -> Result<()>,
}

impl<'s> Planner<'s> {
    fn new(
        fidelity: Fidelity,
        sink: &'s mut dyn FnMut(&mut Vec<NewEntry>) -> Result<()>,
    ) -> Result<Planner<'s>> {
        Ok(Planner {
            pending: Vec::with_capacity(PLAN_BATCH),
            handed: 0,
            fidelity,
            leaders: LinkLeaders::default(),
            // One getcwd for the plan, not two per entry.
            cwd: std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?,
            seen: None,
            sink,
        })
    }

    /// Finishes what is pending and hands it on.
    fn hand_on(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        for entry in self.pending.iter_mut() {
            entry.source = absolute_below(&self.cwd, std::mem::take(&mut entry.source))?;
            entry.dest = absolute_below(&self.cwd, std::mem::take(&mut entry.dest))?;
        }
        if let Some(seen) = &mut self.seen {
            for entry in &self.pending {
                refuse_duplicate(seen, entry)?;
            }
        }
        capture_fidelity_at(
            &mut self.pending,
            self.handed,
            &mut self.leaders,
            self.fidelity,
        )?;
        let n = self.pending.len();
        (self.sink)(&mut self.pending)?;
        self.pending.clear();
        self.handed += n;
        Ok(())
    }
}

impl EntrySink for Planner<'_> {
    fn push(&mut self, entry: NewEntry) -> Result<()> {
        self.pending.push(entry);
        if self.pending.len() >= PLAN_BATCH {
            self.hand_on()?;
        }
        Ok(())
    }
    fn count(&self) -> usize {
        self.handed + self.pending.len()
    }
}

pub(super) fn over_entries_max(sources: &[PathBuf]) -> Error {
    Error::Io {
        path: sources.first().cloned().unwrap_or_default(),
        source: io::Error::other(format!(
            "more than {ENTRIES_MAX} entries in one transfer: split it"
        )),
    }
}

/// Hard-link groups and extended attributes, as `fidelity` asks: after a
/// plan made without them, on the entries kept (see [`crate::rerun`]).
pub fn capture_fidelity(entries: &mut [NewEntry], fidelity: Fidelity) -> Result<()> {
    capture_fidelity_at(entries, 0, &mut LinkLeaders::default(), fidelity)
}

/// The first entry of each hard-link group seen so far, by source device
/// and inode: its position in the whole plan.
#[derive(Default)]
struct LinkLeaders(std::collections::HashMap<(u64, u64), usize>);

/// [`capture_fidelity`] of `entries`, the part of a plan that starts at
/// position `first`, with the groups of the parts before in `leaders`.
fn capture_fidelity_at(
    entries: &mut [NewEntry],
    first: usize,
    leaders: &mut LinkLeaders,
    fidelity: Fidelity,
) -> Result<()> {
    for (position, entry) in (first..).zip(entries.iter_mut()) {
        if fidelity.hard_links
            && entry.kind == EntryKind::File
            && let Some(inode) = entry.shared_inode
        {
            let leader = *leaders.0.entry(inode).or_insert(position);
            entry.link_leader = (leader != position).then_some(LinkLeader::InBatch(leader));
        }
        if fidelity.xattrs != XattrMode::None && entry.kind != EntryKind::Symlink {
            let mut xattrs = read_xattrs(&entry.source, fidelity.xattrs)
                .map_err(|e| Error::io(&entry.source, e))?;
            // As cp -a: the destination gets the source's ACL, none
            // included. An empty value says "none here": an ACL inherited
            // from the destination directory's default ACL is removed.
            let mut acls = vec![ACL_ACCESS];
            if entry.kind == EntryKind::Dir {
                acls.push(ACL_DEFAULT);
            }
            for acl in acls {
                if !xattrs.0.iter().any(|(name, _)| name == acl) {
                    xattrs.0.push((acl.to_vec(), Vec::new()));
                }
            }
            // Held for every entry of the plan (see `Xattrs::decode`).
            xattrs.0.shrink_to_fit();
            entry.xattrs = xattrs;
        }
    }
    Ok(())
}

/// POSIX ACLs, as extended attributes. A real ACL is never empty: an empty
/// value in [`Xattrs`] means the source has none (see `apply_metadata`).
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// Whether an extended attribute's name is one of the POSIX ACLs.
pub fn is_posix_acl(name: &[u8]) -> bool {
    name == ACL_ACCESS || name == ACL_DEFAULT
}

/// The extended attributes of `path` (not following a symlink) that `mode`
/// keeps. None where the file system has none.
fn read_xattrs(path: &Path, mode: XattrMode) -> io::Result<Xattrs> {
    use rustix::io::Errno;
    let unsupported = |e: Errno| matches!(e, Errno::OPNOTSUPP | Errno::NODATA);
    // Most files have no attributes, or a few short ones: one call into a
    // small buffer answers. Else the size is asked, and the read retried a
    // bounded number of times (attributes may appear in between).
    let mut names = vec![0u8; 256];
    let mut listed = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => {
            names.truncate(n);
            true
        }
        Err(e) if unsupported(e) => return Ok(Xattrs::default()),
        Err(Errno::RANGE) => false,
        Err(e) => return Err(e.into()),
    };
    for _ in 0..4 {
        if listed {
            break;
        }
        let len = match rustix::fs::llistxattr_query(path) {
            Ok(len) => len,
            Err(e) if unsupported(e) => return Ok(Xattrs::default()),
            Err(e) => return Err(e.into()),
        };
        names.resize(len, 0);
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => {
                names.truncate(n);
                listed = true;
            }
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut pairs = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !mode.keeps(name) {
            continue;
        }
        let len = match rustix::fs::lgetxattr_query(path, name) {
            Ok(len) => len,
            // Gone since the listing, or not ours to read (trusted.* as a user).
            Err(Errno::NODATA | Errno::PERM | Errno::ACCESS) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut value = vec![0; len];
        match rustix::fs::lgetxattr(path, name, &mut value[..]) {
            Ok(n) => value.truncate(n),
            Err(Errno::NODATA | Errno::PERM | Errno::ACCESS) => continue,
            Err(e) => return Err(e.into()),
        }
        pairs.push((name.to_vec(), value));
    }
    Ok(Xattrs(pairs))
}

/// Lists the entries that copying `sources` to `dest` creates. `recursive`
/// is `cp -r`: without it a directory source is refused and symlinks named
/// on the command line are followed, as `cp` does.
pub fn plan(sources: &[PathBuf], dest: &Path, recursive: bool) -> Result<Vec<NewEntry>> {
    plan_bounded(
        sources,
        dest,
        recursive,
        Fidelity::default(),
        DestRule::Cp,
        &Filter::default(),
        ENTRIES_MAX,
    )?
    .ok_or_else(|| over_entries_max(sources))
}

/// One source named on the command line, checked, and where it lands.
struct Root {
    source: PathBuf,
    meta: fs::Metadata,
    target: PathBuf,
}

/// Plans into `out`; false as soon as there are more than `bound`
/// entries. Every source is checked before the first is walked.
fn plan_by(
    sources: &[PathBuf],
    dest: &Path,
    recursive: bool,
    rule: DestRule,
    filter: &Filter,
    bound: usize,
    out: &mut Planner<'_>,
) -> Result<bool> {
    let dest_meta = fs::metadata(dest).ok();
    check_destination(dest, dest_meta.as_ref())?;
    let dest_is_dir = rule == DestRule::Cp && dest_meta.as_ref().is_some_and(|m| m.is_dir());
    if sources.len() > 1 && (rule == DestRule::Exactly || !dest_is_dir) {
        return Err(Error::TargetNotADirectory {
            path: dest.to_path_buf(),
        });
    }
    let roots = sources
        .iter()
        .map(|source| plan_root(source, dest, dest_is_dir, recursive))
        .collect::<Result<Vec<Root>>>()?;
    // One walk lists each name once; only sources that land on the same
    // place, or one inside another's (`cp -r a/. b dst`), can repeat a
    // destination, and only then are destinations remembered.
    let mut targets = roots
        .iter()
        .map(|root| absolute_below(&out.cwd, root.target.clone()))
        .collect::<Result<Vec<PathBuf>>>()?;
    // By component: what is below a path sorts right after it.
    targets.sort_unstable();
    if targets.windows(2).any(|pair| pair[1].starts_with(&pair[0])) {
        out.seen = Some(Default::default());
    }
    for root in roots {
        if root.meta.is_dir() {
            walk(&root.source, &root.meta, &root.target, filter, out, bound)?;
        } else {
            out.push(entry(&root.source, &root.meta, root.target)?)?;
        }
        if out.count() > bound {
            return Ok(false);
        }
    }
    out.hand_on()?;
    Ok(true)
}

/// Checks `source` and says where it lands, by cp's rules.
fn plan_root(source: &Path, dest: &Path, dest_is_dir: bool, recursive: bool) -> Result<Root> {
    let meta = if recursive {
        fs::symlink_metadata(source)
    } else {
        fs::metadata(source)
    }
    .map_err(|e| stat_error(source, e))?;
    if meta.is_dir() && !recursive {
        return Err(Error::SourceIsDirectory {
            path: source.to_path_buf(),
        });
    }
    // `cp -r dir/. dest` copies what dir holds into dest itself.
    let contents_only = source.as_os_str().as_bytes().ends_with(b"/.") || source.as_os_str() == ".";
    let target = if dest_is_dir && !contents_only {
        // `cp .. dest` names the directory itself.
        let name = match source.file_name() {
            Some(name) => name.to_owned(),
            None => source
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_owned()))
                .ok_or_else(|| Error::SourceNotFound {
                    path: source.to_path_buf(),
                })?,
        };
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    check_target(source, &meta, &target)?;
    if meta.is_dir() {
        return Ok(Root {
            source: source.to_path_buf(),
            meta,
            target,
        });
    }
    // A file named on the command line that cannot be read is the
    // caller's mistake, refused now; one deep in a tree fails alone
    // when it is copied, as with `cp -r`.
    // Non-blocking: a FIFO swapped in since the lstat must not hold
    // the request.
    if meta.is_file()
        && let Err(e) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(source)
    {
        return Err(Error::io(source, e));
    }
    // Without -r a symlink on the command line is followed, as cp
    // does: the entry reads its target, which is never a link.
    let source =
        if !recursive && fs::symlink_metadata(source).is_ok_and(|m| m.file_type().is_symlink()) {
            source.canonicalize().map_err(|e| stat_error(source, e))?
        } else {
            source.to_path_buf()
        };
    Ok(Root {
        source,
        meta,
        target,
    })
}

/// Refusals that need the whole list, and absolute paths: resume, finalize
/// and verify may run elsewhere.
pub(super) fn finish_plan(entries: &mut [NewEntry]) -> Result<()> {
    // One getcwd for the plan, not two per entry.
    let cwd = std::env::current_dir().map_err(|e| Error::io(Path::new("."), e))?;
    for entry in entries.iter_mut() {
        entry.source = absolute_below(&cwd, std::mem::take(&mut entry.source))?;
        entry.dest = absolute_below(&cwd, std::mem::take(&mut entry.dest))?;
    }
    refuse_duplicate_destinations(entries)
}

/// [`std::path::absolute`] with the working directory given: the same
/// result (a path made absolute is only normalised, never looked up).
/// A walk joins plain names onto its roots, so nearly every path is
/// normal already: it is kept, or put under `cwd`, without taking it
/// apart into components (that was a fifth of a re-run's instructions).
fn absolute_below(cwd: &Path, path: PathBuf) -> Result<PathBuf> {
    match (is_normal(&path), path.is_absolute()) {
        (true, true) => Ok(path),
        (true, false) => Ok(joined(cwd, path.as_os_str())),
        (false, true) => absolute(&path),
        (false, false) => absolute(&cwd.join(path)),
    }
}

/// `base.join(name)` in one allocation (`join` copies `base`, then
/// grows it for the name).
fn joined(base: &Path, name: &std::ffi::OsStr) -> PathBuf {
    let mut path = PathBuf::with_capacity(base.as_os_str().len() + 1 + name.len());
    path.push(base);
    path.push(name);
    path
}

/// Whether [`std::path::absolute`] leaves `path` as it is once it is
/// absolute: no empty or `.` component (`a//b`, `./a`, `a/./b`, `a/.`);
/// a leading `//` (kept as POSIX asks) is not taken as normal either.
/// `..` is kept by `absolute` and so is normal; so is one trailing slash.
fn is_normal(path: &Path) -> bool {
    let bytes = path.as_os_str().as_bytes();
    let inner = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let inner = inner.strip_suffix(b"/").unwrap_or(inner);
    !inner.is_empty()
        && inner
            .split(|&b| b == b'/')
            .all(|c| !c.is_empty() && c != b".")
}

/// What `cp` refuses about a destination before writing anything: a
/// trailing slash on something that is not a directory (`cp f newdir/`),
/// and a directory the caller cannot write into. A refusal here leaves
/// nothing behind; the same found later would leave a temporary and a
/// resume that fails the same way forever.
pub(super) fn check_destination(dest: &Path, meta: Option<&fs::Metadata>) -> Result<()> {
    let bytes = dest.as_os_str().as_bytes();
    if bytes.len() > 1 && bytes.ends_with(b"/") && !meta.is_some_and(|m| m.is_dir()) {
        let why = if meta.is_some() {
            "it is not a directory, and the trailing slash says it must be"
        } else {
            "no such directory (a trailing slash names one): create it first, or drop the slash"
        };
        return Err(Error::BadDestination {
            path: dest.to_path_buf(),
            why: why.into(),
        });
    }
    // The directory that receives what is written: DST itself when it is
    // one, else the nearest existing ancestor (missing ones are created).
    let receiving = if meta.is_some_and(|m| m.is_dir()) {
        Some(dest.to_path_buf())
    } else {
        let absolute = absolute(dest)?;
        absolute
            .ancestors()
            .skip(1)
            .find(|a| fs::symlink_metadata(a).is_ok())
            .map(Path::to_path_buf)
    };
    let Some(dir) = receiving else {
        return Ok(());
    };
    // `cp f afile/x`: the nearest thing that exists is a file (or a link
    // to one), which no name can be created in; checking its permission
    // would blame the wrong thing.
    if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(Error::BadDestination {
            path: dir,
            why: "it is not a directory, so nothing can be created in it: choose another \
                  destination"
                .into(),
        });
    }
    use rustix::fs::{Access, AtFlags, CWD};
    // AT_EACCESS: checked as the file system will check the writes (fsuid,
    // effective capabilities), not as the real uid — the daemon runs a
    // caller's plan with that caller's fsuid and no capabilities while its
    // real uid stays root.
    match rustix::fs::accessat(
        CWD,
        &dir,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::PERM) => {
            let owner = fs::metadata(&dir)
                .map(|m| format!(" (owner uid {}, mode {:o})", m.uid(), m.mode() & 0o7777))
                .unwrap_or_default();
            Err(Error::BadDestination {
                path: dir,
                why: format!(
                    "permission denied: you cannot write in this directory{owner}; choose \
                     another destination or ask its owner"
                ),
            })
        }
        Err(rustix::io::Errno::ROFS) => Err(Error::BadDestination {
            path: dir,
            why: "its file system is read-only".into(),
        }),
        // Anything else is found, and named, when the copy gets there.
        Err(_) => Ok(()),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// Two sources with one destination (`ferry cp a/x b/x dest/`) would write
/// one temporary twice; cp refuses too.
fn refuse_duplicate_destinations(entries: &[NewEntry]) -> Result<()> {
    let mut seen = std::collections::HashMap::with_capacity(entries.len());
    entries
        .iter()
        .try_for_each(|entry| refuse_duplicate(&mut seen, entry))
}

/// [`refuse_duplicate_destinations`], one entry at a time: `seen` holds the
/// destinations before it. Over absolute, normalised paths: their bytes,
/// less a trailing slash, compare as the paths do (a `Path` key hashes
/// component by component).
fn refuse_duplicate(
    seen: &mut std::collections::HashMap<Vec<u8>, PathBuf>,
    entry: &NewEntry,
) -> Result<()> {
    let dest = entry.dest.as_os_str().as_bytes();
    let dest = match dest {
        [rest @ .., b'/'] if !rest.is_empty() => rest,
        _ => dest,
    };
    match seen.entry(dest.to_vec()) {
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(entry.source.clone());
            Ok(())
        }
        // A directory merged from several sources is fine; a file is not.
        std::collections::hash_map::Entry::Occupied(_) if entry.kind == EntryKind::Dir => Ok(()),
        std::collections::hash_map::Entry::Occupied(first) => Err(Error::DuplicateDestination {
            first: first.get().clone(),
            second: entry.source.clone(),
            dest: entry.dest.clone(),
        }),
    }
}

fn check_target(source: &Path, meta: &fs::Metadata, target: &Path) -> Result<()> {
    let Ok(target_meta) = fs::symlink_metadata(target) else {
        if meta.is_dir() {
            // A directory copied into its own subtree would never end.
            if let (Ok(src), Some(Ok(parent))) = (
                source.canonicalize(),
                target.parent().map(|p| {
                    if p.as_os_str().is_empty() {
                        Path::new(".").canonicalize()
                    } else {
                        p.canonicalize()
                    }
                }),
            ) && parent.starts_with(&src)
            {
                return Err(Error::CopyIntoItself {
                    from: source.to_path_buf(),
                    dest: target.to_path_buf(),
                });
            }
        }
        return Ok(());
    };
    if target_meta.dev() == meta.dev() && target_meta.ino() == meta.ino() {
        return Err(Error::SameFile {
            from: source.to_path_buf(),
            dest: target.to_path_buf(),
        });
    }
    let target_is_dir = fs::metadata(target).is_ok_and(|m| m.is_dir());
    if meta.is_dir() && !target_is_dir {
        return Err(Error::DirectoryOntoFile {
            from: source.to_path_buf(),
            dest: target.to_path_buf(),
        });
    }
    if !meta.is_dir() && target_meta.is_dir() {
        return Err(Error::FileOntoDirectory {
            from: source.to_path_buf(),
            dest: target.to_path_buf(),
        });
    }
    if meta.is_dir()
        && let (Ok(src), Ok(dst)) = (source.canonicalize(), target.canonicalize())
        && dst.starts_with(&src)
    {
        return Err(Error::CopyIntoItself {
            from: source.to_path_buf(),
            dest: target.to_path_buf(),
        });
    }
    Ok(())
}

/// Pre-order walk: a directory is listed before what it contains, which the
/// engine relies on (create parents first, finish their metadata last).
/// What `filter` excludes is left out, an excluded directory unread.
pub(super) fn walk(
    root: &Path,
    root_meta: &fs::Metadata,
    target: &Path,
    filter: &Filter,
    entries: &mut dyn EntrySink,
    bound: usize,
) -> Result<()> {
    walk_below(
        root,
        root_meta,
        target,
        PathBuf::new(),
        filter,
        entries,
        bound,
    )
}

/// [`walk`], with `root` at `relative` for the filter. Stops once
/// `entries` holds more than `bound`.
pub(super) fn walk_below(
    root: &Path,
    root_meta: &fs::Metadata,
    target: &Path,
    relative: PathBuf,
    filter: &Filter,
    entries: &mut dyn EntrySink,
    bound: usize,
) -> Result<()> {
    entries.push(entry(root, root_meta, target.to_path_buf())?)?;
    // A directory's entry goes in when it is listed, right before its
    // files, so that a page holds a directory with its files (see
    // `staging`); its metadata is from its parent's listing.
    let mut stack = vec![(root.to_path_buf(), target.to_path_buf(), relative, None)];
    while let Some((dir, dest_dir, relative_dir, meta)) = stack.pop() {
        if let Some(meta) = meta {
            entries.push(entry(&dir, &meta, dest_dir.clone())?)?;
        }
        if entries.count() > bound {
            return Ok(());
        }
        let read = fs::read_dir(&dir).map_err(|e| list_error(&dir, e))?;
        // More children than the bound are over it in any order.
        let mut children: Vec<(std::ffi::OsString, fs::DirEntry)> = read
            .take(bound.saturating_add(1))
            .map(|child| child.map(|c| (c.file_name(), c)))
            .collect::<io::Result<_>>()
            .map_err(|e| list_error(&dir, e))?;
        // Sorted, so that a transfer's entries do not depend on readdir order.
        children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, child) in children {
            let source = joined(&dir, &name);
            let dest = joined(&dest_dir, &name);
            // The lstat of a name in the open directory, not of its path.
            let meta = child.metadata().map_err(|e| stat_error(&source, e))?;
            // Without rules, no path for them (one allocation per entry).
            let relative = if filter.is_empty() {
                PathBuf::new()
            } else {
                relative_dir.join(&name)
            };
            if filter.excludes(&relative, meta.is_dir()) {
                continue;
            }
            if meta.is_dir() {
                subdirs.push((source, dest, meta, relative));
            } else {
                entries.push(entry(&source, &meta, dest)?)?;
                if entries.count() > bound {
                    return Ok(());
                }
            }
        }
        for (source, dest, meta, relative) in subdirs.into_iter().rev() {
            stack.push((source, dest, relative, Some(meta)));
        }
    }
    Ok(())
}

/// The entry of one source path, from its `lstat`, landing at `dest`.
/// (A distributed worker lists one directory at a time through it.)
pub fn entry(source: &Path, meta: &fs::Metadata, dest: PathBuf) -> Result<NewEntry> {
    let file_type = meta.file_type();
    let (kind, link_target) = if file_type.is_dir() {
        (EntryKind::Dir, None)
    } else if file_type.is_symlink() {
        let target = fs::read_link(source).map_err(|e| Error::io(source, e))?;
        (EntryKind::Symlink, Some(target))
    } else if file_type.is_file() {
        (EntryKind::File, None)
    } else {
        use std::os::unix::fs::FileTypeExt;
        let what = if file_type.is_fifo() {
            "a named pipe"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(Error::UnsupportedFileType {
            path: source.to_path_buf(),
            what,
        });
    };
    Ok(NewEntry {
        link_leader: None,
        shared_inode: (file_type.is_file() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
        inode_changed_ns: time_ns(meta.ctime(), meta.ctime_nsec()),
        xattrs: Default::default(),
        kind,
        source: source.to_path_buf(),
        dest,
        meta: source_meta(meta),
        link_target,
    })
}

pub(crate) fn source_meta(meta: &fs::Metadata) -> SourceMeta {
    SourceMeta {
        size: if meta.is_file() { meta.size() } else { 0 },
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        atime_ns: time_ns(meta.atime(), meta.atime_nsec()),
        mtime_ns: time_ns(meta.mtime(), meta.mtime_nsec()),
    }
}

/// Nanoseconds since the epoch, saturating: i64 covers 1677 to 2262, and a
/// time outside that is clamped rather than wrapped.
pub(crate) fn time_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

pub(super) fn stat_error(path: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::SourceNotFound {
            path: path.to_path_buf(),
        },
        io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            path: path.to_path_buf(),
            action: "stat",
        },
        _ => Error::io(path, e),
    }
}

fn list_error(path: &Path, e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::PermissionDenied => Error::PermissionDenied {
            path: path.to_path_buf(),
            action: "list directory",
        },
        _ => Error::io(path, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut of [`absolute_below`] gives what `std::path::absolute`
    /// gives, for every path of up to four components drawn from plain
    /// names, `.`, `..` and empty ones, with and without leading and
    /// trailing slashes.
    #[test]
    fn absolute_below_agrees_with_std_absolute() {
        let parts = ["a", "bc", ".", "..", ""];
        let cwd = Path::new("/work/here");
        let mut paths = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> = paths
                .iter()
                .flat_map(|p| parts.iter().map(move |c| format!("{p}/{c}")))
                .collect();
            paths.extend(longer);
        }
        let mut checked = 0;
        for body in &paths {
            for lead in ["", "/", "//", "./"] {
                for trail in ["", "/"] {
                    let text = format!("{lead}{}{trail}", body.trim_start_matches('/'));
                    if text.is_empty() {
                        continue;
                    }
                    let path = PathBuf::from(&text);
                    let expected = std::path::absolute(cwd.join(&path)).unwrap();
                    let got = absolute_below(cwd, path).unwrap();
                    assert_eq!(got.as_os_str(), expected.as_os_str(), "for {text:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn destination_rules_follow_cp() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/sub")).unwrap();
        fs::write(root.join("src/a"), b"a").unwrap();
        fs::write(root.join("src/sub/b"), b"b").unwrap();
        fs::create_dir(root.join("existing")).unwrap();

        // File onto an existing directory: DIR/basename.
        let e = plan(&[root.join("src/a")], &root.join("existing"), false).unwrap();
        assert_eq!(e[0].dest, root.join("existing/a"));
        // File onto a new name: that name.
        let e = plan(&[root.join("src/a")], &root.join("new"), false).unwrap();
        assert_eq!(e[0].dest, root.join("new"));
        // Directory without -r.
        assert!(matches!(
            plan(&[root.join("src")], &root.join("x"), false),
            Err(Error::SourceIsDirectory { .. })
        ));
        // Directory into an existing directory: DIR/basename, pre-order.
        let e = plan(&[root.join("src")], &root.join("existing"), true).unwrap();
        let dests: Vec<_> = e
            .iter()
            .map(|e| e.dest.strip_prefix(root).unwrap().to_owned())
            .collect();
        assert_eq!(
            dests,
            [
                "existing/src",
                "existing/src/a",
                "existing/src/sub",
                "existing/src/sub/b"
            ]
            .map(PathBuf::from)
        );
        // Directory to a new name: that name.
        let e = plan(&[root.join("src")], &root.join("fresh"), true).unwrap();
        assert_eq!(e[0].dest, root.join("fresh"));
        // Directory onto a file.
        assert!(matches!(
            plan(&[root.join("src")], &root.join("src/a"), true),
            Err(Error::DirectoryOntoFile { .. })
        ));
        // Same file, and a directory into itself.
        assert!(matches!(
            plan(&[root.join("src/a")], &root.join("src/a"), false),
            Err(Error::SameFile { .. })
        ));
        assert!(matches!(
            plan(&[root.join("src")], &root.join("src/sub/inner"), true),
            Err(Error::CopyIntoItself { .. })
        ));
        // Missing source; several sources onto a non-directory.
        assert!(matches!(
            plan(&[root.join("nope")], &root.join("x"), false),
            Err(Error::SourceNotFound { .. })
        ));
        assert!(matches!(
            plan(
                &[root.join("src/a"), root.join("src/sub/b")],
                &root.join("x"),
                false
            ),
            Err(Error::TargetNotADirectory { .. })
        ));
    }

    /// A streamed plan of more than two batches: every batch is handed on
    /// whole and in order, each file with its own extended attributes,
    /// and a hard link's leader is counted from the plan's first entry
    /// across batches.
    #[test]
    fn a_streamed_plan_hands_on_every_batch_in_order_with_its_xattrs() {
        let dir = tempfile::tempdir_in(".").unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        let files = 2 * PLAN_BATCH + 10;
        for i in 0..files {
            fs::write(src.join(format!("f{i:05}")), b"x").unwrap();
        }
        // Position 0 is the directory, file i is at position i + 1.
        let tagged = [5, PLAN_BATCH + 7, 2 * PLAN_BATCH + 3];
        for i in tagged {
            rustix::fs::setxattr(
                src.join(format!("f{i:05}")),
                "user.tag",
                format!("file {i}").as_bytes(),
                rustix::fs::XattrFlags::empty(),
            )
            .expect("user extended attributes on the crate's file system");
        }
        // `zlink` sorts after every file: the last batch, led from the first.
        fs::hard_link(src.join("f00002"), src.join("zlink")).unwrap();
        let mut batches = Vec::new();
        let mut sink = |batch: &mut Vec<NewEntry>| {
            batches.push(std::mem::take(batch));
            Ok(())
        };
        let planned = plan_streaming(
            std::slice::from_ref(&src),
            &dir.path().join("dst"),
            true,
            Fidelity::ARCHIVE,
            DestRule::Cp,
            &Filter::default(),
            &mut sink,
        )
        .unwrap();
        assert_eq!(planned, files + 2);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [PLAN_BATCH, PLAN_BATCH, 12]);
        let all: Vec<NewEntry> = batches.into_iter().flatten().collect();
        for (i, entry) in all[1..=files].iter().enumerate() {
            assert_eq!(entry.source, src.join(format!("f{i:05}")), "in order");
            let tag = entry.xattrs.0.iter().find(|(name, _)| name == b"user.tag");
            match tagged.contains(&i) {
                true => assert_eq!(tag.unwrap().1, format!("file {i}").as_bytes()),
                false => assert!(tag.is_none(), "f{i:05} has no tag"),
            }
        }
        let link = all.last().unwrap();
        assert_eq!(link.source, src.join("zlink"));
        assert!(matches!(link.link_leader, Some(LinkLeader::InBatch(3))));
    }

    #[test]
    fn a_bounded_plan_stops_listing_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("src/zz")).unwrap();
        for i in 0..5 {
            fs::write(root.join(format!("src/f{i}")), b"x").unwrap();
        }
        // Listed after the files (a directory's files come first): a walk
        // that reaches it fails, as one to the end would.
        fs::write(root.join("src/zz/inner"), b"x").unwrap();
        let bounded = |bound| {
            plan_bounded(
                &[root.join("src")],
                &root.join("dst"),
                true,
                Fidelity::default(),
                DestRule::Cp,
                &Filter::default(),
                bound,
            )
        };
        // src, f0..f4, zz, zz/inner: 8 entries.
        assert_eq!(bounded(8).unwrap().unwrap().len(), 8);
        assert!(bounded(7).unwrap().is_none(), "one over the bound");
        // A directory the walk cannot list, past the bound.
        fs::remove_dir_all(root.join("src/zz")).unwrap();
        fs::create_dir(root.join("src/zz-unlistable")).unwrap();
        fs::set_permissions(
            root.join("src/zz-unlistable"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .unwrap();
        if !rustix::process::geteuid().is_root() {
            // (root lists it all the same)
            assert!(bounded(100).is_err(), "the whole walk meets the directory");
        }
        assert!(
            bounded(3).unwrap().is_none(),
            "a bounded walk stops before it"
        );
        fs::set_permissions(
            root.join("src/zz-unlistable"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
    }
}
