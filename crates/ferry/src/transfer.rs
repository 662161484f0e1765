//! The operations on a transfer, as the library, the CLI, the C API and
//! (later) the daemon expose them: create, add, dispatch, resume, test, wait,
//! cancel, free.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crate::engine::plan::plan;
use crate::engine::skip::SkipRule;
use crate::engine::{self, ChunkHook, Progress, RunOptions, RunReport};
use crate::error::{Error, Result};
use crate::heartbeat::Heartbeat;
use crate::model::{
    Caller, ChecksumAlgo, DEFAULT_TEMP_SUFFIX, EntryIndex, Kind, LinkLeader, NewEntry, NewTransfer,
    Owner, Preserve, TransferId, TransferRecord, TransferState,
};
use crate::owner::Liveness;
use crate::store::{Change, Store, StoreError};
use crate::verify::Verify;

mod settings;
pub use settings::RunSettings;

/// How a new transfer is made: [`Transfer::create_with`].
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// `None`: the store names it `cp-<id>`.
    pub name: Option<String>,
    pub kind: Kind,
    pub preserve: Preserve,
    /// The hash every copied file gets; `None` for none. Default: XXH3-128.
    pub checksum: Option<ChecksumAlgo>,
    /// The daemon's client this transfer is made for (see [`Caller`]),
    /// recorded with it in the same transaction.
    pub caller: Option<Caller>,
}

impl Default for TransferOptions {
    fn default() -> TransferOptions {
        TransferOptions {
            name: None,
            kind: Kind::Threads,
            preserve: Preserve::NONE,
            checksum: Some(ChecksumAlgo::Xxh3),
            caller: None,
        }
    }
}

/// A transfer this process works with.
pub struct Transfer {
    store: Arc<dyn Store>,
    record: TransferRecord,
    reattached: bool,
    /// The dead owner this process took the transfer over from.
    previous_owner: Option<Owner>,
    cancel: Arc<AtomicBool>,
    progress: Arc<Progress>,
    clean_orphans: bool,
    after_chunk: Option<ChunkHook>,
    /// A node-wide pace its runs keep to (the daemon's `--bwlimit`).
    shared_pace: Option<Arc<crate::engine::throttle::SharedPace>>,
    check_space: bool,
    take_over_unknown_owner: bool,
    skip: SkipRule,
    verify: Verify,
    umask: Option<u32>,
    update: bool,
    no_clobber: bool,
    delete: bool,
    filter: Vec<String>,
    bwlimit: Option<u64>,
    mover: Mover,
    /// Renews this process's lease while it owns the transfer.
    heartbeat: Option<Heartbeat>,
    /// Set when the last run's mover thread ends.
    ended: Arc<RunEnded>,
    /// Planned under a provisional name: at dispatch, in the same
    /// transaction, the finished transfer (`.0`) gives up the name (`.1`)
    /// and this one takes it ([`Transfer::create_planned`]).
    takes_name: Option<(TransferId, String)>,
}

/// Says when a mover thread has ended, to a thread that cannot join it (a
/// signal handler that interrupted the thread joining it, in libaxl).
#[derive(Debug, Default)]
pub struct RunEnded {
    ended: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl RunEnded {
    fn ended() -> RunEnded {
        let ended = RunEnded::default();
        ended.set();
        ended
    }

    fn set(&self) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// Waits at most `timeout` for the mover to end; whether it has. A
    /// transfer never dispatched in a thread has nothing to wait for.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let (ended, _) = self
            .changed
            .wait_timeout_while(ended, timeout, |ended| !*ended)
            .unwrap_or_else(|p| p.into_inner());
        *ended
    }
}

/// Cancels one transfer from any thread, also while another thread is
/// inside [`Transfer::dispatch`] of a `sync` transfer or [`Transfer::wait`].
#[derive(Clone)]
pub struct Canceller {
    store: Arc<dyn Store>,
    id: TransferId,
    flag: Arc<AtomicBool>,
}

impl Canceller {
    /// See [`Transfer::cancel`].
    pub fn cancel(&self) -> Result<()> {
        self.cancel_with(serde_json::json!({"by_pid": std::process::id()}))
    }

    /// A cancel because the owner was told to stop (SIGINT, SIGTERM): the
    /// event says so, with the signal's name, and a resume continues from
    /// what is durable.
    pub fn interrupt(&self, signal: &str) -> Result<()> {
        self.cancel_with(serde_json::json!({
            "by_pid": std::process::id(),
            "interrupted": signal,
        }))
    }

    fn cancel_with(&self, context: serde_json::Value) -> Result<()> {
        self.store.apply(&[Change::Transfer {
            id: self.id,
            to: TransferState::Cancelled,
            owner: None,
            context,
        }])?;
        self.flag.store(true, Ordering::Relaxed);
        Ok(())
    }
}

enum Mover {
    Idle,
    /// A `daemon` transfer whose dispatch or resume is recorded; the
    /// daemon's mover runs it with [`Transfer::run_dispatched`].
    Recorded(RunOptions),
    Thread(JoinHandle<Result<RunReport>>),
    Finished(Result<RunReport>),
}

/// Where the store is when no `--store` is given: `$FERRY_STORE`, else
/// `$XDG_STATE_HOME/ferry/ferry.db`, else `~/.local/state/ferry/ferry.db`.
pub fn default_store_path() -> PathBuf {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(store) = var("FERRY_STORE") {
        return store;
    }
    let state = var("XDG_STATE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("ferry/ferry.db")
}

/// Worker threads when the caller does not say: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Transfer {
    /// Creates a transfer, with `entries` (from [`plan`], or none: [`Transfer::add`]
    /// adds more) in the same transaction. A `name` already used by a
    /// transfer whose owner is dead re-attaches that transfer (same id)
    /// instead, so the caller can resume or cancel it, and `entries` are not
    /// added; a live owner's name is an error.
    pub fn create(
        store: Arc<dyn Store>,
        name: Option<&str>,
        kind: Kind,
        preserve: Preserve,
        entries: &[NewEntry],
    ) -> Result<Transfer> {
        let options = TransferOptions {
            name: name.map(str::to_owned),
            kind,
            preserve,
            ..TransferOptions::default()
        };
        Transfer::create_with(store, &options, entries)
    }

    /// [`Transfer::create`] with every option.
    pub fn create_with(
        store: Arc<dyn Store>,
        options: &TransferOptions,
        entries: &[NewEntry],
    ) -> Result<Transfer> {
        match Transfer::name_holder(&store, options)? {
            NameHolder::Unfinished(existing) => Transfer::reattach(store, existing),
            NameHolder::Finished(replaces) => {
                Transfer::insert(store, options, Some(replaces), entries)
            }
            NameHolder::Nobody => Transfer::insert(store, options, None, entries),
        }
    }

    /// Records one batch of a plan: the transfer with it when it is the
    /// first (`transfer` is then set), else added to it.
    fn record_plan_batch(
        store: &Arc<dyn Store>,
        planning: &TransferOptions,
        transfer: &mut Option<Transfer>,
        batch: &[NewEntry],
    ) -> Result<()> {
        crate::failpoint::hit(crate::failpoint::CommitStep::PlanBatch)
            .map_err(|e| Error::io(store.location(), e))?;
        match transfer {
            None => *transfer = Some(Transfer::insert(Arc::clone(store), planning, None, batch)?),
            // Another process created the name between our look-up and
            // insert: the plan is its own.
            Some(other) if other.reattached => {}
            Some(transfer) => store.add_entries(transfer.record.id, batch)?,
        }
        Ok(())
    }

    /// [`Transfer::create_with`], with its entries planned into the store a
    /// batch at a time: `plan` hands each batch to the function it is
    /// given, and memory holds one batch, not the tree.
    ///
    /// The transfer is recorded with the plan's first batch, so that it
    /// names its sources from the start, and entries are added until the
    /// plan ends, while it is `created`; it is dispatched only after. So a
    /// transfer found `created` with a dead owner may hold part of a plan:
    /// it is not continued but cancelled and freed
    /// ([`Transfer::abandon_undispatched`]), and the copy is planned anew.
    /// A plan that fails leaves its transfer cancelled and freed too.
    ///
    /// A name held by a finished copy stays that copy's until the new
    /// transfer is dispatched: it is planned under a provisional name
    /// ([`planning_name`]) and takes the name, freeing the finished one, in
    /// the transaction that dispatches it. A kill before that leaves the
    /// finished copy where the same command finds it.
    pub fn create_planned(
        store: Arc<dyn Store>,
        options: &TransferOptions,
        plan: &mut dyn FnMut(PlanSink<'_>) -> Result<()>,
    ) -> Result<Transfer> {
        let replaces = match Transfer::name_holder(&store, options)? {
            NameHolder::Unfinished(existing) if existing.state != TransferState::Created => {
                return Transfer::reattach(store, existing);
            }
            NameHolder::Unfinished(existing) => {
                Transfer::abandon_undispatched(&store, existing)?;
                None
            }
            NameHolder::Finished(replaces) => Some(replaces),
            NameHolder::Nobody => None,
        };
        let mut planning = options.clone();
        if replaces.is_some()
            && let Some(name) = options.name.as_deref()
        {
            abandon_stale_plans(&store, name)?;
            planning.name = Some(planning_name(name));
        }
        // The walk and the store's writes overlap: a writer thread records
        // each batch while the walk lists the next (at most one batch
        // waits between them, so three are held at most).
        let (planned, transfer) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<NewEntry>>(1);
            let (store, planning) = (&store, &planning);
            let writer = crate::signals::spawn_blocked(|| {
                scope.spawn(move || {
                    let mut transfer: Option<Transfer> = None;
                    for batch in rx {
                        if let Err(e) =
                            Transfer::record_plan_batch(store, planning, &mut transfer, &batch)
                        {
                            return (Err(e), transfer);
                        }
                    }
                    (Ok(()), transfer)
                })
            });
            let mut added = 0usize;
            let listed = plan(&mut |batch| {
                // The plan counts a leader's position from its first entry,
                // which is this transfer's first: one in an earlier batch
                // is added.
                for entry in batch.iter_mut() {
                    if let Some(LinkLeader::InBatch(position)) = entry.link_leader {
                        entry.link_leader = Some(match position.checked_sub(added) {
                            Some(in_batch) => LinkLeader::InBatch(in_batch),
                            None => LinkLeader::Added(EntryIndex(position as u32)),
                        });
                    }
                }
                added += batch.len();
                // Refused only once the writer stopped, on an error it reports.
                tx.send(std::mem::take(batch)).map_err(|_| {
                    Error::io(
                        store.location(),
                        std::io::Error::other("the plan's writer stopped"),
                    )
                })
            });
            drop(tx);
            let (written, transfer) = writer.join().expect("the plan's writer panicked");
            (written.and(listed), transfer)
        });
        let mut transfer = match (planned, transfer) {
            (Ok(()), Some(transfer)) => transfer,
            (Ok(()), None) => Transfer::insert(Arc::clone(&store), &planning, None, &[])?,
            (Err(e), Some(transfer)) if !transfer.reattached => {
                let id = transfer.record.id;
                // `ferry cancel` meanwhile ([`Transfer::cancel_plan`]): the
                // next batch was refused.
                let cancelled = match &e {
                    Error::Store(refused) => planned_was_cancelled(store.as_ref(), id, refused)?,
                    _ => false,
                };
                // Nothing was copied: the part planned is of no use to anyone.
                let _ = abandon(store.as_ref(), id, "its plan failed");
                if cancelled {
                    return Err(Error::CancelledWhilePlanned {
                        name: options.name.clone().unwrap_or(transfer.record.name),
                        id,
                    });
                }
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        if transfer.reattached {
            return Ok(transfer);
        }
        if let (Some(replaces), Some(name)) = (replaces, options.name.as_deref()) {
            transfer.takes_name = Some((replaces, name.to_owned()));
        }
        Ok(transfer)
    }

    /// `ferry cancel` of a transfer never dispatched: its plan may be
    /// partial, so it is cancelled and freed in one transaction, whether
    /// its planner lives or not, and never continued. A live planner's
    /// next batch, or its dispatch, is refused
    /// ([`Error::CancelledWhilePlanned`]).
    pub fn cancel_plan(&self) -> Result<()> {
        debug_assert_eq!(self.record.state, TransferState::Created);
        abandon(
            self.store.as_ref(),
            self.record.id,
            "cancelled while it was planned",
        )
    }

    /// Takes over `record`, a transfer never dispatched whose owner died
    /// (else [`Error::OwnerAlive`]), and ends it: cancelled, its name
    /// freed. Its entries may be only part of what it was to copy, and
    /// nothing of it was copied.
    pub fn abandon_undispatched(store: &Arc<dyn Store>, record: TransferRecord) -> Result<()> {
        debug_assert_eq!(record.state, TransferState::Created);
        let transfer = Transfer::take_over(Arc::clone(store), record)?;
        abandon(
            store.as_ref(),
            transfer.record.id,
            "never dispatched: its owner died while planning it",
        )
    }

    /// Who holds the name `options` gives, if anyone. Nothing is written.
    fn name_holder(store: &Arc<dyn Store>, options: &TransferOptions) -> Result<NameHolder> {
        // A bad FERRY_OWNER_LEASE is said before anything is written.
        crate::owner::lease()?;
        let Some(name) = options.name.as_deref() else {
            return Ok(NameHolder::Nobody);
        };
        crate::model::check_name(name).map_err(|why| Error::InvalidName {
            name: name.to_owned(),
            why,
        })?;
        let Some(existing) = store.transfer_by_name(name)? else {
            return Ok(NameHolder::Nobody);
        };
        // Cancelled before any entry was added (a refused request):
        // nothing to continue, and the name is free again.
        let never_filled = existing.state == TransferState::Cancelled
            && store.entry_tally(existing.id)?.entries == 0;
        // A job script with a fixed name runs again: the finished
        // transfer gives up its name and stays readable by id.
        Ok(
            if never_filled
                || matches!(
                    existing.state,
                    TransferState::Completed | TransferState::Finalized
                )
            {
                NameHolder::Finished(existing.id)
            } else {
                NameHolder::Unfinished(existing)
            },
        )
    }

    /// Writes the new transfer with `entries`, freeing `replaces` (see
    /// [`NewTransfer::replaces`]), and holds it.
    fn insert(
        store: Arc<dyn Store>,
        options: &TransferOptions,
        replaces: Option<TransferId>,
        entries: &[NewEntry],
    ) -> Result<Transfer> {
        let name = options.name.as_deref();
        let record = store.create_transfer(
            &NewTransfer {
                name: name.map(str::to_owned),
                kind: options.kind,
                owner: Owner::current(),
                preserve: options.preserve,
                temp_suffix: DEFAULT_TEMP_SUFFIX.into(),
                checksum: options.checksum,
                caller: options.caller.clone(),
                replaces,
            },
            entries,
        );
        let record = match record {
            Ok(record) => record,
            // Another process created the name between our look-up and insert.
            Err(StoreError::DuplicateName { name, .. }) => {
                let existing =
                    store
                        .transfer_by_name(&name)?
                        .ok_or_else(|| Error::TransferNotFound {
                            name: name.clone(),
                            store: store.location(),
                        })?;
                return Transfer::reattach(store, existing);
            }
            Err(e) => return Err(e.into()),
        };
        let mut transfer = Transfer::with(store, record, false);
        transfer.hold()?;
        Ok(transfer)
    }

    /// Opens an existing transfer by name, without taking it over.
    pub fn open(store: Arc<dyn Store>, name: &str) -> Result<Transfer> {
        let record = store
            .transfer_by_name(name)?
            .ok_or_else(|| Error::TransferNotFound {
                name: name.to_owned(),
                store: store.location(),
            })?;
        Ok(Transfer::with(store, record, false))
    }

    fn with(store: Arc<dyn Store>, record: TransferRecord, reattached: bool) -> Transfer {
        Transfer {
            store,
            record,
            reattached,
            previous_owner: None,
            cancel: Arc::new(AtomicBool::new(false)),
            progress: Arc::new(Progress::default()),
            clean_orphans: false,
            after_chunk: None,
            shared_pace: None,
            check_space: false,
            take_over_unknown_owner: false,
            skip: SkipRule::Never,
            verify: Verify::None,
            umask: None,
            update: false,
            no_clobber: false,
            delete: false,
            filter: Vec::new(),
            bwlimit: None,
            mover: Mover::Idle,
            heartbeat: None,
            ended: Arc::new(RunEnded::ended()),
            takes_name: None,
        }
    }

    /// Ends when the current (or last) mover thread ends.
    pub fn run_ended(&self) -> Arc<RunEnded> {
        Arc::clone(&self.ended)
    }

    /// Starts the heartbeat once this process owns the transfer.
    fn hold(&mut self) -> Result<()> {
        let lease = crate::owner::lease()?;
        if self.heartbeat.is_none() && self.record.owner == Owner::current() {
            self.heartbeat = Some(Heartbeat::start(
                Arc::clone(&self.store),
                self.record.id,
                self.record.owner.clone(),
                lease,
            ));
        }
        Ok(())
    }

    fn reattach(store: Arc<dyn Store>, existing: TransferRecord) -> Result<Transfer> {
        if existing.state.is_terminal() {
            return Err(Error::NameInUse {
                name: existing.name,
                id: existing.id,
                state: existing.state,
                store: store.location(),
            });
        }
        let mut transfer = Transfer::with(store, existing, true);
        transfer.take_ownership()?;
        transfer.hold()?;
        Ok(transfer)
    }

    /// Takes `record` over for a re-run of the same copy
    /// ([`crate::rerun`]): this process becomes its owner if the recorded
    /// one is gone ([`Error::OwnerAlive`] otherwise), whatever its state.
    pub(crate) fn take_over(store: Arc<dyn Store>, record: TransferRecord) -> Result<Transfer> {
        let mut transfer = Transfer::with(store, record, false);
        transfer.take_ownership()?;
        Ok(transfer)
    }

    /// Makes this process the owner, if the recorded one is gone.
    fn take_ownership(&mut self) -> Result<()> {
        match self.record.owner_liveness() {
            Liveness::Me => Ok(()),
            Liveness::Unknown if self.take_over_unknown_owner => self.reattach_from_dead(),
            Liveness::Alive | Liveness::Unknown => Err(Error::OwnerAlive {
                name: self.record.name.clone(),
                id: self.record.id,
                host: self.record.owner.host.clone(),
                pid: self.record.owner.pid,
            }),
            Liveness::Dead => self.reattach_from_dead(),
        }
    }

    /// Takes over from a recorded owner known (or, with
    /// [`Transfer::set_take_over_unknown_owner`], declared) gone: a
    /// compare-and-swap on that owner in the store.
    fn reattach_from_dead(&mut self) -> Result<()> {
        let owner = Owner::current();
        let taken = self.store.apply(&[Change::Reattach {
            id: self.record.id,
            from: self.record.owner.clone(),
            owner: owner.clone(),
        }]);
        // Another process re-attached it first: it is theirs.
        taken.map_err(|e| self.owned_elsewhere(e))?;
        self.previous_owner = Some(std::mem::replace(&mut self.record.owner, owner));
        self.reattached = true;
        Ok(())
    }

    /// Whether an owner on another host (whose liveness cannot be checked
    /// from here) counts as dead when this transfer is resumed: the
    /// caller's `--force`. Never guessed otherwise.
    pub fn set_take_over_unknown_owner(&mut self, force: bool) {
        self.take_over_unknown_owner = force;
    }

    /// The store's "another owner" is, to the caller, a live owner.
    fn owned_elsewhere(&self, e: StoreError) -> Error {
        match e {
            StoreError::OwnerChanged { host, pid, .. } => Error::OwnerAlive {
                name: self.record.name.clone(),
                id: self.record.id,
                host,
                pid,
            },
            e => e.into(),
        }
    }

    /// Changes the transfer's bandwidth limit (`None`: none), recorded as a
    /// `transfer.limited` event: its mover takes it within
    /// [`crate::engine::throttle::POLL`], and a resume starts with it.
    pub fn limit(&self, bytes_per_second: Option<u64>) -> Result<()> {
        self.store.apply(&[Change::Limit {
            id: self.record.id,
            bytes_per_second,
        }])?;
        Ok(())
    }

    /// The store this transfer lives in.
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    pub fn record(&self) -> &TransferRecord {
        &self.record
    }

    /// True when [`Transfer::create`] found this transfer under its name,
    /// left behind by a dead owner.
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// The dead owner this process took the transfer over from, if it took
    /// one over (the record names the new owner, this process).
    pub fn previous_owner(&self) -> Option<&Owner> {
        self.previous_owner.as_ref()
    }

    /// Whether the next dispatch or resume removes temporaries at its
    /// destinations that no transfer of this store wrote (they are only
    /// reported otherwise).
    pub fn set_clean_orphans(&mut self, clean: bool) {
        self.clean_orphans = clean;
    }

    /// A hook the workers of the next dispatch or resume call after each
    /// chunk (see [`ChunkHook`]).
    /// Its runs keep to `pace` as well as to their own limit: the
    /// daemon's node-wide rate, shared by all its transfers.
    pub fn share_pace(&mut self, pace: Option<Arc<crate::engine::throttle::SharedPace>>) {
        self.shared_pace = pace;
    }

    pub fn set_after_chunk(&mut self, hook: Option<ChunkHook>) {
        self.after_chunk = hook;
    }

    /// Whether the next dispatch or resume first checks that the
    /// destinations' file systems have room for what is left to copy
    /// (refusing with [`crate::Error::NotEnoughSpace`]) and reserves the
    /// space of large files with fallocate.
    pub fn set_check_space(&mut self, check: bool) {
        self.check_space = check;
    }

    /// Setting this flag stops the mover at its next chunk without recording
    /// anything: the transfer stays `running`, with the progress already
    /// recorded, for a later resume (the daemon's shutdown).
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }

    /// Which destinations the next dispatch or resume takes as already
    /// there (recorded `skipped`, no data copied).
    pub fn set_skip(&mut self, skip: SkipRule) {
        self.skip = skip;
    }

    /// How much the next dispatch or resume reads back what it wrote.
    pub fn set_verify(&mut self, verify: Verify) {
        self.verify = verify;
    }

    /// The run options of this transfer's last dispatch or resume, from
    /// its newest `transfer.dispatched` event; `None` when it was never
    /// dispatched (or that event was compacted away, an error).
    pub fn recorded_settings(&self) -> Result<Option<RunSettings>> {
        RunSettings::recorded(self.store.as_ref(), self.record.id)
    }

    /// Sets every run option of the next dispatch or resume at once.
    pub fn apply_settings(&mut self, settings: &RunSettings) {
        self.clean_orphans = settings.clean_orphans;
        self.check_space = settings.check_space;
        self.skip = settings.skip;
        self.verify = settings.verify;
        self.update = settings.update;
        self.no_clobber = settings.no_clobber;
        self.delete = settings.delete;
        self.filter = settings.filter.clone();
        self.bwlimit = settings.bwlimit;
        if settings.umask.is_some() {
            self.umask = settings.umask;
        }
    }

    /// The umask the next dispatch or resume computes modes with (the
    /// caller's, for a daemon that is not its caller's process); recorded
    /// with the dispatch, so that a take-over after a crash uses it too.
    /// `None`: this process's.
    pub fn set_umask(&mut self, umask: Option<u32>) {
        self.umask = umask.map(|u| u & 0o777);
    }

    pub fn progress(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }

    /// Adds `sources` to be copied to `dest`, with `cp`'s destination rules.
    /// Returns how many entries were added.
    pub fn add(&self, sources: &[PathBuf], dest: &Path, recursive: bool) -> Result<usize> {
        let entries = plan(sources, dest, recursive)?;
        self.store.add_entries(self.record.id, &entries)?;
        Ok(entries.len())
    }

    /// Starts moving the data: in this thread for `sync` (returns when done),
    /// in a pool of `workers` threads for `threads`; for `daemon` it only
    /// records the dispatch (see [`Transfer::run_dispatched`]).
    pub fn dispatch(&mut self, workers: usize) -> Result<()> {
        self.start(TransferState::Created, workers, "dispatch")
    }

    /// Continues a transfer from what the store says is durable. Taking over
    /// a transfer whose owner died is allowed; one whose owner lives is not.
    pub fn resume(&mut self, workers: usize) -> Result<()> {
        self.take_ownership()?;
        if let Some(fresh) = self.store.transfer(self.record.id)? {
            self.record = fresh;
        }
        self.start(self.record.state, workers, "resume")
    }

    fn start(
        &mut self,
        expected: TransferState,
        workers: usize,
        action: &'static str,
    ) -> Result<()> {
        let state = self.record.state;
        // A transfer that never got an entry (its sources were refused
        // before any was added) has nothing to resume: "completed" with no
        // file would tell a script its copy is in place.
        let empty = action == "resume" && self.store.entry_tally(self.record.id)?.entries == 0;
        if empty
            || state != expected
            || matches!(state, TransferState::Completed | TransferState::Finalized)
        {
            return Err(Error::NothingToDo {
                name: self.record.name.clone(),
                id: self.record.id,
                state,
                action,
            });
        }
        // Checked before anything is recorded: rules that were recorded
        // were parsed once already, so only a damaged record fails here.
        let delete = if self.delete {
            Some(
                crate::engine::filter::Filter::from_texts(&self.filter).map_err(|why| {
                    Error::BadOption {
                        option: "--exclude/--include",
                        why,
                    }
                })?,
            )
        } else {
            None
        };
        if action == "dispatch" {
            crate::failpoint::hit(crate::failpoint::CommitStep::Dispatch)
                .map_err(|e| Error::io(self.store.location(), e))?;
        }
        // A plan made under a provisional name takes its own as it is
        // dispatched: until then the finished copy keeps it.
        let naming = self.takes_name.take().filter(|_| action == "dispatch");
        let mut changes = Vec::with_capacity(3);
        if let Some((replaces, name)) = &naming {
            changes.push(Change::Free { id: *replaces });
            changes.push(Change::Named {
                id: self.record.id,
                name: name.clone(),
            });
        }
        changes.push(Change::Transfer {
            id: self.record.id,
            to: TransferState::Dispatched,
            owner: Some(Owner::current()),
            // The run options too: a process that takes over after a crash
            // (the daemon's next start) runs it as it was asked to.
            context: serde_json::json!({
                "action": action,
                "workers": workers,
                "skip": self.skip.as_str(),
                "verify": self.verify,
                "check_space": self.check_space,
                "clean_orphans": self.clean_orphans,
                "umask": self.umask,
                "update": self.update,
                "no_clobber": self.no_clobber,
                "delete": self.delete,
                "filter": self.filter,
                "bwlimit": self.bwlimit,
            }),
        });
        let mut dispatched = self.store.apply(&changes);
        if let (Err(StoreError::NoSuchTransfer { id: gone, .. }), Some((replaces, _))) =
            (&dispatched, &naming)
            && gone == replaces
        {
            // Another process freed the finished copy first.
            dispatched = self.store.apply(&changes[1..]);
        }
        if let (Err(StoreError::DuplicateName { .. }), Some(_)) = (&dispatched, &naming) {
            // Another process took the name meanwhile: this plan is of no
            // use, and its events say why.
            let _ = abandon(
                self.store.as_ref(),
                self.record.id,
                "another transfer took its name",
            );
        }
        if action == "dispatch"
            && let Err(e) = &dispatched
            && planned_was_cancelled(self.store.as_ref(), self.record.id, e)?
        {
            return Err(Error::CancelledWhilePlanned {
                name: naming.map_or_else(|| self.record.name.clone(), |(_, name)| name),
                id: self.record.id,
            });
        }
        dispatched.map_err(|e| self.owned_elsewhere(e))?;
        if let Some((_, name)) = naming {
            self.record.name = name;
        }
        self.record.owner = Owner::current();
        self.hold()?;
        self.record.state = TransferState::Dispatched;
        self.cancel.store(false, Ordering::Relaxed);
        let options = RunOptions {
            // `sync` blocks its caller and keeps to one copy at a time.
            workers: if self.record.kind == Kind::Sync {
                1
            } else {
                workers
            },
            clean_orphans: self.clean_orphans,
            check_space: self.check_space,
            skip: self.skip,
            verify: self.verify,
            update: self.update,
            no_clobber: self.no_clobber,
            delete,
            bwlimit: self.bwlimit,
            shared_pace: self.shared_pace.clone(),
            cancel: Arc::clone(&self.cancel),
            progress: Arc::clone(&self.progress),
            after_chunk: self.after_chunk.clone(),
            umask: self.umask,
        };
        let id = self.record.id;
        self.mover = match self.record.kind {
            Kind::Sync => Mover::Finished(engine::run(self.store.as_ref(), id, &options)),
            Kind::Threads => {
                let store = Arc::clone(&self.store);
                let ended = Arc::new(RunEnded::default());
                self.ended = Arc::clone(&ended);
                Mover::Thread(crate::signals::spawn_blocked(|| {
                    std::thread::spawn(move || {
                        let result = engine::run(store.as_ref(), id, &options);
                        ended.set();
                        result
                    })
                }))
            }
            Kind::Daemon | Kind::Distributed => Mover::Recorded(options),
        };
        Ok(())
    }

    /// Moves a `daemon` transfer whose dispatch or resume was recorded, in
    /// this thread (the daemon's mover; the worker threads it starts inherit
    /// this thread's file credentials). Returns when it is done.
    pub fn run_dispatched(&mut self) -> Result<RunReport> {
        let Mover::Recorded(options) = std::mem::replace(&mut self.mover, Mover::Idle) else {
            return Err(Error::NotDispatched {
                id: self.record.id,
                action: "running it",
            });
        };
        let result = engine::run(self.store.as_ref(), self.record.id, &options);
        if let Ok(report) = &result {
            self.record.state = report.state;
        }
        result
    }

    /// Would [`Transfer::wait`] return at once?
    pub fn test(&self) -> Result<bool> {
        match &self.mover {
            // Waited for already: a wait returns at once (with an error).
            Mover::Idle if self.record.state.is_terminal() => Ok(true),
            Mover::Idle => Err(Error::NotDispatched {
                id: self.record.id,
                action: "testing it",
            }),
            Mover::Thread(handle) => Ok(handle.is_finished()),
            Mover::Recorded(_) => Ok(false),
            Mover::Finished(_) => Ok(true),
        }
    }

    /// Blocks until the mover is done, and says how it went.
    pub fn wait(&mut self) -> Result<RunReport> {
        let result = match std::mem::replace(&mut self.mover, Mover::Idle) {
            Mover::Idle | Mover::Recorded(_) => {
                return Err(Error::NotDispatched {
                    id: self.record.id,
                    action: "waiting for it",
                });
            }
            Mover::Thread(handle) => match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Mover::Finished(result) => result,
        };
        if let Ok(report) = &result {
            self.record.state = report.state;
        }
        result
    }

    /// Cancels the transfer: recorded at once; the mover (here, or in the
    /// owner's process) stops at its next chunk or store write. Temporaries
    /// are kept, so that a resume continues where it stopped.
    pub fn cancel(&self) -> Result<()> {
        self.canceller().cancel()
    }

    /// Cancels this transfer from another thread; see [`Canceller`].
    pub fn canceller(&self) -> Canceller {
        Canceller {
            store: Arc::clone(&self.store),
            id: self.record.id,
            flag: Arc::clone(&self.cancel),
        }
    }

    /// Releases the transfer: it leaves the store's list and its name may be
    /// used again (its rows and events stay). A transfer still moving is
    /// cancelled first and its mover joined, so nothing writes after this
    /// returns. Temporaries stay, as after a cancel.
    pub fn free(mut self) -> Result<()> {
        // Moving under another handle or process: not this handle's to free.
        if matches!(self.mover, Mover::Idle)
            && let Some(now) = self.store.transfer(self.record.id)?
            && matches!(
                now.state,
                TransferState::Dispatched | TransferState::Running
            )
        {
            match now.owner_liveness() {
                Liveness::Dead => match self.cancel() {
                    Err(Error::Store(StoreError::IllegalTransition { .. })) | Ok(()) => {}
                    Err(e) => return Err(e),
                },
                _ => {
                    return Err(Error::OwnerAlive {
                        name: now.name,
                        id: now.id,
                        host: now.owner.host,
                        pid: now.owner.pid,
                    });
                }
            }
        }
        if let Mover::Thread(handle) = &self.mover
            && !handle.is_finished()
        {
            match self.cancel() {
                // It finished in between: nothing to cancel.
                Err(Error::Store(StoreError::IllegalTransition { .. })) => {}
                other => other?,
            }
        }
        if !matches!(self.mover, Mover::Idle) {
            // How the run ended does not matter to a free; the store has it.
            let _ = self.wait();
        }
        self.store.apply(&[Change::Free { id: self.record.id }])?;
        Ok(())
    }
}

/// Where [`Transfer::create_planned`]'s plan hands its batches.
pub type PlanSink<'a> = &'a mut dyn FnMut(&mut Vec<NewEntry>) -> Result<()>;

/// A plan made whole already (a file list, a re-run's comparison), handed
/// to `sink` as a streamed plan would be: a batch of
/// [`crate::engine::plan::PLAN_BATCH`] at a time.
pub fn plan_in_batches(entries: &[NewEntry], sink: PlanSink<'_>) -> Result<()> {
    entries
        .chunks(crate::engine::plan::PLAN_BATCH)
        .try_for_each(|chunk| sink(&mut chunk.to_vec()))
}

/// Cancels `id`, a transfer never dispatched, and frees its name, in one
/// transaction; the event says `why`.
/// Whether `error`, met while `id` was planned or dispatched, is the
/// store refusing a transfer that `ferry cancel` ended meanwhile (it is
/// cancelled, or freed).
fn planned_was_cancelled(store: &dyn Store, id: TransferId, error: &StoreError) -> Result<bool> {
    Ok(matches!(
        error,
        StoreError::IllegalTransition { .. } | StoreError::NoSuchTransfer { .. }
    ) && store
        .transfer(id)?
        .is_none_or(|t| t.state == TransferState::Cancelled))
}

/// Who holds the name a new transfer asks for.
enum NameHolder {
    /// No live transfer.
    Nobody,
    /// A finished transfer, or a cancelled one never filled: the new one
    /// takes the name over, and it is freed in the same transaction.
    Finished(TransferId),
    /// One not over: re-attached (its owner dead) or refused (alive).
    Unfinished(TransferRecord),
}

/// The name a transfer is planned under while `name` stays a finished
/// copy's ([`Transfer::create_planned`]): ` NAME (planned by pid P)`,
/// which `status` shows as it is, and which no user can give (it starts
/// with a space).
pub fn planning_name(name: &str) -> String {
    format!("{}{})", planning_prefix(name), std::process::id())
}

fn planning_prefix(name: &str) -> String {
    format!(" {name} (planned by pid ")
}

/// The transfers being planned to take `name` ([`planning_name`]), live
/// planner or dead.
pub fn plans_of(store: &dyn Store, name: &str) -> Result<Vec<TransferRecord>> {
    let prefix = planning_prefix(name);
    Ok(store
        .transfers()?
        .into_iter()
        .filter(|t| t.name.starts_with(&prefix) && t.state == TransferState::Created)
        .collect())
}

/// Ends the plans of `name` whose planners died ([`planning_name`]): they
/// were never dispatched. A live planner's is left to it. Every plan of
/// `name` does it first; so does a re-run that finds nothing changed.
pub fn abandon_stale_plans(store: &Arc<dyn Store>, name: &str) -> Result<()> {
    for record in plans_of(store.as_ref(), name)? {
        match Transfer::abandon_undispatched(store, record) {
            Ok(()) | Err(Error::OwnerAlive { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn abandon(store: &dyn Store, id: TransferId, why: &str) -> Result<()> {
    let cancelled = store.apply(&[
        Change::Transfer {
            id,
            to: TransferState::Cancelled,
            owner: None,
            context: serde_json::json!({
                "by_pid": std::process::id(),
                "abandoned": why,
            }),
        },
        Change::Free { id },
    ]);
    match cancelled {
        // `ferry cancel` while it was planned (the plan's next batch was
        // refused): freed too, or a re-run would continue a partial plan.
        Err(StoreError::IllegalTransition { .. })
            if store
                .transfer(id)?
                .is_some_and(|t| t.state == TransferState::Cancelled) =>
        {
            Ok(store.apply(&[Change::Free { id }])?)
        }
        cancelled => Ok(cancelled?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// `cp -a SRC DST`'s plan.
    fn plan_archive(src: &Path, dst: &Path) -> Vec<NewEntry> {
        crate::engine::plan::plan_with(
            std::slice::from_ref(&src.to_path_buf()),
            dst,
            true,
            crate::engine::plan::Fidelity::ARCHIVE,
        )
        .unwrap()
    }

    /// A run holds at most two pages of entries whatever the size of the
    /// transfer (the memory bound of issue #20, counted: one page ends while
    /// the next copies), and many pages make the same tree as one: a hard
    /// link whose leader is on the first page and a symlink on a middle one
    /// included.
    #[test]
    fn a_run_holds_two_pages_of_entries_at_most() {
        use std::os::unix::fs::MetadataExt;
        const PAGE: usize = 16;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for d in 0..6 {
            std::fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
            for f in 0..30 {
                let body = format!("{d}/{f}").repeat(f);
                std::fs::write(src.join(format!("d{d}/f{f:02}")), body).unwrap();
            }
        }
        std::os::unix::fs::symlink("../d0/f01", src.join("d2/link")).unwrap();
        std::fs::hard_link(src.join("d0/f03"), src.join("d5/hard")).unwrap();
        let entries = plan_archive(&src, &dst);
        assert!(entries.len() > 10 * PAGE, "{}", entries.len());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        crate::engine::paging::PAGE_ENTRIES.set(Some(PAGE));
        crate::engine::paging::HELD_MAX.set(0);
        let mut transfer =
            Transfer::create(store, Some("paged"), Kind::Sync, Preserve::ALL, &entries).unwrap();
        drop(entries);
        transfer.dispatch(2).unwrap();
        let report = transfer.wait().unwrap();
        crate::engine::paging::PAGE_ENTRIES.set(None);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.state, TransferState::Completed);
        assert_eq!(report.files_total, 6 * 30 + 2);
        assert_eq!(report.files_committed, report.files_total);
        let held = crate::engine::paging::HELD_MAX.get();
        assert!(
            held > PAGE && held <= 2 * PAGE,
            "held {held} entries at once"
        );
        for d in 0..6 {
            for f in 0..30 {
                let name = format!("d{d}/f{f:02}");
                assert_eq!(
                    std::fs::read(src.join(&name)).unwrap(),
                    std::fs::read(dst.join(&name)).unwrap(),
                    "{name}"
                );
            }
        }
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dst.join("d5/hard")), ino(&dst.join("d0/f03")));
        assert_eq!(
            std::fs::read_link(dst.join("d2/link")).unwrap(),
            Path::new("../d0/f01")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode();
        assert_eq!(mode(&dst.join("d4")), mode(&src.join("d4")));
    }

    /// A store that holds back the `copied` record of the hard links'
    /// leaders that end a page, until an entry of a later page is recorded
    /// (which must not happen before that page is over) or a while passed.
    struct HoldsPageEnds {
        inner: Arc<dyn Store>,
        page: u32,
        leaders: std::sync::Mutex<std::collections::HashSet<EntryIndex>>,
        /// The last page an entry was recorded from.
        page_recorded: std::sync::Mutex<u32>,
        recorded: std::sync::Condvar,
    }

    impl Store for HoldsPageEnds {
        crate::store_reads_through_inner!();

        fn apply(&self, changes: &[Change]) -> std::result::Result<(), StoreError> {
            let indexes = changes.iter().filter_map(|c| match c {
                Change::Entry { index, to, .. } => Some((*index, *to)),
                _ => None,
            });
            let leaders = self.leaders.lock().unwrap().clone();
            let mut held = None;
            for (index, to) in indexes {
                if to == crate::model::FileState::Copied && leaders.contains(&index) {
                    held = Some(index.0 / self.page);
                    continue;
                }
                let mut last = self.page_recorded.lock().unwrap();
                *last = (*last).max(index.0 / self.page);
                self.recorded.notify_all();
            }
            if let Some(page) = held {
                // Bounded: with the page order kept, nothing comes.
                let last = self.page_recorded.lock().unwrap();
                let _ = self
                    .recorded
                    .wait_timeout_while(last, std::time::Duration::from_millis(300), |l| *l <= page)
                    .unwrap();
            }
            self.inner.apply(changes)
        }
    }

    /// A page whose hard link's leader ends the page before starts only
    /// once that page is over: the link is made from where the store says
    /// the leader's data is. The leader's `copied` record is held back
    /// until a later page records anything; a page started early would
    /// find its leader still `pending` and fail the link.
    #[test]
    fn a_link_whose_leader_ends_the_page_before_waits_for_that_page() {
        // Odd: a leader and its link (planned one after the other) then
        // straddle every other page end.
        const PAGE: usize = 7;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("d")).unwrap();
        for f in 0..24 {
            std::fs::write(src.join(format!("d/f{f:02}")), format!("{f}")).unwrap();
            std::fs::hard_link(
                src.join(format!("d/f{f:02}")),
                src.join(format!("d/f{f:02}l")),
            )
            .unwrap();
        }
        let entries = plan_archive(&src, &dst);
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let page = PAGE as u32;
        let held = Arc::new(HoldsPageEnds {
            inner: Arc::clone(&sqlite),
            page,
            leaders: Default::default(),
            page_recorded: Default::default(),
            recorded: Default::default(),
        });
        let mut transfer = Transfer::create(
            Arc::clone(&held) as Arc<dyn Store>,
            Some("links"),
            Kind::Sync,
            Preserve::ALL,
            &entries,
        )
        .unwrap();
        let recorded = sqlite.entries(transfer.record().id).unwrap();
        let leaders: std::collections::HashSet<EntryIndex> = recorded
            .iter()
            .filter_map(|e| e.link_leader.filter(|l| l.0 / page + 1 == e.index.0 / page))
            .collect();
        assert!(
            leaders.len() >= 3,
            "{leaders:?}: too few links start a page"
        );
        *held.leaders.lock().unwrap() = leaders;
        crate::engine::paging::PAGE_ENTRIES.set(Some(PAGE));
        transfer.dispatch(2).unwrap();
        let report = transfer.wait();
        crate::engine::paging::PAGE_ENTRIES.set(None);
        let report = report.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.state, TransferState::Completed);
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        for f in 0..24 {
            let (leader, link) = (format!("d/f{f:02}"), format!("d/f{f:02}l"));
            assert_eq!(ino(&dst.join(&link)), ino(&dst.join(&leader)), "{link}");
        }
    }

    /// A second handle (`ferry_transfer_open`) cannot free a transfer that
    /// is moving under the first: the name stays taken, the mover goes on.
    #[test]
    fn a_moving_transfer_cannot_be_freed_through_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let src = dir.path().join("src");
        std::fs::write(&src, vec![5u8; 1 << 20]).unwrap();
        let mut moving = Transfer::create(
            Arc::clone(&store),
            Some("n"),
            Kind::Threads,
            Preserve::NONE,
            &[],
        )
        .unwrap();
        moving.add(&[src], &dir.path().join("dst"), false).unwrap();
        // The mover stops after its first chunk until it is cancelled.
        let (paused_tx, paused) = std::sync::mpsc::sync_channel(1);
        moving.set_after_chunk(Some(Arc::new(move |_bytes: u64, cancel: &AtomicBool| {
            let _ = paused_tx.try_send(());
            while !cancel.load(Ordering::Relaxed) {
                std::thread::park_timeout(std::time::Duration::from_millis(5));
            }
        })));
        moving.dispatch(2).unwrap();
        paused.recv().unwrap();

        let other = Transfer::open(Arc::clone(&store), "n").unwrap();
        let refused = other.free();
        assert!(
            matches!(refused, Err(Error::OwnerAlive { .. })),
            "{refused:?}"
        );
        // The name still names the moving transfer: no second one is made.
        let again = Transfer::create(
            Arc::clone(&store),
            Some("n"),
            Kind::Threads,
            Preserve::NONE,
            &[],
        )
        .unwrap();
        assert_eq!(again.record().id, moving.record().id);

        moving.cancel().unwrap();
        let report = moving.wait().unwrap();
        assert_eq!(report.state, TransferState::Cancelled);
        moving.free().unwrap();
    }
}
