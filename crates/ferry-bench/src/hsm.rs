//! `ferry-bench hsm`: the HSM request queue in the SQLite store. Enqueue
//! throughput (batched in one process, and one `ferry hsm enqueue` process
//! per request as an upcall does), lease + ack throughput with 1, 2 and 4
//! workers, and the case sites complain about: with 20,000 archives queued
//! and workers busy, how long a restore enqueued last waits before a worker
//! starts it — with restores first (the default policy) and in plain FIFO.
//!
//! With `--store postgres://…`: the same enqueue and lease + ack workload
//! on PostgreSQL and on SQLite, side by side in one table (fresh schemas
//! `ferry_bench_hsm_*`, dropped afterwards).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::store::{EventFilter, SqliteStore, Store};
use ferry_hsm::{Action, LeaseFilter, NewRequest, Policy, RequestId, RequestQueue, RequestState};

#[derive(clap::Args)]
pub struct HsmArgs {
    /// Scratch directory (fresh stores are made in it)
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Archives queued ahead of the restore
    #[arg(long, default_value_t = 20_000)]
    queued: usize,
    /// Requests per enqueue and lease + ack measurement
    #[arg(long, default_value_t = 2_000)]
    requests: usize,
    /// `ferry hsm enqueue` processes, one request each
    #[arg(long, default_value_t = 200)]
    processes: usize,
    /// Workers serving the queue during the restore measurement
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// A PostgreSQL server (`postgres://USER@HOST/DB`, no `schema=`): run
    /// the queue workload on it and on SQLite, side by side
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

const LEASE: Duration = Duration::from_secs(600);

fn fresh_store(dir: &Path, name: &str) -> (PathBuf, SqliteStore) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let store = SqliteStore::open(&path).unwrap();
    (path, store)
}

fn request(action: Action, i: usize) -> NewRequest {
    NewRequest {
        action,
        fsname: "bench".into(),
        archive_id: 1,
        flags: 0,
        data: Vec::new(),
        fid: format!("[0x200000400:0x{i:x}:0x0]"),
        path: None,
        priority_ms: 0,
    }
}

fn archives(from: usize, n: usize) -> Vec<NewRequest> {
    (from..from + n)
        .map(|i| request(Action::Archive, i))
        .collect()
}

fn rate(n: usize, elapsed: Duration) -> String {
    format!("{:>9.0} /s", n as f64 / elapsed.as_secs_f64())
}

pub fn run(args: HsmArgs) {
    if let Some(url) = args.store.clone() {
        return side_by_side(&args, &url);
    }
    let ferry = crate::ferry_binary(args.ferry.clone());
    println!("| hsm queue (SQLite, synchronous=FULL) | |");
    println!("|---|---:|");

    // Enqueue, batched: 1,000 requests per transaction.
    let (_, store) = fresh_store(&args.dir, "hsm-enqueue.db");
    let batch = archives(0, args.requests.max(1000));
    let started = Instant::now();
    for chunk in batch.chunks(1000) {
        store.enqueue(chunk).unwrap();
    }
    let batched = started.elapsed();
    println!(
        "| enqueue, 1,000 per transaction ({} requests) | {} |",
        batch.len(),
        rate(batch.len(), batched)
    );
    // Enqueue, one transaction each, in one process.
    let single = archives(batch.len(), args.requests);
    let started = Instant::now();
    for r in &single {
        store.enqueue(std::slice::from_ref(r)).unwrap();
    }
    println!(
        "| enqueue, 1 per transaction ({} requests) | {} |",
        single.len(),
        rate(single.len(), started.elapsed())
    );
    drop(store);

    // Enqueue, one `ferry hsm enqueue` process per request (the upcall).
    let (path, store) = fresh_store(&args.dir, "hsm-upcall.db");
    drop(store);
    let started = Instant::now();
    for i in 0..args.processes {
        let status = Command::new(&ferry)
            .arg("--store")
            .arg(&path)
            .args(["hsm", "enqueue", "archive", "bench", "1", "0", ""])
            .arg(format!("[0x200000401:0x{i:x}:0x0]"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
    let elapsed = started.elapsed();
    println!(
        "| enqueue, one `ferry hsm enqueue` process per request ({} processes) | {} ({:.2} ms each) |",
        args.processes,
        rate(args.processes, elapsed),
        elapsed.as_secs_f64() * 1000.0 / args.processes as f64
    );

    // Lease + ack, one request at a time per worker, each worker with its
    // own connection (as separate processes would have).
    for workers in [1, 2, 4] {
        let (path, store) = fresh_store(&args.dir, "hsm-lease.db");
        for chunk in archives(0, args.requests).chunks(1000) {
            store.enqueue(chunk).unwrap();
        }
        drop(store);
        let started = Instant::now();
        let done: usize = std::thread::scope(|s| {
            let threads: Vec<_> = (0..workers)
                .map(|w| {
                    let path = &path;
                    s.spawn(move || {
                        let store = SqliteStore::open(path).unwrap();
                        let name = format!("w{w}");
                        let mut done = 0;
                        loop {
                            let Some(lease) = store
                                .lease(&name, &LeaseFilter::default(), 1, LEASE)
                                .unwrap()
                                .pop()
                            else {
                                return done;
                            };
                            store.ack(&lease, None).unwrap();
                            done += 1;
                        }
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(done, args.requests);
        println!(
            "| lease + ack, {workers} worker{} ({} requests) | {} |",
            if workers == 1 { "" } else { "s" },
            done,
            rate(done, started.elapsed())
        );
    }

    // The restore behind 20,000 archives.
    for (label, policy) in [
        ("restores first (default policy)", Policy::DEFAULT),
        ("plain FIFO", Policy::DEFAULT.fifo()),
    ] {
        let (wait, ahead) = restore_wait(&args, policy);
        println!(
            "| restore enqueued behind {} archives, {} workers busy, {label}: wait until started | {:.1} ms ({ahead} archives started before it) |",
            args.queued,
            args.workers,
            wait.as_secs_f64() * 1000.0
        );
    }
}

/// Queues `args.queued` archives, starts the workers, enqueues one
/// restore, and returns the time from its enqueue to its `started` event
/// (both read from the store's clock) and how many archives were started
/// in between.
fn restore_wait(args: &HsmArgs, policy: Policy) -> (Duration, usize) {
    let (path, store) = fresh_store(&args.dir, "hsm-restore.db");
    store.set_policy(&policy).unwrap();
    for chunk in archives(0, args.queued).chunks(1000) {
        store.enqueue(chunk).unwrap();
    }
    let stop = AtomicBool::new(false);
    let restore: RequestId = std::thread::scope(|s| {
        for w in 0..args.workers {
            let (path, stop) = (&path, &stop);
            s.spawn(move || {
                let store = SqliteStore::open(path).unwrap();
                let name = format!("w{w}");
                while !stop.load(Ordering::SeqCst) {
                    let Some(lease) = store
                        .lease(&name, &LeaseFilter::default(), 1, LEASE)
                        .unwrap()
                        .pop()
                    else {
                        return;
                    };
                    store.ack(&lease, None).unwrap();
                }
            });
        }
        // The workers are busy: now the user asks for a file back.
        let id = store
            .enqueue(&[request(Action::Restore, usize::MAX)])
            .unwrap()[0]
            .id()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(3600);
        while store.request(id).unwrap().unwrap().state == RequestState::Waiting {
            assert!(Instant::now() < deadline, "the restore never started");
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::SeqCst);
        id
    });
    let filter = EventFilter {
        request: Some(restore),
        ..Default::default()
    };
    let events = store.events_since(0, &filter, 10).unwrap();
    let enqueued = events.iter().find(|e| e.name == "request.waiting").unwrap();
    let started = events.iter().find(|e| e.name == "request.started").unwrap();
    let ahead = store
        .events_since(
            enqueued.seq,
            &EventFilter {
                kind: Some("request.started".into()),
                ..Default::default()
            },
            usize::MAX >> 1,
        )
        .unwrap()
        .iter()
        .filter(|e| e.seq < started.seq)
        .count();
    (
        Duration::from_nanos((started.time_ns - enqueued.time_ns).max(0) as u64),
        ahead,
    )
}

/// Where a side-by-side measurement keeps its queue.
enum Backend<'a> {
    Sqlite(&'a Path),
    Postgres(&'a str),
}

impl Backend<'_> {
    fn label(&self) -> &'static str {
        match self {
            Backend::Sqlite(_) => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }

    fn schema(name: &str) -> String {
        format!("ferry_bench_hsm_{name}_{}", std::process::id())
    }

    fn pg_url(url: &str, name: &str) -> String {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}schema={}", Backend::schema(name))
    }

    /// The queue `name`, empty.
    fn fresh(&self, name: &str) -> Box<dyn RequestQueue> {
        match self {
            Backend::Sqlite(dir) => Box::new(fresh_store(dir, &format!("{name}.db")).1),
            Backend::Postgres(_) => {
                self.drop_schema(name);
                self.open(name)
            }
        }
    }

    /// Another handle on the queue `name` (its own connections).
    fn open(&self, name: &str) -> Box<dyn RequestQueue> {
        match self {
            Backend::Sqlite(dir) => {
                Box::new(SqliteStore::open(&dir.join(format!("{name}.db"))).unwrap())
            }
            Backend::Postgres(url) => Box::new(
                ferry_postgres::PgStore::open(&Backend::pg_url(url, name))
                    .unwrap_or_else(|e| panic!("{e}")),
            ),
        }
    }

    fn drop_schema(&self, name: &str) {
        if let Backend::Postgres(url) = self {
            let mut client = postgres::Client::connect(url, postgres::NoTls)
                .unwrap_or_else(|e| panic!("cannot reach {url}: {e}"));
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {} CASCADE",
                    Backend::schema(name)
                ))
                .unwrap();
        }
    }
}

/// The rates of one backend: enqueue batched, enqueue one per
/// transaction, lease + ack with 1, 2 and 4 workers.
fn queue_rates(args: &HsmArgs, backend: &Backend<'_>) -> Vec<String> {
    let mut rates = Vec::new();
    let store = backend.fresh("enqueue");
    let batch = archives(0, args.requests.max(1000));
    let started = Instant::now();
    for chunk in batch.chunks(1000) {
        store.enqueue(chunk).unwrap();
    }
    rates.push(rate(batch.len(), started.elapsed()));
    let single = archives(batch.len(), args.requests);
    let started = Instant::now();
    for r in &single {
        store.enqueue(std::slice::from_ref(r)).unwrap();
    }
    rates.push(rate(single.len(), started.elapsed()));
    drop(store);
    backend.drop_schema("enqueue");

    for workers in [1, 2, 4] {
        let store = backend.fresh("lease");
        for chunk in archives(0, args.requests).chunks(1000) {
            store.enqueue(chunk).unwrap();
        }
        // Opened before the clock starts: connecting is not leasing.
        let handles: Vec<Box<dyn RequestQueue>> =
            (0..workers).map(|_| backend.open("lease")).collect();
        let started = Instant::now();
        let done: usize = std::thread::scope(|s| {
            let threads: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(w, queue)| {
                    s.spawn(move || {
                        let name = format!("w{w}");
                        let mut done = 0;
                        while let Some(lease) = queue
                            .lease(&name, &LeaseFilter::default(), 1, LEASE)
                            .unwrap()
                            .pop()
                        {
                            queue.ack(&lease, None).unwrap();
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        rates.push(rate(done, started.elapsed()));
        assert_eq!(done, args.requests);
        assert_eq!(
            store.stats().unwrap().count(None, RequestState::Succeed),
            args.requests as u64
        );
        drop(handles);
        drop(store);
        backend.drop_schema("lease");
    }
    rates
}

/// `--store postgres://…`: one table, SQLite and PostgreSQL side by side.
fn side_by_side(args: &HsmArgs, url: &str) {
    assert!(
        ferry_postgres::is_postgres_url(url) && !url.contains("schema="),
        "--store takes a postgres:// URL without schema= (the bench makes its own)"
    );
    std::fs::create_dir_all(&args.dir).unwrap();
    let sqlite = queue_rates(args, &Backend::Sqlite(&args.dir));
    let pg = queue_rates(args, &Backend::Postgres(url));
    let n = args.requests;
    let rows = [
        format!("enqueue, 1,000 per transaction ({} requests)", n.max(1000)),
        format!("enqueue, 1 per transaction ({n} requests)"),
        format!("lease + ack, 1 worker ({n} requests)"),
        format!("lease + ack, 2 workers ({n} requests)"),
        format!("lease + ack, 4 workers ({n} requests)"),
    ];
    println!(
        "| hsm queue | {} | {} |",
        Backend::Sqlite(&args.dir).label(),
        Backend::Postgres(url).label()
    );
    println!("|---|---:|---:|");
    for ((row, a), b) in rows.iter().zip(&sqlite).zip(&pg) {
        println!("| {row} | {a} | {b} |");
    }
}
