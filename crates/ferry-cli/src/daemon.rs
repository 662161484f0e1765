//! The CLI's side of the daemon: `ferry serve`, `cp --kind daemon|default`
//! and `--daemon` for status, wait, cancel, resume and watch. Translation
//! only: requests through [`ferry_serve::client::Client`], answers to text,
//! JSON and exit codes.

use std::path::{Path, PathBuf};

use ferry_serve::api::{AddRequest, CreateRequest, RunRequest, SameCopyView, TransferView};
use ferry_serve::client::{ApiPathError, Client, ClientError, api_path};
use indicatif::HumanBytes;

use crate::cp::CpArgs;
use crate::exit::Exit;
use crate::status::{self, StatusRow};
use crate::{Command, RunArgs};

pub fn serve(
    store: Option<PathBuf>,
    socket: PathBuf,
    workers: Option<u16>,
    entries_per_transfer_max: Option<usize>,
    transfers_per_user_max: Option<usize>,
    entries_per_user_max: Option<usize>,
    bwlimit: Option<u64>,
) -> Result<Exit, Exit> {
    let store = store.unwrap_or_else(ferry::default_store_path);
    // A PostgreSQL store is shared with the daemons of other nodes; a path
    // is this node's SQLite file, which the daemon opens privately.
    let store = match store
        .to_str()
        .filter(|s| ferry_postgres::is_postgres_url(s))
    {
        Some(_) => {
            let opened = crate::store::OpenedStore::open(&store, crate::store::Create::Nothing)?;
            ferry_serve::server::DaemonStore::Shared(opened.store())
        }
        None => ferry_serve::server::DaemonStore::File(store),
    };
    let config = ferry_serve::server::Config {
        store,
        socket,
        workers: workers.map_or_else(ferry::default_workers, usize::from),
        entries_per_transfer_max: entries_per_transfer_max
            .unwrap_or(ferry_serve::server::ENTRIES_PER_TRANSFER_MAX),
        transfers_per_user_max: transfers_per_user_max
            .unwrap_or(ferry_serve::server::TRANSFERS_PER_USER_MAX),
        entries_per_user_max: entries_per_user_max
            .unwrap_or(ferry_serve::server::ENTRIES_PER_USER_MAX),
        bwlimit: bwlimit.filter(|&rate| rate > 0),
    };
    ferry_serve::server::serve(config).map_err(Exit::Serve)?;
    Ok(Exit::Ok)
}

/// `daemon`, or `default` while a daemon answers on the socket.
pub fn wants_daemon(kind: &str, socket: &Path) -> bool {
    match kind {
        "daemon" => true,
        "default" => Client::new(socket).is_ok_and(|c| c.answers()),
        _ => false,
    }
}

/// Whether a daemon answers on `socket`.
pub fn answers(socket: &Path) -> bool {
    Client::new(socket).is_ok_and(|c| c.answers())
}

/// Whether a daemon answers on `socket` and has a transfer of that name
/// (of the caller's).
pub fn has(socket: &Path, name: &str) -> bool {
    Client::new(socket).is_ok_and(|c| c.answers() && c.status(name).is_ok())
}

fn client(socket: &Path) -> Result<Client, Exit> {
    Client::new(socket).map_err(Exit::Daemon)
}

/// The daemon runs elsewhere: it needs absolute paths, in UTF-8 (JSON).
fn absolute(path: &Path) -> Result<String, Exit> {
    // Refused here, before the daemon is asked: said as ferry's own.
    api_path(path, "--kind threads").map_err(|e| match e {
        ApiPathError::Io(e) => Exit::from(e),
        ApiPathError::NotUtf8(ClientError::Api { message, .. }) => Exit::Refused {
            code: crate::exit::DAEMON_MALFORMED,
            message: format!("not sent to the daemon: {message}"),
        },
        ApiPathError::NotUtf8(e) => Exit::Daemon(e),
    })
}

pub fn cp(socket: &Path, args: CpArgs) -> Result<Exit, Exit> {
    if let Some(flag) = args.local_only() {
        return Err(Exit::Error(ferry::Error::BadOption {
            option: "--kind daemon",
            why: format!("the daemon does not take {flag} yet: copy with --kind threads"),
        }));
    }
    let client = client(socket)?;
    let (dest, sources) = args.paths.split_last().expect("clap requires two paths");
    let add = AddRequest {
        sources: sources
            .iter()
            .map(|s| absolute(s))
            .collect::<Result<_, _>>()?,
        dest: absolute(dest)?,
        recursive: args.recursive || args.archive,
        hard_links: args.archive,
        xattrs: args
            .xattrs
            .clone()
            .or_else(|| args.archive.then(|| "all".into())),
        rerun: !args.new,
    };
    let mut run = RunRequest {
        update: args.update,
        no_clobber: args.no_clobber,
        ..run_request(&args.run)
    };
    let created = client
        .create(&CreateRequest {
            name: args.name.clone(),
            preserve: args.archive || args.preserve,
            checksum: Some(args.checksum.clone()),
        })
        .map_err(Exit::Daemon)?;
    // A re-attached transfer whose caller died before dispatching it takes
    // this call's sources, as a new one does.
    let view = if created.reattached && created.state != "created" {
        eprintln!(
            "ferry: re-attached transfer {} (id {}) in the daemon; resuming it",
            created.name, created.id
        );
        client.resume(&created.name, &run)
    } else {
        if created.reattached {
            eprintln!(
                "ferry: re-attached transfer {} (id {}), never dispatched, in the daemon",
                created.name, created.id
            );
        }
        let added = match client.add(&created.name, &add) {
            Ok(added) => added,
            Err(e) => {
                // Nothing of it ran: do not leave it behind as `created`.
                let _ = client.cancel(&created.name);
                return Err(Exit::Daemon(e));
            }
        };
        match added.same_copy {
            None => client.dispatch(&created.name, &run),
            Some(same) if matches!(same.state.as_str(), "completed" | "finalized") => {
                let skip = run.skip.get_or_insert_with(|| "mtime".into());
                eprintln!(
                    "ferry: transfer {} (id {}) in the daemon already copied this to {}; bringing \
                     it up to date (--skip {skip}: files that match are not copied again; --new \
                     copies anew with cp's rules)",
                    same.name,
                    same.id,
                    dest.display()
                );
                client.dispatch(&created.name, &run)
            }
            Some(same) => {
                // That transfer is this copy: the new one is not needed.
                let _ = client.cancel(&created.name);
                continue_same_copy(&client, &same, &run)
            }
        }
    }
    .map_err(Exit::Daemon)?;
    if !args.wait {
        if args.run.json {
            println!("{}", serde_json::to_string(&view).expect("views serialize"));
        } else {
            println!(
                "ferry: transfer {} (id {}) dispatched to the daemon on {}; `ferry wait {}` waits \
                 for it",
                view.name,
                view.id,
                socket.display(),
                view.name
            );
        }
        return Ok(Exit::Ok);
    }
    wait(&client, &view.name, args.run.json)
}

/// A re-run of a daemon copy that is not over: the daemon moves it still
/// (after a restart too), or it failed or was cancelled and is resumed.
fn continue_same_copy(
    client: &Client,
    same: &SameCopyView,
    run: &RunRequest,
) -> Result<TransferView, ClientError> {
    let (doing, view) = match same.state.as_str() {
        "failed" | "cancelled" => ("resuming it", client.resume(&same.name, run)),
        // Its caller died between adding and dispatching.
        "created" => ("dispatching it", client.dispatch(&same.name, run)),
        _ => ("the daemon is moving it", client.status(&same.name)),
    };
    eprintln!(
        "ferry: this copy is transfer {} (id {}) in the daemon, left {}; {doing} \
         (`ferry cp --new` copies anew with cp's rules)",
        same.name, same.id, same.state,
    );
    view
}

/// The run options a daemon dispatch or resume takes, as the local ones.
fn run_request(args: &RunArgs) -> RunRequest {
    RunRequest {
        threads: args.threads,
        skip: args.skip.clone(),
        verify: args.verify.clone(),
        check_space: args.check_space,
        // Modes as a local cp would give them: the daemon has its own umask.
        umask: Some(ferry::engine::current_umask()),
        clean_orphans: args.clean_orphans,
        update: false,
        no_clobber: false,
        bwlimit: args.bwlimit,
    }
}

fn wait(client: &Client, name: &str, json: bool) -> Result<Exit, Exit> {
    let done = client.wait(name).map_err(Exit::Daemon)?;
    let view = client.status(name).map_err(Exit::Daemon)?;
    report(&view, json);
    Ok(outcome(&done.state))
}

fn outcome(state: &str) -> Exit {
    match state {
        "completed" | "finalized" => Exit::Ok,
        "cancelled" => Exit::Cancelled,
        _ => Exit::TransferFailed,
    }
}

fn report(view: &TransferView, json: bool) {
    if json {
        println!("{}", serde_json::to_string(view).expect("views serialize"));
        return;
    }
    for failure in &view.failures {
        eprintln!("ferry: {}: {}", failure.path, failure.error);
    }
    for warning in &view.warnings {
        eprintln!("ferry: warning: {warning}");
    }
    if let Some(error) = &view.error {
        eprintln!("ferry: transfer {} {}: {error}", view.name, view.state);
    }
    let counts = ferry::FileCounts {
        files: view.files,
        copied: view.files_committed,
        skipped: view.files_skipped,
        failed: view.files_failed,
    };
    println!(
        "ferry: {} (id {}) {}: {counts}; {} of {} durable",
        view.name,
        view.id,
        view.state,
        HumanBytes(view.bytes_durable),
        HumanBytes(view.bytes)
    );
}

/// The daemon's transfers, as rows of plain `ferry status`, when a daemon
/// answers on `socket` (none otherwise: the store's are all there is).
/// Those already in `local` (a daemon on the user's own store) are not
/// listed twice.
pub fn rows(socket: &Path, local: &[StatusRow]) -> Vec<StatusRow> {
    let Ok(client) = Client::new(socket) else {
        return Vec::new();
    };
    if !client.answers() {
        return Vec::new();
    }
    match client.list() {
        Ok(views) => views
            .iter()
            .map(|v| StatusRow::daemon(v, socket))
            .filter(|row| !local.iter().any(|l| l.same_transfer(row)))
            .collect(),
        Err(e) => {
            eprintln!(
                "ferry: the daemon's transfers are not listed: {}",
                ferry::words::in_words(&e.to_string())
            );
            Vec::new()
        }
    }
}

/// `ferry --daemon status|wait|cancel|resume|watch`.
pub fn command(socket: &Path, command: Command) -> Result<Exit, Exit> {
    let client = client(socket)?;
    let daemon = |r: Result<TransferView, ClientError>| r.map_err(Exit::Daemon);
    match command {
        Command::Status(args) if args.at.is_none() && !args.files => {
            let views = match &args.name {
                Some(name) => vec![daemon(client.status(name))?],
                None => client.list().map_err(Exit::Daemon)?,
            };
            let mut rows: Vec<_> = views.iter().map(|v| StatusRow::daemon(v, socket)).collect();
            status::select(&mut rows, args.state.as_deref(), args.limit);
            let nothing = format!("no transfers in the daemon at {}", socket.display());
            status::print(&rows, args.name.is_some(), args.json, &nothing);
        }
        Command::Wait { name } => return wait(&client, &name, false),
        Command::Cancel { name } => {
            let view = daemon(client.cancel(&name))?;
            println!(
                "ferry: cancelled {name} (id {}) in the daemon; `ferry --daemon resume {name}` \
                 continues it",
                view.id
            );
        }
        Command::Limit { name, rate } => {
            let view = daemon(client.limit(&name, (rate > 0).then_some(rate)))?;
            println!(
                "ferry: {name} (id {}) in the daemon now moves at {}; a running mover takes it \
                 within a second",
                view.id,
                crate::rate_words(rate)
            );
        }
        Command::Resume(args) => {
            let view = daemon(client.resume(&args.name, &run_request(&args.run)))?;
            println!(
                "ferry: resuming {} (id {}) in the daemon",
                view.name, view.id
            );
        }
        Command::Watch(args)
            if args.until_done.is_some() && !args.from_now && args.event.is_none() =>
        {
            let name = args.until_done.expect("matched");
            return watch_until_done(&client, &name, args.since.unwrap_or(0), args.json);
        }
        Command::Watch(args)
            if args.json && !args.from_now && args.event.is_none() && args.until_done.is_none() =>
        {
            let since = args.since.unwrap_or(0);
            client
                .watch(since, args.transfer.as_deref(), |line| {
                    use std::io::Write;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{line}").is_ok() && out.flush().is_ok()
                })
                .map_err(Exit::Daemon)?;
        }
        _ => {
            return Err(Exit::Refused {
                code: crate::exit::USAGE,
                message: "with --daemon: status [NAME] [--json], wait NAME, cancel NAME, \
                          limit NAME RATE, resume NAME, watch --json [--since SEQ] [--transfer NAME], \
                          watch --until-done NAME [--since SEQ] [--json], verify NAME… [--json]"
                    .into(),
            });
        }
    }
    Ok(Exit::Ok)
}

/// `watch --until-done NAME` of a daemon transfer: its events (JSON lines,
/// or one text line each), until the one that ends it; the exit code says
/// how it ended.
fn watch_until_done(client: &Client, name: &str, since: u64, json: bool) -> Result<Exit, Exit> {
    let mut ended = None;
    client
        .watch(since, Some(name), |line| {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let event = line["event"].as_str().unwrap_or_default();
            let written = if json {
                writeln!(out, "{line}")
            } else if event.is_empty() {
                // The end of history (a bookmark): nothing to say in text.
                Ok(())
            } else {
                writeln!(
                    out,
                    "{:>8} {} {:<20} {}",
                    line["seq"],
                    line["time"].as_str().unwrap_or_default(),
                    event,
                    line["subject"]["name"].as_str().unwrap_or(name),
                )
            };
            if line["subject"]["name"].as_str() == Some(name) {
                ended = ["completed", "failed", "cancelled"]
                    .into_iter()
                    .find(|state| event.strip_prefix("transfer.") == Some(state));
            }
            written.is_ok() && out.flush().is_ok() && ended.is_none()
        })
        .map_err(Exit::Daemon)?;
    match ended {
        Some(state) => Ok(outcome(state)),
        // The stream ended first: the daemon stopped.
        None => Err(Exit::Daemon(ClientError::Protocol {
            socket: client.socket().to_path_buf(),
            detail: format!(
                "it stopped before {name} ended; `ferry wait {name}` waits again once it is back"
            ),
        })),
    }
}
