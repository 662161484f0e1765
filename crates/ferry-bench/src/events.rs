//! `ferry-bench events`: how fast the event log takes events, and how soon
//! a watcher sees them — in this process (woken by the writer) and in
//! another process (`ferry watch`, which notices through `data_version`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry::events::{Watch, WatchItem};
use ferry::model::EntryIndex;
use ferry::model::{EntryKind, NewEntry, NewTransfer, Owner, SourceMeta};
use ferry::store::{Change, EventFilter, SqliteStore, Store};
use ferry::{Kind, Preserve, TransferId, TransferState};

#[derive(clap::Args)]
pub struct EventArgs {
    /// Scratch directory (a fresh store is made in it)
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Events per throughput measurement
    #[arg(long, default_value_t = 5000)]
    events: u64,
    /// Events per latency measurement
    #[arg(long, default_value_t = 1000)]
    latency_events: u64,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
}

/// A store with one running transfer whose single (huge) entry takes
/// progress events: each `Change::Progress` appends exactly one event.
struct Log {
    store: Arc<SqliteStore>,
    path: PathBuf,
    id: TransferId,
    progress: u64,
}

impl Log {
    fn new(dir: &std::path::Path) -> Log {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("events-bench.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let entry = NewEntry {
            link_leader: None,
            shared_inode: None,
            inode_changed_ns: 0,
            xattrs: Default::default(),
            kind: EntryKind::File,
            source: "/bench/source".into(),
            dest: "/bench/dest".into(),
            meta: SourceMeta {
                size: i64::MAX as u64,
                mode: 0o644,
                uid: 0,
                gid: 0,
                atime_ns: 0,
                mtime_ns: 0,
            },
            link_target: None,
        };
        let new = NewTransfer {
            replaces: None,
            checksum: None,
            name: Some("bench".into()),
            kind: Kind::Threads,
            caller: None,
            owner: Owner::current(),
            preserve: Preserve::NONE,
            temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
        };
        let id = store.create_transfer(&new, &[entry]).unwrap().id;
        for to in [TransferState::Dispatched, TransferState::Running] {
            store
                .apply(&[Change::Transfer {
                    id,
                    to,
                    owner: None,
                    context: serde_json::Value::Null,
                }])
                .unwrap();
        }
        Log {
            store,
            path,
            id,
            progress: 0,
        }
    }

    fn changes(&mut self, n: u64) -> Vec<Change> {
        (0..n)
            .map(|_| {
                self.progress += 1;
                Change::Progress {
                    id: self.id,
                    index: EntryIndex(0),
                    progress_bytes_durable: self.progress,
                    piece_digests: Vec::new(),
                }
            })
            .collect()
    }

    /// Events per second, `batch` events per transaction.
    fn throughput(&mut self, events: u64, batch: u64) -> f64 {
        let started = Instant::now();
        let mut done = 0;
        while done < events {
            let n = batch.min(events - done);
            let changes = self.changes(n);
            self.store.apply(&changes).unwrap();
            done += n;
        }
        events as f64 / started.elapsed().as_secs_f64()
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Latency from an event's time (taken in its transaction) to its
/// delivery, in µs, sorted.
fn latencies_in_process(log: &mut Log, n: u64) -> Vec<f64> {
    let store = Arc::clone(&log.store);
    let since = store.last_seq().unwrap();
    let watcher = std::thread::spawn(move || {
        let mut watch = Watch::new(store.as_ref(), since, EventFilter::default()).unwrap();
        let mut out = Vec::new();
        while (out.len() as u64) < n {
            if let Some(WatchItem::Event(e)) = watch.next_timeout(None).unwrap() {
                out.push((now_ns() - e.time_ns) as f64 / 1e3);
            }
        }
        out
    });
    append_paced(log, n);
    let mut out = watcher.join().unwrap();
    out.sort_by(f64::total_cmp);
    out
}

/// One event per transaction, about one per millisecond: a watcher that
/// keeps up, which is what latency means.
fn append_paced(log: &mut Log, n: u64) {
    for _ in 0..n {
        let changes = log.changes(1);
        log.store.apply(&changes).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn latencies_other_process(log: &mut Log, ferry: &std::path::Path, n: u64) -> Vec<f64> {
    let mut child = Command::new(ferry)
        .arg("--store")
        .arg(&log.path)
        .args(["watch", "--from-now", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The bookmark says the watcher is live.
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("bookmark"), "{first}");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        for line in lines {
            let received = now_ns();
            let line = line.unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let time = humantime::parse_rfc3339(value["time"].as_str().unwrap()).unwrap();
            let sent = time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
            out.push((received - sent) as f64 / 1e3);
            if out.len() as u64 == n {
                break;
            }
        }
        out
    });
    append_paced(log, n);
    let mut out = reader.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    out.sort_by(f64::total_cmp);
    out
}

pub fn run(args: EventArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    let mut log = Log::new(&args.dir);

    println!(
        "{:<44} {:>14}",
        "append (synchronous=FULL, WAL)", "events/s"
    );
    for batch in [1, 64, 512] {
        let rate = log.throughput(args.events, batch);
        println!(
            "{:<44} {:>14.0}",
            format!("{batch} event(s) per transaction"),
            rate
        );
    }
    println!();
    println!(
        "{:<44} {:>10} {:>10} {:>10}",
        "commit → delivery", "median µs", "p99 µs", "max µs"
    );
    let same = latencies_in_process(&mut log, args.latency_events);
    let other = latencies_other_process(&mut log, &ferry, args.latency_events);
    for (name, l) in [
        ("watcher in the writing process", same),
        ("`ferry watch` in another process", other),
    ] {
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>10.0}",
            name,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(0.0)
        );
    }
}
