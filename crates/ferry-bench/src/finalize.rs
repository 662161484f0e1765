//! `ferry-bench finalize`: the post-stage case. Many stores (one per MPI
//! rank) in nested directories, each holding one transfer of 4 small files
//! left "copied, not yet renamed" by an owner that died, finalized by one
//! `ferry finalize` command.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ferry::model::{EntryKind, NewEntry, NewTransfer, Owner, SourceMeta};
use ferry::store::{Change, SqliteStore, Store};
use ferry::{FileState, Kind, Preserve, TransferState};

#[derive(clap::Args)]
pub struct FinalizeArgs {
    /// Scratch directory
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Stores (ranks)
    #[arg(long, default_value_t = 16384)]
    stores: usize,
    /// Passed to `ferry finalize --jobs` [default: ferry's, one per core]
    #[arg(long)]
    jobs: Option<usize>,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Only generate the stores (in DIR/finalize/stores), for profiling
    #[arg(long)]
    generate_only: bool,
}

const FILES_PER_STORE: usize = 4;
const FILE_BYTES: usize = 4096;

fn dead_owner() -> Owner {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Owner {
        pid,
        start_time: 1,
        ..Owner::current()
    }
}

fn generate(root: &Path, stores: usize) -> PathBuf {
    let _ = std::fs::remove_dir_all(root);
    let owner = dead_owner();
    let store_root = root.join("stores");
    // Four generators at once: each rank's store is its own file.
    std::thread::scope(|scope| {
        for part in 0..4 {
            let (owner, store_root) = (&owner, &store_root);
            scope.spawn(move || {
                for rank in (part..stores).step_by(4) {
                    generate_rank(root, store_root, owner, rank);
                }
            });
        }
    });
    assert!(Command::new("sync").status().unwrap().success());
    store_root
}

fn generate_rank(root: &Path, store_root: &Path, owner: &Owner, rank: usize) {
    let data = vec![7u8; FILE_BYTES];
    {
        let out = root.join(format!("out/node{}/rank.{rank}", rank / 1024));
        std::fs::create_dir_all(&out).unwrap();
        let store_path = store_root.join(format!("node{}/rank.{rank}.db", rank / 1024));
        let store = SqliteStore::open_deferred(&store_path).unwrap();
        let entries: Vec<NewEntry> = (0..FILES_PER_STORE)
            .map(|k| NewEntry {
                link_leader: None,
                shared_inode: None,
                inode_changed_ns: 0,
                xattrs: Default::default(),
                kind: EntryKind::File,
                source: PathBuf::from(format!("/gone/rank.{rank}/file.{k}")),
                dest: out.join(format!("file.{k}")),
                meta: SourceMeta {
                    size: FILE_BYTES as u64,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    atime_ns: 1_000_000_000_123,
                    mtime_ns: 1_000_000_000_456,
                },
                link_target: None,
            })
            .collect();
        let new = NewTransfer {
            replaces: None,
            checksum: None,
            name: Some("ckpt".into()),
            kind: Kind::Threads,
            caller: None,
            owner: owner.clone(),
            preserve: Preserve::ALL,
            temp_suffix: ferry::model::DEFAULT_TEMP_SUFFIX.into(),
        };
        let t = store.create_transfer(&new, &entries).unwrap();
        for entry in &entries {
            let temp = ferry::temp_path(&entry.dest, &t.temp_suffix, t.id);
            std::fs::write(&temp, &data).unwrap();
        }
        let mut changes: Vec<Change> = [TransferState::Dispatched, TransferState::Running]
            .into_iter()
            .map(|to| Change::Transfer {
                id: t.id,
                to,
                owner: None,
                context: serde_json::Value::Null,
            })
            .collect();
        changes.extend((0..FILES_PER_STORE).map(|k| Change::Entry {
            checksum: None,
            id: t.id,
            index: ferry::model::EntryIndex(k as u32),
            to: FileState::Copied,
            progress_bytes_durable: Some(FILE_BYTES as u64),
            error: None,
            context: serde_json::json!({"bytes": FILE_BYTES}),
        }));
        store.apply(&changes).unwrap();
        // As a rank that exited cleanly leaves it.
        store.checkpoint().unwrap();
    }
}

pub fn run(args: FinalizeArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    std::fs::create_dir_all(&args.dir).unwrap();
    let root = args.dir.canonicalize().unwrap().join("finalize");
    let generated = Instant::now();
    let stores = generate(&root, args.stores);
    println!(
        "generated {} stores in {:.1} s",
        args.stores,
        generated.elapsed().as_secs_f64()
    );
    if args.generate_only {
        return;
    }

    let mut cmd = Command::new(&ferry);
    cmd.arg("finalize").arg("--json");
    if let Some(jobs) = args.jobs {
        cmd.arg("--jobs").arg(jobs.to_string());
    }
    cmd.arg(&stores);
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = report["files_committed"].as_u64().unwrap();
    assert_eq!(
        files as usize,
        args.stores * FILES_PER_STORE,
        "{}",
        report["outcomes"]
    );
    println!(
        "{:<40} {:>8} {:>10} {:>12} {:>12}",
        "ferry finalize (one command)", "stores", "files", "seconds", "files/s"
    );
    println!(
        "{:<40} {:>8} {:>10} {:>12.2} {:>12.0}",
        format!("{} stores x {FILES_PER_STORE} files", args.stores),
        args.stores,
        files,
        seconds,
        files as f64 / seconds
    );
    let _ = std::fs::remove_dir_all(&root);
}
