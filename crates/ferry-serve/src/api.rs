//! The requests and answers of the daemon's HTTP/JSON API, shared by the
//! server and the client (`docs/openapi.json` describes the same). Requests
//! refuse unknown fields: a typo is an error, never silently ignored.

use serde::{Deserialize, Serialize};

pub mod wire;

/// `POST /v1/transfers`
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// `cp-<id>` when absent.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::present"
    )]
    pub name: Option<String>,
    /// Keep mode, ownership (where the caller may) and times, as `cp -p`.
    #[serde(default)]
    pub preserve: bool,
    /// `xxh3` (default), `blake3` or `none`: the checksum every copied file
    /// gets, computed as it is read.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::present"
    )]
    pub checksum: Option<String>,
}

/// `POST /v1/transfers/{name}/entries`: `cp`'s destination rules, planned
/// with the caller's credentials. Paths are absolute and UTF-8.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub sources: Vec<String>,
    pub dest: String,
    #[serde(default)]
    pub recursive: bool,
    /// Hard links among the sources stay hard links (as `cp -a`).
    #[serde(default)]
    pub hard_links: bool,
    /// `all`, `none` (default) or `no-lustre`: extended attributes and ACLs
    /// to keep.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::present"
    )]
    pub xattrs: Option<String>,
    /// The same command line run again is the same copy: look for one of
    /// the caller's transfers that copied these sources to this
    /// destination first (`AddResponse::same_copy`), as a local `cp` does.
    #[serde(default)]
    pub rerun: bool,
}

/// `POST /v1/transfers/{name}/dispatch` and `…/resume`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Copy threads for this transfer [default: 4, at most 64].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::whole"
    )]
    pub threads: Option<u16>,
    /// `never` (default), `exists`, `size`, `mtime` or `checksum`:
    /// destinations that already match are recorded skipped.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::present"
    )]
    pub skip: Option<String>,
    /// `none` (default), `copied` or `full`: read back what was written.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::present"
    )]
    pub verify: Option<String>,
    /// Refuse to start without room for what is left to copy.
    #[serde(default)]
    pub check_space: bool,
    /// Remove temporaries at the destinations that no transfer wrote.
    #[serde(default)]
    pub clean_orphans: bool,
    /// The caller's umask (0 to 0o777, sent as a number), applied as `cp`
    /// does to what is not preserved: the daemon's own umask is not the
    /// caller's. Our client sends the process's; without it, 0o022.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::whole"
    )]
    pub umask: Option<u32>,
    /// Keep destination files that are newer than their source (rsync -u).
    #[serde(default)]
    pub update: bool,
    /// Never overwrite an existing destination (cp -n).
    #[serde(default)]
    pub no_clobber: bool,
    /// Bytes per second for the whole transfer, shared by its workers;
    /// absent or 0: none (a resume without it keeps the recorded one).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::whole"
    )]
    pub bwlimit: Option<u64>,
}

/// `POST /v1/transfers/{name}/limit`: the transfer's new bandwidth limit,
/// also while it runs (its mover takes it within a quarter second).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    /// Bytes per second; 0: no limit.
    #[serde(deserialize_with = "wire::whole_required")]
    pub bytes_per_second: u64,
}

/// The umask a dispatch or resume that does not say uses.
pub const UMASK_DEFAULT: u32 = 0o022;

/// A transfer as the daemon shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TransferView {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub state: String,
    /// The user it belongs to.
    pub uid: Option<u32>,
    pub files: u64,
    pub files_committed: u64,
    pub files_failed: u64,
    /// Already at the destination (`--skip`), not copied.
    #[serde(default)]
    pub files_skipped: u64,
    pub bytes: u64,
    /// Bytes of the temporaries known durable, plus committed files.
    pub bytes_durable: u64,
    /// Failed entries, a page at a time (`limit`, `after` on a status;
    /// the first [`LIST_FAILURES_MAX`] in a list).
    pub failures: Vec<Failure>,
    /// More failures follow: ask again with `after` set to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_after: Option<u64>,
    /// What the last run could not keep (ownership, attributes), as a
    /// local `cp -a` says on stderr; at most 64.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The process moving it (the daemon), as `ferry status` shows a
    /// local transfer's owner.
    #[serde(default)]
    pub owner: Option<OwnerView>,
    /// The checksum its files get.
    #[serde(default)]
    pub checksum: Option<String>,
    /// Why a failed transfer's last run ended as a whole (its store turned
    /// read-only, say), as recorded with its `transfer.failed` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `create` found this name already taken by one of the caller's
    /// unfinished transfers and returned it (re-attach by name).
    #[serde(default)]
    pub reattached: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OwnerView {
    pub host: String,
    pub pid: u32,
    /// me, alive, dead or unknown, as the daemon sees it.
    pub liveness: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// `GET /v1/transfers?limit=N&after=ID` (transfers by id) and
/// `GET /v1/transfers/{name}?limit=N&after=INDEX` (failures by entry index):
/// the items after the cursor, at most `limit` ([`PAGE_MAX`] when absent).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::whole_query"
    )]
    pub limit: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "wire::whole_query"
    )]
    pub after: Option<u64>,
}

/// The most items in one page; a larger `limit` is refused (400).
pub const PAGE_MAX: u64 = 1000;
/// Failures each transfer of a list shows (a status pages through all).
pub const LIST_FAILURES_MAX: usize = 8;

/// `POST /v1/transfers/{name}/cancel` takes no options: an empty body or
/// `{}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {}

/// `POST /v1/transfers/{name}/entries`
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddResponse {
    pub added: usize,
    /// With `rerun`: the caller's transfer that already copied these
    /// sources to this destination. Completed: the entries were added
    /// onto its destinations (never nested into them), to be dispatched
    /// with `skip: mtime` to bring them up to date. Not completed: nothing
    /// was added; that transfer is the copy to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_copy: Option<SameCopyView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SameCopyView {
    pub name: String,
    pub id: i64,
    pub state: String,
}

/// `GET /v1/transfers/{name}/wait?timeout_ms=N`: `done` is false when the
/// long-poll timed out first (ask again).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitResponse {
    pub name: String,
    pub id: i64,
    pub state: String,
    pub done: bool,
}

/// Every error answer: a message naming the thing and what to do, and a
/// stable `kind` a client can act on (the CLI maps it to an exit code).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub kind: String,
    /// For an error of the library (a missing source, a name in use…): the
    /// number `ferry` exits with for it, with or without the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// Request bodies larger than this are refused (413).
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// A long-poll `wait` returns after at most this long.
pub const WAIT_MS_MAX: u64 = 60_000;
/// … and after this long when the request does not say.
pub const WAIT_MS_DEFAULT: u64 = 30_000;
/// Copy threads of one transfer.
pub const THREADS_MAX: u16 = 64;
pub const THREADS_DEFAULT: u16 = 4;
