//! `ferry`: the command-line tool. It only translates between the command
//! line and the `ferry` library; no transfer logic lives here.

mod exit;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use ferry::store::{SqliteStore, Store};
use ferry::{Kind, Preserve, RunReport, Transfer};

use exit::Exit;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Move data between storage tiers, durably"
)]
struct Cli {
    /// The state store [default: $FERRY_STORE, else $XDG_STATE_HOME/ferry/ferry.db]
    #[arg(long, global = true, value_name = "PATH")]
    store: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy files and directories, durably: nothing appears under its final
    /// name until it is complete
    Cp(CpArgs),
    /// Show transfers, or one transfer in detail
    Status(StatusArgs),
    /// Continue a transfer from what is durable
    Resume(ResumeArgs),
    /// Cancel a transfer (its temporaries are kept for a resume)
    Cancel {
        /// The transfer's name
        name: String,
    },
}

#[derive(Args)]
struct CpArgs {
    /// Copy directories recursively
    #[arg(short, long)]
    recursive: bool,
    /// Archive: -r, and keep mode, ownership and times
    #[arg(short, long)]
    archive: bool,
    /// Keep mode, ownership and times
    #[arg(short, long)]
    preserve: bool,
    /// Name the transfer, to find it again (a dead owner's transfer of this
    /// name is re-attached and continued)
    #[arg(long)]
    name: Option<String>,
    /// How bytes move: sync (this thread) or threads (a pool)
    #[arg(long, default_value = "threads", value_parser = ["sync", "threads"])]
    kind: String,
    #[command(flatten)]
    run: RunArgs,
    /// Sources, then the destination
    #[arg(required = true, num_args = 2.., value_name = "SRC… DST")]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Print a JSON summary on stdout instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StatusArgs {
    /// A transfer's name; all transfers when omitted
    name: Option<String>,
    /// List every file of the transfer
    #[arg(long)]
    files: bool,
    /// JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ResumeArgs {
    /// The transfer's name
    name: String,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    output::start_clock();
    let cli = Cli::parse();
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(exit) => exit.into(),
    }
}

fn run(cli: Cli) -> Result<Exit, Exit> {
    let store_path = cli.store.clone().unwrap_or_else(ferry::default_store_path);
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&store_path).map_err(|e| Exit::from(ferry::Error::from(e)))?);
    match cli.command {
        Command::Cp(args) => cp(store, args),
        Command::Status(args) => {
            output::status(store.as_ref(), args.name.as_deref(), args.files, args.json)
        }
        Command::Resume(args) => {
            let mut transfer = Transfer::open(store, &args.name)?;
            let workers = workers(&args.run);
            let report = output::with_progress(&transfer.progress(), args.run.json, || {
                transfer.resume(workers)?;
                transfer.wait()
            })?;
            Ok(finish(&report, args.run.json))
        }
        Command::Cancel { name } => {
            let transfer = Transfer::open(store, &name)?;
            transfer.cancel()?;
            println!(
                "ferry: cancelled {name} (id {}); `ferry resume {name}` continues it",
                transfer.record().id
            );
            Ok(Exit::Ok)
        }
    }
}

fn cp(store: Arc<dyn Store>, args: CpArgs) -> Result<Exit, Exit> {
    let kind = Kind::parse(&args.kind).expect("clap checked the kind");
    let preserve = if args.archive || args.preserve {
        Preserve::ALL
    } else {
        Preserve::NONE
    };
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let entries = ferry::plan(sources, dest, args.recursive || args.archive)?;
    let mut transfer = Transfer::create(store, args.name.as_deref(), kind, preserve, &entries)?;
    let workers = workers(&args.run);
    let progress = transfer.progress();
    let report = if transfer.reattached() {
        let record = transfer.record();
        eprintln!(
            "ferry: re-attached transfer {} (id {}) left by dead process {} on {}; continuing it",
            record.name, record.id, record.owner.pid, record.owner.host
        );
        output::with_progress(&progress, args.run.json, || {
            transfer.resume(workers)?;
            transfer.wait()
        })?
    } else {
        output::with_progress(&progress, args.run.json, || {
            transfer.dispatch(workers)?;
            transfer.wait()
        })?
    };
    Ok(finish(&report, args.run.json))
}

fn workers(args: &RunArgs) -> usize {
    args.threads
        .map_or_else(ferry::default_workers, usize::from)
}

fn finish(report: &RunReport, json: bool) -> Exit {
    output::report(report, json);
    match report.state {
        ferry::TransferState::Completed => Exit::Ok,
        ferry::TransferState::Cancelled => Exit::Cancelled,
        _ => Exit::TransferFailed,
    }
}
