//! What reaches the committer's batches besides the workers' copies:
//! skipped destinations and hard links, which ride on their leader's data;
//! and the commit loop that receives and commits them.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, channel, sync_channel};
use std::time::Instant;

use super::commit::{self, Ready};
use super::work::Done;
use super::{BATCH_FILES_MAX, BATCH_WAIT, Engine};
use crate::checksum::Checksum;
use crate::error::Result;
use crate::model::{EntryIndex, EntryRecord, FileState};
use crate::store::Change;

/// A destination recorded `skipped` instead of copied.
pub(super) struct Skipped<'e> {
    pub entry: &'e EntryRecord,
    /// Computed when the skip rule compared checksums.
    pub checksum: Option<Checksum>,
    /// `update` or `no-clobber`: the destination is kept as it is, its
    /// metadata too. `None`: it matched the skip rule.
    pub kept_by: Option<&'static str>,
    /// The destination as the skip rule found it (`lstat`): its metadata
    /// is applied only where it differs.
    pub found: Option<std::fs::Metadata>,
}

impl Engine<'_> {
    /// Destinations found already matching: their metadata applied where
    /// it differs and made durable, then recorded `skipped` in one
    /// transaction. One whose metadata cannot be applied fails (it is not
    /// copied over). A re-run over an unchanged tree writes nothing but
    /// the store. A destination kept by `--update` or `--no-clobber` is
    /// left exactly as it is: no metadata applied.
    pub(super) fn record_skipped(
        &self,
        skipped: Vec<Skipped<'_>>,
        our_temporaries: &HashSet<PathBuf>,
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> Result<()> {
        if skipped.is_empty() {
            return Ok(());
        }
        let progress = &self.options.progress;
        let mut done = Vec::with_capacity(skipped.len());
        let mut untouched = Vec::new();
        let mut changed = Vec::new();
        for Skipped {
            entry,
            checksum,
            kept_by,
            found,
        } in skipped
        {
            // An earlier run's temporary of this file is not needed now.
            let temp = self.committer.temp_of(entry);
            if our_temporaries.contains(&temp) {
                match std::fs::remove_file(&temp) {
                    Ok(()) => changed.push(entry),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        failures.push((
                            entry.index,
                            format!("{}: cannot remove its temporary: {e}", entry.dest.display()),
                        ));
                        continue;
                    }
                }
            }
            if let Some(rule) = kept_by {
                untouched.push((entry, rule));
                continue;
            }
            let in_place = found.as_ref().is_some_and(|dest| {
                commit::metadata_in_place(entry, dest, self.transfer.preserve, self.committer.umask)
            });
            if in_place {
                done.push((entry, checksum));
                continue;
            }
            let mut warnings = Vec::new();
            let applied = commit::apply_metadata(
                entry,
                self.transfer.preserve,
                self.committer.umask,
                &mut warnings,
            );
            self.warnings
                .lock()
                .expect("warnings poisoned")
                .extend(warnings);
            match applied {
                Ok(()) => {
                    changed.push(entry);
                    done.push((entry, checksum));
                }
                Err(e) => failures.push((
                    entry.index,
                    format!("{}: cannot apply metadata: {e}", entry.dest.display()),
                )),
            }
        }
        let synced = match changed.is_empty() {
            true => Ok(()),
            false => commit::make_durable(changed.iter().map(|e| e.dest.as_path())),
        };
        if let Err(e) = synced {
            let changed: HashSet<EntryIndex> = changed.iter().map(|e| e.index).collect();
            done.retain(|(entry, _)| {
                if !changed.contains(&entry.index) {
                    return true;
                }
                failures.push((
                    entry.index,
                    format!(
                        "{}: could not make metadata durable: {e}",
                        entry.dest.display()
                    ),
                ));
                false
            });
        }
        let rule = self.options.skip.as_str();
        let skipped_change = |entry: &EntryRecord, checksum: Option<Checksum>, rule: &str| {
            let mut context = serde_json::json!({"rule": rule});
            if let Some(c) = checksum {
                context["checksum"] = c.to_string().into();
            }
            Change::Entry {
                id: self.transfer.id,
                index: entry.index,
                to: FileState::Skipped,
                progress_bytes_durable: None,
                error: None,
                checksum,
                context,
            }
        };
        let changes: Vec<Change> = done
            .iter()
            .map(|(entry, checksum)| skipped_change(entry, *checksum, rule))
            .chain(
                untouched
                    .iter()
                    .map(|(entry, kept_by)| skipped_change(entry, None, kept_by)),
            )
            .collect();
        self.store.apply(&changes)?;
        let recorded = done
            .iter()
            .map(|(entry, _)| *entry)
            .chain(untouched.iter().map(|(entry, _)| *entry));
        for entry in recorded {
            progress.files_done.fetch_add(1, Ordering::Relaxed);
            progress.files_skipped.fetch_add(1, Ordering::Relaxed);
            progress
                .bytes_reused
                .fetch_add(entry.meta.size, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Hard links whose leader's data is already in place (committed,
    /// skipped, or copied by an earlier run or page) are linked now and
    /// join the first batch; the others wait for their leader in the
    /// commit loop, which gets them back here, by leader.
    pub(super) fn link_ready_followers(
        &self,
        followers: Vec<&EntryRecord>,
        skipped_now: &HashMap<EntryIndex, Option<Checksum>>,
        ready: &mut Vec<Ready>,
        failures: &mut Vec<(EntryIndex, String)>,
    ) -> Result<HashMap<EntryIndex, Vec<EntryIndex>>> {
        let mut waiting: HashMap<EntryIndex, Vec<EntryIndex>> = HashMap::new();
        let ready_now: HashMap<EntryIndex, Option<Checksum>> =
            ready.iter().map(|r| (r.index, r.checksum)).collect();
        let failed_now: HashSet<EntryIndex> = failures.iter().map(|(i, _)| *i).collect();
        // Leaders on an earlier page, read again: their pages are over,
        // so the store says where each one's data is.
        let mut earlier: HashMap<EntryIndex, EntryRecord> = HashMap::new();
        for follower in &followers {
            let leader = follower.link_leader.expect("followers have a leader");
            if self.committer.holds(leader) || earlier.contains_key(&leader) {
                continue;
            }
            let record = self
                .store
                .entries_from(self.transfer.id, leader, 1)?
                .pop()
                .filter(|r| r.index == leader)
                .ok_or_else(|| crate::store::StoreError::Corrupt {
                    path: self.store.location(),
                    detail: format!(
                        "transfer {}: entry {} is a hard link to entry {}, which is missing",
                        self.transfer.id, follower.index.0, leader.0
                    ),
                })?;
            earlier.insert(leader, record);
        }
        for follower in followers {
            let leader_index = follower.link_leader.expect("followers have a leader");
            let leader = match earlier.get(&leader_index) {
                Some(leader) => leader,
                None => self.committer.entry(leader_index),
            };
            let on_earlier_page = earlier.contains_key(&leader_index);
            let from = if failed_now.contains(&leader.index)
                || (on_earlier_page && leader.state == FileState::Failed)
            {
                failures.push((
                    follower.index,
                    format!(
                        "{}: a hard link to {}, which failed",
                        follower.dest.display(),
                        leader.dest.display()
                    ),
                ));
                continue;
            } else if leader.state.is_done() || skipped_now.contains_key(&leader.index) {
                leader.dest.clone()
            } else if leader.state == FileState::Copied || ready_now.contains_key(&leader.index) {
                // Its data is durable in its temporary (or, copied by an
                // earlier run, maybe renamed already).
                let temp = self.committer.temp_of(leader);
                if temp.exists() {
                    temp
                } else {
                    leader.dest.clone()
                }
            } else if on_earlier_page {
                // Every file of an earlier page was committed or failed
                // before this one was read.
                failures.push((
                    follower.index,
                    format!(
                        "{}: a hard link to {}, which was left {} (a bug in ferry: please \
                         report it); resume retries it",
                        follower.dest.display(),
                        leader.dest.display(),
                        leader.state
                    ),
                ));
                continue;
            } else {
                waiting
                    .entry(leader.index)
                    .or_default()
                    .push(follower.index);
                continue;
            };
            match self.link_follower(&from, follower) {
                Ok(()) => ready.push(Ready::linked(
                    follower.index,
                    ready_now
                        .get(&leader.index)
                        .or(skipped_now.get(&leader.index))
                        .copied()
                        .flatten()
                        .or(leader.checksum),
                )),
                Err(message) => failures.push((follower.index, message)),
            }
        }
        Ok(waiting)
    }

    /// Step 1 for a hard link: its temporary is a link to its leader's data.
    fn link_follower(&self, from: &Path, follower: &EntryRecord) -> Result<(), String> {
        let temp = self.committer.temp_of(follower);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", temp.display())),
        }
        std::fs::hard_link(from, &temp)
            .map_err(|e| format!("{}: cannot link to {}: {e}", temp.display(), from.display()))?;
        self.options
            .progress
            .bytes_reused
            .fetch_add(follower.meta.size, Ordering::Relaxed);
        Ok(())
    }

    /// Receives finished copies and commits them in batches until every
    /// worker is done. Returns the entries that failed. A batch recorded
    /// `copied` is renamed into place by the placer thread while the next
    /// batch is synced, so that the sync (time the disk takes) and the
    /// renames (time the CPU takes) overlap.
    pub(super) fn commit_loop(
        &self,
        rx: Receiver<Vec<Done>>,
        batch: Vec<Ready>,
        failures: Vec<(EntryIndex, String)>,
        followers_of: &HashMap<EntryIndex, Vec<EntryIndex>>,
    ) -> Result<Vec<(EntryIndex, String)>> {
        // One batch queued for the placer and one being placed, at most.
        let (to_placer, placer_in) = sync_channel::<Vec<Ready>>(1);
        let (placer_out, from_placer) = channel::<(commit::Placed, commit::BatchOutcome)>();
        std::thread::scope(|scope| {
            crate::signals::spawn_blocked(|| {
                scope.spawn(move || {
                    for copied in placer_in {
                        if placer_out.send(self.committer.place_batch(copied)).is_err() {
                            return;
                        }
                    }
                })
            });
            let placer = Placer {
                to: to_placer,
                back: from_placer,
                with_placer: 0,
            };
            // Returning drops `placer.to`: the placer ends once it has
            // placed what it holds.
            self.commit_batches(rx, batch, failures, followers_of, placer)
        })
    }

    fn commit_batches(
        &self,
        rx: Receiver<Vec<Done>>,
        mut batch: Vec<Ready>,
        mut failures: Vec<(EntryIndex, String)>,
        followers_of: &HashMap<EntryIndex, Vec<EntryIndex>>,
        mut placer: Placer,
    ) -> Result<Vec<(EntryIndex, String)>> {
        let mut failed = Vec::new();
        // Commits what arrived, with what the placer has placed since the
        // last commit riding on its sync (see `Committer::commit_overlapped`);
        // `last` also waits for the placer and finishes what it placed.
        // Whether anything placed is left waiting.
        let mut flush = |batch: &mut Vec<Ready>,
                         failures: &mut Vec<(EntryIndex, String)>,
                         last: Last|
         -> Result<bool> {
            let mut outcome = commit::BatchOutcome::default();
            if !batch.is_empty() || !failures.is_empty() {
                let earlier = placer.take(1, &mut outcome);
                let (committed, copied) =
                    self.committer
                        .commit_overlapped(batch, std::mem::take(failures), earlier)?;
                batch.clear();
                placer.send(copied);
                outcome.committed.extend(committed.committed);
                outcome.failed.extend(committed.failed);
            }
            if last != Last::No {
                let mut placed = placer.take(0, &mut outcome);
                if last == Last::End {
                    // Every file of the page came back: what a staged
                    // directory still waits for never will.
                    let (rest, report) = self.committer.publish_rest();
                    placed.absorb(rest);
                    outcome.failed.extend(report.failed);
                }
                let rest = self.committer.finish(placed)?;
                outcome.committed.extend(rest.committed);
                outcome.failed.extend(rest.failed);
            }
            let progress = &self.options.progress;
            progress
                .files_done
                .fetch_add(outcome.committed.len() as u64, Ordering::Relaxed);
            self.warnings
                .lock()
                .expect("warnings poisoned")
                .extend(outcome.warnings);
            failed.extend(outcome.failed);
            Ok(placer.with_placer > 0)
        };
        // A batch is committed when it is full, or BATCH_WAIT after its
        // first file arrived, whichever is first; a placed batch that no
        // other follows within BATCH_WAIT is finished on its own.
        let mut batch_started: Option<Instant> = (!batch.is_empty()).then(Instant::now);
        let mut placed_since: Option<Instant> = None;
        let result = loop {
            let due = batch_started.is_some_and(|t| t.elapsed() >= BATCH_WAIT);
            if batch.len() >= BATCH_FILES_MAX || due {
                match flush(&mut batch, &mut failures, Last::No) {
                    Ok(waiting) => placed_since = waiting.then(Instant::now),
                    Err(e) => break Err(e),
                }
                batch_started = None;
            }
            let idle = placed_since.is_some_and(|t| t.elapsed() >= BATCH_WAIT);
            if batch_started.is_none() && idle {
                if let Err(e) = flush(&mut batch, &mut failures, Last::Idle) {
                    break Err(e);
                }
                placed_since = None;
            }
            let wait = batch_started
                .or(placed_since)
                .map_or(BATCH_WAIT, |t| BATCH_WAIT.saturating_sub(t.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(dones) => {
                    let mut refused = None;
                    for done in dones {
                        self.take_in(done, followers_of, &mut batch, &mut failures);
                        batch_started.get_or_insert_with(Instant::now);
                        if batch.len() < BATCH_FILES_MAX {
                            continue;
                        }
                        match flush(&mut batch, &mut failures, Last::No) {
                            Ok(waiting) => placed_since = waiting.then(Instant::now),
                            Err(e) => {
                                refused = Some(e);
                                break;
                            }
                        }
                        batch_started = None;
                    }
                    if let Some(e) = refused {
                        break Err(e);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    break flush(&mut batch, &mut failures, Last::End).map(|_| ());
                }
            }
        };
        if result.is_err() {
            // Stop the workers, and keep receiving so none blocks on a full
            // channel while the scope waits for it.
            self.options.cancel.store(true, Ordering::Relaxed);
            for _ in rx.iter() {}
        }
        result.map(|()| failed)
    }

    /// Adds a worker's outcome to the batch: a copied file with its hard
    /// links (which share the temporary's inode, and so its batch: the
    /// data is never copied twice), or a failure with theirs.
    fn take_in(
        &self,
        done: Done,
        followers_of: &HashMap<EntryIndex, Vec<EntryIndex>>,
        batch: &mut Vec<Ready>,
        failures: &mut Vec<(EntryIndex, String)>,
    ) {
        let index = match &done {
            Done::Copied(ready) => ready.index,
            Done::Failed(index, _) => *index,
        };
        let leader = self.committer.entry(index);
        for follower in followers_of.get(&index).into_iter().flatten() {
            let follower = self.committer.entry(*follower);
            match &done {
                Done::Copied(ready) => {
                    let from = self.committer.temp_of(leader);
                    match self.link_follower(&from, follower) {
                        Ok(()) => batch.push(Ready::linked(follower.index, ready.checksum)),
                        Err(message) => failures.push((follower.index, message)),
                    }
                }
                Done::Failed(..) => failures.push((
                    follower.index,
                    format!(
                        "{}: a hard link to {}, which failed",
                        follower.dest.display(),
                        leader.dest.display()
                    ),
                )),
            }
        }
        match done {
            Done::Copied(ready) => batch.push(ready),
            Done::Failed(index, message) => failures.push((index, message)),
        }
    }
}

/// Whether a commit of the loop also finishes what was placed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// No: it rides on the next batch's sync.
    No,
    /// Yes, as no batch came for a while.
    Idle,
    /// Yes, and the page is over: staged directories go in place.
    End,
}

/// The commit loop's end of the placer thread.
struct Placer {
    to: SyncSender<Vec<Ready>>,
    back: Receiver<(commit::Placed, commit::BatchOutcome)>,
    /// Batches sent and not yet back: at most two.
    with_placer: usize,
}

impl Placer {
    fn send(&mut self, copied: Vec<Ready>) {
        if copied.is_empty() {
            return;
        }
        debug_assert!(
            self.with_placer <= 1,
            "the placer holds at most two batches"
        );
        self.to
            .send(copied)
            .expect("the placer outlives the commit loop");
        self.with_placer += 1;
    }

    /// What the placer has placed, waiting until at most `keep` batches are
    /// still with it; their failures and warnings go to `report`.
    fn take(&mut self, keep: usize, report: &mut commit::BatchOutcome) -> commit::Placed {
        let mut placed = commit::Placed::default();
        while self.with_placer > 0 {
            let back = match self.with_placer > keep {
                true => self.back.recv().ok(),
                false => self.back.try_recv().ok(),
            };
            let Some((batch, outcome)) = back else { break };
            self.with_placer -= 1;
            placed.absorb(batch);
            report.failed.extend(outcome.failed);
            report.warnings.extend(outcome.warnings);
        }
        placed
    }
}
