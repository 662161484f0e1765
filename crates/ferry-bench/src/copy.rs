//! `ferry-bench copy`: times `ferry cp -a` against `cp -a` + `sync -f` and
//! `rsync -a` + `sync -f`, side by side in one run, alternating the tools,
//! and prints medians and ratios. Every contender ends with its data durable,
//! so the comparison is fair to ferry's fsyncs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct CopyArgs {
    /// Scratch directory, on the file system to measure (needs about
    /// 2.5 GiB for the large file: its source and one copy at a time; and
    /// (runs + 1) x 5 x 0.3 GiB for the small files)
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Runs per tool and workload (the median is reported)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Which workloads: small, large, or both
    #[arg(long, default_value = "both", value_parser = ["small", "large", "both"])]
    only: String,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Extra arguments for `ferry cp` (for instance "--threads 4")
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ferry_args: String,
    /// Drop the page cache before each run (needs root), so sources are read from disk
    #[arg(long)]
    drop_caches: bool,
    /// Size of the large file in MiB
    #[arg(long, default_value_t = 1024)]
    large_mib: u64,
    /// Number of 64 KiB files in the small workload
    #[arg(long, default_value_t = 4096)]
    small_files: usize,
    /// Write the copies to this directory instead, on another file system
    /// (the burst buffer → parallel file system case: copy_file_range
    /// fails with EXDEV and every tool reads and writes through memory).
    /// Each copy is removed right after it is timed.
    #[arg(long)]
    dest_dir: Option<PathBuf>,
}

pub(crate) struct Workload {
    name: String,
    pub(crate) source: PathBuf,
    /// Remove each copy right after it is timed: one large file frees its
    /// space at once (many small ones are what online discard makes slow).
    remove_each_run: bool,
}

/// Builds the commands copying `src` to `dst` (with `store` for ferry);
/// the second command, if any, makes the copy durable.
pub type Commands = Box<dyn Fn(&Path, &Path, &Path) -> Vec<Command>>;

struct Tool {
    name: &'static str,
    command: Commands,
}

pub fn run(args: CopyArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    std::fs::create_dir_all(&args.dir).expect("the scratch directory");
    let dir = args.dir.canonicalize().expect("the scratch directory");

    let mut workloads = Vec::new();
    if args.only != "large" {
        workloads.push(make_small(&dir, args.small_files));
    }
    if args.only != "small" {
        workloads.push(make_large(&dir, args.large_mib));
    }
    sync();

    let ferry_args: Vec<String> = args
        .ferry_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let tools = [
        Tool {
            name: "cp -a + sync -f",
            command: Box::new(|src, dst, _| {
                let mut cp = Command::new("cp");
                cp.arg("-a").arg(src).arg(dst);
                let mut sync = Command::new("sync");
                sync.arg("-f").arg(dst);
                vec![cp, sync]
            }),
        },
        Tool {
            name: "rsync -a + sync -f",
            command: Box::new(|src, dst, _| {
                let mut rsync = Command::new("rsync");
                rsync.arg("-a").arg(src).arg(dst);
                let mut sync = Command::new("sync");
                sync.arg("-f").arg(dst);
                vec![rsync, sync]
            }),
        },
        ferry_tool("ferry cp -a", &ferry, &ferry_args, &[]),
        ferry_tool(
            "  --checksum none",
            &ferry,
            &ferry_args,
            &["--checksum", "none"],
        ),
        ferry_tool(
            "  --verify copied",
            &ferry,
            &ferry_args,
            &["--verify", "copied"],
        ),
    ];
    let have_rsync = Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());

    println!(
        "{:<28} {:<20} {:>9} {:>9} {:>9} {:>14}",
        "workload", "tool", "median s", "min s", "max s", "vs cp -a+sync"
    );
    let mut verdicts = Vec::new();
    for workload in &workloads {
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); tools.len()];
        // Every run writes a fresh destination, and all are removed together
        // at the end: on ext4 with online discard, creating files right after
        // deleting thousands is several times slower, whichever tool does it.
        // Round 0 is a warm-up that absorbs what the previous workload left.
        let out = match &args.dest_dir {
            Some(d) => d.join("ferry-bench-out"),
            None => dir.join("out"),
        };
        remove(&out);
        std::fs::create_dir_all(&out).unwrap();
        for run in 0..=args.runs {
            // Alternate the order so that no tool always runs first.
            for k in 0..tools.len() {
                let t = (run + k) % tools.len();
                if tools[t].name.starts_with("rsync") && !have_rsync {
                    continue;
                }
                let dst = out.join(format!("dst-{t}-{run}"));
                let store = out.join(format!("store-{t}-{run}.db"));
                sync();
                if args.drop_caches {
                    drop_caches();
                }
                let started = Instant::now();
                for mut cmd in (tools[t].command)(&workload.source, &dst, &store) {
                    let status = cmd
                        .stdout(std::process::Stdio::null())
                        .status()
                        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
                    assert!(status.success(), "{cmd:?} failed: {status}");
                }
                if run > 0 {
                    times[t].push(started.elapsed());
                }
                if args.dest_dir.is_some() || workload.remove_each_run {
                    // Another file system (tmpfs, say) has room for one copy.
                    remove(&dst);
                    remove(&store);
                }
            }
        }
        remove(&out);
        sync();
        let baseline = median(&times[0]);
        for (t, tool) in tools.iter().enumerate() {
            if times[t].is_empty() {
                println!("{:<28} {:<20} {:>9}", workload.name, tool.name, "missing");
                continue;
            }
            let m = median(&times[t]);
            let min = times[t].iter().min().unwrap().as_secs_f64();
            let max = times[t].iter().max().unwrap().as_secs_f64();
            println!(
                "{:<28} {:<20} {:>9.3} {:>9.3} {:>9.3} {:>13.2}x",
                workload.name,
                tool.name,
                m,
                min,
                max,
                m / baseline
            );
        }
        let ferry = median(&times[2]);
        let rsync = (!times[1].is_empty()).then(|| median(&times[1]));
        verdicts.push((
            workload.name.clone(),
            ferry / baseline,
            rsync.map(|r| ferry / r),
            ferry / median(&times[3]),
            median(&times[4]) / ferry,
            // Best of the runs too: on a shared machine the median drifts.
            fastest(&times[2]) / fastest(&times[3]),
        ));
    }
    println!();
    for (name, vs_cp, vs_rsync, checksum_cost, verify_cost, checksum_cost_best) in verdicts {
        let vs_rsync = vs_rsync.map_or("rsync missing".into(), |r| format!("{r:.2}x rsync"));
        println!(
            "{name}: ferry = {vs_cp:.2}x cp -a+sync, {vs_rsync}; checksums cost {:+.1} % \
             (best runs {:+.1} %), --verify copied {:+.1} %",
            (checksum_cost - 1.0) * 100.0,
            (checksum_cost_best - 1.0) * 100.0,
            (verify_cost - 1.0) * 100.0
        );
    }
}

/// `ferry cp -a EXTRA…` with the bench's `--ferry-args`.
fn ferry_tool(
    name: &'static str,
    ferry: &Path,
    ferry_args: &[String],
    extra: &'static [&'static str],
) -> Tool {
    let ferry = ferry.to_path_buf();
    let ferry_args = ferry_args.to_vec();
    Tool {
        name,
        command: Box::new(move |src, dst, store| {
            let mut cmd = Command::new(&ferry);
            cmd.arg("--store")
                .arg(store)
                .args(["cp", "-a"])
                .args(extra)
                .args(&ferry_args)
                .arg(src)
                .arg(dst);
            vec![cmd]
        }),
    }
}

fn make_small(dir: &Path, files: usize) -> Workload {
    let root = dir.join("src-small");
    let data = root.join("timestep.0");
    let marker = root.join(format!(".complete-{files}"));
    if !marker.exists() {
        remove(&root);
        std::fs::create_dir_all(&data).unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut buf = vec![0u8; 64 << 10];
        for i in 0..files {
            rng.fill(&mut buf);
            std::fs::write(data.join(format!("data.{i}")), &buf).unwrap();
        }
        std::fs::write(
            root.join("timestep.0.root"),
            b"timestep 0: ranks complete\n",
        )
        .unwrap();
        std::fs::write(&marker, b"").unwrap();
    }
    Workload {
        name: format!("{files} x 64 KiB (MPI layout)"),
        source: root,
        remove_each_run: false,
    }
}

pub(crate) fn make_large(dir: &Path, mib: u64) -> Workload {
    let root = dir.join("src-large");
    let file = root.join("big.bin");
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(mib << 20) {
        remove(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut out =
            std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&file).unwrap());
        let mut rng = fastrand::Rng::with_seed(2);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut out, &buf).unwrap();
        }
        std::io::Write::flush(&mut out).unwrap();
    }
    Workload {
        name: format!("1 file of {mib} MiB"),
        source: root,
        remove_each_run: true,
    }
}

fn fastest(times: &[Duration]) -> f64 {
    times.iter().min().map_or(f64::NAN, Duration::as_secs_f64)
}

pub fn median(times: &[Duration]) -> f64 {
    median_of(times.iter().map(Duration::as_secs_f64).collect())
}

/// The median of `secs` (the mean of the middle two for an even count).
pub fn median_of(mut secs: Vec<f64>) -> f64 {
    secs.sort_by(f64::total_cmp);
    let n = secs.len();
    if n % 2 == 1 {
        secs[n / 2]
    } else {
        (secs[n / 2 - 1] + secs[n / 2]) / 2.0
    }
}

pub fn remove(path: &Path) {
    if path.is_dir() {
        std::fs::remove_dir_all(path).unwrap();
    } else if path.exists() {
        std::fs::remove_file(path).unwrap();
    }
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
}

pub fn sync() {
    let status = Command::new("sync").status().expect("sync");
    assert!(status.success());
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", b"3\n").expect("--drop-caches needs root");
}
