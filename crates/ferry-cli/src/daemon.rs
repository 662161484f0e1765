//! The CLI's side of the daemon: `ferry serve`, `cp --kind daemon|default`
//! and `--daemon` for status, wait, cancel, resume and watch. Translation
//! only: requests through [`ferry_serve::client::Client`], answers to text,
//! JSON and exit codes.

use std::path::{Path, PathBuf};

use ferry_serve::api::{AddRequest, CreateRequest, RunRequest, TransferView};
use ferry_serve::client::{ApiPathError, Client, ClientError, api_path};

use crate::cp::CpArgs;
use crate::exit::Exit;
use crate::{Command, RunArgs};

pub fn serve(
    store: Option<PathBuf>,
    socket: PathBuf,
    workers: Option<u16>,
    entries_per_transfer_max: Option<usize>,
    transfers_per_user_max: Option<usize>,
    entries_per_user_max: Option<usize>,
) -> Result<Exit, Exit> {
    let store = store.unwrap_or_else(ferry::default_store_path);
    crate::store::refuse_postgres(&store, "serve")?;
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

fn client(socket: &Path) -> Result<Client, Exit> {
    Client::new(socket).map_err(Exit::Daemon)
}

/// The daemon runs elsewhere: it needs absolute paths, in UTF-8 (JSON).
fn absolute(path: &Path) -> Result<String, Exit> {
    api_path(path, "--kind threads").map_err(|e| match e {
        ApiPathError::Io(e) => Exit::from(e),
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
    };
    let run = run_request(&args.run);
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
        if let Err(e) = client.add(&created.name, &add) {
            // Nothing of it ran: do not leave it behind as `created`.
            let _ = client.cancel(&created.name);
            return Err(Exit::Daemon(e));
        }
        client.dispatch(&created.name, &run)
    }
    .map_err(Exit::Daemon)?;
    if !args.wait {
        if args.run.json {
            println!("{}", serde_json::to_string(&view).expect("views serialize"));
        } else {
            println!(
                "ferry: transfer {} (id {}) dispatched to the daemon on {}; `ferry --daemon wait {}` \
                 waits for it",
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
    println!(
        "{} (id {}) {}: {}/{} files, {} of {} bytes durable",
        view.name,
        view.id,
        view.state,
        view.files_committed,
        view.files,
        view.bytes_durable,
        view.bytes
    );
}

/// `ferry --daemon status|wait|cancel|resume|watch`.
pub fn command(socket: &Path, command: Command) -> Result<Exit, Exit> {
    let client = client(socket)?;
    let daemon = |r: Result<TransferView, ClientError>| r.map_err(Exit::Daemon);
    match command {
        Command::Status(args) if args.at.is_none() && !args.files => match args.name {
            Some(name) => report(&daemon(client.status(&name))?, args.json),
            None => {
                for view in client.list().map_err(Exit::Daemon)? {
                    report(&view, args.json);
                }
            }
        },
        Command::Wait { name } => return wait(&client, &name, false),
        Command::Cancel { name } => {
            let view = daemon(client.cancel(&name))?;
            println!(
                "ferry: cancelled {name} (id {}) in the daemon; `ferry --daemon resume {name}` \
                 continues it",
                view.id
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
            return Err(Exit::Daemon(ClientError::Api {
                status: 400,
                kind: "bad_request".into(),
                code: None,
                message: "with --daemon: status [NAME] [--json], wait NAME, cancel NAME, \
                          resume NAME, watch --json [--since SEQ] [--transfer NAME]"
                    .into(),
            }));
        }
    }
    Ok(Exit::Ok)
}
