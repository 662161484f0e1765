//! `ferry-bench status`: `status` of one very large transfer through the
//! daemon. The store is seeded directly (ENTRIES entries, FAILED of them
//! failed, the transfer over), then `ferry serve` starts on it and the
//! client asks for the transfer's status ROUNDS times. Prints the latency
//! (p50, max) and the daemon's resident memory before and after: the
//! answer must not cost in proportion to the transfer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ferry::model::{EntryIndex, NewEntry, NewTransfer, Owner, SourceMeta};
use ferry::store::{Change, SqliteStore, Store};
use ferry::{Caller, EntryKind, FileState, Kind, Preserve, TransferState};
use ferry_serve::api::PAGE_MAX;
use ferry_serve::client::Client;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Scratch directory
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Entries of the transfer
    #[arg(long, default_value_t = 1_000_000)]
    entries: u32,
    /// Of those, failed (a status shows a page of them)
    #[arg(long, default_value_t = 5_000)]
    failed: u32,
    /// Statuses asked for
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
}

/// Entries written per store transaction while seeding.
const SEED_BATCH: u32 = 20_000;

pub fn run(args: StatusArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    let root = std::path::absolute(args.dir.join("status")).expect("an absolute scratch path");
    let _ = std::fs::remove_dir_all(&root);
    let state = root.join("state");
    std::fs::create_dir_all(&state).unwrap();
    // The daemon serves only a private store.
    let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
    std::fs::set_permissions(&state, private).unwrap();
    let store_path = state.join("ferry.db");
    let seeded = Instant::now();
    seed(&store_path, args.entries, args.failed);
    println!(
        "seeded {} entries ({} failed) in {:.1} s",
        args.entries,
        args.failed,
        seeded.elapsed().as_secs_f64()
    );

    let socket = root.join("ferry.sock");
    let daemon = crate::serve::start_on(&ferry, &store_path, &root, &socket, 1);
    let pid = daemon.pid();
    let client = Client::new(&socket).unwrap();
    let rss_before = rss_kib(pid);
    let mut latencies = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let begun = Instant::now();
        let (status, body) = client.raw("GET", "/v1/transfers/big", Vec::new()).unwrap();
        latencies.push(begun.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let view: ferry_serve::api::TransferView = serde_json::from_slice(&body).unwrap();
        assert_eq!(view.files, u64::from(args.entries));
        assert_eq!(view.files_failed, u64::from(args.failed));
        let page = u64::from(args.failed).min(PAGE_MAX) as usize;
        assert_eq!(view.failures.len(), page);
    }
    let rss_after = rss_kib(pid);
    latencies.sort();
    println!(
        "| status of a {}-entry transfer via the daemon | |\n|---|---:|",
        args.entries
    );
    println!(
        "| latency ({} rounds, one page of failures each) | p50 {}, max {} |",
        args.rounds,
        crate::serve::ms(latencies[latencies.len() / 2]),
        crate::serve::ms(*latencies.last().unwrap())
    );
    println!(
        "| daemon resident memory | {} MiB before, {} MiB after (peak {} MiB) |",
        rss_before.0 / 1024,
        rss_after.0 / 1024,
        rss_after.1 / 1024
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&root);
}

/// One daemon transfer of `entries` empty files, `failed` of them failed,
/// over (failed): the daemon does not resume it at start.
fn seed(path: &Path, entries: u32, failed: u32) {
    let store = Arc::new(SqliteStore::open(path).unwrap());
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let new = NewTransfer {
        replaces: None,
        checksum: None,
        name: Some("big".into()),
        kind: Kind::Daemon,
        caller: Some(Caller {
            uid,
            gid,
            groups: Vec::new(),
        }),
        owner: Owner::current(),
        preserve: Preserve::NONE,
        temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
    };
    let id = store.create_transfer(&new, &[]).unwrap().id;
    let entry = |i: u32| NewEntry {
        link_leader: None,
        shared_inode: None,
        inode_changed_ns: 0,
        xattrs: Default::default(),
        kind: EntryKind::File,
        source: format!("/bench/src/d{}/f{i}", i / 1000).into(),
        dest: format!("/bench/dst/d{}/f{i}", i / 1000).into(),
        meta: SourceMeta {
            size: 0,
            mode: 0o644,
            uid,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 0,
        },
        link_target: None,
    };
    let mut next = 0;
    while next < entries {
        let end = (next + SEED_BATCH).min(entries);
        let batch: Vec<_> = (next..end).map(entry).collect();
        store.add_entries(id, &batch).unwrap();
        next = end;
    }
    let to = |to| Change::Transfer {
        id,
        to,
        owner: None,
        context: serde_json::Value::Null,
    };
    store
        .apply(&[to(TransferState::Dispatched), to(TransferState::Running)])
        .unwrap();
    // Spread over the transfer, as failures deep in a tree are.
    let stride = (entries / failed.max(1)).max(1);
    let failures: Vec<_> = (0..failed)
        .map(|k| Change::Entry {
            id,
            index: EntryIndex(k * stride),
            to: FileState::Failed,
            progress_bytes_durable: None,
            error: Some("no such file or directory".into()),
            checksum: None,
            context: serde_json::Value::Null,
        })
        .collect();
    for batch in failures.chunks(SEED_BATCH as usize) {
        store.apply(batch).unwrap();
    }
    store.apply(&[to(TransferState::Failed)]).unwrap();
}

/// The process's resident memory and its peak, KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
