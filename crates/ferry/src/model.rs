//! The vocabulary of ferry: transfers, their files, their owners and states.
//!
//! These types carry no I/O. The store persists them; the engine changes
//! them only through the store's `Change`. This is the bottom layer of the
//! crate: it imports nothing of ferry but the checksum types.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::checksum::{Checksum, ChecksumAlgo};
pub use hsm::{CatalogState, RequestId, RequestState};

mod hsm;

/// A transfer's id: assigned by the store, strictly increasing, never reused
/// within one store (SQLite `AUTOINCREMENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TransferId(pub i64);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of an entry (file, directory or symlink) within its transfer.
/// Entries are numbered in the order they were added; a directory always
/// precedes what it contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EntryIndex(pub u32);

/// How the bytes move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// In the caller's thread; dispatch returns when everything is done.
    Sync,
    /// A pool of threads inside the caller's process.
    Threads,
    /// Handed to `ferry serve`, which keeps moving the data after the caller
    /// exits or dies. Dispatch and resume only record the change; the
    /// daemon's mover runs it ([`crate::Transfer::run_dispatched`]).
    Daemon,
    /// Moved by `ferry worker`s on any number of nodes, which lease its work
    /// items from a PostgreSQL store (`ferry-distributed`). Dispatch only
    /// records the change, as for [`Kind::Daemon`].
    Distributed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Threads => "threads",
            Kind::Daemon => "daemon",
            Kind::Distributed => "distributed",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "sync" => Some(Kind::Sync),
            "threads" => Some(Kind::Threads),
            "daemon" => Some(Kind::Daemon),
            "distributed" => Some(Kind::Distributed),
            _ => None,
        }
    }
}

/// `created → dispatched → running → completed | failed | cancelled`, then
/// `finalized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    Created,
    Dispatched,
    Running,
    Completed,
    Failed,
    Cancelled,
    Finalized,
}

impl TransferState {
    pub const ALL: [TransferState; 7] = [
        TransferState::Created,
        TransferState::Dispatched,
        TransferState::Running,
        TransferState::Completed,
        TransferState::Failed,
        TransferState::Cancelled,
        TransferState::Finalized,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Created => "created",
            TransferState::Dispatched => "dispatched",
            TransferState::Running => "running",
            TransferState::Completed => "completed",
            TransferState::Failed => "failed",
            TransferState::Cancelled => "cancelled",
            TransferState::Finalized => "finalized",
        }
    }

    pub fn parse(s: &str) -> Option<TransferState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// No mover works on a transfer in a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TransferState::Completed
                | TransferState::Failed
                | TransferState::Cancelled
                | TransferState::Finalized
        )
    }

    /// The states a transfer may enter this one from. The store refuses any
    /// other transition, so a bug cannot, say, revive a finalized transfer.
    pub fn allowed_from(self) -> &'static [TransferState] {
        use TransferState::*;
        match self {
            Created => &[],
            // Dispatch from created; resume from every state that is not done.
            Dispatched => &[Created, Dispatched, Running, Failed, Cancelled],
            Running => &[Dispatched, Running],
            Completed => &[Running],
            // Created: finalize --abort of a transfer never dispatched.
            Failed => &[Created, Dispatched, Running],
            Cancelled => &[Created, Dispatched, Running, Failed],
            Finalized => &[Completed, Failed, Cancelled],
        }
    }
}

impl fmt::Display for TransferState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `pending → copying → copied → committed | failed` (see SPEC "Transfer
/// lifecycle"). Small files go from `pending` straight to `copied`: a
/// transaction per file to say "copying" would cost more than the copy.
/// `skipped`: a skip rule found the destination already matching; like
/// `committed`, it is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    Pending,
    Copying,
    Copied,
    Committed,
    Failed,
    Skipped,
}

impl FileState {
    pub const ALL: [FileState; 6] = [
        FileState::Pending,
        FileState::Copying,
        FileState::Copied,
        FileState::Committed,
        FileState::Failed,
        FileState::Skipped,
    ];

    /// Committed or skipped: the destination is what it should be.
    pub fn is_done(self) -> bool {
        matches!(self, FileState::Committed | FileState::Skipped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileState::Pending => "pending",
            FileState::Copying => "copying",
            FileState::Copied => "copied",
            FileState::Committed => "committed",
            FileState::Failed => "failed",
            FileState::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<FileState> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// See [`TransferState::allowed_from`].
    pub fn allowed_from(self) -> &'static [FileState] {
        use FileState::*;
        match self {
            Pending => &[],
            // A resumed file may restart from any state but committed.
            Copying => &[Pending, Copying, Failed],
            Copied => &[Pending, Copying, Copied, Failed],
            Committed => &[Copied],
            Failed => &[Pending, Copying, Copied, Failed],
            Skipped => &[Pending, Copying, Copied, Failed],
        }
    }
}

impl fmt::Display for FileState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an entry of a transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        [EntryKind::File, EntryKind::Dir, EntryKind::Symlink]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

/// Source metadata captured when the entry is added, so that committing,
/// resuming and finalizing never need the source's metadata again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SourceMeta {
    pub size: u64,
    /// Permission bits only (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// Which source metadata to give the destination (as `cp -p`). Without it
/// the destination gets the source's mode less the umask and the current
/// time, as `cp` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
pub struct Preserve {
    pub mode: bool,
    pub ownership: bool,
    pub times: bool,
}

impl Preserve {
    pub const ALL: Preserve = Preserve {
        mode: true,
        ownership: true,
        times: true,
    };
    pub const NONE: Preserve = Preserve {
        mode: false,
        ownership: false,
        times: false,
    };
}

/// The longest transfer name, in bytes: a name is typed, printed in the
/// status table and used in file names by scripts.
pub const NAME_BYTES_MAX: usize = 255;

/// Refuses a name no one could type or print: empty, over
/// [`NAME_BYTES_MAX`] bytes, or holding a control character (a newline
/// would break the status table).
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return Err("it is too long");
    }
    if name.chars().any(char::is_control) {
        return Err("it holds a control character (a newline, a tab…)");
    }
    if name.trim() != name {
        return Err("it starts or ends with a space");
    }
    Ok(())
}

/// The process that created (or last re-attached) a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub host: String,
    pub boot_id: String,
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks since boot. With `pid` and
    /// `boot_id` it names one process even when pids are reused.
    pub start_time: u64,
}

/// An owner's lease: the owner renews `heartbeat_ns` (its wall clock) while
/// it holds the transfer, and counts as dead, wherever it ran, once the
/// heartbeat is older than `lease_ms` (see `owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub heartbeat_ns: i64,
    pub lease_ms: u64,
}

/// The user a daemon transfer was created for (from the socket's peer
/// credentials): who may see and control it, and whose file credentials
/// its data path runs with. `None` for transfers made outside the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// A transfer as the store holds it.
#[derive(Clone, Debug, Serialize)]
pub struct TransferRecord {
    pub id: TransferId,
    pub name: String,
    pub kind: Kind,
    pub state: TransferState,
    pub owner: Owner,
    /// The owner's last heartbeat; `None` before its first (or in a store
    /// written before leases).
    pub lease: Option<Lease>,
    pub preserve: Preserve,
    /// Appended to a destination's name while it is written:
    /// `DEST<temp_suffix><id>`, `._ferry-` by default.
    pub temp_suffix: String,
    /// The hash every copied file gets (`None`: no checksums).
    pub checksum: Option<ChecksumAlgo>,
    pub created_ns: i64,
    pub updated_ns: i64,
    /// See [`Caller`].
    pub caller: Option<Caller>,
}

/// One entry (file, directory or symlink) of a transfer as the store holds it.
#[derive(Clone, Debug, Serialize)]
pub struct EntryRecord {
    pub index: EntryIndex,
    pub kind: EntryKind,
    pub source: PathBuf,
    pub dest: PathBuf,
    pub meta: SourceMeta,
    pub link_target: Option<PathBuf>,
    pub state: FileState,
    /// Bytes of the temporary, from offset 0, known to be durable on disk.
    pub progress_bytes_durable: u64,
    pub error: Option<String>,
    /// Of the bytes as they were read, once the file is copied.
    pub checksum: Option<Checksum>,
    /// A large file's pieces below its durable progress: their digests,
    /// concatenated, as the source's bytes were read (empty if unknown).
    pub piece_digests: Vec<u8>,
    /// Hard links: the entry (of this transfer) whose inode this file
    /// shares; its data is copied once, by that entry.
    pub link_leader: Option<EntryIndex>,
    /// Extended attributes (ACLs included), captured with the metadata.
    pub xattrs: Xattrs,
}

/// Where a hard link's leader, the first entry sharing its inode, is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLeader {
    /// At this position in the same slice of new entries.
    InBatch(usize),
    /// In the transfer already, at this index: a plan added a batch at a
    /// time by its one writer (`Transfer::create_planned`), whose earlier
    /// batch held the leader.
    Added(EntryIndex),
}

/// An entry about to be added to a transfer.
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub kind: EntryKind,
    pub source: PathBuf,
    pub dest: PathBuf,
    pub meta: SourceMeta,
    pub link_target: Option<PathBuf>,
    /// The first entry that shares this file's inode (a hard link).
    pub link_leader: Option<LinkLeader>,
    /// Device and inode of a source file with more than one link, as the
    /// walk's `lstat` found them: hard-link groups are formed from these
    /// without a second `lstat`.
    pub shared_inode: Option<(u64, u64)>,
    /// The source's inode change time (ctime) as the walk found it, 0 when
    /// the entry is not from a walk. Not stored: a re-run compares it with
    /// the time of the copy that recorded the entry (see [`crate::rerun`]),
    /// which catches what size and mtime miss (chmod, chown, xattrs).
    pub inode_changed_ns: i64,
    pub xattrs: Xattrs,
}

/// Extended attributes of an entry: (name, value) pairs, names as bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Xattrs(pub Vec<(Vec<u8>, Vec<u8>)>);

/// Names common enough to be stored as one byte (see [`Xattrs::encode`]):
/// every entry of `cp -a` carries the POSIX ACLs, most of them empty.
const XATTR_WELL_KNOWN: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

impl Xattrs {
    /// Per pair, either `u32 name length, name, u32 value length, value`
    /// (little-endian), or — for a name of [`XATTR_WELL_KNOWN`] — a zero
    /// byte (no name is empty, so no length starts with one), the name's
    /// number from 1, then `u32 value length, value`, or for an empty value
    /// the number plus 128 and nothing else: two bytes where an entry's
    /// "no ACL" took 31. Empty when there are none.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.0 {
            assert!(!name.is_empty(), "an extended attribute has a name");
            if let Some(k) = XATTR_WELL_KNOWN.iter().position(|w| w == name) {
                let number = k as u8 + 1;
                if value.is_empty() {
                    out.extend_from_slice(&[0, number + 128]);
                    continue;
                }
                out.extend_from_slice(&[0, number]);
            } else {
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name);
            }
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// `None` when `bytes` is not what [`Xattrs::encode`] writes (now or
    /// before well-known names were numbered).
    pub fn decode(mut bytes: &[u8]) -> Option<Xattrs> {
        let take = |bytes: &mut &[u8]| -> Option<Vec<u8>> {
            let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
            let part = bytes.get(4..4 + len)?.to_vec();
            *bytes = &bytes[4 + len..];
            Some(part)
        };
        let mut pairs = Vec::new();
        while !bytes.is_empty() {
            if bytes[0] == 0 {
                let number = *bytes.get(1)?;
                bytes = &bytes[2..];
                let (k, empty) = match number {
                    n @ 129.. => (n - 129, true),
                    n @ 1..=127 => (n - 1, false),
                    _ => return None,
                };
                let name = XATTR_WELL_KNOWN.get(k as usize)?.to_vec();
                let value = if empty { Vec::new() } else { take(&mut bytes)? };
                pairs.push((name, value));
                continue;
            }
            let name = take(&mut bytes)?;
            let value = take(&mut bytes)?;
            if name.is_empty() {
                return None;
            }
            pairs.push((name, value));
        }
        // Held for every entry of a run: a push grows the list to four
        // pairs (192 bytes) where nearly every entry has one or two.
        pairs.shrink_to_fit();
        Some(Xattrs(pairs))
    }
}

/// A transfer about to be created.
#[derive(Clone, Debug)]
pub struct NewTransfer {
    /// `None`: the store names it `cp-<id>`.
    pub name: Option<String>,
    pub kind: Kind,
    pub owner: Owner,
    pub preserve: Preserve,
    pub temp_suffix: String,
    pub checksum: Option<ChecksumAlgo>,
    /// See [`Caller`].
    pub caller: Option<Caller>,
    /// A finished transfer under `name` (or a cancelled one never filled)
    /// that gives it up in the same transaction: a re-run under a fixed
    /// name is never left with the old copy freed and no new one recorded.
    /// One freed meanwhile by another process is passed over.
    pub replaces: Option<TransferId>,
}

/// One row of the event log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub seq: u64,
    pub time_ns: i64,
    /// The transfer the event is about; `None` for HSM request and catalog
    /// events.
    pub transfer: Option<TransferId>,
    pub entry: Option<EntryIndex>,
    /// The HSM request the event is about, if any.
    pub request: Option<RequestId>,
    pub name: String,
    pub context: serde_json::Value,
}

/// The default suffix of temporary names.
pub const DEFAULT_TEMP_SUFFIX: &str = "._ferry-";

/// How many of a transfer's files (directories aside) are where: the one
/// count the progress bar, a run's summary and `ferry status` all give,
/// said in the same words by its `Display`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FileCounts {
    /// Files, symlinks included, directories not.
    pub files: u64,
    /// Copied to their final name (by this run or an earlier one).
    pub copied: u64,
    /// Already at the destination (`--skip`), not copied.
    pub skipped: u64,
    pub failed: u64,
}

impl FileCounts {
    pub fn of(entries: &[EntryRecord]) -> FileCounts {
        let mut counts = FileCounts::default();
        for entry in entries.iter().filter(|e| e.kind != EntryKind::Dir) {
            counts.files += 1;
            match entry.state {
                FileState::Committed => counts.copied += 1,
                FileState::Skipped => counts.skipped += 1,
                FileState::Failed => counts.failed += 1,
                _ => {}
            }
        }
        counts
    }

    /// Neither copied, skipped nor failed yet.
    pub fn pending(&self) -> u64 {
        self.files
            .saturating_sub(self.copied + self.skipped + self.failed)
    }
}

impl fmt::Display for FileCounts {
    /// `5 files: 3 copied, 2 skipped, 0 failed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} files: {} copied, {} skipped, {} failed",
            self.files, self.copied, self.skipped, self.failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Xattrs;

    fn pair(name: &[u8], value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (name.to_vec(), value.to_vec())
    }

    #[test]
    fn xattrs_round_trip_and_empty_acls_take_two_bytes() {
        let none = Xattrs(vec![
            pair(b"system.posix_acl_access", b""),
            pair(b"system.posix_acl_default", b""),
        ]);
        assert_eq!(none.encode(), [0, 129, 0, 130]);
        let mixed = Xattrs(vec![
            pair(b"user.a", b"1"),
            pair(b"system.posix_acl_access", b"\x02\0\0\0acl"),
            pair(b"system.posix_acl_default", b""),
            pair(b"user.empty", b""),
        ]);
        for xattrs in [none, mixed, Xattrs::default()] {
            assert_eq!(Xattrs::decode(&xattrs.encode()), Some(xattrs));
        }
    }

    #[test]
    fn xattrs_written_before_names_were_numbered_still_read() {
        // Every name spelled out, as stores of earlier versions hold them.
        let mut old = Vec::new();
        for part in [&b"system.posix_acl_access"[..], b"", b"user.x", b"v"] {
            old.extend_from_slice(&(part.len() as u32).to_le_bytes());
            old.extend_from_slice(part);
        }
        let decoded = Xattrs::decode(&old).unwrap();
        assert_eq!(
            decoded,
            Xattrs(vec![
                pair(b"system.posix_acl_access", b""),
                pair(b"user.x", b"v")
            ])
        );
        // Not what either form writes.
        assert_eq!(Xattrs::decode(&[0, 0]), None);
        assert_eq!(Xattrs::decode(&[0, 3]), None);
        assert_eq!(Xattrs::decode(&[0]), None);
    }
}
