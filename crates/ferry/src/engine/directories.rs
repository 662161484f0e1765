//! The transfer's directories: made before any file (so files have
//! somewhere to go) and given their metadata after every file is in place.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{Engine, commit, staging};
use crate::error::{Error, Result};
use crate::failpoint::{self, CommitStep};
use crate::model::{EntryIndex, EntryKind, EntryRecord, FileState};

impl Engine<'_> {
    /// Creates the transfer's directories (and missing parents of its
    /// entries, as `mkdir -p`). Returns the directories that existed before
    /// and are left as they are: without `-p`, cp does not touch an
    /// existing directory's mode or times.
    pub(super) fn create_directories(
        &self,
        entries: &[EntryRecord],
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> Result<HashSet<EntryIndex>> {
        let dirs: HashSet<&Path> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Dir)
            .map(|e| e.dest.as_path())
            .collect();
        let preserve = self.transfer.preserve;
        let preserving = preserve.mode || preserve.ownership || preserve.times;
        let mut parents_made: HashSet<&Path> = HashSet::new();
        let mut changes = Vec::new();
        let mut to_create = Vec::new();
        let mut left_alone = HashSet::new();
        for entry in entries {
            if entry.state.is_done() {
                continue;
            }
            // Parents outside the transfer's own directories, as `mkdir -p`.
            if let Some(parent) = entry.dest.parent().filter(|p| !p.as_os_str().is_empty())
                && !dirs.contains(parent)
                && parents_made.insert(parent)
                && let Err(e) = std::fs::create_dir_all(parent)
            {
                failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", parent.display()),
                ));
                continue;
            }
            if entry.kind != EntryKind::Dir {
                continue;
            }
            match std::fs::symlink_metadata(&entry.dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => to_create.push(entry),
                Ok(m) if m.is_dir() => {
                    // `copied` or `failed`: an earlier run of ours made it.
                    // `pending`: it was there before this transfer.
                    if entry.state == FileState::Copied {
                        continue;
                    }
                    changes.push(self.committer.entry_change(
                        entry.index,
                        FileState::Copied,
                        None,
                        None,
                    ));
                    if entry.state == FileState::Pending && !preserving {
                        changes.push(self.committer.entry_change(
                            entry.index,
                            FileState::Committed,
                            None,
                            None,
                        ));
                        left_alone.insert(entry.index);
                    }
                }
                Ok(_) => failures.push((
                    entry.index,
                    format!(
                        "cannot create directory {}: a file of that name exists",
                        entry.dest.display()
                    ),
                )),
                Err(e) => failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", entry.dest.display()),
                )),
            }
        }
        // Recorded before they exist, so that a crash right after mkdir
        // still knows these are ours (and get their mode at the end); a
        // directory carries no data, so this claims nothing about content.
        changes.extend(
            to_create
                .iter()
                .filter(|e| e.state != FileState::Copied)
                .map(|e| {
                    self.committer
                        .entry_change(e.index, FileState::Copied, None, None)
                }),
        );
        self.store.apply(&changes)?;
        let full = entries.len() == self.page_max;
        let staged = staging::choose(entries, &to_create, full, super::SPLIT_BYTES_MIN);
        let (suffix, id) = (self.committer.temp_suffix, self.committer.id);
        // Left staged by an earlier run (never followed if a link), and
        // not staged by this one (its directory exists, or is not chosen
        // now): in place now, with its files recorded `copied`.
        for dir in entries.iter().filter(|e| {
            e.kind == EntryKind::Dir && !e.state.is_done() && !staged.contains_key(&e.dest)
        }) {
            if staging::left_staged(&dir.dest, suffix, id).is_none() {
                continue;
            }
            let children: Vec<&EntryRecord> = entries
                .iter()
                .filter(|e| e.dest.parent() == Some(dir.dest.as_path()))
                .collect();
            let copied: HashSet<EntryIndex> = children
                .iter()
                .filter(|e| e.state == FileState::Copied || e.state.is_done())
                .map(|e| e.index)
                .collect();
            let placed = staging::publish(&dir.dest, &children, &copied, suffix, id)
                .and_then(|()| commit::sync_parent(&dir.dest));
            if let Err(e) = placed {
                failures.push((
                    dir.index,
                    format!("cannot put directory {} in place: {e}", dir.dest.display()),
                ));
            }
        }
        for entry in to_create {
            if !staged.contains_key(&entry.dest) && entry.dest.exists() {
                continue; // put in place just now
            }
            let made = match staged.contains_key(&entry.dest) {
                true => staging::make(&entry.dest, entries, suffix, id),
                // Owner-only until its contents are in place; its own mode last.
                false => match std::fs::DirBuilder::new().mode(0o700).create(&entry.dest) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && entry.dest.is_dir() => {
                        Ok(())
                    }
                    other => other,
                },
            };
            if let Err(e) = made {
                failures.push((
                    entry.index,
                    format!("cannot create directory {}: {e}", entry.dest.display()),
                ));
            }
        }
        self.committer.staging.set(staged);
        Ok(left_alone)
    }

    /// Directory metadata goes on after everything inside is in place,
    /// deepest first (entries are in pre-order), as `cp -a` does.
    pub(super) fn finish_directories(
        &self,
        entries: &[EntryRecord],
        left_alone: &HashSet<EntryIndex>,
        failed: &mut Vec<(EntryIndex, String)>,
    ) -> Result<()> {
        let dirs = entries.iter().rev().filter(|e| {
            e.kind == EntryKind::Dir
                && e.state != FileState::Committed
                && !left_alone.contains(&e.index)
        });
        let first_failure = failed.len();
        let mut done: Vec<EntryIndex> = self
            .committer
            .place_directories(
                dirs,
                failed,
                &mut self.warnings.lock().expect("warnings poisoned"),
            )
            .iter()
            .map(|d| d.index)
            .collect();
        if done.is_empty() && failed.len() == first_failure {
            return Ok(());
        }
        let synced = failpoint::hit(CommitStep::SyncDir).and_then(|()| {
            commit::make_durable(done.iter().map(|i| self.committer.entry(*i).dest.as_path()))
        });
        if let Err(e) = synced {
            for index in done.drain(..) {
                let dest = &self.committer.entry(index).dest;
                failed.push((
                    index,
                    format!("{}: could not make metadata durable: {e}", dest.display()),
                ));
            }
        }
        failpoint::hit(CommitStep::RecordCommitted).map_err(|e| Error::Io {
            path: self.store.location(),
            source: e,
        })?;
        self.store.apply(&self.committer.committed_changes(
            &done,
            &failed[first_failure..],
            &HashSet::new(),
        ))?;
        Ok(())
    }
}
