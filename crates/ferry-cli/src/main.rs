//! `ferry`: the command-line tool. It only translates between the command
//! line and the `ferry` library; no transfer logic lives here.

/// Every line for stdout goes through `output::line`, so that a reader that
/// went away (`ferry hsm list | head -1`) ends the command quietly instead of
/// panicking as std's `println!` does. Defined before the modules so that it
/// shadows std's macro in all of them.
macro_rules! println {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}

mod cp;
mod daemon;
mod distributed;
mod exit;
mod finalize;
mod generate;
mod habits;
mod hsm;
mod listing;
mod output;
mod signals;
mod status;
mod store;
mod verify;
mod watch;
mod watch_line;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ferry::{RunReport, RunSettings, Transfer};

use exit::Exit;
use store::OpenedStore;

/// The heading of the options every command takes, shown apart from its own.
const GLOBAL: &str = "Global options";

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Move data between storage tiers, durably"
)]
struct Cli {
    /// The state store: a SQLite file, or a PostgreSQL database shared by many nodes
    /// (postgres://USER@HOST/DB[?schema=NAME]) [default: $FERRY_STORE, else
    /// $XDG_STATE_HOME/ferry/ferry.db]
    #[arg(long, global = true, value_name = "PATH|URL", help_heading = GLOBAL)]
    store: Option<PathBuf>,

    /// The daemon's socket [default: $FERRY_SOCKET, else /run/ferry/ferry.sock for root, else
    /// $XDG_RUNTIME_DIR/ferry.sock]
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    socket: Option<PathBuf>,

    /// status, wait, cancel, limit, resume and watch act on the daemon's transfers
    /// (through its socket) instead of the store's
    #[arg(long, global = true, help_heading = GLOBAL)]
    daemon: bool,

    #[command(subcommand)]
    command: Command,
}

// One command line per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Copy files and directories, durably: nothing appears under its final
    /// name until it is complete
    #[command(override_usage = "ferry cp [OPTIONS] SRC... DST")]
    Cp(cp::CpArgs),
    /// Show transfers, or one transfer in detail
    Status(StatusArgs),
    /// Continue a transfer from what is durable
    Resume(ResumeArgs),
    /// Free one transfer so that its name can be used again (cancelled
    /// first, temporaries removed, if it is not over; its history stays)
    Forget {
        /// The transfer's name
        name: String,
        /// Treat an owner on another host as dead
        #[arg(long)]
        force: bool,
    },
    /// Change a transfer's bandwidth limit, also while it runs (recorded
    /// as a transfer.limited event; a resume keeps it)
    Limit {
        /// The transfer's name
        name: String,
        /// Bytes per second: 50M is 50 MiB/s (K, M, G, T); 0 or none: no limit
        #[arg(value_parser = rate)]
        rate: u64,
    },
    /// Cancel a transfer (its temporaries are kept for a resume)
    Cancel {
        /// The transfer's name
        name: String,
    },
    /// Follow the event log: every state change, in order, from a cursor
    Watch(WatchArgs),
    /// Block until a transfer is completed, failed or cancelled; the exit
    /// code says which
    Wait {
        /// The transfer's name
        name: String,
    },
    /// Read committed files back and compare them with their stored
    /// checksums: one line per mismatch or missing file
    Verify(VerifyArgs),
    /// Maintain the store
    #[command(subcommand)]
    Store(StoreCommand),
    /// Post-stage: finish or clean up every transfer of the stores at or
    /// below PATH (one per MPI rank, say), without needing the sources; or
    /// the named transfers of a PostgreSQL --store
    Finalize(finalize::FinalizeArgs),
    /// Run the daemon: move `daemon`-kind transfers for every local user,
    /// with an HTTP/JSON API on a Unix socket, until SIGTERM; on a
    /// PostgreSQL store, daemons of many nodes share it and take over a
    /// dead one's transfers
    Serve {
        /// Transfers moved at once [default: one per core]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        workers: Option<u16>,
        /// Entries one transfer may hold; more are refused (exit 40)
        /// [default: 1000000]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_entries_per_transfer: Option<u64>,
        /// Unfinished transfers one user (root aside) may hold; more are
        /// refused (exit 40) [default: 1024]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_transfers_per_user: Option<u64>,
        /// Entries one user (root aside) may hold across its unfinished
        /// transfers; more are refused (exit 40) [default: 4000000]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_entries_per_user: Option<u64>,
        /// Bytes per second for all the daemon's transfers together (a
        /// node-wide limit, over and above each transfer's own --bwlimit):
        /// 50M is 50 MiB/s (K, M, G, T) [default: none]
        #[arg(long, value_name = "RATE", value_parser = rate)]
        bwlimit: Option<u64>,
    },
    /// HSM coordination: queue archive, restore and remove requests, and
    /// serve them with workers
    #[command(subcommand)]
    Hsm(hsm::HsmCommand),
    /// Move distributed transfers (`cp --distributed`): lease their work
    /// items from a PostgreSQL store, on as many nodes as run it
    Worker(distributed::WorkerArgs),
    /// Write the man pages, or print a shell's completion script
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// Cancel and free every unfinished transfer of the store (--dead: only
    /// those whose owner is dead; --all: completed ones too), removing their
    /// temporaries
    Stop {
        /// Only transfers whose owner process is dead
        #[arg(long, conflicts_with = "all")]
        dead: bool,
        /// Completed transfers too (their names become free)
        #[arg(long)]
        all: bool,
        /// Treat owners on other hosts as dead
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub(crate) struct WatchArgs {
    /// Deliver the events after this sequence number (a saved cursor)
    /// [default: from now for people, with a note of the history before;
    /// 0, all history, with --json]
    #[arg(long, value_name = "SEQ", conflicts_with = "from_now")]
    since: Option<u64>,
    /// Deliver only events from now on
    #[arg(long)]
    from_now: bool,
    /// Only this transfer's events (it need not exist yet)
    #[arg(long, value_name = "NAME")]
    transfer: Option<String>,
    /// Only events of this name (transfer.completed) or family (transfer, file)
    #[arg(long, value_name = "KIND", value_parser = watch::event_name)]
    event: Option<String>,
    /// Stop when this transfer is completed, failed or cancelled; the exit
    /// code says which
    #[arg(long, value_name = "NAME")]
    until_done: Option<String>,
    /// One JSON object per line; a {"bookmark":SEQ} line marks the end of history
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub(crate) enum StoreCommand {
    /// Drop old events: keep the newest N, or those from SEQ on
    Compact {
        /// Keep the newest N events
        #[arg(
            long,
            value_name = "N",
            conflicts_with = "before",
            required_unless_present = "before"
        )]
        keep: Option<u64>,
        /// Drop the events before this sequence number
        #[arg(long, value_name = "SEQ")]
        before: Option<u64>,
    },
    /// Check free space, the reserve and the database's integrity; a store
    /// made read-only by a full disk turns read-write again if there is room
    Check {
        /// JSON on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub(crate) struct RunArgs {
    /// Worker threads [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
    /// Print a JSON summary on stdout instead of text
    #[arg(long)]
    json: bool,
    /// Remove temporaries at the destinations that no transfer of this
    /// store wrote (they are only reported otherwise)
    #[arg(long)]
    clean_orphans: bool,
    /// Refuse to start unless the destination has room for what is left
    /// to copy (and reserve the space of large files)
    #[arg(long)]
    check_space: bool,
    /// Destinations that already match are recorded skipped, not copied:
    /// exists, size, mtime (size and mtime), checksum (reads both) [default:
    /// never; mtime when bringing a finished copy up to date; resume: as
    /// dispatched]
    #[arg(long, value_parser = ["never", "exists", "size", "mtime", "checksum"])]
    skip: Option<String>,
    /// Read what was written back from disk and compare checksums: copied
    /// (each file before its rename), full (and every finished file at the
    /// end) [default: none; resume: as dispatched]
    #[arg(long, value_parser = ["none", "copied", "full"])]
    verify: Option<String>,
    /// One line per file on stdout as it is committed (or skipped, or
    /// removed by --delete)
    #[arg(short, long, conflicts_with = "quiet")]
    verbose: bool,
    /// Print nothing but errors
    #[arg(short, long)]
    quiet: bool,
    /// Bytes per second for the whole transfer, shared by its workers: 50M
    /// is 50 MiB/s (K, M, G, T), 0 none; `ferry limit` changes it while it
    /// runs [default: none; resume: as dispatched or last limited]
    #[arg(long, value_name = "RATE", value_parser = rate)]
    bwlimit: Option<u64>,
}

/// A rate as `ferry limit` says it: `50.00 MiB/s`, or `no limit` for 0.
pub(crate) fn rate_words(rate: u64) -> String {
    if rate > 0 {
        format!("{}/s", indicatif::HumanBytes(rate))
    } else {
        "no limit".into()
    }
}

/// A rate as `--bwlimit` takes it: `20M` for 20 MiB/s, in the largest
/// unit that divides it.
fn rate_flag(rate: u64) -> String {
    for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        if rate >= 1 << shift && rate % (1 << shift) == 0 {
            return format!("{}{unit}", rate >> shift);
        }
    }
    rate.to_string()
}

/// `--bwlimit`'s and `ferry limit`'s RATE; 0 is none.
fn rate(text: &str) -> Result<u64, String> {
    ferry::engine::throttle::parse_rate(text).map(|r| r.unwrap_or(0))
}

#[derive(Args)]
pub(crate) struct StatusArgs {
    /// A transfer's name; all transfers when omitted
    name: Option<String>,
    /// List every file of the transfer
    #[arg(long)]
    files: bool,
    /// JSON on stdout
    #[arg(long)]
    json: bool,
    /// The state as it was right after event SEQ, rebuilt from the event log
    #[arg(long, value_name = "SEQ")]
    at: Option<u64>,
    /// Only transfers in this state
    #[arg(long, value_parser = ["created", "dispatched", "running", "completed", "failed", "cancelled", "finalized"])]
    state: Option<String>,
    /// Only the newest N transfers (after --state)
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// Transfer names, stores, or destination paths (files or directories
    /// whose committed files are checked) [default: every transfer of the store]
    targets: Vec<PathBuf>,
    /// One JSON object per file checked
    #[arg(long)]
    json: bool,
}

impl RunArgs {
    /// The options given here, over `base` (what the transfer was
    /// dispatched with, when it is resumed; else the defaults).
    fn settings(&self, base: RunSettings) -> RunSettings {
        RunSettings {
            workers: self.threads.map(usize::from).or(base.workers),
            skip: self.skip.as_deref().map_or(base.skip, |s| {
                ferry::engine::skip::SkipRule::parse(s).expect("clap checked")
            }),
            verify: self.verify.as_deref().map_or(base.verify, |v| {
                ferry::verify::Verify::parse(v).expect("clap checked")
            }),
            check_space: self.check_space || base.check_space,
            clean_orphans: self.clean_orphans || base.clean_orphans,
            bwlimit: self.bwlimit.map_or(base.bwlimit, |n| (n > 0).then_some(n)),
            ..base
        }
    }

    /// Notes on stderr (what a resume runs with, a re-attach) and the
    /// summary: not for scripts (--json) nor with -q.
    fn chatty(&self) -> bool {
        !self.json && !self.quiet
    }

    /// Sets the options of a new dispatch; returns the worker count.
    fn apply(&self, transfer: &mut Transfer, base: RunSettings) -> usize {
        let settings = self.settings(base);
        transfer.apply_settings(&settings);
        settings.workers.unwrap_or_else(ferry::default_workers)
    }

    /// Sets the options of a resume: those recorded at its last dispatch,
    /// overridden by those given here; says which it uses. Returns the
    /// worker count.
    fn apply_to_resume(&self, transfer: &mut Transfer) -> Result<usize, Exit> {
        self.apply_to_resume_or(transfer, RunSettings::default())
    }

    /// [`RunArgs::apply_to_resume`], with `unrecorded` for a transfer that
    /// was never dispatched (so recorded no settings).
    fn apply_to_resume_or(
        &self,
        transfer: &mut Transfer,
        unrecorded: RunSettings,
    ) -> Result<usize, Exit> {
        let name = transfer.record().name.clone();
        let recorded = match transfer.recorded_settings() {
            Ok(recorded) => recorded,
            Err(ferry::Error::Store(ferry::store::StoreError::Compacted { .. })) => {
                eprintln!(
                    "ferry: the options {name} was dispatched with were compacted out of the \
                     event log; resuming with the defaults and those given here"
                );
                None
            }
            Err(e) => return Err(e.into()),
        };
        let recorded_any = recorded.is_some();
        let settings = self.settings(recorded.unwrap_or(unrecorded));
        transfer.apply_settings(&settings);
        let workers = settings.workers.unwrap_or_else(ferry::default_workers);
        // A completed transfer is refused by the resume itself, in one line.
        let resumable = !matches!(
            transfer.record().state,
            ferry::TransferState::Completed | ferry::TransferState::Finalized
        );
        if self.chatty() && resumable {
            let mut words = format!(
                "--threads {workers} --skip {} --verify {}",
                settings.skip.as_str(),
                verify_word(settings.verify)
            );
            if settings.check_space {
                words.push_str(" --check-space");
            }
            if settings.clean_orphans {
                words.push_str(" --clean-orphans");
            }
            for (given, flag) in [
                (settings.update, " --update"),
                (settings.no_clobber, " --no-clobber"),
                (settings.delete, " --delete"),
            ] {
                if given {
                    words.push_str(flag);
                }
            }
            if let Some(rate) = settings.bwlimit {
                words.push_str(&format!(
                    " --bwlimit {} ({})",
                    rate_flag(rate),
                    rate_words(rate)
                ));
            }
            if !settings.filter.is_empty() {
                words.push_str(&format!(
                    " ({} include/exclude rules)",
                    settings.filter.len()
                ));
            }
            let origin = if recorded_any {
                "as dispatched, with what is given here"
            } else {
                "defaults, with what is given here"
            };
            eprintln!("ferry: resuming {name} with {words} ({origin})");
        }
        Ok(workers)
    }
}

fn verify_word(verify: ferry::verify::Verify) -> &'static str {
    match verify {
        ferry::verify::Verify::None => "none",
        ferry::verify::Verify::Copied => "copied",
        ferry::verify::Verify::Full => "full",
    }
}

#[derive(Args, Clone)]
struct ResumeArgs {
    /// The transfer's name
    name: String,
    #[command(flatten)]
    run: RunArgs,
}

fn main() -> ExitCode {
    output::start_clock();
    let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => match habits::did_you_mean(&e) {
            Some(hint) => {
                let _ = e.print();
                eprintln!("ferry: did you mean: {hint}");
                return ExitCode::from(exit::USAGE);
            }
            None => e.exit(),
        },
    };
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let (Command::Cp(args), Some(("cp", cp_matches))) = (&mut cli.command, matches.subcommand())
    {
        args.order_rules(cp_matches);
    }
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(exit) => exit.into(),
    }
}

fn run(cli: Cli) -> Result<Exit, Exit> {
    // finalize names its stores itself (or takes a PostgreSQL --store).
    if let Command::Finalize(args) = cli.command {
        return finalize::run(args, cli.store.as_deref());
    }
    if let Command::Generate(what) = cli.command {
        return generate::run::<Cli>(what);
    }
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(ferry_serve::server::default_socket_path);
    if let Command::Serve {
        workers,
        max_entries_per_transfer,
        max_transfers_per_user,
        max_entries_per_user,
        bwlimit,
    } = cli.command
    {
        let size = |n: Option<u64>| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        return daemon::serve(
            cli.store,
            socket,
            workers,
            size(max_entries_per_transfer),
            size(max_transfers_per_user),
            size(max_entries_per_user),
            bwlimit,
        );
    }
    // Distributed work needs the store every node reaches: refused before
    // any store is opened (or a SQLite one created).
    let distributed = match &cli.command {
        Command::Cp(args) if args.distributed => Some("cp --distributed"),
        Command::Worker(_) => Some("ferry worker"),
        _ => None,
    };
    if let Some(what) = distributed {
        let location = cli.store.clone().unwrap_or_else(ferry::default_store_path);
        distributed::require_postgres(&location, what)?;
    }
    // A dry run writes nothing: no store is created, no daemon asked. One
    // that exists is read, for the copy a run would repeat.
    if let Command::Cp(args) = &cli.command
        && args.dry_run
    {
        let location = cli.store.clone().unwrap_or_else(ferry::default_store_path);
        let opened = OpenedStore::open(&location, store::Create::Nothing).ok();
        return cp::dry_run(args, opened.map(|o| o.store()).as_deref());
    }
    if let Command::Cp(args) = &cli.command
        && daemon::wants_daemon(&args.kind, &socket)
    {
        let Command::Cp(args) = cli.command else {
            unreachable!("matched above")
        };
        return daemon::cp(&socket, args);
    }
    if cli.daemon {
        return in_daemon(&socket, cli.command);
    }
    // `watch --until-done NAME` waits for a name that need not exist yet,
    // so it is never "not found": a name the store lacks and the daemon
    // has is the daemon's.
    if let Command::Watch(WatchArgs {
        until_done: Some(name),
        ..
    }) = &cli.command
        && !store_has(&cli, name)
        && daemon::has(&socket, name)
    {
        return in_daemon(&socket, cli.command);
    }
    // One namespace: a transfer the store does not have may be the
    // daemon's (`cp --kind daemon`), found there when the daemon answers.
    let twin = daemon_twin(&cli.command);
    match (run_local(cli, &socket), twin) {
        (Err(Exit::Error(e)), Some(twin)) if is_not_here(&e) && daemon::answers(&socket) => {
            match in_daemon(&socket, twin) {
                // Neither side has it: the store's refusal, and that the
                // daemon was asked too.
                Err(Exit::Daemon(ferry_serve::client::ClientError::Api { kind, .. }))
                    if kind == "transfer_not_found" =>
                {
                    eprintln!(
                        "ferry: the daemon at {} has no transfer of that name either",
                        socket.display()
                    );
                    Err(Exit::Error(e))
                }
                other => other,
            }
        }
        (result, _) => result,
    }
}

/// A command for the daemon's transfers: `verify` reads them back through
/// the daemon, the others are the daemon's own commands.
fn in_daemon(socket: &std::path::Path, command: Command) -> Result<Exit, Exit> {
    match command {
        Command::Verify(args) if !args.targets.is_empty() => {
            verify::run_in_daemon(socket, &args.targets, args.json)
        }
        command => daemon::command(socket, command),
    }
}

/// Whether the store (when there is one) has a transfer of that name.
fn store_has(cli: &Cli, name: &str) -> bool {
    let location = cli.store.clone().unwrap_or_else(ferry::default_store_path);
    OpenedStore::open(&location, store::Create::Nothing).is_ok_and(|opened| {
        opened
            .store()
            .transfer_by_name(name)
            .is_ok_and(|t| t.is_some())
    })
}

/// The same command for the daemon, for those the daemon serves.
fn daemon_twin(command: &Command) -> Option<Command> {
    Some(match command {
        // Without a name too: a user with no store still has the daemon's.
        Command::Status(args) if args.at.is_none() && !args.files => Command::Status(StatusArgs {
            name: args.name.clone(),
            files: false,
            json: args.json,
            at: None,
            state: args.state.clone(),
            limit: args.limit,
        }),
        Command::Wait { name } => Command::Wait { name: name.clone() },
        Command::Cancel { name } => Command::Cancel { name: name.clone() },
        Command::Limit { name, rate } => Command::Limit {
            name: name.clone(),
            rate: *rate,
        },
        Command::Resume(args) => Command::Resume(args.clone()),
        Command::Verify(args) if !args.targets.is_empty() => Command::Verify(VerifyArgs {
            targets: args.targets.clone(),
            json: args.json,
        }),
        _ => return None,
    })
}

/// The store has no such transfer (or there is no store at all).
fn is_not_here(e: &ferry::Error) -> bool {
    matches!(
        e,
        ferry::Error::TransferNotFound { .. }
            | ferry::Error::Store(ferry::store::StoreError::NoStore { .. })
    )
}

fn run_local(cli: Cli, socket: &std::path::Path) -> Result<Exit, Exit> {
    let location = cli.store.clone().unwrap_or_else(ferry::default_store_path);
    // Only commands that make transfers or requests create a store; a
    // store named by the user never gets a directory made for it.
    let explicit =
        cli.store.is_some() || std::env::var_os("FERRY_STORE").is_some_and(|v| !v.is_empty());
    let create = match (&cli.command, explicit) {
        (Command::Cp(_) | Command::Hsm(_), false) => store::Create::WithDirectory,
        (Command::Cp(_) | Command::Hsm(_), true) => store::Create::FileOnly,
        _ => store::Create::Nothing,
    };
    let opened = OpenedStore::open(&location, create)?;
    let copies = matches!(cli.command, Command::Cp(_) | Command::Resume(_));
    let result = run_command(cli.command, &opened, socket);
    if copies && let OpenedStore::Sqlite(sqlite) = &opened {
        // The copy's every commit is durable in the log already: this only
        // spares the store's directory megabytes of it, so a failure to
        // empty it changes nothing the command said.
        let _ = sqlite.empty_log();
    }
    result
}

fn run_command(
    command: Command,
    opened: &OpenedStore,
    socket: &std::path::Path,
) -> Result<Exit, Exit> {
    let store = opened.store();
    match command {
        Command::Finalize(_) | Command::Serve { .. } | Command::Generate(_) => {
            unreachable!("handled above")
        }
        Command::Stop { dead, all, force } => finalize::stop(store.as_ref(), dead, all, force),
        Command::Forget { name, force } => finalize::forget(store.as_ref(), &name, force),
        Command::Hsm(command) => hsm::run(opened.queue(), command),
        Command::Worker(args) => distributed::worker(opened, args),
        Command::Cp(args) if args.distributed => distributed::cp(opened, &args),
        Command::Cp(args) => cp::cp(store, args),
        Command::Status(StatusArgs {
            at: Some(seq),
            name,
            json,
            ..
        }) => output::status_at(store.as_ref(), seq, name.as_deref(), json),
        Command::Status(args) => {
            let mut rows = status::local_rows(store.as_ref(), args.name.as_deref(), args.files)?;
            distributed::add_nodes(opened, &mut rows)?;
            // Every transfer of the user's: the daemon's too, when it answers.
            if args.name.is_none() {
                rows.extend(daemon::rows(socket, &rows));
            }
            status::select(&mut rows, args.state.as_deref(), args.limit);
            let nothing = format!("no transfers in {}", store.location().display());
            status::print(&rows, args.name.is_some(), args.json, &nothing);
            Ok(Exit::Ok)
        }
        Command::Watch(args) => watch::watch(
            store.as_ref(),
            watch::WatchArgs {
                since: args.since,
                from_now: args.from_now,
                transfer: args.transfer,
                event: args.event,
                until_done: args.until_done,
                json: args.json,
            },
        ),
        Command::Wait { name } => watch::wait(store.as_ref(), &name),
        Command::Store(StoreCommand::Compact { keep, before }) => {
            let last = store.last_seq().map_err(ferry::Error::from)?;
            let before = match (keep, before) {
                (Some(keep), _) => (last + 1).saturating_sub(keep),
                (None, Some(before)) => before,
                (None, None) => unreachable!("clap requires --keep or --before"),
            };
            let horizon = store.compact(before).map_err(ferry::Error::from)?;
            println!(
                "ferry: events up to {horizon} compacted in {}; watchers may continue from --since {horizon}",
                store.location().display()
            );
            Ok(Exit::Ok)
        }
        Command::Store(StoreCommand::Check { json }) => {
            output::store_check(opened.sqlite("store check")?, json)
        }
        Command::Verify(args) => verify::run(store.as_ref(), socket, &args.targets, args.json),
        Command::Resume(args) => {
            let mut transfer = Transfer::open(store, &args.name)?;
            // Its entries may be part of a plan (see `Transfer::create_planned`).
            let record = transfer.record();
            if record.state == ferry::TransferState::Created
                && record.owner_liveness() == ferry::owner::Liveness::Dead
            {
                return Err(Exit::Error(ferry::Error::NeverDispatched {
                    name: record.name.clone(),
                    id: record.id,
                    pid: record.owner.pid,
                    host: record.owner.host.clone(),
                }));
            }
            let workers = args.run.apply_to_resume(&mut transfer)?;
            Ok(move_and_wait(transfer, Start::Resume, workers, &args.run)?)
        }
        Command::Limit { name, rate } => {
            let transfer = Transfer::open(store, &name)?;
            // Over and done: no mover will ever read the rate (a failed or
            // cancelled transfer keeps it for its resume).
            let record = transfer.record();
            if matches!(
                record.state,
                ferry::TransferState::Completed | ferry::TransferState::Finalized
            ) {
                return Err(Exit::Error(ferry::Error::NothingToDo {
                    name: record.name.clone(),
                    id: record.id,
                    state: record.state,
                    action: "limit",
                }));
            }
            transfer.limit((rate > 0).then_some(rate))?;
            println!(
                "ferry: {name} (id {}) now moves at {}; a running mover takes it within a second",
                transfer.record().id,
                rate_words(rate)
            );
            Ok(Exit::Ok)
        }
        Command::Cancel { name } => {
            let mut transfer = Transfer::open(std::sync::Arc::clone(&store), &name)?;
            // A finished copy keeps its name while a re-run of it is
            // planned under a provisional one: that plan is what to cancel.
            if transfer.record().state.is_terminal()
                && let Some(plan) = ferry::plans_of(store.as_ref(), &name)?.into_iter().next()
            {
                transfer = Transfer::open(std::sync::Arc::clone(&store), &plan.name)?;
            }
            let record = transfer.record();
            // A transfer that cannot become cancelled (completed, finalized,
            // cancelled already) has nothing to stop: said as such, not as
            // the store's refusal of an illegal transition.
            if !ferry::TransferState::Cancelled
                .allowed_from()
                .contains(&record.state)
            {
                return Err(Exit::Error(ferry::Error::NothingToDo {
                    name: record.name.clone(),
                    id: record.id,
                    state: record.state,
                    action: "cancel",
                }));
            }
            // Never dispatched: its plan may be partial, so it is dropped
            // (cancelled and freed at once), never continued; a live
            // planner finds it gone at its next batch or its dispatch.
            if record.state == ferry::TransferState::Created {
                let (id, pid) = (record.id, record.owner.pid);
                transfer.cancel_plan()?;
                let whose = if record.owner_liveness() == ferry::owner::Liveness::Dead {
                    "its owner died while planning it".to_owned()
                } else {
                    format!("process {pid} was planning it, and stops")
                };
                println!(
                    "ferry: cancelled {name} (id {id}) and dropped it: it was never dispatched \
                     ({whose}), and nothing of it was copied; run the command that made it \
                     again to copy anew"
                );
                return Ok(Exit::Ok);
            }
            transfer.cancel()?;
            println!(
                "ferry: cancelled {name} (id {}); `ferry resume {name}` continues it",
                transfer.record().id
            );
            Ok(Exit::Ok)
        }
    }
}

pub(crate) enum Start {
    Dispatch,
    Resume,
}

/// Moves the data with a progress bar on a terminal and waits; SIGINT or
/// SIGTERM meanwhile cancels the transfer (recorded as an interruption),
/// clears the bar and ends with how to continue.
pub(crate) fn move_and_wait(
    mut transfer: Transfer,
    start: Start,
    workers: usize,
    run: &RunArgs,
) -> Result<Exit, Exit> {
    signals::cancel_on_interrupt(transfer.canceller())
        .map_err(|e| ferry::Error::io(std::path::Path::new("signal handlers"), e))?;
    let progress = transfer.progress();
    let (store, id) = (transfer.store(), transfer.record().id);
    // -v lists files on stdout: the bar would garble it.
    let bar = !(run.quiet || run.verbose || run.json);
    let report = listing::with_listing(store, id, run.verbose && !run.json, || {
        output::with_progress(
            &progress,
            !bar,
            || {
                match start {
                    Start::Dispatch => transfer.dispatch(workers)?,
                    Start::Resume => transfer.resume(workers)?,
                }
                transfer.wait()
            },
            // Interrupted: the bar goes, what happened is said instead.
            |report: &RunReport| signals::received().is_none().then(|| report.counts()),
        )
    })?;
    if report.state == ferry::TransferState::Cancelled
        && let Some(signal) = signals::received()
    {
        output::report(&report, run.json, run.quiet);
        return Err(Exit::Interrupted(signals::report_interrupted(
            &report.name,
            signal,
        )));
    }
    Ok(finish(&report, run.json, run.quiet))
}

pub(crate) fn finish(report: &RunReport, json: bool, quiet: bool) -> Exit {
    output::report(report, json, quiet);
    match report.state {
        ferry::TransferState::Completed => Exit::Ok,
        // A re-run that found a post-staged copy whole: nothing to do.
        ferry::TransferState::Finalized
            if report.failures.is_empty() && report.files_committed == report.files_total =>
        {
            Exit::Ok
        }
        ferry::TransferState::Cancelled => Exit::Cancelled,
        _ => Exit::TransferFailed,
    }
}
