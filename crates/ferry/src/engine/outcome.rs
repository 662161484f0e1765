//! How a run ends: the checks that must pass before a transfer may say
//! `completed`, and the report handed back to the caller.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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
        let never = AtomicBool::new(false);
        super::pages::pages(
            self.store,
            self.transfer.id,
            self.page_max,
            &never,
            |page| {
                for entry in page {
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
            },
        )
    }

    /// `--verify full`: every finished file of the transfer, read back from
    /// its final name (from disk) and compared with its stored checksum. A
    /// mismatch fails the transfer; the file keeps its state, since what is
    /// wrong is the disk, not the record.
    pub(super) fn verify_finished(&self, failed: &mut Vec<(EntryIndex, String)>) -> Result<()> {
        let cancel = &self.options.cancel;
        super::pages::pages(
            self.store,
            self.transfer.id,
            self.page_max,
            cancel,
            |page| {
                for entry in page.iter().filter(|e| e.state.is_done()) {
                    let Some(expected) = entry.checksum else {
                        continue;
                    };
                    if let Some(problem) = crate::verify::read_back(&entry.dest, expected).problem()
                    {
                        failed.push((
                            entry.index,
                            format!("{}: verification failed: {problem}", entry.dest.display()),
                        ));
                    }
                }
                Ok(())
            },
        )
    }

    /// The destinations of the failed entries, read from the store a page
    /// at a time from each failure the pages before did not reach (the run
    /// holds no more than a page of entries).
    fn dests_of(&self, failed: &[(EntryIndex, String)]) -> Result<HashMap<EntryIndex, PathBuf>> {
        let mut wanted: Vec<EntryIndex> = failed.iter().map(|(i, _)| *i).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut dests = HashMap::with_capacity(wanted.len());
        let mut at = 0;
        while let Some(&first) = wanted.get(at) {
            let page = self
                .store
                .entries_from(self.transfer.id, first, self.page_max)?;
            #[cfg(test)]
            super::paging::held(page.len());
            let Some(last) = page.last().map(|e| e.index) else {
                break;
            };
            while let Some(&index) = wanted.get(at).filter(|i| **i <= last) {
                let entry = &page[(index.0 - first.0) as usize];
                dests.insert(index, entry.dest.clone());
                at += 1;
            }
        }
        Ok(dests)
    }

    pub(super) fn report(
        &self,
        state: TransferState,
        failed: Vec<(EntryIndex, String)>,
    ) -> Result<RunReport> {
        let progress = &self.options.progress;
        let dests = self.dests_of(&failed)?;
        Ok(RunReport {
            id: self.transfer.id,
            name: self.transfer.name.clone(),
            state,
            // Counted from the store when the run started.
            files_total: progress.files_total.load(Ordering::Relaxed),
            files_committed: progress.files_done.load(Ordering::Relaxed),
            files_skipped: progress.files_skipped.load(Ordering::Relaxed),
            bytes_total: progress.bytes_total.load(Ordering::Relaxed),
            bytes_copied: progress.bytes_copied.load(Ordering::Relaxed),
            bytes_reused: progress.bytes_reused.load(Ordering::Relaxed),
            failures: failed
                .into_iter()
                .map(|(index, error)| FileFailure {
                    path: dests.get(&index).cloned().unwrap_or_default(),
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
