//! `ferry-bench`: the benchmarks whose numbers the README and the closing
//! notes quote. Each prints a table; see `ferry-bench help`.

mod copy;
mod events;

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
    /// Event log: events appended per second, and commit-to-delivery latency
    /// in a watcher in another process
    Events(events::EventArgs),
}

fn main() {
    match Cli::parse().command {
        Command::Copy(args) => copy::run(args),
        Command::Events(args) => events::run(args),
    }
}
