//! `ferry hsm …`: argument handling and reports only; the queue, workers
//! and archives are `ferry_hsm`.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use ferry_hsm::archive;
use ferry_hsm::catalog::{self, fid_of};
use ferry_hsm::worker::{ActionCaps, INFLIGHT_MAX, Worker, WorkerConfig};
use ferry_hsm::{
    Action, Enqueued, LeaseFilter, NewRequest, RequestId, RequestQueue, RequestRecord, RequestState,
};

use crate::exit::Exit;

#[derive(Subcommand)]
pub enum HsmCommand {
    /// The upcall (Lustre's coordinator-bypass argument order): queue one
    /// request per FID and return once they are durable. Never touches the
    /// managed file system
    Enqueue {
        /// archive, restore or remove
        #[arg(value_parser = parse_action)]
        action: Action,
        /// The managed file system's name (Lustre's fsname)
        fsname: String,
        /// The archive back end that serves the requests (0: any)
        archive_id: u32,
        /// Decimal, or hexadecimal with 0x
        #[arg(value_parser = parse_flags)]
        flags: u64,
        /// Opaque data handed to the worker
        data: std::ffi::OsString,
        /// File identifiers: absolute paths, or names under the worker's --fid-root
        #[arg(required = true)]
        fids: Vec<String>,
    },
    /// Archive files (a file whose archived copy is current is skipped)
    Archive(PathArgs),
    /// Bring released files back from the archive (concurrent restores of
    /// one file are one request)
    Restore(PathArgs),
    /// Remove files' archived copies (cancels a waiting archive)
    Remove(PathArgs),
    /// Replace archived, unchanged files by sparse files of the same size
    /// and metadata
    Release {
        /// Files to release
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Cancel requests
    Cancel {
        /// Request ids (`ferry hsm list` shows them)
        #[arg(required = true, value_name = "ID")]
        ids: Vec<i64>,
    },
    /// Files' catalog states (and their live requests), or requests by id
    Status {
        /// Files, or request ids
        #[arg(required = true, value_name = "PATH|ID")]
        targets: Vec<String>,
        /// JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// List requests, oldest first
    List {
        /// Only requests in this state: waiting, started, succeed, failed, canceled
        #[arg(long, value_parser = parse_state)]
        state: Option<RequestState>,
        /// At most N requests (1 to 10000)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Counts of requests per action and state
    Stats {
        /// JSON on stdout
        #[arg(long)]
        json: bool,
    },
    /// Show or change the queue's policy (kept in the store)
    Policy(PolicyArgs),
    /// Serve requests: lease, move data, heartbeat, ack or fail
    Worker(WorkerArgs),
}

#[derive(Args)]
pub struct PathArgs {
    /// Files of the managed file system
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// The archive back end that serves these requests (0: any)
    #[arg(long, default_value_t = 0)]
    archive_id: u32,
    /// An extra head start in the queue, in milliseconds
    #[arg(long, default_value_t = 0, value_name = "MS")]
    priority: i64,
    /// Return when every request is over; the exit code says how
    #[arg(long)]
    wait: bool,
    /// JSON on stdout: the requests queued (and, with --wait, how they ended)
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// Head start of restores over archives, in ms
    #[arg(long, value_name = "MS")]
    restore_head_start: Option<i64>,
    /// Head start of removes over archives, in ms
    #[arg(long, value_name = "MS")]
    remove_head_start: Option<i64>,
    /// Head start of archives, in ms (usually 0)
    #[arg(long, value_name = "MS")]
    archive_head_start: Option<i64>,
    /// Leases restores and removes get for each one an archive gets, when
    /// both wait (0: rank order only)
    #[arg(long, value_name = "N")]
    restore_share: Option<u32>,
    /// Plain FIFO: no head starts, no shares
    #[arg(long)]
    fifo: bool,
    /// Attempts a request gets before it fails for good (1 to 1000)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_attempts: Option<u32>,
    /// Back-off after the first failure, doubling up to --backoff-max-ms
    #[arg(long, value_name = "MS")]
    backoff_ms: Option<u64>,
    /// The longest back-off, in ms
    #[arg(long, value_name = "MS")]
    backoff_max_ms: Option<u64>,
    /// JSON on stdout
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// The archive: posix:DIR
    #[arg(long, value_name = "SPEC")]
    archive: String,
    /// Serve only requests for this archive id (and those for any, 0)
    #[arg(long, value_name = "N")]
    archive_id: Option<u32>,
    /// Requests served at once
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=INFLIGHT_MAX as i64))]
    max_inflight: u16,
    /// Of those, at most N archives at once (restores keep slots under a
    /// flood of archives)
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=INFLIGHT_MAX as i64))]
    max_archive: Option<u16>,
    /// Of those, at most N restores at once
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=INFLIGHT_MAX as i64))]
    max_restore: Option<u16>,
    /// Of those, at most N removes at once
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=INFLIGHT_MAX as i64))]
    max_remove: Option<u16>,
    /// Lease length; heartbeats come every third of it
    #[arg(long, default_value_t = 60_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(30..=86_400_000))]
    lease_ms: u64,
    /// Where FIDs that are not absolute paths live (Lustre: MOUNT/.lustre/fid)
    #[arg(long, value_name = "DIR")]
    fid_root: Option<PathBuf>,
    /// Exit once no request is waiting or started
    #[arg(long)]
    until_idle: bool,
    /// The lease holder's name [default: HOST:PID]
    #[arg(long)]
    name: Option<String>,
}

fn parse_action(s: &str) -> Result<Action, String> {
    Action::parse(s).ok_or_else(|| format!("{s:?}: the actions are archive, restore, remove"))
}

fn parse_state(s: &str) -> Result<RequestState, String> {
    RequestState::parse(s)
        .ok_or_else(|| format!("{s:?}: the states are waiting, started, succeed, failed, canceled"))
}

fn parse_flags(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))
}

pub fn run(queue: &dyn RequestQueue, command: HsmCommand) -> Result<Exit, Exit> {
    match command {
        HsmCommand::Enqueue {
            action,
            fsname,
            archive_id,
            flags,
            data,
            fids,
        } => {
            let batch: Vec<NewRequest> = fids
                .into_iter()
                .map(|fid| NewRequest {
                    action,
                    fsname: fsname.clone(),
                    archive_id,
                    flags,
                    data: data.as_bytes().to_vec(),
                    fid,
                    path: None,
                    priority_ms: 0,
                })
                .collect();
            for chunk in batch.chunks(ferry_hsm::BATCH_MAX) {
                let out = queue.enqueue(chunk).map_err(ferry::Error::from)?;
                for (request, outcome) in chunk.iter().zip(out) {
                    println!("{} {}", request.fid, outcome_text(&outcome));
                }
            }
            Ok(Exit::Ok)
        }
        HsmCommand::Archive(args) => by_path(queue, Action::Archive, args),
        HsmCommand::Restore(args) => by_path(queue, Action::Restore, args),
        HsmCommand::Remove(args) => by_path(queue, Action::Remove, args),
        HsmCommand::Release { paths } => {
            for path in paths {
                let (fid, abs) = fid_of(&path)?;
                let entry = catalog::release(queue, &fid, &abs)?;
                println!(
                    "ferry: released {} ({} bytes in archive object {})",
                    abs.display(),
                    entry.size,
                    entry.object.as_deref().unwrap_or("?")
                );
            }
            Ok(Exit::Ok)
        }
        HsmCommand::Cancel { ids } => {
            for id in ids {
                queue.cancel(RequestId(id)).map_err(ferry::Error::from)?;
                println!("ferry: request {id} canceled");
            }
            Ok(Exit::Ok)
        }
        HsmCommand::Status { targets, json } => {
            for target in targets {
                let line = match target.parse::<i64>() {
                    Ok(id) => {
                        let r = queue
                            .request(RequestId(id))
                            .map_err(ferry::Error::from)?
                            .ok_or_else(|| {
                                ferry::Error::from(ferry::store::StoreError::NoSuchRequest {
                                    path: queue.location(),
                                    id: RequestId(id),
                                })
                            })?;
                        if json {
                            serde_json::to_value(&r).expect("serializes")
                        } else {
                            serde_json::Value::String(request_text(&r))
                        }
                    }
                    Err(_) => file_status(queue, PathBuf::from(target), json)?,
                };
                match line {
                    serde_json::Value::String(s) => println!("{s}"),
                    v => println!("{v}"),
                }
            }
            Ok(Exit::Ok)
        }
        HsmCommand::List { state, limit, json } => {
            for r in queue
                .requests(state, limit as usize)
                .map_err(ferry::Error::from)?
            {
                if json {
                    println!("{}", serde_json::to_value(&r).expect("serializes"));
                } else {
                    println!("{}", request_text(&r));
                }
            }
            Ok(Exit::Ok)
        }
        HsmCommand::Stats { json } => {
            let stats = queue.stats().map_err(ferry::Error::from)?;
            if json {
                println!("{}", serde_json::to_value(&stats).expect("serializes"));
            } else {
                for state in RequestState::ALL {
                    let per: Vec<String> = Action::ALL
                        .iter()
                        .map(|a| format!("{a} {}", stats.count(Some(*a), state)))
                        .collect();
                    println!(
                        "{:<9} {:>8}  ({})",
                        state.as_str(),
                        stats.count(None, state),
                        per.join(", ")
                    );
                }
                println!(
                    "backing off {}, expired leases {}",
                    stats.backing_off, stats.expired_leases
                );
            }
            Ok(Exit::Ok)
        }
        HsmCommand::Policy(args) => policy(queue, args),
        HsmCommand::Worker(args) => worker(queue, args),
    }
}

fn outcome_text(outcome: &Enqueued) -> String {
    match outcome {
        Enqueued::Queued { id } => format!("queued as request {id}"),
        Enqueued::Joined { id, waiters } => {
            format!("joined request {id} ({waiters} waiters)")
        }
        Enqueued::Noop { reason } => reason.clone(),
    }
}

fn request_text(r: &RequestRecord) -> String {
    let path = r
        .path
        .as_ref()
        .map_or_else(|| r.fid.clone(), |p| p.display().to_string());
    let mut line = format!(
        "{:>6} {:<8} {:<9} attempt {}/{} waiters {} {}",
        r.id, r.action, r.state, r.attempts, r.max_attempts, r.waiters, path
    );
    if let Some(holder) = &r.lease_holder {
        line.push_str(&format!(" (leased by {holder})"));
    }
    if let Some(error) = &r.error {
        line.push_str(&format!(": {}", ferry::words::in_words(error)));
    }
    line
}

fn file_status(
    queue: &dyn RequestQueue,
    path: PathBuf,
    json: bool,
) -> Result<serde_json::Value, Exit> {
    let (fid, abs) = fid_of(&path)?;
    let entry = if abs.exists() {
        catalog::refresh(queue, &fid, &abs)?
    } else {
        queue.catalog_entry(&fid).map_err(ferry::Error::from)?
    };
    let entry = entry.ok_or_else(|| {
        ferry::Error::from(ferry::store::StoreError::NotInCatalog {
            path: queue.location(),
            fid: fid.clone(),
        })
    })?;
    let mirrored = catalog::xattr_state(&abs);
    if json {
        let mut v = serde_json::to_value(&entry).expect("serializes");
        v["xattr"] = mirrored.map(|s| s.as_str()).into();
        return Ok(v);
    }
    Ok(serde_json::Value::String(format!(
        "{} {} ({} bytes, object {}, {} {})",
        abs.display(),
        entry.state,
        entry.size,
        entry.object.as_deref().unwrap_or("none"),
        catalog::XATTR,
        mirrored.map_or("unset", |s| s.as_str())
    )))
}

fn by_path(queue: &dyn RequestQueue, action: Action, args: PathArgs) -> Result<Exit, Exit> {
    let batch: Vec<NewRequest> = args
        .paths
        .iter()
        .map(|p| catalog::request_for_path(queue, action, p, args.archive_id, args.priority))
        .collect::<ferry::Result<_>>()?;
    let mut ids = Vec::new();
    for chunk in batch.chunks(ferry_hsm::BATCH_MAX) {
        let out = queue.enqueue(chunk).map_err(ferry::Error::from)?;
        for (request, outcome) in chunk.iter().zip(out) {
            let path = request.path.as_ref().expect("friendly requests have paths");
            if args.json {
                let mut v = serde_json::to_value(&outcome).expect("serializes");
                v["path"] = path.to_string_lossy().into_owned().into();
                v["action"] = action.as_str().into();
                println!("{v}");
            } else {
                println!(
                    "ferry: {action} {}: {}",
                    path.display(),
                    outcome_text(&outcome)
                );
            }
            ids.extend(outcome.id());
        }
    }
    if !args.wait {
        return Ok(Exit::Ok);
    }
    let mut exit = Exit::Ok;
    for id in ids {
        let r = ferry_hsm::wait_request(queue, id, None)?.expect("no timeout");
        if args.json {
            println!(
                "{}",
                serde_json::json!({"request": r.id, "state": r.state, "error": r.error})
            );
        } else {
            println!("ferry: {}", request_text(&r));
        }
        exit = match (r.state, exit) {
            (RequestState::Failed, _) => Exit::RequestFailed,
            (RequestState::Canceled, Exit::Ok) => Exit::RequestCanceled,
            (_, exit) => exit,
        };
    }
    Ok(exit)
}

fn policy(queue: &dyn RequestQueue, args: PolicyArgs) -> Result<Exit, Exit> {
    let old = queue.policy().map_err(ferry::Error::from)?;
    let mut new = if args.fifo { old.fifo() } else { old };
    let set = |slot: &mut i64, v: Option<i64>| *slot = v.unwrap_or(*slot);
    set(&mut new.head_start_restore_ms, args.restore_head_start);
    set(&mut new.head_start_remove_ms, args.remove_head_start);
    set(&mut new.head_start_archive_ms, args.archive_head_start);
    new.max_attempts = args.max_attempts.unwrap_or(new.max_attempts);
    new.backoff_base_ms = args.backoff_ms.unwrap_or(new.backoff_base_ms);
    new.backoff_max_ms = args.backoff_max_ms.unwrap_or(new.backoff_max_ms);
    new.restore_share = args.restore_share.unwrap_or(new.restore_share);
    if new != old {
        queue.set_policy(&new).map_err(ferry::Error::from)?;
    }
    if args.json {
        println!("{}", serde_json::to_value(new).expect("serializes"));
    } else {
        println!(
            "head start (ms): restore {}, remove {}, archive {}; restore share {}; max attempts {}; back-off {} ms doubling up to {} ms",
            new.head_start_restore_ms,
            new.head_start_remove_ms,
            new.head_start_archive_ms,
            new.restore_share,
            new.max_attempts,
            new.backoff_base_ms,
            new.backoff_max_ms
        );
    }
    Ok(Exit::Ok)
}

fn worker(queue: &dyn RequestQueue, args: WorkerArgs) -> Result<Exit, Exit> {
    let backend = archive::open(&args.archive).map_err(|reason| ferry::Error::Archive {
        spec: args.archive.clone(),
        reason,
    })?;
    let owner = ferry::model::Owner::current();
    let config = WorkerConfig {
        name: args
            .name
            .unwrap_or_else(|| format!("{}:{}", owner.host, owner.pid)),
        filter: LeaseFilter {
            archive_id: args.archive_id,
            actions: None,
        },
        max_inflight: usize::from(args.max_inflight),
        caps: ActionCaps {
            archive: args.max_archive.map(usize::from),
            restore: args.max_restore.map(usize::from),
            remove: args.max_remove.map(usize::from),
        },
        lease: Duration::from_millis(args.lease_ms),
        fid_root: args.fid_root,
        until_idle: args.until_idle,
        ..WorkerConfig::new("")
    };
    eprintln!(
        "ferry: worker {} serving {} ({} in flight, lease {} ms)",
        config.name,
        backend.describe(),
        config.max_inflight,
        args.lease_ms
    );
    let report = Worker::new(queue, backend.as_ref(), config)
        .run()
        .map_err(ferry::Error::from)?;
    eprintln!(
        "ferry: worker done: {} succeeded, {} failed, {} abandoned",
        report.succeeded, report.failed, report.abandoned
    );
    Ok(Exit::Ok)
}
