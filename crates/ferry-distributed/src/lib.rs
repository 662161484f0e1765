//! Distributed copies: one transfer moved by `ferry worker`s on any number
//! of nodes, which lease its work items from a shared PostgreSQL store.
//!
//! # Brief overview
//!
//! [`create`] (`ferry cp --distributed`) records a transfer of kind
//! `distributed` with its roots and first items (`ferry_postgres::items`);
//! [`Worker::run`] (`ferry worker`) leases one item at a time (the next
//! one in the transaction that completes the last), keeps its
//! lease alive from a heartbeat thread, does the item (`work`: list up to
//! 32 sibling directories, copy and commit a batch of small files, copy one
//! range of a large file, commit a large file, finish the transfer) and
//! completes it — every store write fenced by the item's attempt, so a
//! worker whose lease was taken over never writes again. Files go through
//! the engine's commit protocol (`ferry::engine::commit`, `copy`, `temp`):
//! temporaries, `fsync`, `copied`, rename, metadata, `committed`.
//!
//! A worker that dies loses its leases when they expire; the next lease of
//! an item continues from what the store holds: entries recorded `copied`
//! or `committed` are not copied again, a listing is one transaction (all
//! or nothing), a range is copied again whole (at most
//! [`ferry_postgres::items::RANGE_ITEM_BYTES`]).

mod work;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use ferry::model::{NewEntry, NewTransfer, Owner, TransferId, TransferRecord};
use ferry::store::{Store, StoreError};
use ferry_postgres::PgStore;
use ferry_postgres::items::ItemLease;

/// The owner recorded for a distributed transfer: no one process owns it.
/// Workers renew its lease while they hold its items or wait for the
/// ones left, so `ferry wait` knows the transfer is abandoned only once
/// every worker is gone.
pub fn owner() -> Owner {
    Owner {
        host: "ferry-workers".into(),
        boot_id: "-".into(),
        pid: 0,
        start_time: 0,
    }
}

/// Creates a distributed transfer from `new` (its owner replaced by
/// [`owner`]) with the entries of its sources: see [`roots`].
pub fn create(
    store: &PgStore,
    new: &NewTransfer,
    roots: &[NewEntry],
) -> Result<TransferRecord, StoreError> {
    let new = NewTransfer {
        replaces: None,
        owner: owner(),
        ..new.clone()
    };
    store.create_distributed(&new, roots)
}

/// The entries of `sources` by `cp`'s rule: into `dest` when it is an
/// existing directory (each under its base name), else `dest` itself (then
/// one source only). Directories are listed later, by the workers.
pub fn roots(
    sources: &[std::path::PathBuf],
    dest: &std::path::Path,
) -> ferry::Result<Vec<NewEntry>> {
    let into = dest.is_dir();
    if !into && sources.len() != 1 {
        return Err(ferry::Error::BadDestination {
            path: dest.to_path_buf(),
            why: "it is not a directory, and there are several sources: create it first".into(),
        });
    }
    let mut roots = Vec::with_capacity(sources.len());
    for source in sources {
        let source = std::path::absolute(source).map_err(|e| ferry::Error::io(source, e))?;
        let meta = std::fs::symlink_metadata(&source).map_err(|e| ferry::Error::io(&source, e))?;
        let dest = std::path::absolute(dest).map_err(|e| ferry::Error::io(dest, e))?;
        let dest = match (into, source.file_name()) {
            (true, Some(name)) => dest.join(name),
            _ => dest,
        };
        roots.push(ferry::engine::plan::entry(&source, &meta, dest)?);
    }
    Ok(roots)
}

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct Worker {
    /// Names this worker in leases: `HOST:PID`.
    pub holder: String,
    /// The node, for per-node progress.
    pub host: String,
    /// A lease lasts this long without a heartbeat (every third of it).
    pub lease: Duration,
    /// Work only on this transfer, and stop once it has ended.
    pub only: Option<TransferId>,
    /// A store that cannot be reached is tried again with a back-off
    /// doubling up to [`BACKOFF_MAX`], for at most this long in all.
    pub store_wait: Duration,
}

/// Waits between tries of an unreachable store grow up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The first wait after a store error.
const BACKOFF_MIN: Duration = Duration::from_millis(50);

/// What a worker did, for its exit line.
#[derive(Clone, Debug, Default)]
pub struct WorkerReport {
    pub items_done: u64,
    /// Items this worker lost: its lease was taken over (it was too slow or
    /// stopped), so another worker does them.
    pub items_lost: u64,
    pub store_errors: u64,
}

impl Worker {
    pub fn new(host: String, only: Option<TransferId>) -> Worker {
        Worker {
            holder: format!("{host}:{}", std::process::id()),
            host,
            lease: Duration::from_secs(10),
            only,
            store_wait: Duration::from_secs(600),
        }
    }

    /// Leases and does items until `stop` is set or (with `only`) the
    /// transfer has ended.
    pub fn run(&self, store: &PgStore, stop: &AtomicBool) -> Result<WorkerReport, StoreError> {
        let mut report = WorkerReport::default();
        let mut failing_since: Option<Instant> = None;
        let mut backoff = BACKOFF_MIN;
        let mut reader = None;
        let mut between = Between::default();
        // An item leased with the last one's completion is done even when
        // asked to stop: left alone, it would wait a lease for another worker.
        while between.next.is_some() || !stop.load(Ordering::Relaxed) {
            match self.step(store, &mut reader, &mut between, &mut report) {
                Ok(more) => {
                    failing_since = None;
                    backoff = BACKOFF_MIN;
                    if !more {
                        break;
                    }
                }
                Err(e) if is_transient(&e) => {
                    // PostgreSQL restarting, or the network: pause, then go on.
                    report.store_errors += 1;
                    reader = None;
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > self.store_wait {
                        return Err(e);
                    }
                    eprintln!("ferry worker: {e}; trying again in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// One lease, or one wait for work. `Ok(false)`: nothing more to do.
    fn step(
        &self,
        store: &PgStore,
        reader: &mut Option<Box<dyn ferry::store::EventReader>>,
        between: &mut Between,
        report: &mut WorkerReport,
    ) -> Result<bool, StoreError> {
        if reader.is_none() {
            *reader = Some(store.event_reader()?);
        }
        let reader = reader.as_mut().expect("just made");
        let token = reader.change_token()?;
        let lease_ms = self.lease.as_millis() as u64;
        let leased = match between.next.take() {
            Some(next) => Some(next),
            None => store.lease_item(&self.holder, &self.host, lease_ms, self.only)?,
        };
        match leased {
            Some(lease) => {
                match self.with_heartbeat(store, &lease, between) {
                    Ok(next) => {
                        report.items_done += 1;
                        between.next = next;
                    }
                    Err(StoreError::StaleItem { .. }) => report.items_lost += 1,
                    // Cancelled while this item ran: its writes are refused,
                    // and no item of it is leased any more.
                    Err(StoreError::Cancelled { .. }) => report.items_lost += 1,
                    Err(e) => return Err(e),
                }
                Ok(true)
            }
            None => {
                // The transfer this worker works on (or last did) is not
                // abandoned while it waits: its items left are leased by
                // others, or held by a dead worker until that lease runs
                // out, and then this worker takes them.
                if let Some(id) = self.only.or(between.renewed.map(|(id, _)| id)) {
                    let ended = match store.transfer(id)? {
                        Some(t) => t.state.is_terminal(),
                        None => true,
                    };
                    if ended && self.only.is_some() {
                        return Ok(false);
                    }
                    if ended {
                        between.renewed = None;
                    } else {
                        self.renew_transfer_lease(store, id, between);
                    }
                }
                // Woken by any write (a new item, a completion); at most a
                // third of a lease, to find expired leases of dead workers.
                reader.wait_changed(token, self.lease / 3)?;
                Ok(true)
            }
        }
    }

    /// Does `lease`'s item while a thread renews the lease every third of
    /// it; a lost lease cancels the copy at its next chunk.
    fn with_heartbeat(
        &self,
        store: &PgStore,
        lease: &ItemLease,
        between: &mut Between,
    ) -> Result<Option<ItemLease>, StoreError> {
        let transfer = match between.transfer.take() {
            Some(known) if known.id == lease.transfer => known,
            _ => store
                .transfer(lease.transfer)?
                .ok_or_else(|| StoreError::NoSuchTransfer {
                    path: store.location(),
                    id: lease.transfer,
                })?,
        };
        // The heartbeat renews the transfer's lease while an item runs;
        // between short items, this.
        self.renew_transfer_lease(store, lease.transfer, between);
        let result = self.run_item(store, lease, &transfer);
        between.transfer = Some(transfer);
        result
    }

    /// Renews transfer `id`'s lease unless this worker did within a third
    /// of a lease: a write on the transfer's row, which every worker
    /// shares, so not once per item.
    fn renew_transfer_lease(&self, store: &PgStore, id: TransferId, between: &mut Between) {
        let renewed_lately = matches!(between.renewed,
            Some((last, at)) if last == id && at.elapsed() < self.lease / 3);
        if !renewed_lately {
            let _ = store.renew_lease(id, &owner(), self.lease.as_millis() as u64);
            between.renewed = Some((id, Instant::now()));
        }
    }

    fn run_item(
        &self,
        store: &PgStore,
        lease: &ItemLease,
        transfer: &TransferRecord,
    ) -> Result<Option<ItemLease>, StoreError> {
        let lost = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let lease_ms = self.lease.as_millis() as u64;
        std::thread::scope(|scope| {
            let lost_flag = Arc::clone(&lost);
            scope.spawn(move || {
                let owner = owner();
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    done_rx.recv_timeout(self.lease / 3)
                {
                    match store.heartbeat_item(lease, lease_ms) {
                        Ok(true) => {
                            let _ = store.renew_lease(lease.transfer, &owner, lease_ms);
                        }
                        Ok(false) => {
                            lost_flag.store(true, Ordering::Relaxed);
                            return;
                        }
                        // The store is away: keep trying; the lease may
                        // survive the outage.
                        Err(_) => {}
                    }
                }
            });
            let result = work::Item {
                store,
                lease,
                transfer,
                next: Some(lease_ms),
                cancel: &lost,
            }
            .run();
            drop(done_tx);
            result
        })
    }
}

/// What a worker keeps from one item to the next, to spare the store a read
/// and a write per item.
#[derive(Default)]
struct Between {
    /// The transfer of the last item: what an item uses of it (sources,
    /// `--preserve`, the temporaries' suffix) never changes.
    transfer: Option<TransferRecord>,
    /// When this worker last renewed that transfer's lease.
    renewed: Option<(TransferId, Instant)>,
    /// The item leased in the transaction that completed the last one
    /// (of the same transfer): one commit per item instead of two.
    next: Option<ItemLease>,
}

/// Errors a worker waits out: the server restarting or unreachable (the
/// store says so of a broken connection, a shutdown, a refused connect).
fn is_transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Unreachable { .. })
}
