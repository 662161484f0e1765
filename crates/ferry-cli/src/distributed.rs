//! `ferry cp --distributed` and `ferry worker`: one copy moved by workers on
//! many nodes through a PostgreSQL store (`ferry-distributed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use ferry::engine::Progress;
use ferry::events::{Watch, WatchItem};
use ferry::model::{Kind, NewTransfer, Preserve, TransferId, TransferRecord};
use ferry::store::{EventFilter, Store};
use ferry_postgres::PgStore;

use crate::cp::CpArgs;
use crate::exit::Exit;
use crate::status::StatusRow;
use crate::store::OpenedStore;

#[derive(Args)]
pub(crate) struct WorkerArgs {
    /// Work on this transfer only, and exit once it has ended [default:
    /// every distributed transfer of the store, until killed]
    #[arg(long, value_name = "NAME")]
    transfer: Option<String>,
    /// A lease lasts this long without a heartbeat (one every third of
    /// it): a worker that dies loses its items after this
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How long an unreachable store (PostgreSQL restarting) is waited
    /// for, trying again with a back-off, before the worker gives up
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    store_wait: Duration,
}

/// Refuses a `location` that is not a PostgreSQL URL for `what`.
pub(crate) fn require_postgres(location: &std::path::Path, what: &'static str) -> Result<(), Exit> {
    if location
        .to_str()
        .is_some_and(ferry_postgres::is_postgres_url)
    {
        return Ok(());
    }
    Err(Exit::from(ferry::Error::BadOption {
        option: what,
        why: format!(
            "needs a PostgreSQL store that every node reaches, and {} is a SQLite file: \
             give --store postgres://USER@HOST/DB",
            location.display()
        ),
    }))
}

/// The PostgreSQL store of a distributed command (`require_postgres`
/// refused every other before it was opened).
fn postgres(opened: &OpenedStore) -> &PgStore {
    match opened {
        OpenedStore::Postgres(store) => store,
        OpenedStore::Sqlite(_) => unreachable!("refused by require_postgres"),
    }
}

/// `cp --distributed`: records the transfer, its roots and first items;
/// workers do the rest. With `--wait`, waits for its end.
pub(crate) fn cp(opened: &OpenedStore, args: &CpArgs) -> Result<Exit, Exit> {
    let store = postgres(opened);
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let roots = ferry_distributed::roots(sources, dest)?;
    let preserve = if args.archive || args.preserve {
        Preserve::ALL
    } else {
        Preserve::NONE
    };
    let new = NewTransfer {
        replaces: None,
        name: args.name.clone(),
        kind: Kind::Distributed,
        owner: ferry_distributed::owner(),
        preserve,
        temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
        // Distributed copies record no checksums (yet).
        checksum: None,
        caller: None,
    };
    let record = ferry_distributed::create(store, &new, &roots).map_err(ferry::Error::from)?;
    if !args.run.quiet {
        eprintln!(
            "ferry: transfer {} (id {}) is dispatched to the workers of {} \
             (`ferry worker --store '{}'` on each node; `ferry watch`, `wait` and `status` \
             follow it)",
            record.name,
            record.id,
            store.location().display(),
            store.location().display()
        );
    }
    if args.wait {
        return wait_with_bar(store, &record, args.run.json || args.run.quiet);
    }
    Ok(Exit::Ok)
}

/// `cp --distributed --wait`: `ferry wait`, with a bar fed from the event
/// log (the workers' `item.done` events: files and bytes done).
fn wait_with_bar(store: &PgStore, record: &TransferRecord, plain: bool) -> Result<Exit, Exit> {
    let progress = Arc::new(Progress::default());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| feed(store, record.id, &progress, &stop));
        let waited = crate::output::with_progress(
            &progress,
            plain,
            || Ok(crate::watch::wait(store, &record.name)),
            |waited| waited.as_ref().ok().map(|_| progress.counts()),
        );
        stop.store(true, Ordering::Relaxed);
        waited?
    })
}

/// Adds what the transfer's events say to `progress` until `stop`.
fn feed(store: &PgStore, id: TransferId, progress: &Progress, stop: &AtomicBool) {
    let filter = EventFilter {
        transfer: Some(id),
        ..Default::default()
    };
    let Ok(mut watch) = Watch::new(store, 0, filter) else {
        return;
    };
    let add = |counter: &AtomicU64, value: &serde_json::Value| {
        counter.fetch_add(value.as_u64().unwrap_or(0), Ordering::Relaxed);
    };
    while !stop.load(Ordering::Relaxed) {
        // A bounded wait, to see `stop` when the transfer has ended.
        match watch.next_timeout(Some(Duration::from_millis(200))) {
            Ok(Some(WatchItem::Event(event))) => match event.name.as_str() {
                "transfer.added" => {
                    add(&progress.files_total, &event.context["entries"]);
                    add(&progress.bytes_total, &event.context["bytes"]);
                }
                ferry_postgres::items::EVENT_ITEM_DONE => {
                    // Entries count directories, the bar counts files: a
                    // directory's item is done once.
                    if event.context["kind"] == "dir" {
                        progress.files_total.fetch_sub(1, Ordering::Relaxed);
                    }
                    add(&progress.files_done, &event.context["files"]);
                    add(&progress.bytes_copied, &event.context["bytes"]);
                }
                _ => {}
            },
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// `ferry worker`: leases and does work items until killed or (with
/// `--transfer`) the transfer has ended.
pub(crate) fn worker(opened: &OpenedStore, args: WorkerArgs) -> Result<Exit, Exit> {
    let store = postgres(opened);
    let only = match &args.transfer {
        Some(name) => Some(
            store
                .transfer_by_name(name)
                .map_err(ferry::Error::from)?
                .ok_or_else(|| ferry::Error::TransferNotFound {
                    name: name.clone(),
                    store: store.location(),
                })?
                .id,
        ),
        None => None,
    };
    let host = ferry::model::Owner::current().host;
    let mut worker = ferry_distributed::Worker::new(host, only);
    worker.lease = args.lease;
    worker.store_wait = args.store_wait;
    let report = worker
        .run(store, &AtomicBool::new(false))
        .map_err(ferry::Error::from)?;
    eprintln!(
        "ferry worker {}: {} items done, {} lost to other workers, {} store errors waited out",
        worker.holder, report.items_done, report.items_lost, report.store_errors
    );
    Ok(Exit::Ok)
}

/// Adds per-node progress to the rows of distributed transfers.
pub(crate) fn add_nodes(opened: &OpenedStore, rows: &mut [StatusRow]) -> Result<(), Exit> {
    let OpenedStore::Postgres(store) = opened else {
        return Ok(());
    };
    for row in rows {
        let (id, kind) = row.id_and_kind();
        if kind == Kind::Distributed.as_str() {
            let nodes = store
                .host_progress(ferry::model::TransferId(id))
                .map_err(ferry::Error::from)?;
            row.set_nodes(nodes);
        }
    }
    Ok(())
}
