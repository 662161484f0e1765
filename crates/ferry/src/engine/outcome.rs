//! How a run ends: the checks that must pass before a transfer may say
//! `completed`, and the report handed back to the caller.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::{Engine, FileFailure, RunReport};
use crate::error::Result;
use crate::model::{EntryIndex, EntryKind, FileState, TransferState};

impl Engine<'_> {
    /// Every file either reached the committer or failed: one that did
    /// neither is a bug in the engine, and must not let the transfer say
    /// `completed`.
    pub(super) fn check_every_file_ended(
        &self,
        failed: &mut Vec<(EntryIndex, String)>,
    ) -> Result<()> {
        // The store's counts say whether a file is left, without reading
        // every entry again (a run's memory must not double at its end).
        let tally = self.store.entry_tally(self.transfer.id)?;
        if tally.files_committed + tally.files_skipped + tally.files_failed == tally.files {
            return Ok(());
        }
        let failed_now: HashSet<EntryIndex> = failed.iter().map(|(i, _)| *i).collect();
        for entry in self.store.entries(self.transfer.id)? {
            let ended = entry.kind == EntryKind::Dir
                || entry.state.is_done()
                || entry.state == FileState::Failed
                || failed_now.contains(&entry.index);
            if !ended {
                failed.push((
                    entry.index,
                    format!(
                        "{}: left {} by this run (a bug in ferry: please report it); resume retries it",
                        entry.dest.display(),
                        entry.state
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `--verify full`: every finished file of the transfer, read back from
    /// its final name (from disk) and compared with its stored checksum. A
    /// mismatch fails the transfer; the file keeps its state, since what is
    /// wrong is the disk, not the record.
    pub(super) fn verify_finished(&self, failed: &mut Vec<(EntryIndex, String)>) -> Result<()> {
        let entries = self.store.entries(self.transfer.id)?;
        for entry in entries.iter().filter(|e| e.state.is_done()) {
            let Some(expected) = entry.checksum else {
                continue;
            };
            if let Some(problem) = crate::verify::read_back(&entry.dest, expected).problem() {
                failed.push((
                    entry.index,
                    format!("{}: verification failed: {problem}", entry.dest.display()),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn report(
        &self,
        state: TransferState,
        failed: Vec<(EntryIndex, String)>,
    ) -> Result<RunReport> {
        let entries = self.committer.entries;
        let progress = &self.options.progress;
        let files: Vec<_> = entries
            .iter()
            .filter(|e| e.kind != EntryKind::Dir)
            .collect();
        Ok(RunReport {
            id: self.transfer.id,
            name: self.transfer.name.clone(),
            state,
            files_total: files.len() as u64,
            files_committed: progress.files_done.load(Ordering::Relaxed),
            files_skipped: progress.files_skipped.load(Ordering::Relaxed),
            bytes_total: files.iter().map(|e| e.meta.size).sum(),
            bytes_copied: progress.bytes_copied.load(Ordering::Relaxed),
            bytes_reused: progress.bytes_reused.load(Ordering::Relaxed),
            failures: failed
                .into_iter()
                .map(|(index, error)| FileFailure {
                    path: entries[index.0 as usize].dest.clone(),
                    error: crate::words::in_words(&error),
                })
                .collect(),
            warnings: std::mem::take(&mut *self.warnings.lock().expect("warnings poisoned"))
                .iter()
                .map(|warning| crate::words::in_words(warning))
                .collect(),
        })
    }
}
