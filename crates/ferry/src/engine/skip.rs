//! Skip rules (`--skip`): a destination that already matches its source is
//! recorded `skipped` and costs no data I/O (but for `checksum`, which reads
//! both to compare them). Its metadata is still checked and applied.

use std::io;
use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use crate::checksum::{self, Checksum, ChecksumAlgo};
use crate::engine::plan;
use crate::model::EntryRecord;

/// When a destination counts as already there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SkipRule {
    /// Always copy.
    #[default]
    Never,
    /// Any file of that name.
    Exists,
    /// A file of the same size.
    Size,
    /// Same size and modification time, to the nanosecond (rsync's rule).
    Mtime,
    /// Same size and the same checksum (both files are read).
    Checksum,
}

impl SkipRule {
    pub fn parse(s: &str) -> Option<SkipRule> {
        Some(match s {
            "never" => SkipRule::Never,
            "exists" => SkipRule::Exists,
            "size" => SkipRule::Size,
            "mtime" => SkipRule::Mtime,
            "checksum" => SkipRule::Checksum,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SkipRule::Never => "never",
            SkipRule::Exists => "exists",
            SkipRule::Size => "size",
            SkipRule::Mtime => "mtime",
            SkipRule::Checksum => "checksum",
        }
    }
}

/// What a matching destination is known by.
pub(crate) struct Matched {
    /// Computed when the rule compared checksums: recorded with the entry.
    pub checksum: Option<Checksum>,
    /// The destination's, as the rule found it: its metadata is applied
    /// only where it differs.
    pub dest: std::fs::Metadata,
}

/// Whether `entry`'s destination already matches by `rule`. A destination
/// that is not a regular file never matches (it is replaced, as cp does).
pub(crate) fn matches(
    entry: &EntryRecord,
    rule: SkipRule,
    algo: Option<ChecksumAlgo>,
) -> io::Result<Option<Matched>> {
    if rule == SkipRule::Never {
        return Ok(None);
    }
    let dest = match std::fs::symlink_metadata(&entry.dest) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !dest.is_file() {
        return Ok(None);
    }
    let size_equal = dest.size() == entry.meta.size;
    let matched = match rule {
        SkipRule::Never => false,
        SkipRule::Exists => true,
        SkipRule::Size => size_equal,
        SkipRule::Mtime => {
            size_equal && plan::time_ns(dest.mtime(), dest.mtime_nsec()) == entry.meta.mtime_ns
        }
        SkipRule::Checksum => {
            if !size_equal {
                return Ok(None);
            }
            let algo = algo.unwrap_or(ChecksumAlgo::Xxh3);
            let source = checksum::of_file(&entry.source, algo, false)?;
            // The source must still be what was added.
            let now = std::fs::symlink_metadata(&entry.source)?;
            if now.size() != entry.meta.size {
                return Ok(None);
            }
            let found = checksum::of_file(&entry.dest, algo, false)?;
            return Ok((found == source).then_some(Matched {
                checksum: Some(source),
                dest,
            }));
        }
    };
    Ok(matched.then_some(Matched {
        checksum: None,
        dest,
    }))
}

/// Whether `--update` or `--no-clobber` keep `entry`'s destination as it
/// is; says which. `--no-clobber`: anything at that name (cp -n).
/// `--update`: a destination modified after the source (rsync -u).
pub(crate) fn kept(entry: &EntryRecord, update: bool, no_clobber: bool) -> Option<&'static str> {
    if !update && !no_clobber {
        return None;
    }
    let dest = std::fs::symlink_metadata(&entry.dest).ok()?;
    if no_clobber {
        return Some("no-clobber");
    }
    let newer = plan::time_ns(dest.mtime(), dest.mtime_nsec()) > entry.meta.mtime_ns;
    (update && newer).then_some("update")
}

/// `--dry-run`: whether `entry` would be skipped (its destination kept by
/// `--update`/`--no-clobber`, or matching `rule`), and by which rule. Reads
/// only; a file that cannot be compared would be copied.
pub fn would_skip(
    entry: &crate::model::NewEntry,
    rule: SkipRule,
    update: bool,
    no_clobber: bool,
    algo: Option<ChecksumAlgo>,
) -> Option<&'static str> {
    use crate::model::{EntryIndex, EntryKind, FileState};
    if entry.kind != EntryKind::File {
        return None;
    }
    let record = EntryRecord {
        index: EntryIndex(0),
        kind: entry.kind,
        source: entry.source.clone(),
        dest: entry.dest.clone(),
        meta: entry.meta,
        link_target: None,
        state: FileState::Pending,
        progress_bytes_durable: 0,
        error: None,
        checksum: None,
        piece_digests: Vec::new(),
        link_leader: None,
        xattrs: Default::default(),
    };
    if let Some(kept_by) = kept(&record, update, no_clobber) {
        return Some(kept_by);
    }
    match matches(&record, rule, algo) {
        Ok(Some(_)) => Some(rule.as_str()),
        _ => None,
    }
}
