//! `ferry-bench distributed`: one copy moved by N `ferry worker`s through a
//! PostgreSQL store (`cp --distributed`), beside the single-process
//! `ferry cp --threads N` on the same tree and the same PostgreSQL server
//! (`--single-store sqlite`: an SQLite file instead), and mpiFileUtils' `dcp` with N
//! ranks when it is on PATH — N = 1, 2, 4 — on W4 (100,000 × 4 KiB in 1,000
//! directories) and on 4 × 1 GiB. The ratio distributed/single at equal N
//! is the cost of distribution (the aim: at most 1.2).
//!
//! Every run ends durable (ferry syncs; dcp is followed by `sync -f`). The
//! store is a fresh schema per run on `--store`'s server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::copy::{remove, sync};

#[derive(clap::Args)]
pub struct DistributedArgs {
    /// Scratch directory, on the file system to measure
    #[arg(long, default_value = "target/bench-distributed")]
    dir: PathBuf,
    /// The PostgreSQL server (a fresh schema per run)
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    store: String,
    /// Which workloads: small, large or both
    #[arg(long, default_value = "both", value_parser = ["small", "large", "both"])]
    only: String,
    /// Files of the small-file tree (4 KiB each, in 1,000 directories)
    #[arg(long, default_value_t = 100_000)]
    files: usize,
    /// Size of each of the 4 large files, in MiB
    #[arg(long, default_value_t = 1024)]
    large_mib: usize,
    /// Worker counts (comma-separated)
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    workers: Vec<usize>,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// The single-process copy's store: a fresh schema on `--store`'s
    /// server (the same store as the distributed copy), or an SQLite file
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "sqlite"])]
    single_store: String,
}

pub fn run(args: DistributedArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    std::fs::create_dir_all(&args.dir).expect("the scratch directory");
    let dcp = Command::new("dcp")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let mut workloads = Vec::new();
    if args.only != "large" {
        workloads.push((
            format!("{} x 4 KiB", args.files),
            make(&args.dir, "small", args.files, 4096),
        ));
    }
    if args.only != "small" {
        workloads.push((
            format!("4 x {} MiB", args.large_mib),
            make(&args.dir, "large", 4, args.large_mib << 20),
        ));
    }
    println!(
        "| workload | N | ferry cp --threads N (s) | distributed, N workers (s) | ratio | dcp -p, N ranks (s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, src) in &workloads {
        for &n in &args.workers {
            let out = args.dir.join("out");
            let single = time(&out, || {
                let sqlite = out.with_extension("db");
                let _ = std::fs::remove_file(&sqlite);
                let store = match args.single_store.as_str() {
                    "sqlite" => sqlite.display().to_string(),
                    _ => fresh_schema(&args.store),
                };
                let status = Command::new(&ferry)
                    .arg("--store")
                    .arg(&store)
                    .args(["cp", "-a", "-q", "--checksum", "none", "--threads"])
                    .arg(n.to_string())
                    .arg(src)
                    .arg(&out)
                    .status();
                if store.starts_with("postgres") {
                    let _ = drop_schema(&args.store, &store);
                }
                status
            });
            let distributed = time(&out, || distributed(&ferry, &args.store, src, &out, n));
            let dcp_time = dcp.then(|| {
                time(&out, || {
                    let status = Command::new("mpirun")
                        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
                        .arg(n.to_string())
                        .args(["dcp", "-p", "-q"])
                        .arg(src)
                        .arg(&out)
                        .status();
                    sync();
                    status
                })
            });
            println!(
                "| {name} | {n} | {single:.2} | {distributed:.2} | {:.2} | {} |",
                distributed / single,
                dcp_time.map_or("not on PATH".into(), |t| format!("{t:.2}"))
            );
        }
    }
}

/// `cp --distributed`, then N workers until the transfer ends.
fn distributed(
    ferry: &Path,
    server: &str,
    src: &Path,
    out: &Path,
    workers: usize,
) -> std::io::Result<std::process::ExitStatus> {
    let url = fresh_schema(server);
    let ferry_at = || {
        let mut cmd = Command::new(ferry);
        cmd.arg("--store").arg(&url);
        cmd
    };
    let created = ferry_at()
        .args(["cp", "-a", "-q", "--distributed", "--name", "bench"])
        .arg(src)
        .arg(out)
        .status()?;
    if !created.success() {
        return Ok(created);
    }
    let children: Vec<_> = (0..workers)
        .map(|_| {
            ferry_at()
                .args(["worker", "--transfer", "bench"])
                .stderr(Stdio::null())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut last = created;
    for mut child in children {
        last = child.wait()?;
    }
    let _ = drop_schema(server, &url);
    Ok(last)
}

/// A URL of `server` naming a schema no run has used.
fn fresh_schema(server: &str) -> String {
    let sep = if server.contains('?') { '&' } else { '?' };
    format!("{server}{sep}schema=ferry_bench_{:016x}", fastrand::u64(..))
}

/// The run's schema, dropped so that the server does not fill up.
fn drop_schema(server: &str, url: &str) -> Result<(), postgres::Error> {
    let schema = url.rsplit("schema=").next().unwrap_or_default();
    let mut client = postgres::Client::connect(server, postgres::NoTls)?;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
}

/// Seconds `copy` took to make `out`, which is removed first.
fn time(out: &Path, copy: impl FnOnce() -> std::io::Result<std::process::ExitStatus>) -> f64 {
    remove(out);
    sync();
    let start = Instant::now();
    let status = copy().expect("the tool runs");
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "a copy failed: {status}");
    secs
}

/// `count` files of `size` bytes in up to 1,000 directories, kept between
/// runs (a marker says the tree is complete).
fn make(dir: &Path, kind: &str, count: usize, size: usize) -> PathBuf {
    let root = dir.join(format!("src-{kind}-{count}-{size}"));
    let marker = dir.join(format!(".complete-{kind}-{count}-{size}"));
    if marker.exists() {
        return root;
    }
    remove(&root);
    let dirs = count.clamp(1, 1000);
    let mut rng = fastrand::Rng::with_seed(22);
    let mut buf = vec![0u8; size.min(1 << 20)];
    for i in 0..count {
        let sub = root.join(format!("d{:04}", i % dirs));
        std::fs::create_dir_all(&sub).expect("a source directory");
        let mut file = std::fs::File::create(sub.join(format!("f{i:08}"))).expect("a file");
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len());
            rng.fill(&mut buf[..n]);
            std::io::Write::write_all(&mut file, &buf[..n]).expect("writing a source");
            left -= n;
        }
    }
    sync();
    std::fs::write(&marker, b"").expect("the marker");
    root
}
