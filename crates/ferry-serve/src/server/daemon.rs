//! The daemon's shared state and its movers: the threads that run queued
//! transfers, each with its caller's file credentials.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use ferry::model::{EntryIndex, Owner, TransferRecord};
use ferry::store::{Change, SqliteStore, Store};
use ferry::{Caller, Kind, Progress, Transfer, TransferId, TransferState};
use tokio::sync::Semaphore;

use super::QUEUE_MAX;
use super::peer::{PerUser, acting_caller};
use super::run_settings::RunSettings;
use crate::api::{Failure, LIST_FAILURES_MAX, OwnerView, TransferView};
use crate::creds::{self, Peer};
use crate::error::{ApiError, ServeError};
use crate::metrics::{Gauges, Metrics};

/// A transfer handed to a mover.
pub(super) struct Job {
    transfer: Transfer,
    caller: Caller,
}

/// A transfer queued for or run by a mover.
pub(super) struct Moving {
    pub(super) interrupt: Arc<AtomicBool>,
    pub(super) progress: Arc<Progress>,
}

pub(super) struct Daemon {
    /// The store's file, on this node; `None` for a store shared with
    /// other nodes' daemons (PostgreSQL).
    pub(super) sqlite: Option<Arc<SqliteStore>>,
    pub(super) store: Arc<dyn Store>,
    pub(super) jobs: Mutex<Option<SyncSender<Job>>>,
    pub(super) queued: AtomicUsize,
    /// Queued or running: never two movers for one transfer. The lock is
    /// held from the check to the recorded dispatch.
    pub(super) moving: Mutex<HashMap<TransferId, Moving>>,
    /// On a shared store: the dead daemons' transfers this node was found
    /// not to reach, said once in the log.
    pub(super) unreachable_said: Mutex<HashSet<TransferId>>,
    pub(super) shutdown: AtomicBool,
    pub(super) metrics: Metrics,
    pub(super) requests: Arc<Semaphore>,
    pub(super) watchers: Arc<Semaphore>,
    pub(super) requests_by_user: Arc<PerUser>,
    pub(super) watchers_by_user: Arc<PerUser>,
    pub(super) uid: u32,
    pub(super) entries_per_transfer_max: usize,
    pub(super) entries_per_user_max: usize,
    pub(super) transfers_per_user_max: usize,
    /// `ferry serve --bwlimit`: the rate all its transfers share.
    pub(super) shared_pace: Option<Arc<ferry::engine::throttle::SharedPace>>,
}

/// A mover: runs queued transfers one at a time, each on a fresh thread
/// with its caller's file credentials.
pub(super) fn mover(daemon: &Daemon, rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = rx.lock().expect("queue poisoned").recv();
        let Ok(Job {
            mut transfer,
            caller,
        }) = job
        else {
            return;
        };
        daemon.queued.fetch_sub(1, Ordering::Relaxed);
        let id = transfer.record().id;
        // Left `dispatched` at a shutdown: the next daemon resumes it. A
        // cancel while queued: nothing to run.
        if daemon.shutdown.load(Ordering::Relaxed)
            || transfer.interrupt_flag().load(Ordering::Relaxed)
        {
            daemon.moving.lock().expect("moving poisoned").remove(&id);
            continue;
        }
        let result = creds::as_caller(&caller, || transfer.run_dispatched());
        let mut moving = daemon.moving.lock().expect("moving poisoned");
        moving.remove(&id);
        let m = &daemon.metrics;
        match result {
            Ok(Ok(report)) => {
                m.bytes_moved
                    .fetch_add(report.bytes_copied, Ordering::Relaxed);
                m.files_moved
                    .fetch_add(report.files_committed, Ordering::Relaxed);
                m.file_errors
                    .fetch_add(report.failures.len() as u64, Ordering::Relaxed);
            }
            Ok(Err(e)) => fail(daemon, id, e.to_string()),
            Err(e) => fail(daemon, id, format!("cannot act as uid {}: {e}", caller.uid)),
        }
    }
}

/// A run that ended in an error rather than a report (its destination
/// directory cannot be listed, say): the daemon, its owner, lives on, so
/// unless a shutdown interrupted it the transfer is recorded `failed` with
/// the reason, for its user to see and resume; never left `running`.
fn fail(daemon: &Daemon, id: TransferId, message: String) {
    daemon.metrics.run_errors.fetch_add(1, Ordering::Relaxed);
    eprintln!("ferry: transfer {id}: {message}");
    if daemon.shutdown.load(Ordering::Relaxed) {
        return;
    }
    let recorded = daemon.store.apply(&[Change::Transfer {
        id,
        to: TransferState::Failed,
        owner: None,
        context: serde_json::json!({ "error": message }),
    }]);
    match recorded {
        // The engine recorded it failed already (a read-only store's last
        // record, through its reserve).
        Ok(()) | Err(ferry::store::StoreError::IllegalTransition { .. }) => {}
        Err(e) => eprintln!(
            "ferry: transfer {id}: cannot record it failed ({e}); the next daemon resumes it"
        ),
    }
}

impl Daemon {
    /// The run options of a transfer's last dispatch or resume, from its
    /// `transfer.dispatched` event.
    fn last_settings(&self, record: &ferry::model::TransferRecord) -> RunSettings {
        ferry::RunSettings::recorded(self.store.as_ref(), record.id)
            .ok()
            .flatten()
            .map_or_else(RunSettings::default, RunSettings::recorded)
    }

    /// Start-up: every daemon transfer that was dispatched or running
    /// belonged to a daemon that is gone; re-attach each (compare-and-swap
    /// on the dead owner) and queue it. A transfer only created is
    /// re-attached too, so that its user can dispatch it.
    ///
    /// On a shared store, other daemons live: only transfers whose owner is
    /// dead (its lease ran out, or it ran on this host and is gone) and
    /// whose paths this node reaches are taken, and only this host's own
    /// created ones; one another daemon took first is left to it. Run again
    /// every lease, to take over from daemons that died since.
    pub(super) fn recover(&self) -> Result<(), ServeError> {
        let shared = self.sqlite.is_none();
        for record in self.store.transfers().map_err(ferry::Error::from)? {
            if record.kind != Kind::Daemon || self.shutdown.load(Ordering::Relaxed) {
                continue;
            }
            if shared && !self.may_take(&record) {
                continue;
            }
            match record.state {
                TransferState::Dispatched | TransferState::Running => {
                    let Some(mut caller) = record.caller.clone() else {
                        eprintln!(
                            "ferry: transfer {} (id {}) has no recorded caller; left alone",
                            record.name, record.id
                        );
                        continue;
                    };
                    // The groups its user has now, not those recorded at
                    // creation: a group lost since no longer opens files.
                    match creds::current_groups(caller.uid, caller.gid) {
                        Ok((gid, groups)) => (caller.gid, caller.groups) = (gid, groups),
                        Err(e) => {
                            eprintln!(
                                "ferry: transfer {} (id {}): cannot read the groups of uid {}: \
                                 {e}; left alone until the next start",
                                record.name, record.id, caller.uid
                            );
                            continue;
                        }
                    }
                    if shared && !reachable(self.store.as_ref(), &record, &caller) {
                        // Said once per transfer (the look comes back every
                        // lease); at most one id per transfer of the store.
                        let mut said = self.unreachable_said.lock().expect("said poisoned");
                        if said.insert(record.id) {
                            eprintln!(
                                "ferry: transfer {} (id {}) of a dead daemon on {}: its paths \
                                 are not reachable here; left to a daemon that reaches them",
                                record.name, record.id, record.owner.host
                            );
                        }
                        continue;
                    }
                    // Held from the check to the queueing, as a request's
                    // resume holds it: on a shared store this runs while
                    // requests are served.
                    let mut moving = self.moving.lock().expect("moving poisoned");
                    if moving.contains_key(&record.id) {
                        continue;
                    }
                    let mut transfer = Transfer::open(Arc::clone(&self.store), &record.name)?;
                    // As it was last dispatched (the options are in that
                    // event); defaults if the log was compacted since.
                    let settings = self.last_settings(&record);
                    settings.apply(&mut transfer);
                    transfer.share_pace(self.shared_pace.clone());
                    match transfer.resume(settings.threads.into()) {
                        // Another daemon took it over first: it is theirs.
                        Err(ferry::Error::OwnerAlive { .. }) if shared => continue,
                        taken => taken?,
                    }
                    eprintln!(
                        "ferry: resuming transfer {} (id {})",
                        record.name, record.id
                    );
                    self.enqueue(&mut moving, transfer, caller)
                        .map_err(|e| ServeError::Runtime(std::io::Error::other(e.message)))?;
                }
                TransferState::Created if record.owner != Owner::current() => {
                    if record.owner_liveness() == ferry::owner::Liveness::Alive {
                        return Err(ferry::Error::OwnerAlive {
                            name: record.name,
                            id: record.id,
                            host: record.owner.host,
                            pid: record.owner.pid,
                        }
                        .into());
                    }
                    self.store
                        .apply(&[Change::Reattach {
                            id: record.id,
                            from: record.owner.clone(),
                            owner: Owner::current(),
                        }])
                        .map_err(ferry::Error::from)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// On a shared store: whether this daemon may take `record` over. Not
    /// one it moves, nor one whose owner lives (another daemon, its lease
    /// fresh) or cannot be judged (no lease); a created one only from a
    /// daemon of this host (its user dispatches it here).
    fn may_take(&self, record: &TransferRecord) -> bool {
        if self
            .moving
            .lock()
            .expect("moving poisoned")
            .contains_key(&record.id)
        {
            return false;
        }
        let dead = record.owner_liveness() == ferry::owner::Liveness::Dead;
        match record.state {
            TransferState::Dispatched | TransferState::Running => dead,
            TransferState::Created => dead && record.owner.host == Owner::current().host,
            _ => false,
        }
    }

    /// Hands a transfer whose dispatch or resume is recorded to a mover,
    /// under the `moving` lock the caller took before recording it (so no
    /// second dispatch or resume slips in between). The caller checked the
    /// queue has room (or this is start-up).
    fn enqueue(
        &self,
        moving: &mut HashMap<TransferId, Moving>,
        transfer: Transfer,
        caller: Caller,
    ) -> Result<(), ApiError> {
        let id = transfer.record().id;
        moving.insert(
            id,
            Moving {
                interrupt: transfer.interrupt_flag(),
                progress: transfer.progress(),
            },
        );
        self.queued.fetch_add(1, Ordering::Relaxed);
        let jobs = self.jobs.lock().expect("jobs poisoned");
        let sent = jobs
            .as_ref()
            .ok_or_else(|| ApiError::busy("the daemon is shutting down"))?
            .try_send(Job { transfer, caller });
        if sent.is_err() {
            // Recorded but not queued: it stays dispatched for the next
            // daemon (or a resume), like after a crash.
            self.queued.fetch_sub(1, Ordering::Relaxed);
            moving.remove(&id);
            return Err(ApiError::busy(format!(
                "the daemon's queue is full ({QUEUE_MAX} transfers); transfer {id} stays \
                 dispatched and is resumed when the daemon restarts, or resume it later"
            )));
        }
        Ok(())
    }

    pub(super) fn begin_shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        // Movers stop at their next chunk, record nothing more than what is
        // durable, and the transfers stay `running` for the next daemon.
        for moving in self.moving.lock().expect("moving poisoned").values() {
            moving.interrupt.store(true, Ordering::Relaxed);
        }
        // Movers drain the queue (leaving those transfers dispatched) and end.
        self.jobs.lock().expect("jobs poisoned").take();
    }

    pub(super) fn visible(peer: &Peer, record: &TransferRecord) -> bool {
        peer.caller.uid == 0 || record.caller.as_ref().map(|c| c.uid) == Some(peer.caller.uid)
    }

    /// The transfer `name` if `peer` may see it. Another user's transfer is
    /// "not found", exactly as a missing one: its existence is not told.
    pub(super) fn find(&self, peer: &Peer, name: &str) -> Result<TransferRecord, ApiError> {
        match self.store.transfer_by_name(name)? {
            Some(record) if Daemon::visible(peer, &record) => Ok(record),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "transfer_not_found",
                format!(
                    "no transfer named {name} of uid {} in the daemon's store: `GET /v1/transfers` \
                     (`ferry status --daemon`) lists yours",
                    peer.caller.uid
                ),
            )),
        }
    }

    /// A transfer as the API shows it, with a page of its failures: those
    /// after entry `after`, at most `limit`. Its counts are the store's
    /// tallies: no entry is loaded but the page.
    pub(super) fn view(
        &self,
        record: &TransferRecord,
        reattached: bool,
        after: Option<u64>,
        limit: usize,
    ) -> Result<TransferView, ApiError> {
        let tally = self.store.entry_tally(record.id)?;
        let (warnings, error) = self.last_run(record);
        // The handler refused a cursor past the last index there can be.
        let after = after.map(|a| EntryIndex(u32::try_from(a).unwrap_or(u32::MAX)));
        // One more than asked says whether another page follows.
        let mut failed = self
            .store
            .failed_entries(record.id, after, limit.saturating_add(1))?;
        let failures_after = (failed.len() > limit)
            .then(|| {
                failed.truncate(limit);
                failed.last().map(|f| u64::from(f.index.0))
            })
            .flatten();
        Ok(TransferView {
            id: record.id.0,
            name: record.name.clone(),
            kind: record.kind.as_str().into(),
            state: record.state.as_str().into(),
            uid: record.caller.as_ref().map(|c| c.uid),
            files: tally.files,
            files_committed: tally.files_committed,
            files_failed: tally.files_failed,
            files_skipped: tally.files_skipped,
            bytes: tally.bytes,
            bytes_durable: tally.bytes_durable,
            failures: failed
                .into_iter()
                .map(|f| Failure {
                    path: f.dest.to_string_lossy().into_owned(),
                    error: f.error,
                })
                .collect(),
            failures_after,
            warnings,
            owner: Some(owner_view(record)),
            checksum: record.checksum.map(|a| a.as_str().to_owned()),
            error,
            reattached,
        })
    }

    /// The warnings of a finished transfer's last run and, when it failed
    /// as a whole, why: from its final event (the engine records at most
    /// a few warnings there).
    fn last_run(&self, record: &TransferRecord) -> (Vec<String>, Option<String>) {
        if !matches!(
            record.state,
            TransferState::Completed | TransferState::Failed
        ) {
            return (Vec::new(), None);
        }
        let filter = ferry::store::EventFilter {
            transfer: Some(record.id),
            kind: Some(format!("transfer.{}", record.state.as_str())),
            ..Default::default()
        };
        let last = self
            .store
            .events_since(0, &filter, usize::MAX >> 1)
            .ok()
            .and_then(|events| events.into_iter().last());
        let Some(last) = last else {
            return (Vec::new(), None);
        };
        let warnings = last.context["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .take(ferry::engine::WARNINGS_RECORDED_MAX)
            .collect();
        (warnings, last.context["error"].as_str().map(str::to_owned))
    }

    /// Dispatch or resume, under the `moving` lock: never two movers.
    pub(super) fn start(
        &self,
        peer: &Peer,
        name: &str,
        settings: &RunSettings,
        resume: bool,
    ) -> Result<TransferView, ApiError> {
        let record = self.find(peer, name)?;
        if record.kind != Kind::Daemon {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_a_daemon_transfer",
                format!(
                    "transfer {name} is a {} transfer: the process that made it moves it, not the \
                     daemon",
                    record.kind.as_str()
                ),
            ));
        }
        let recorded = record
            .caller
            .clone()
            .ok_or_else(|| ApiError::internal(format!("transfer {name} has no recorded caller")))?;
        let caller = acting_caller(peer, recorded);
        if self.shutdown.load(Ordering::Relaxed) {
            return Err(ApiError::busy("the daemon is shutting down"));
        }
        let mut moving = self.moving.lock().expect("moving poisoned");
        if moving.contains_key(&record.id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "nothing_to_do",
                format!("transfer {name} (id {}) is already moving", record.id),
            ));
        }
        if self.queued.load(Ordering::Relaxed) >= QUEUE_MAX {
            return Err(ApiError::busy(format!(
                "the daemon's queue is full ({QUEUE_MAX} transfers): try again later"
            )));
        }
        let mut transfer = Transfer::open(Arc::clone(&self.store), name)?;
        settings.apply(&mut transfer);
        transfer.share_pace(self.shared_pace.clone());
        if resume {
            transfer.resume(settings.threads.into())?;
        } else {
            transfer.dispatch(settings.threads.into())?;
        }
        let mut record = transfer.record().clone();
        record.state = TransferState::Dispatched;
        self.enqueue(&mut moving, transfer, caller)?;
        drop(moving);
        self.view(&record, false, None, LIST_FAILURES_MAX)
    }

    pub(super) fn gauges(&self) -> Result<Gauges, ApiError> {
        let mut counts: Vec<(&'static str, u64)> =
            TransferState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for t in self.store.transfers()? {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == t.state.as_str()) {
                c.1 += 1;
            }
        }
        let moving = self.moving.lock().expect("moving poisoned");
        let queued = self.queued.load(Ordering::Relaxed) as u64;
        Ok(Gauges {
            transfers_by_state: counts,
            read_only: self
                .sqlite
                .as_ref()
                .is_some_and(|s| s.read_only().is_some()),
            bytes_moving: moving
                .values()
                .map(|m| m.progress.bytes_copied.load(Ordering::Relaxed))
                .sum(),
            transfers_queued: queued,
            transfers_moving: (moving.len() as u64).saturating_sub(queued),
        })
    }
}

/// Whether this node reaches a transfer's paths, as its caller: the
/// source of its first entry (its first root) and the directory its
/// destination goes in. A daemon of a node that does not mount them leaves
/// the transfer to one that does. Reads the transfer's entries, as
/// `ferry status --files` does.
fn reachable(store: &dyn Store, record: &TransferRecord, caller: &Caller) -> bool {
    let Ok(entries) = store.entries(record.id) else {
        return false;
    };
    let Some(root) = entries.first() else {
        return true;
    };
    let (source, dest) = (root.source.clone(), root.dest.clone());
    creds::as_caller(caller, move || {
        let dir = dest.parent().unwrap_or(&dest);
        std::fs::symlink_metadata(&source).is_ok() && std::fs::metadata(dir).is_ok()
    })
    .unwrap_or(false)
}

fn owner_view(record: &TransferRecord) -> OwnerView {
    OwnerView {
        host: record.owner.host.clone(),
        pid: record.owner.pid,
        liveness: format!("{:?}", record.owner_liveness()).to_lowercase(),
    }
}
