//! What every [`super::Store`] implementation decides the same way, with no
//! I/O: which transitions are legal and the error that refuses the others,
//! each event's name and context, how model values become column values and
//! back. The SQLite and PostgreSQL stores only read and write rows; the
//! decisions are made here, once, so the two cannot drift apart.
//!
//! Public for the PostgreSQL crate, not an API: callers use [`super::Store`].

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::StoreError;
use crate::model::{
    Caller, Checksum, ChecksumAlgo, EntryIndex, EntryKind, EntryRecord, Event, FileState, Kind,
    Lease, LinkLeader, NewEntry, NewTransfer, Owner, Preserve, SourceMeta, TransferId,
    TransferRecord, TransferState, Xattrs,
};

/// Event names that are not `transfer.<state>` or `file.<state>`.
pub const EVENT_ADDED: &str = "transfer.added";
pub const EVENT_FREED: &str = "transfer.freed";
/// A transfer planned under a provisional name took its own
/// ([`super::Change::Named`]).
pub const EVENT_NAMED: &str = "transfer.named";
pub const EVENT_REATTACHED: &str = "transfer.reattached";
pub const EVENT_PROGRESS: &str = "file.progress";
/// `ferry limit`: a transfer's bandwidth limit changed.
pub const EVENT_LIMITED: &str = "transfer.limited";

/// The context of an [`EVENT_LIMITED`] event; 0 is no limit.
pub fn limited_context(bytes_per_second: Option<u64>) -> Value {
    json!({ "bytes_per_second": bytes_per_second.unwrap_or(0) })
}

/// `--delete` removed a destination's extra file or directory.
pub const EVENT_REMOVED: &str = "file.removed";

/// The context of an [`EVENT_REMOVED`] event.
pub fn removed_context(path: &Path) -> Value {
    json!({ "path": path.to_string_lossy() })
}

/// At most this many `cp-ID-N` names are tried for one unnamed transfer.
pub const UNNAMED_TRIES_MAX: u32 = 1 << 20;

/// A transfer enters `to` from `from` only if `to.allowed_from()` says so.
pub fn check_transfer_transition(
    path: &Path,
    id: TransferId,
    from: TransferState,
    to: TransferState,
) -> Result<(), StoreError> {
    if to.allowed_from().contains(&from) {
        return Ok(());
    }
    Err(StoreError::IllegalTransition {
        path: path.to_path_buf(),
        id,
        from: from.to_string(),
        to: to.to_string(),
    })
}

/// An entry enters `to` from `from` (`None`: there is no such entry) only if
/// `to.allowed_from()` says so.
pub fn check_entry_transition(
    path: &Path,
    id: TransferId,
    index: EntryIndex,
    from: Option<FileState>,
    to: FileState,
) -> Result<(), StoreError> {
    match from {
        Some(from) if to.allowed_from().contains(&from) => Ok(()),
        from => Err(entry_transition_refused(path, id, index, from, to)),
    }
}

/// The error of an entry change the store refused, saying what the entry
/// was (`None`: there is no such entry).
pub fn entry_transition_refused(
    path: &Path,
    id: TransferId,
    index: EntryIndex,
    from: Option<FileState>,
    to: FileState,
) -> StoreError {
    StoreError::IllegalTransition {
        path: path.to_path_buf(),
        id,
        from: match from {
            Some(from) => format!("entry {} {from}", index.0),
            None => format!("entry {} (there is no such entry)", index.0),
        },
        to: to.to_string(),
    }
}

/// Files change only while their transfer is moving: a cancel (or a
/// finalize, or a free) stops every mover at its next store write.
pub fn check_moving(path: &Path, id: TransferId, state: TransferState) -> Result<(), StoreError> {
    match state {
        TransferState::Dispatched | TransferState::Running => Ok(()),
        TransferState::Cancelled => Err(StoreError::Cancelled {
            path: path.to_path_buf(),
            id,
        }),
        state => Err(StoreError::IllegalTransition {
            path: path.to_path_buf(),
            id,
            from: state.to_string(),
            to: "a change of its files (it is not moving)".into(),
        }),
    }
}

/// A moving transfer is cancelled before it is freed (and its temporaries
/// then belong to a record that still shows them).
pub fn check_free(path: &Path, id: TransferId, state: TransferState) -> Result<(), StoreError> {
    if matches!(state, TransferState::Dispatched | TransferState::Running) {
        return Err(StoreError::IllegalTransition {
            path: path.to_path_buf(),
            id,
            from: state.to_string(),
            to: "freed (cancel it first)".into(),
        });
    }
    Ok(())
}

/// Entries are added, and a transfer is named, only while it is `created`
/// (being planned); `what` says which was refused ("added to", "named").
pub fn check_planning(
    path: &Path,
    id: TransferId,
    state: TransferState,
    what: &str,
) -> Result<(), StoreError> {
    if state == TransferState::Created {
        return Ok(());
    }
    Err(StoreError::IllegalTransition {
        path: path.to_path_buf(),
        id,
        from: state.to_string(),
        to: what.into(),
    })
}

/// The context of an [`EVENT_NAMED`] event.
pub fn named_context(name: &str) -> Value {
    json!({ "name": name })
}

/// The compare-and-swap on the owner: `recorded` is the live transfer's
/// owner (`None`: no such live transfer).
pub fn check_owner(
    path: &Path,
    id: TransferId,
    recorded: Option<Owner>,
    expected: &Owner,
) -> Result<(), StoreError> {
    match recorded {
        None => Err(StoreError::NoSuchTransfer {
            path: path.to_path_buf(),
            id,
        }),
        Some(owner) if owner == *expected => Ok(()),
        Some(owner) => Err(StoreError::OwnerChanged {
            path: path.to_path_buf(),
            id,
            host: owner.host,
            pid: owner.pid,
        }),
    }
}

/// A progress record that would go back (or names no entry).
pub fn progress_refused(
    path: &Path,
    id: TransferId,
    index: EntryIndex,
    progress_bytes_durable: u64,
) -> StoreError {
    StoreError::IllegalTransition {
        path: path.to_path_buf(),
        id,
        from: format!("entry {} progress", index.0),
        to: format!("{progress_bytes_durable} bytes (progress never goes back)"),
    }
}

pub fn no_such_transfer(path: &Path, id: TransferId) -> StoreError {
    StoreError::NoSuchTransfer {
        path: path.to_path_buf(),
        id,
    }
}

pub fn corrupt(path: &Path, detail: String) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        detail,
    }
}

/// A stored transfer state, or [`StoreError::Corrupt`].
pub fn parse_transfer_state(
    path: &Path,
    id: TransferId,
    state: &str,
) -> Result<TransferState, StoreError> {
    TransferState::parse(state)
        .ok_or_else(|| corrupt(path, format!("transfer {id} has unknown state {state:?}")))
}

/// A stored entry state, or [`StoreError::Corrupt`].
pub fn parse_file_state(
    path: &Path,
    id: TransferId,
    index: EntryIndex,
    state: &str,
) -> Result<FileState, StoreError> {
    FileState::parse(state).ok_or_else(|| {
        corrupt(
            path,
            format!(
                "entry {} of transfer {id} has unknown state {state:?}",
                index.0
            ),
        )
    })
}

/// The name of an unnamed transfer: `cp-ID`, or at the `n`th try (someone
/// chose that name already, as a user of a shared daemon may) `cp-ID-n`.
pub fn unnamed_name(id: TransferId, n: u32) -> String {
    assert!(
        (1..=UNNAMED_TRIES_MAX).contains(&n),
        "unbounded names for transfer {id}"
    );
    if n == 1 {
        format!("cp-{id}")
    } else {
        format!("cp-{id}-{n}")
    }
}

/// `transfer.<state>`.
pub fn transfer_event_name(to: TransferState) -> String {
    format!("transfer.{to}")
}

/// `file.<state>`.
pub fn file_event_name(to: FileState) -> String {
    format!("file.{to}")
}

/// `transfer.created`'s context.
pub fn created_context(new: &NewTransfer, name: &str) -> Value {
    let mut context = json!({
        "name": name,
        "kind": new.kind.as_str(),
        "host": new.owner.host,
        "pid": new.owner.pid,
    });
    if let Some(caller) = &new.caller {
        context["uid"] = caller.uid.into();
    }
    context
}

/// `transfer.added`'s context.
pub fn added_context(entries: &[NewEntry]) -> Value {
    let bytes: u64 = entries.iter().map(|e| e.meta.size).sum();
    json!({"entries": entries.len(), "bytes": bytes})
}

/// `transfer.reattached`'s context.
pub fn reattached_context(owner: &Owner) -> Value {
    json!({"host": owner.host, "pid": owner.pid})
}

/// `file.progress`'s context.
pub fn progress_context(progress_bytes_durable: u64) -> Value {
    json!({"bytes_durable": progress_bytes_durable})
}

/// Whether a batch only ends transfers (`failed` or `cancelled`): a clean
/// shutdown, written even to a read-only store.
pub fn is_shutdown(changes: &[super::Change]) -> bool {
    changes.iter().all(|c| {
        matches!(
            c,
            super::Change::Transfer {
                to: TransferState::Failed | TransferState::Cancelled,
                ..
            } | super::Change::Owned { .. }
        )
    })
}

/// The index the entry at `offset` of a batch appended from `first` gets.
pub fn entry_index(first: i64, offset: usize) -> i64 {
    let index = first + offset as i64;
    assert!(index < u32::MAX as i64, "too many entries in one transfer");
    index
}

/// `entries.link_group`: the index of the hard link's leader, which comes
/// before it, in the same batch or in the transfer already.
pub fn link_group_column(first: i64, offset: usize, entry: &NewEntry) -> Option<i64> {
    entry.link_leader.map(|leader| match leader {
        LinkLeader::InBatch(position) => {
            assert!(position < offset, "a hard link's leader comes before it");
            first + position as i64
        }
        LinkLeader::Added(index) => {
            assert!(
                i64::from(index.0) < first,
                "a hard link's leader added before is in the transfer"
            );
            i64::from(index.0)
        }
    })
}

/// `entries.xattrs`: `None` when there are none.
pub fn xattrs_column(xattrs: &Xattrs) -> Option<Vec<u8>> {
    (!xattrs.0.is_empty()).then(|| xattrs.encode())
}

/// `entries.piece_digests`: the digests concatenated; `None` when empty.
pub fn piece_digests_column(piece_digests: &[Checksum]) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = piece_digests
        .iter()
        .flat_map(|d| d.digest().iter().copied())
        .collect();
    (!bytes.is_empty()).then_some(bytes)
}

/// `transfers.caller_groups`: comma-separated.
pub fn caller_groups_column(caller: &Caller) -> String {
    caller
        .groups
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `entries.kind` on SQLite: a small integer, part of the file format
/// (the schema's tally triggers and its migration spell the same numbers).
pub fn entry_kind_code(kind: EntryKind) -> i64 {
    match kind {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
    }
}

pub fn entry_kind_of_code(code: i64) -> Option<EntryKind> {
    [EntryKind::File, EntryKind::Dir, EntryKind::Symlink]
        .into_iter()
        .find(|kind| entry_kind_code(*kind) == code)
}

/// `entries.state` on SQLite: a small integer, part of the file format.
pub fn file_state_code(state: FileState) -> i64 {
    match state {
        FileState::Pending => 0,
        FileState::Copying => 1,
        FileState::Copied => 2,
        FileState::Committed => 3,
        FileState::Failed => 4,
        FileState::Skipped => 5,
    }
}

pub fn file_state_of_code(code: i64) -> Option<FileState> {
    FileState::ALL
        .into_iter()
        .find(|state| file_state_code(*state) == code)
}

/// The hash a stored digest came from, by its length: SQLite keeps no
/// algorithm per entry (16 bytes: XXH3-128, 32: BLAKE3).
pub fn checksum_algo_of_digest(digest: &[u8]) -> Option<ChecksumAlgo> {
    [ChecksumAlgo::Xxh3, ChecksumAlgo::Blake3]
        .into_iter()
        .find(|algo| algo.digest_len() == digest.len())
}

/// The root pair a transfer's entries are stored against, from its first
/// entry: the parents of both sides when they carry one name (`cp a b
/// DIR/`: every source is a sibling of the first), else the paths
/// themselves (`cp -a SRC DST`: DST is SRC renamed). `None` unless both
/// are absolute.
pub fn root_pair(source: &[u8], dest: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if !source.starts_with(b"/") || !dest.starts_with(b"/") {
        return None;
    }
    let (s, d) = (
        Path::new(OsStr::from_bytes(source)),
        Path::new(OsStr::from_bytes(dest)),
    );
    let roots = match (s.file_name(), d.file_name(), s.parent(), d.parent()) {
        (Some(a), Some(b), Some(sp), Some(dp)) if a == b => (sp, dp),
        _ => (s, d),
    };
    Some((
        roots.0.as_os_str().as_bytes().to_vec(),
        roots.1.as_os_str().as_bytes().to_vec(),
    ))
}

/// `path` as stored below `root`: the bytes after `root/` (empty for
/// `root` itself), when joining them back gives `path` exactly.
pub fn path_below<'a>(root: &[u8], path: &'a [u8]) -> Option<&'a [u8]> {
    if path == root {
        return Some(b"");
    }
    let rest = path.strip_prefix(root)?;
    let rest = if root.ends_with(b"/") {
        rest
    } else {
        rest.strip_prefix(b"/")?
    };
    // A stored relative path never starts with '/' (absolute) or NUL (the
    // mark of a verbatim relative one), and "" is `root` itself.
    match rest.first() {
        Some(b'/' | 0) | None => None,
        Some(_) => Some(rest),
    }
}

/// The inverse of [`path_below`].
pub fn path_joined(root: &[u8], relative: &[u8]) -> Vec<u8> {
    let mut path = root.to_vec();
    if !relative.is_empty() {
        if !root.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(relative);
    }
    path
}

/// A path column as SQLite stores it against `root`: relative below it,
/// absolute as it is, anything else (a relative path a library caller
/// passed) verbatim behind a NUL, which no path contains.
pub fn stored_path(root: Option<&[u8]>, path: &[u8]) -> Vec<u8> {
    if let Some(relative) = root.and_then(|root| path_below(root, path)) {
        return relative.to_vec();
    }
    if path.starts_with(b"/") {
        return path.to_vec();
    }
    let mut stored = Vec::with_capacity(path.len() + 1);
    stored.push(0);
    stored.extend_from_slice(path);
    stored
}

/// The inverse of [`stored_path`]; `None` for a relative path with no root.
pub fn path_of_stored(root: Option<&[u8]>, stored: &[u8]) -> Option<Vec<u8>> {
    match stored.first() {
        Some(b'/') => Some(stored.to_vec()),
        Some(0) => Some(stored[1..].to_vec()),
        _ => root.map(|root| path_joined(root, stored)),
    }
}

/// A path stored as bytes.
pub fn path_from_bytes(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes))
}

/// A `transfers` row as stored, before it is checked.
#[derive(Clone, Debug)]
pub struct TransferRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub state: String,
    pub owner_host: String,
    pub owner_boot_id: String,
    pub owner_pid: i64,
    pub owner_start_time: i64,
    pub owner_heartbeat_ns: Option<i64>,
    pub owner_lease_ms: Option<i64>,
    pub preserve: Preserve,
    pub temp_suffix: String,
    pub checksum_algo: Option<String>,
    pub created_ns: i64,
    pub updated_ns: i64,
    pub caller_uid: Option<i64>,
    pub caller_gid: Option<i64>,
    pub caller_groups: Option<String>,
}

impl TransferRow {
    /// The record; a value that cannot be ours is [`StoreError::Corrupt`].
    pub fn into_record(self, path: &Path) -> Result<TransferRecord, StoreError> {
        let id = TransferId(self.id);
        let bad = |what: &str| corrupt(path, format!("transfer {id} has {what}"));
        let (Some(kind), Some(state)) =
            (Kind::parse(&self.kind), TransferState::parse(&self.state))
        else {
            return Err(bad(&format!(
                "unknown kind {:?} or state {:?}",
                self.kind, self.state
            )));
        };
        let checksum = match self.checksum_algo.as_deref().map(ChecksumAlgo::parse) {
            None => None,
            Some(Some(algo)) => Some(algo),
            Some(None) => {
                return Err(bad(&format!(
                    "unknown checksum algorithm {:?}",
                    self.checksum_algo
                )));
            }
        };
        let pid = u32::try_from(self.owner_pid).map_err(|_| bad("an impossible owner pid"))?;
        let caller = match (self.caller_uid, self.caller_gid) {
            (Some(uid), Some(gid)) => {
                let groups = self.caller_groups.unwrap_or_default();
                let groups = groups.split(',').filter(|g| !g.is_empty());
                let (Ok(uid), Ok(gid), Ok(groups)) = (
                    u32::try_from(uid),
                    u32::try_from(gid),
                    groups.map(str::parse).collect::<Result<Vec<u32>, _>>(),
                ) else {
                    return Err(bad("unreadable caller credentials"));
                };
                Some(Caller { uid, gid, groups })
            }
            _ => None,
        };
        Ok(TransferRecord {
            id,
            name: self.name,
            kind,
            state,
            owner: Owner {
                host: self.owner_host,
                boot_id: self.owner_boot_id,
                pid,
                start_time: self.owner_start_time as u64,
            },
            lease: match (self.owner_heartbeat_ns, self.owner_lease_ms) {
                (Some(heartbeat_ns), Some(lease_ms)) if lease_ms > 0 => Some(Lease {
                    heartbeat_ns,
                    lease_ms: lease_ms as u64,
                }),
                _ => None,
            },
            preserve: self.preserve,
            temp_suffix: self.temp_suffix,
            checksum,
            created_ns: self.created_ns,
            updated_ns: self.updated_ns,
            caller,
        })
    }
}

/// An `entries` row as stored, before it is checked.
#[derive(Clone, Debug)]
pub struct EntryRow {
    pub index: i64,
    /// Borrowed where the store keeps a code (no allocation per row).
    pub kind: Cow<'static, str>,
    pub source: Vec<u8>,
    pub dest: Vec<u8>,
    pub size: i64,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub link_target: Option<Vec<u8>>,
    pub state: Cow<'static, str>,
    pub progress_bytes_durable: i64,
    pub error: Option<String>,
    pub checksum_algo: Option<Cow<'static, str>>,
    pub checksum: Option<Vec<u8>>,
    pub link_group: Option<i64>,
    pub xattrs: Option<Vec<u8>>,
    pub piece_digests: Option<Vec<u8>>,
}

impl EntryRow {
    /// The record; a value that cannot be ours is [`StoreError::Corrupt`].
    pub fn into_record(self, path: &Path, id: TransferId) -> Result<EntryRecord, StoreError> {
        let at = self.index;
        let bad = |what: String| corrupt(path, format!("entry {at} of transfer {id}: {what}"));
        let index = u32::try_from(self.index).map_err(|_| bad("impossible index".into()))?;
        let (Some(kind), Some(state)) =
            (EntryKind::parse(&self.kind), FileState::parse(&self.state))
        else {
            return Err(bad(format!(
                "unknown kind {:?} or state {:?}",
                self.kind, self.state
            )));
        };
        let checksum = match (self.checksum_algo, self.checksum) {
            (Some(algo), Some(digest)) => Some(
                ChecksumAlgo::parse(&algo)
                    .and_then(|a| Checksum::from_digest(a, &digest))
                    .ok_or_else(|| bad(format!("bad {algo} checksum")))?,
            ),
            _ => None,
        };
        let xattrs = Xattrs::decode(self.xattrs.as_deref().unwrap_or_default())
            .ok_or_else(|| bad("unreadable extended attributes".into()))?;
        let number = |value: i64, what: &str| {
            u32::try_from(value).map_err(|_| bad(format!("impossible {what} {value}")))
        };
        let link_leader = match self.link_group {
            Some(group) => Some(EntryIndex(number(group, "hard link leader")?)),
            None => None,
        };
        Ok(EntryRecord {
            index: EntryIndex(index),
            kind,
            source: path_from_bytes(self.source),
            dest: path_from_bytes(self.dest),
            meta: SourceMeta {
                size: self.size as u64,
                mode: number(self.mode, "mode")?,
                uid: number(self.uid, "uid")?,
                gid: number(self.gid, "gid")?,
                atime_ns: self.atime_ns,
                mtime_ns: self.mtime_ns,
            },
            link_target: self.link_target.map(path_from_bytes),
            state,
            progress_bytes_durable: self.progress_bytes_durable as u64,
            error: self.error,
            checksum,
            link_leader,
            xattrs,
            piece_digests: self.piece_digests.unwrap_or_default(),
        })
    }
}

/// A transfer's entries as read, in index order, checked as a whole: every
/// index once, progress within the size, hard links to earlier entries.
pub fn check_entries(
    path: &Path,
    id: TransferId,
    records: Vec<EntryRecord>,
) -> Result<Vec<EntryRecord>, StoreError> {
    check_entries_from(path, id, EntryIndex(0), records)
}

/// [`check_entries`] for a page of them, the first at index `from`.
pub fn check_entries_from(
    path: &Path,
    id: TransferId,
    from: EntryIndex,
    records: Vec<EntryRecord>,
) -> Result<Vec<EntryRecord>, StoreError> {
    for (position, record) in records.iter().enumerate() {
        let index = record.index.0;
        if u64::from(index) != u64::from(from.0) + position as u64 {
            return Err(corrupt(
                path,
                format!(
                    "transfer {id}: entry {index} found at position {position} from {}",
                    from.0
                ),
            ));
        }
        check_entry(path, id, record)?;
    }
    Ok(records)
}

/// [`check_entries`] for some of them (the directories): in index order,
/// each once.
pub fn check_entries_sorted(
    path: &Path,
    id: TransferId,
    records: Vec<EntryRecord>,
) -> Result<Vec<EntryRecord>, StoreError> {
    for (position, record) in records.iter().enumerate() {
        if position > 0 && records[position - 1].index >= record.index {
            return Err(corrupt(
                path,
                format!("transfer {id}: entry {} out of order", record.index.0),
            ));
        }
        check_entry(path, id, record)?;
    }
    Ok(records)
}

/// What one entry must hold, wherever it was read.
fn check_entry(path: &Path, id: TransferId, record: &EntryRecord) -> Result<(), StoreError> {
    let index = record.index.0;
    if record.progress_bytes_durable > record.meta.size {
        return Err(corrupt(
            path,
            format!(
                "entry {index} of transfer {id}: progress {} beyond size {}",
                record.progress_bytes_durable, record.meta.size
            ),
        ));
    }
    if record.link_leader.is_some_and(|leader| leader.0 >= index) {
        return Err(corrupt(
            path,
            format!("entry {index} of transfer {id}: a hard link to a later entry"),
        ));
    }
    Ok(())
}

/// Read back what `create_transfer` wrote: the disk and our model agree.
/// Only what never changes is compared: the read comes after the commit,
/// and another process may already have cancelled the transfer.
pub fn check_created(record: &TransferRecord, new: &NewTransfer) {
    assert_eq!(record.kind, new.kind);
    assert_eq!(record.owner, new.owner);
    assert_eq!(record.caller, new.caller);
}

/// An `events` row as stored, before it is checked.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub seq: i64,
    pub time_ns: i64,
    pub transfer: Option<i64>,
    pub entry: Option<i64>,
    pub request: Option<i64>,
    pub name: String,
    pub context: String,
}

impl EventRow {
    pub fn into_event(self, path: &Path) -> Result<Event, StoreError> {
        let seq = self.seq;
        let context = serde_json::from_str(&self.context)
            .map_err(|e| corrupt(path, format!("event {seq}: bad context: {e}")))?;
        let entry = match self.entry {
            Some(entry) => Some(EntryIndex(u32::try_from(entry).map_err(|_| {
                corrupt(path, format!("event {seq}: impossible entry {entry}"))
            })?)),
            None => None,
        };
        Ok(Event {
            seq: seq as u64,
            time_ns: self.time_ns,
            transfer: self.transfer.map(TransferId),
            entry,
            request: self.request.map(crate::model::RequestId),
            name: self.name,
            context,
        })
    }
}

/// Read back a page of events: what crosses the disk is strictly ordered,
/// after the cursor and within the snapshot.
pub fn check_event_page(events: &[Event], after: u64, last_seq: u64) {
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "events out of order"
    );
    assert!(events.first().is_none_or(|e| e.seq > after));
    assert!(events.last().is_none_or(|e| e.seq <= last_seq));
}

/// A read from `after` when events up to `horizon` were compacted away.
pub fn check_horizon(path: &Path, after: u64, horizon: u64) -> Result<(), StoreError> {
    if after < horizon {
        return Err(StoreError::Compacted {
            path: path.to_path_buf(),
            requested: after,
            horizon,
        });
    }
    Ok(())
}

/// The horizon `compact(before)` moves to, given the newest event and the
/// current horizon: `None` when nothing is to be deleted. The newest event
/// always stays, so a store's last seq survives.
pub fn compact_horizon(before: u64, last: u64, horizon: u64) -> Option<u64> {
    let before = before.min(last);
    (before > horizon + 1).then(|| before - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_the_newest_event_and_never_lowers_the_horizon() {
        assert_eq!(compact_horizon(5, 10, 0), Some(4));
        assert_eq!(compact_horizon(100, 10, 0), Some(9));
        assert_eq!(compact_horizon(5, 10, 4), None);
        assert_eq!(compact_horizon(3, 10, 4), None);
        assert_eq!(compact_horizon(1, 10, 0), None);
        assert_eq!(compact_horizon(0, 0, 0), None);
    }

    #[test]
    fn stored_paths_round_trip_exactly() {
        let roots: [Option<&[u8]>; 4] = [None, Some(b"/a/src"), Some(b"/"), Some(b"/a/src/")];
        let paths: [&[u8]; 11] = [
            b"/a/src",
            b"/a/src/",
            b"/a/src/x",
            b"/a/src//x",
            b"/a/srcx/y",
            b"/b",
            b"/",
            b"rel/x",
            b"",
            b"/a/src/\xff\x01",
            b"/a/src/d/e/f",
        ];
        for root in roots {
            for path in paths {
                let stored = stored_path(root, path);
                assert_eq!(
                    path_of_stored(root, &stored).as_deref(),
                    Some(path),
                    "{root:?} {path:?} stored as {stored:?}"
                );
            }
        }
        assert_eq!(stored_path(Some(b"/a/src"), b"/a/src/x/y"), b"x/y");
        assert_eq!(stored_path(Some(b"/a/src"), b"/a/src"), b"");
        assert_eq!(path_of_stored(None, b"x"), None, "relative with no root");
    }

    #[test]
    fn root_pairs_cover_siblings_or_a_renamed_tree() {
        let pair = |s: &str, d: &str| root_pair(s.as_bytes(), d.as_bytes());
        let bytes = |a: &str, b: &str| Some((a.as_bytes().to_vec(), b.as_bytes().to_vec()));
        assert_eq!(pair("/t/src", "/t/dst"), bytes("/t/src", "/t/dst"));
        assert_eq!(pair("/t/a", "/u/a"), bytes("/t", "/u"));
        assert_eq!(pair("/a", "/u/a"), bytes("/", "/u"));
        assert_eq!(pair("a", "/u/a"), None);
    }

    #[test]
    fn codes_are_the_file_format() {
        // The schema's triggers and migration spell these numbers.
        assert_eq!(entry_kind_code(EntryKind::Dir), 1);
        assert_eq!(file_state_code(FileState::Copied), 2);
        assert_eq!(file_state_code(FileState::Committed), 3);
        assert_eq!(file_state_code(FileState::Failed), 4);
        for state in FileState::ALL {
            assert_eq!(file_state_of_code(file_state_code(state)), Some(state));
        }
        for kind in [EntryKind::File, EntryKind::Dir, EntryKind::Symlink] {
            assert_eq!(entry_kind_of_code(entry_kind_code(kind)), Some(kind));
        }
        assert_eq!(file_state_of_code(6), None);
        assert_eq!(entry_kind_of_code(3), None);
    }

    #[test]
    fn unnamed_names_count_from_the_plain_one() {
        assert_eq!(unnamed_name(TransferId(7), 1), "cp-7");
        assert_eq!(unnamed_name(TransferId(7), 2), "cp-7-2");
    }
}
