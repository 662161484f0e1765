//! Temporaries other transfers left at our destinations.
//!
//! Before copying, each destination directory is listed once. A
//! `DEST<suffix><id>` that is not ours is: removed (and its transfer
//! cancelled) when that transfer is over or its owner is dead; left alone,
//! with a warning, when its owner lives; reported, and removed only with
//! `--clean-orphans`, when no transfer of this store wrote it. A temporary is
//! attributed to a transfer only if that transfer has an entry for exactly
//! this destination: ids repeat across stores (one per MPI rank), and a
//! temporary of another store's live transfer must never be touched. A
//! directory's temporary is a staged directory (see `staging`): removed
//! with what it holds when its transfer is known, never as an orphan.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::{EntryRecord, TransferId, TransferRecord, TransferState};
use crate::owner::Liveness;
use crate::store::{Change, Store};

/// What the listing found: warnings to give, and the temporaries of this
/// transfer that exist (earlier runs' work), so that nothing else needs to
/// look for them file by file.
pub(crate) struct Found {
    pub warnings: Vec<String>,
    pub ours: HashSet<PathBuf>,
}

pub(crate) fn clean(
    store: &dyn Store,
    ours: &TransferRecord,
    entries: &[EntryRecord],
    clean_orphans: bool,
) -> Result<Found> {
    let mut by_dir: HashMap<&Path, HashSet<&OsStr>> = HashMap::new();
    for entry in entries {
        // A directory's temporary is a staged directory (see `staging`).
        if entry.state.is_done() {
            continue;
        }
        let (Some(dir), Some(name)) = (entry.dest.parent(), entry.dest.file_name()) else {
            continue;
        };
        by_dir.entry(dir).or_default().insert(name);
    }
    let suffix = ours.temp_suffix.as_bytes();
    let mut warnings = Vec::new();
    let mut ours_found = HashSet::new();
    let mut others: HashMap<i64, Option<(TransferRecord, HashSet<PathBuf>)>> = HashMap::new();
    for (dir, names) in by_dir {
        let listing = match std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(dir, e)),
        };
        for child in listing {
            let child = child.map_err(|e| Error::io(dir, e))?;
            let file_name = child.file_name();
            let bytes = file_name.as_bytes();
            let Some(at) = bytes.windows(suffix.len()).rposition(|w| w == suffix) else {
                continue;
            };
            let base = OsStr::from_bytes(&bytes[..at]);
            // Only the canonical spelling: "+2" or "02" is not temporary 2.
            let digits = std::str::from_utf8(&bytes[at + suffix.len()..]).unwrap_or("");
            let Some(id) = digits
                .parse::<i64>()
                .ok()
                .filter(|id| id.to_string() == digits)
            else {
                continue;
            };
            if !names.contains(base) {
                continue;
            }
            if id == ours.id.0 {
                ours_found.insert(dir.join(&file_name));
                continue;
            }
            let temp = dir.join(&file_name);
            let dest = dir.join(base);
            let owner = match others.entry(id) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(match store.transfer(TransferId(id))? {
                        Some(t) => {
                            let dests = store.entries(t.id)?.into_iter().map(|e| e.dest).collect();
                            Some((t, dests))
                        }
                        None => None,
                    })
                }
            };
            match owner {
                Some((other, dests)) if dests.contains(&dest) => {
                    let liveness = other.owner_liveness();
                    if !other.state.is_terminal() && liveness != Liveness::Dead {
                        warnings.push(format!(
                            "{} belongs to transfer {} (id {id}), whose owner pid {} on {} is alive: left alone",
                            temp.display(),
                            other.name,
                            other.owner.pid,
                            other.owner.host
                        ));
                        continue;
                    }
                    if !other.state.is_terminal() {
                        store.apply(&[Change::Transfer {
                            id: other.id,
                            to: TransferState::Cancelled,
                            owner: None,
                            context: serde_json::json!({
                                "by": ours.name, "why": "its owner is dead and its destination is being written again"
                            }),
                        }])?;
                        other.state = TransferState::Cancelled;
                        warnings.push(format!(
                            "cancelled transfer {} (id {id}): its owner pid {} is dead and {} is being written again",
                            other.name,
                            other.owner.pid,
                            dest.display()
                        ));
                    }
                    remove(&temp)?;
                    warnings.push(format!("removed stale temporary {} of transfer {}", temp.display(), other.name));
                }
                _ if child.file_type().is_ok_and(|t| t.is_dir()) => warnings.push(format!(
                    "{} is named like a staged directory of no transfer in this store: left alone",
                    temp.display()
                )),
                _ if clean_orphans => {
                    remove(&temp)?;
                    warnings.push(format!("removed orphan temporary {}", temp.display()));
                }
                _ => warnings.push(format!(
                    "{} is a temporary of no transfer in this store: left alone (--clean-orphans removes it)",
                    temp.display()
                )),
            }
        }
    }
    warnings.sort();
    Ok(Found {
        warnings,
        ours: ours_found,
    })
}

/// Removes a temporary: a file, or a staged directory with what it holds
/// (a transfer with an entry for that directory wrote it; an orphan
/// directory may be anyone's, and is never removed).
fn remove(path: &Path) -> Result<()> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = match is_dir {
        true => std::fs::remove_dir_all(path),
        false => std::fs::remove_file(path),
    };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}
