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
