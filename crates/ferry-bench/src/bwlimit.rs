//! `ferry-bench bwlimit`: `ferry cp -a --bwlimit RATE` of one large file
//! (1 GiB by default) at each of a few rates, several runs each; prints the
//! achieved rate and its deviation from the limit, two ways: over the whole
//! command as a user times it (start-up, planning, the final fsync, rename
//! and store commit included), and over the data phase alone (from the
//! transfer's `transfer.running` event to its file's `file.copied` event).
//! The target: within 5 % of the limit over a 1 GiB copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ferry::store::{EventFilter, SqliteStore, Store};

use crate::copy::{make_large, remove, sync};

#[derive(clap::Args)]
pub struct BwlimitArgs {
    /// Scratch directory, on the file system to measure (needs twice the
    /// file's size)
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// The limits to measure, comma-separated, as `--bwlimit` takes them
    #[arg(long, default_value = "128M,64M", value_delimiter = ',')]
    rates: Vec<String>,
    /// Runs per rate (all are printed, with their median)
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Size of the file in MiB
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
    /// Extra arguments for `ferry cp` (for instance "--checksum none", the
    /// page-cache path)
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ferry_args: String,
}

/// One timed copy: seconds over the whole command and over the data phase.
struct Run {
    whole_s: f64,
    data_s: f64,
}

pub fn run(args: BwlimitArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    std::fs::create_dir_all(&args.dir).expect("the scratch directory");
    let dir = args.dir.canonicalize().expect("the scratch directory");
    let source = make_large(&dir, args.mib).source;
    let bytes = args.mib << 20;
    sync();
    println!(
        "{:<8} {:>4} {:>10} {:>12} {:>10} {:>10} {:>12} {:>10}",
        "limit", "run", "whole s", "whole MiB/s", "vs limit", "data s", "data MiB/s", "vs limit"
    );
    for rate_text in &args.rates {
        let rate = ferry::engine::throttle::parse_rate(rate_text)
            .unwrap_or_else(|e| panic!("--rates: {e}"))
            .expect("a limit, not none");
        let mut runs = Vec::new();
        for n in 0..args.runs {
            let out = dir.join(format!("bwlimit-{n}"));
            remove(&out);
            std::fs::create_dir_all(&out).unwrap();
            let run = time_one(&ferry, &source, &out, rate_text, &args.ferry_args);
            print_row(rate_text, &(n + 1).to_string(), &run, bytes, rate);
            runs.push(run);
            remove(&out);
            sync();
        }
        let median = Run {
            whole_s: crate::copy::median_of(runs.iter().map(|r| r.whole_s).collect()),
            data_s: crate::copy::median_of(runs.iter().map(|r| r.data_s).collect()),
        };
        print_row(rate_text, "med", &median, bytes, rate);
    }
}

fn print_row(limit: &str, run: &str, times: &Run, bytes: u64, rate: u64) {
    let mib = |s: f64| bytes as f64 / s / f64::from(1 << 20);
    let off = |s: f64| (bytes as f64 / s / rate as f64 - 1.0) * 100.0;
    println!(
        "{limit:<8} {run:>4} {:>10.3} {:>12.1} {:>+9.1}% {:>10.3} {:>12.1} {:>+9.1}%",
        times.whole_s,
        mib(times.whole_s),
        off(times.whole_s),
        times.data_s,
        mib(times.data_s),
        off(times.data_s)
    );
}

fn time_one(ferry: &Path, source: &Path, out: &Path, rate: &str, extra: &str) -> Run {
    let store = out.join("store.db");
    let mut cmd = Command::new(ferry);
    cmd.arg("--store")
        .arg(&store)
        .args(["cp", "-a", "--bwlimit", rate, "--name", "bwlimit"])
        .args(extra.split_whitespace())
        .arg(source)
        .arg(out.join("dst"))
        .stdout(std::process::Stdio::null());
    let started = Instant::now();
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let whole_s = started.elapsed().as_secs_f64();
    assert!(status.success(), "{cmd:?} failed: {status}");
    Run {
        whole_s,
        data_s: data_phase_s(&store),
    }
}

/// From `transfer.running` to the last `file.copied`, by the events' times.
fn data_phase_s(store: &Path) -> f64 {
    let store = SqliteStore::open(store).expect("the run's store");
    let events = store
        .events_since(0, &EventFilter::default(), 10_000)
        .expect("the run's events");
    let time = |name: &str| {
        events
            .iter()
            .rev()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("no {name} event"))
            .time_ns
    };
    (time("file.copied") - time("transfer.running")) as f64 / 1e9
}
