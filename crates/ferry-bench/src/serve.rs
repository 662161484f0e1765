//! `ferry-bench serve`: a bounded load test of the daemon. CLIENTS threads,
//! each with its own connection per request as the CLI makes them, submit
//! TRANSFERS small transfers each (create + add + dispatch: what
//! `ferry cp --kind daemon` does before it returns); then every transfer is
//! waited for and checked. Prints submit latency (p50, p99, max) and the
//! total throughput from the first submit to the last completion.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_serve::api::{AddRequest, CreateRequest, RunRequest};
use ferry_serve::client::Client;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Scratch directory
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// Concurrent clients
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Transfers each client submits
    #[arg(long, default_value_t = 50)]
    transfers: usize,
    /// Files of each transfer (4 KiB each)
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// `ferry serve --workers`
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// The ferry binary [default: beside this one]
    #[arg(long)]
    ferry: Option<PathBuf>,
}

const FILE_BYTES: usize = 4096;
/// The daemon must answer within this long of starting.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) struct Daemon(Child);

impl Daemon {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, as an operator would; it stops within its bound.
        let pid = self.0.id();
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

pub fn run(args: ServeArgs) {
    let ferry = crate::ferry_binary(args.ferry.clone());
    let root = std::path::absolute(args.dir.join("serve")).expect("an absolute scratch path");
    let _ = std::fs::remove_dir_all(&root);
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    for i in 0..args.files {
        let mut data = vec![0u8; FILE_BYTES];
        rng.fill(&mut data);
        std::fs::write(src.join(format!("f{i}")), data).unwrap();
    }
    let socket = root.join("ferry.sock");
    let _daemon = start(&ferry, &root, &socket, args.workers);

    let total = args.clients * args.transfers;
    println!(
        "{} clients × {} transfers of {} × {} B, ferry serve --workers {}",
        args.clients, args.transfers, args.files, FILE_BYTES, args.workers
    );
    let started = Instant::now();
    let submits: Vec<(Vec<Duration>, Vec<String>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.clients)
            .map(|c| {
                let (socket, src, root) = (&socket, &src, &root);
                scope.spawn(move || {
                    let client = Client::new(socket).unwrap();
                    let mut latencies = Vec::with_capacity(args.transfers);
                    let mut names = Vec::with_capacity(args.transfers);
                    for t in 0..args.transfers {
                        let begun = Instant::now();
                        let name = submit(&client, src, &root.join(format!("dst/{c}/{t}")));
                        latencies.push(begun.elapsed());
                        names.push(name);
                    }
                    (latencies, names)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let submitted = started.elapsed();
    let client = Client::new(&socket).unwrap();
    let mut failed = 0;
    for name in submits.iter().flat_map(|(_, names)| names) {
        if client.wait(name).unwrap().state != "completed" {
            failed += 1;
        }
    }
    let done = started.elapsed();
    let mut latencies: Vec<Duration> = submits.into_iter().flat_map(|(l, _)| l).collect();
    latencies.sort();
    assert_eq!(failed, 0, "{failed} of {total} transfers did not complete");
    for c in 0..args.clients {
        for t in 0..args.transfers {
            let dst = root.join(format!("dst/{c}/{t}"));
            for i in 0..args.files {
                let copy = std::fs::read(dst.join(format!("f{i}"))).unwrap();
                assert_eq!(copy.len(), FILE_BYTES, "{}", dst.display());
            }
        }
    }
    println!("| serve, {total} transfers | |\n|---|---:|");
    println!(
        "| submit latency (create + add + dispatch) | p50 {}, p99 {}, max {} |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap())
    );
    println!(
        "| all submitted | {:.2} s ({:.0} submits/s) |",
        submitted.as_secs_f64(),
        total as f64 / submitted.as_secs_f64()
    );
    println!(
        "| all completed | {:.2} s ({:.0} transfers/s, {:.0} files/s) |",
        done.as_secs_f64(),
        total as f64 / done.as_secs_f64(),
        (total * args.files) as f64 / done.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn submit(client: &Client, src: &Path, dst: &Path) -> String {
    let created = client.create(&CreateRequest::default()).unwrap();
    client
        .add(
            &created.name,
            &AddRequest {
                sources: vec![src.to_str().unwrap().to_owned()],
                dest: dst.to_str().unwrap().to_owned(),
                recursive: true,
                ..AddRequest::default()
            },
        )
        .unwrap();
    client
        .dispatch(
            &created.name,
            &RunRequest {
                threads: Some(1),
                ..RunRequest::default()
            },
        )
        .unwrap();
    created.name
}

fn start(ferry: &Path, root: &Path, socket: &Path, workers: usize) -> Daemon {
    start_on(ferry, &root.join("state/ferry.db"), root, socket, workers)
}

/// `ferry serve` on `store`, its log in `root`; returns once it answers.
pub(crate) fn start_on(
    ferry: &Path,
    store: &Path,
    root: &Path,
    socket: &Path,
    workers: usize,
) -> Daemon {
    let log = std::fs::File::create(root.join("daemon.log")).unwrap();
    let child = Command::new(ferry)
        .arg("--store")
        .arg(store)
        .arg("--socket")
        .arg(socket)
        .args(["serve", "--workers", &workers.to_string()])
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("ferry serve starts");
    let daemon = Daemon(child);
    let client = Client::new(socket).unwrap();
    let deadline = Instant::now() + START_DEADLINE;
    while !client.answers() {
        assert!(Instant::now() < deadline, "the daemon never answered");
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon
}
