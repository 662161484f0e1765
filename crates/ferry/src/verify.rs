//! Verification: the disk holds what was read.
//!
//! During a copy (`--verify copied`) the committer reads each durable
//! temporary back from disk and compares it with the checksum computed as
//! the source was read; a mismatch fails the file before its rename.
//! Afterwards, [`verify_transfer`] (`ferry verify`) re-reads committed
//! destinations and compares them with the stored checksums. Neither ever
//! reads a source.

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::checksum::{self, Checksum};
use crate::model::{EntryKind, TransferRecord};
use crate::store::{Store, StoreError};

/// How much a copy checks what it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    #[default]
    None,
    /// Each copied file, read back from disk before its rename.
    Copied,
    /// `copied`, and at the end every committed or skipped file of the
    /// transfer, read back from its final name.
    Full,
}

impl Verify {
    pub fn parse(s: &str) -> Option<Verify> {
        Some(match s {
            "none" => Verify::None,
            "copied" => Verify::Copied,
            "full" => Verify::Full,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verify::None => "none",
            Verify::Copied => "copied",
            Verify::Full => "full",
        }
    }
}

/// What reading one destination back found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "finding", rename_all = "lowercase")]
pub enum Finding {
    Match,
    Mismatch {
        expected: Checksum,
        found: Checksum,
    },
    Missing,
    Unreadable {
        error: String,
    },
    /// Committed without a checksum (`--checksum none`, or skipped by a
    /// rule that compares no data): nothing to compare with.
    Unchecked,
}

/// One destination of one transfer, and what was found there.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checked {
    pub transfer: String,
    pub dest: PathBuf,
    #[serde(flatten)]
    pub finding: Finding,
}

/// Reads back every committed or skipped file of `transfer` and compares
/// it with its stored checksum. Files not yet committed are not looked at.
pub fn verify_transfer(
    store: &dyn Store,
    transfer: &TransferRecord,
) -> Result<Vec<Checked>, StoreError> {
    verify_transfer_where(store, transfer, &|_| true)
}

/// [`verify_transfer`], for the destinations `keep` accepts.
pub fn verify_transfer_where(
    store: &dyn Store,
    transfer: &TransferRecord,
    keep: &dyn Fn(&std::path::Path) -> bool,
) -> Result<Vec<Checked>, StoreError> {
    let entries = store.entries(transfer.id)?;
    Ok(entries
        .iter()
        .filter(|e| e.kind == EntryKind::File && e.state.is_done() && keep(&e.dest))
        .map(|e| Checked {
            transfer: transfer.name.clone(),
            dest: e.dest.clone(),
            finding: check(&e.dest, e.checksum),
        })
        .collect())
}

fn check(dest: &std::path::Path, expected: Option<Checksum>) -> Finding {
    match expected {
        Some(expected) => read_back(dest, expected),
        None if std::fs::symlink_metadata(dest).is_err() => Finding::Missing,
        None => Finding::Unchecked,
    }
}

/// Reads `path` back from disk (its cached pages dropped first) and
/// compares it with `expected`. The one way ferry checks what it wrote.
pub fn read_back(path: &std::path::Path, expected: Checksum) -> Finding {
    match checksum::of_file(path, expected.algo, true) {
        Ok(found) if found == expected => Finding::Match,
        Ok(found) => Finding::Mismatch { expected, found },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Finding::Missing,
        Err(e) => Finding::Unreadable {
            error: e.to_string(),
        },
    }
}

impl Finding {
    /// What is wrong, for a message; `None` when nothing is.
    pub fn problem(&self) -> Option<String> {
        match self {
            Finding::Match | Finding::Unchecked => None,
            Finding::Mismatch { expected, found } => Some(format!(
                "it reads back as {found}, the source was read as {expected}"
            )),
            Finding::Missing => Some("it is missing".into()),
            Finding::Unreadable { error } => Some(format!("it cannot be read back: {error}")),
        }
    }
}
