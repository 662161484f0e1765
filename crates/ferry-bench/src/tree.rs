//! `ferry-bench tree`: the trees real HPC jobs leave — many small files in
//! many directories — for ferry, `cp -a`, `rsync -a` and, when they are on
//! PATH, mpiFileUtils' `dcp`/`dsync`, side by side in one run:
//!
//! - W4: 100,000 × 4 KiB in 1,000 directories, then the same command again
//!   over the finished copy (ferry `--skip mtime`, `cp -au`, rsync's second
//!   run, `dsync`);
//! - a growth series of empty files in 1,000 directories (10^4, 10^5, 10^6;
//!   10^7 with `--big`): wall time, the peak resident memory of the tool's
//!   process, and ferry's store size per file, so that memory that grows
//!   with the tree shows at once; and `ferry status` of the largest.
//!
//! Every tool ends with its copy durable (`sync -f` after cp and rsync; dcp
//! and ferry sync themselves). Destinations are removed only after a
//! workload's last run: deleting many files just before timing makes file
//! creation slow for minutes on this kind of disk (docs/benchmarks.md).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::copy::{Commands, median, remove, sync};

#[derive(clap::Args)]
pub struct TreeArgs {
    /// Scratch directory, on the file system to measure
    #[arg(long, default_value = "target/bench-tree")]
    dir: PathBuf,
    /// Timed runs per tool of W4 (after one warm-up); the median is reported
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Which workloads: w4, growth or both
    #[arg(long, default_value = "both", value_parser = ["w4", "growth", "both"])]
    only: String,
    /// Files in W4
    #[arg(long, default_value_t = 100_000)]
    files: usize,
    /// Directories the files of every workload are spread over
    #[arg(long, default_value_t = 1_000)]
    dirs: usize,
    /// Largest size of the growth series, in files (10^4 up to this, by 10x)
    #[arg(long, default_value_t = 1_000_000)]
    growth_max: usize,
    /// Grow to 10^7 files (about 20 minutes and 40 GB of inodes per tool)
    #[arg(long)]
    big: bool,
    /// MPI ranks for dcp/dsync
    #[arg(long, default_value_t = 2)]
    ranks: usize,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Extra arguments for `ferry cp` (for instance "--threads 4")
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ferry_args: String,
}

/// How one tool copies `src` into the existing directory `out` (so the copy
/// is `out/basename(src)`, the same for every tool), and how it brings that
/// copy up to date a second time. `store` is ferry's.
struct Tool {
    name: &'static str,
    first: Commands,
    again: Commands,
}

/// One measured run of a tool: wall time of all its commands, the largest
/// peak RSS among them, and ferry's store on disk afterwards.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: Duration,
    rss_kib: u64,
    store_bytes: u64,
}

pub fn run(args: TreeArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    std::fs::create_dir_all(&args.dir).expect("the scratch directory");
    let dir = args.dir.canonicalize().expect("the scratch directory");
    let tools = tools(&ferry, &args);
    let names: Vec<&str> = tools.iter().map(|t| t.name).collect();
    println!("tools: {}", names.join(", "));
    if !names.iter().any(|n| n.starts_with("dcp")) {
        println!("(mpiFileUtils' dcp and dsync are not on PATH: ferry is held against rsync)");
    }
    if args.only != "growth" {
        w4(&dir, &args, &tools);
    }
    if args.only != "w4" {
        growth(&dir, &args, &tools, &ferry);
    }
}

fn tools(ferry: &Path, args: &TreeArgs) -> Vec<Tool> {
    let on_path = |tool: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let durable = |mut cmd: Command, out: &Path| {
        let mut sync = Command::new("sync");
        sync.arg("-f").arg(out);
        cmd.stdout(std::process::Stdio::null());
        vec![cmd, sync]
    };
    let mut tools = vec![Tool {
        name: "cp -a + sync",
        first: Box::new(move |src, out, _| {
            let mut cp = Command::new("cp");
            cp.arg("-a").arg(src).arg(out);
            durable(cp, out)
        }),
        again: Box::new(move |src, out, _| {
            let mut cp = Command::new("cp");
            cp.arg("-au").arg(src).arg(out);
            durable(cp, out)
        }),
    }];
    if on_path("rsync") {
        let rsync = move |src: &Path, out: &Path, _: &Path| {
            let mut rsync = Command::new("rsync");
            rsync.arg("-a").arg(src).arg(out);
            durable(rsync, out)
        };
        tools.push(Tool {
            name: "rsync -a + sync",
            first: Box::new(rsync),
            again: Box::new(rsync),
        });
    }
    if on_path("dcp") && on_path("dsync") && on_path("mpirun") {
        let ranks = args.ranks.to_string();
        let mpi = move |tool: &str| {
            let mut cmd = Command::new("mpirun");
            cmd.args([
                "--allow-run-as-root",
                "--oversubscribe",
                "-np",
                &ranks,
                tool,
            ]);
            cmd
        };
        let dcp = mpi.clone();
        tools.push(Tool {
            name: "dcp (mpiFileUtils)",
            first: Box::new(move |src, out, _| {
                let mut cmd = dcp("dcp");
                cmd.arg("--preserve").arg(src).arg(out);
                vec![cmd]
            }),
            again: Box::new(move |src, out, _| {
                let mut cmd = mpi("dsync");
                cmd.arg(src)
                    .arg(out.join(src.file_name().expect("a named source")));
                vec![cmd]
            }),
        });
    }
    let ferry_args: Vec<String> = args
        .ferry_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let (ferry_a, ferry_b) = (ferry.to_path_buf(), ferry.to_path_buf());
    let args_b = ferry_args.clone();
    tools.push(Tool {
        name: "ferry cp -a",
        first: Box::new(move |src, out, store| {
            let mut cmd = Command::new(&ferry_a);
            cmd.arg("--store")
                .arg(store)
                .args(["cp", "-a", "--name", "bench"]);
            cmd.args(&ferry_args).arg(src).arg(out);
            vec![cmd]
        }),
        again: Box::new(move |src, out, store| {
            let mut cmd = Command::new(&ferry_b);
            cmd.arg("--store")
                .arg(store)
                .args(["cp", "-a", "--skip", "mtime"]);
            cmd.args(&args_b).arg(src).arg(out);
            vec![cmd]
        }),
    });
    tools
}

/// W4 and its re-run, alternating the tools run by run.
fn w4(dir: &Path, args: &TreeArgs, tools: &[Tool]) {
    let src = make_tree(dir, "w4", args.files, args.dirs, 4096);
    let out = dir.join("out-w4");
    remove(&out);
    let mut first = vec![Vec::new(); tools.len()];
    let mut again = vec![Vec::new(); tools.len()];
    for run in 0..=args.runs {
        for k in 0..tools.len() {
            let t = (run + k) % tools.len();
            let dst = out.join(format!("{t}-{run}"));
            std::fs::create_dir_all(&dst).expect("a destination directory");
            let store = out.join(format!("{t}-{run}.db"));
            sync();
            let a = measure((tools[t].first)(&src, &dst, &store), &store);
            sync();
            let b = measure((tools[t].again)(&src, &dst, &store), &store);
            if run > 0 {
                first[t].push(a);
                again[t].push(b);
            }
        }
    }
    remove(&out);
    sync();
    let title = format!("W4: {} x 4 KiB in {} dirs", args.files, args.dirs);
    println!("\n{title}");
    table(tools, &[("copy", &first), ("re-run", &again)], args.files);
    let ferry = tools.len() - 1;
    let t = |samples: &Vec<Vec<Sample>>, i: usize| median_wall(&samples[i]);
    if let Some(r) = tools.iter().position(|tool| tool.name.starts_with("dcp")) {
        println!(
            "ferry = {:.2}x {} on the copy, {:.2}x on the re-run",
            t(&first, ferry) / t(&first, r),
            tools[r].name,
            t(&again, ferry) / t(&again, r)
        );
    }
    // What one re-run adds to the store, per file (the worst of the runs).
    let grown = first[ferry]
        .iter()
        .zip(&again[ferry])
        .map(|(a, b)| b.store_bytes.saturating_sub(a.store_bytes))
        .max()
        .unwrap_or(0) as f64
        / args.files as f64;
    println!(
        "ferry's store: {:.0} B/file after the copy, +{:.0} B/file for the re-run",
        first[ferry]
            .iter()
            .map(|s| s.store_bytes)
            .max()
            .unwrap_or(0) as f64
            / args.files as f64,
        grown
    );
    if let Some(r) = tools.iter().position(|tool| tool.name.starts_with("rsync")) {
        println!(
            "ferry = {:.2}x rsync -a + sync on the copy, {:.2}x rsync's second run on the re-run",
            t(&first, ferry) / t(&first, r),
            t(&again, ferry) / t(&again, r)
        );
    }
}

/// Empty files at 10^4, 10^5, … : one run per tool and size.
fn growth(dir: &Path, args: &TreeArgs, tools: &[Tool], ferry: &Path) {
    let max = if args.big {
        10_000_000
    } else {
        args.growth_max
    };
    let sizes: Vec<usize> = std::iter::successors(Some(10_000usize), |n| Some(n * 10))
        .take_while(|&n| n <= max)
        .collect();
    let mut rows: Vec<(usize, Vec<Sample>)> = Vec::new();
    let mut status_at_largest = None;
    for &n in &sizes {
        let src = make_tree(dir, "empty", n, args.dirs, 0);
        let out = dir.join(format!("out-growth-{n}"));
        remove(&out);
        let mut samples = Vec::new();
        for (t, tool) in tools.iter().enumerate() {
            let dst = out.join(t.to_string());
            std::fs::create_dir_all(&dst).expect("a destination directory");
            let store = out.join(format!("{t}.db"));
            sync();
            samples.push(measure((tool.first)(&src, &dst, &store), &store));
            if tool.name.starts_with("ferry") && Some(&n) == sizes.last() {
                status_at_largest = Some(time_status(ferry, &store));
            }
        }
        remove(&out);
        sync();
        rows.push((n, samples));
    }
    println!("\ngrowth: empty files in {} dirs", args.dirs);
    println!(
        "{:>10} {:<20} {:>9} {:>12} {:>14}",
        "files", "tool", "wall s", "peak RSS MiB", "store B/file"
    );
    for (n, samples) in &rows {
        for (tool, s) in tools.iter().zip(samples) {
            let store = if s.store_bytes > 0 {
                format!("{:.0}", s.store_bytes as f64 / *n as f64)
            } else {
                "-".into()
            };
            println!(
                "{:>10} {:<20} {:>9.2} {:>12.1} {:>14}",
                n,
                tool.name,
                s.wall.as_secs_f64(),
                s.rss_kib as f64 / 1024.0,
                store
            );
        }
    }
    let ferry = tools.len() - 1;
    if let (Some((small, a)), Some((large, b))) = (rows.first(), rows.last()) {
        println!(
            "ferry's peak RSS at {large} files = {:.2}x that at {small}",
            b[ferry].rss_kib as f64 / a[ferry].rss_kib.max(1) as f64
        );
    }
    if let (Some(status), Some(n)) = (status_at_largest, sizes.last()) {
        println!(
            "ferry status of the {n}-file transfer: {:.3} s (fastest of 3)",
            status.as_secs_f64()
        );
    }
}

/// `ferry status bench` against the growth series' largest store.
fn time_status(ferry: &Path, store: &Path) -> Duration {
    (0..3)
        .map(|_| {
            let mut cmd = Command::new(ferry);
            cmd.arg("--store").arg(store).args(["status", "bench"]);
            measure(vec![cmd], Path::new("")).wall
        })
        .min()
        .expect("three runs")
}

/// Runs the commands in order; each must succeed.
fn measure(commands: Vec<Command>, store: &Path) -> Sample {
    let started = Instant::now();
    let mut rss_kib = 0;
    for mut cmd in commands {
        cmd.stdout(std::process::Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (status, peak) = wait_with_peak_rss(child);
        assert!(status.success(), "{cmd:?} failed: {status}");
        rss_kib = rss_kib.max(peak);
    }
    let wall = started.elapsed();
    let store_bytes = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| {
            let mut p = store.as_os_str().to_owned();
            p.push(suffix);
            std::fs::metadata(p).ok().map(|m| m.len())
        })
        .sum();
    Sample {
        wall,
        rss_kib,
        store_bytes,
    }
}

/// Waits for the child and returns its exit status and its peak resident
/// set in KiB, as the kernel accounted it (`wait4`'s `ru_maxrss`).
fn wait_with_peak_rss(child: std::process::Child) -> (std::process::ExitStatus, u64) {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to two live locals.
    let waited = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(
        waited,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    (
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss.max(0) as u64,
    )
}

/// `files` files of `size` random bytes, spread evenly over `dirs`
/// directories; made once and kept (a marker says it is complete).
fn make_tree(dir: &Path, kind: &str, files: usize, dirs: usize, size: usize) -> PathBuf {
    let root = dir.join(format!("src-{kind}-{files}"));
    let marker = dir.join(format!(".complete-{kind}-{files}-{dirs}"));
    if marker.exists() {
        return root;
    }
    remove(&root);
    let dirs = dirs.clamp(1, files.max(1));
    let mut rng = fastrand::Rng::with_seed(4);
    let mut buf = vec![0u8; size];
    for d in 0..dirs {
        let sub = root.join(format!("d{d:05}"));
        std::fs::create_dir_all(&sub).expect("a source directory");
        for i in (d..files).step_by(dirs) {
            rng.fill(&mut buf);
            std::fs::write(sub.join(format!("f{i:08}")), &buf).expect("a source file");
        }
    }
    sync();
    std::fs::write(&marker, b"").expect("the marker");
    root
}

fn median_wall(samples: &[Sample]) -> f64 {
    median(&samples.iter().map(|s| s.wall).collect::<Vec<_>>())
}

fn table(tools: &[Tool], phases: &[(&str, &Vec<Vec<Sample>>)], files: usize) {
    println!(
        "{:<8} {:<20} {:>9} {:>9} {:>9} {:>12} {:>14}",
        "phase", "tool", "median s", "min s", "max s", "peak RSS MiB", "store B/file"
    );
    for (phase, samples) in phases {
        for (tool, s) in tools.iter().zip(samples.iter()) {
            if s.is_empty() {
                continue;
            }
            let walls: Vec<f64> = s.iter().map(|x| x.wall.as_secs_f64()).collect();
            let min = walls.iter().copied().fold(f64::INFINITY, f64::min);
            let max = walls.iter().copied().fold(0.0, f64::max);
            let rss = s.iter().map(|x| x.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
            let store = s.iter().map(|x| x.store_bytes).max().unwrap_or(0);
            let store = if store > 0 {
                format!("{:.0}", store as f64 / files as f64)
            } else {
                "-".into()
            };
            println!(
                "{:<8} {:<20} {:>9.3} {:>9.3} {:>9.3} {:>12.1} {:>14}",
                phase,
                tool.name,
                median_wall(s),
                min,
                max,
                rss,
                store
            );
        }
    }
}
