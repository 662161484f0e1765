//! `--delete`: after every file of the transfer is committed, what the
//! destination's directories hold that the transfer does not is removed,
//! as `rsync --delete` does: only inside the directories the transfer
//! copies, never what the filter excludes (rsync's protection), never a
//! temporary (those are `stale`'s).
//!
//! Removals go in batches: removed, their directories made durable, then
//! one `file.removed` event each, in one transaction. A run killed midway
//! leaves the transfer unfinished; its resume lists the directories again
//! and removes what is still extra, so it converges on the same tree.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::Engine;
use super::filter::Filter;
use crate::error::{Error, Result};
use crate::failpoint::{self, CommitStep};
use crate::model::{EntryKind, EntryRecord};
use crate::store::Change;

/// What [`extras`] found: a path to remove, and whether it is a directory.
pub struct Extra {
    pub path: PathBuf,
    pub is_dir: bool,
}

/// The paths inside the transfer's destination directories that none of
/// `entries` (`(kind, dest)`) is, and that `filter` does not protect. Each
/// top directory (one not inside another of the transfer's) is where the
/// filter's paths start, as in the planner.
pub fn extras<'e>(
    entries: impl Iterator<Item = (EntryKind, &'e Path)> + Clone,
    filter: &Filter,
    temp_suffix: &str,
) -> Result<Vec<Extra>> {
    let wanted: HashSet<&Path> = entries.clone().map(|(_, dest)| dest).collect();
    let dirs: HashSet<&Path> = entries
        .clone()
        .filter(|(kind, _)| *kind == EntryKind::Dir)
        .map(|(_, dest)| dest)
        .collect();
    let mut found = Vec::new();
    for (kind, dir) in entries {
        if kind != EntryKind::Dir {
            continue;
        }
        let mut top = dir;
        while let Some(parent) = top.parent().filter(|p| dirs.contains(p)) {
            top = parent;
        }
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut children = Vec::new();
        for child in listing {
            let child = child.map_err(|e| Error::io(dir, e))?;
            children.push(child.file_name());
        }
        // Sorted: the same list, in the same order, on every run.
        children.sort();
        for name in children {
            let path = dir.join(&name);
            if wanted.contains(path.as_path()) || name.to_string_lossy().contains(temp_suffix) {
                continue;
            }
            let is_dir = std::fs::symlink_metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .is_dir();
            let relative = path.strip_prefix(top).unwrap_or(&path);
            if filter.excludes(relative, is_dir) {
                continue;
            }
            found.push(Extra { path, is_dir });
        }
    }
    Ok(found)
}

/// Removals made durable and recorded together, at most: a kill loses at
/// most this many records (the next run lists the destination again).
pub const REMOVALS_BATCH_MAX: usize = 512;

impl Engine<'_> {
    /// Removes the extras of [`extras`], recording each; returns how many.
    pub(super) fn delete_extras(&self, entries: &[EntryRecord], filter: &Filter) -> Result<u64> {
        let found = extras(
            entries.iter().map(|e| (e.kind, e.dest.as_path())),
            filter,
            &self.transfer.temp_suffix,
        )?;
        let mut removed = 0;
        for batch in found.chunks(REMOVALS_BATCH_MAX) {
            for extra in batch {
                failpoint::hit(CommitStep::RemoveExtra).map_err(|e| Error::io(&extra.path, e))?;
                let gone = if extra.is_dir {
                    std::fs::remove_dir_all(&extra.path)
                } else {
                    std::fs::remove_file(&extra.path)
                };
                match gone {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&extra.path, e)),
                }
            }
            super::commit::make_durable(batch.iter().map(|e| e.path.as_path()))
                .map_err(|e| Error::io(&batch[0].path, e))?;
            let changes: Vec<Change> = batch
                .iter()
                .map(|extra| Change::Removed {
                    id: self.transfer.id,
                    path: extra.path.clone(),
                })
                .collect();
            self.store.apply(&changes)?;
            removed += batch.len() as u64;
        }
        Ok(removed)
    }
}
