//! `ferry-bench`: the benchmarks whose numbers docs/benchmarks.md and the closing
//! notes quote. Each prints a table; see `ferry-bench help`.

mod bwlimit;
mod copy;
mod distributed;
mod events;
mod finalize;
mod hsm;
mod serve;
mod status;
mod tree;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry-bench",
    about = "ferry's benchmarks, each against its baseline, side by side"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ferry cp -a against cp -a + sync -f and rsync -a + sync -f, durable
    Copy(copy::CopyArgs),
    /// ferry cp --bwlimit of one large file at a few rates: the achieved
    /// rate over the whole command and over the data phase, against the limit
    Bwlimit(bwlimit::BwlimitArgs),
    /// Event log: events appended per second, and commit-to-delivery latency
    /// in a watcher in another process
    Events(events::EventArgs),
    /// Post-stage: finalize many per-rank stores (copied, not yet renamed)
    Finalize(finalize::FinalizeArgs),
    /// The daemon under load: concurrent clients submitting small
    /// transfers; submit latency and throughput
    Serve(serve::ServeArgs),
    /// `status` of one 1,000,000-entry transfer through the daemon: latency
    /// and the daemon's resident memory
    Status(status::StatusArgs),
    /// HSM queue: enqueue (batched and one process per request), lease +
    /// ack with 1, 2 and 4 workers, and a restore behind 20,000 archives
    Hsm(hsm::HsmArgs),
    /// Many small files in many directories (W4 and its re-run) and a growth
    /// series of empty files: wall time, peak RSS and store size against cp -a,
    /// rsync -a and dcp/dsync
    Tree(tree::TreeArgs),
    /// One copy by 1, 2 and 4 `ferry worker`s through PostgreSQL beside
    /// `ferry cp --threads N` (and dcp with N ranks): W4 and 4 x 1 GiB
    Distributed(distributed::DistributedArgs),
}

fn main() {
    match Cli::parse().command {
        Command::Copy(args) => copy::run(args),
        Command::Bwlimit(args) => bwlimit::run(args),
        Command::Events(args) => events::run(args),
        Command::Finalize(args) => finalize::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Status(args) => status::run(args),
        Command::Hsm(args) => hsm::run(args),
        Command::Tree(args) => tree::run(args),
        Command::Distributed(args) => distributed::run(args),
    }
}

/// `--ferry PATH`, else the `ferry` built beside this binary.
pub fn ferry_binary(given: Option<std::path::PathBuf>) -> std::path::PathBuf {
    let ferry = given.unwrap_or_else(|| {
        std::env::current_exe()
            .expect("our own path")
            .with_file_name("ferry")
    });
    assert!(
        ferry.exists(),
        "no ferry binary at {}: build it (cargo build --release) or pass --ferry",
        ferry.display()
    );
    ferry
}
