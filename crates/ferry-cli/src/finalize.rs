//! `ferry finalize` and `ferry stop`: argument handling and reports only;
//! the work is `ferry::finalize`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry::finalize::{DeadPolicy, FinalizeOptions, Outcome};
use ferry::store::Store;

use crate::exit::{Exit, USAGE};
use crate::store::{Create, OpenedStore};

#[derive(clap::Args)]
pub struct FinalizeArgs {
    /// Stores (SQLite files, or postgres:// URLs), or directories searched
    /// recursively for stores; with a PostgreSQL --store, the names of its
    /// transfers to finalize [default there: every one]
    #[arg(value_name = "PATH|URL|NAME")]
    paths: Vec<PathBuf>,
    /// Continue running transfers whose owner is dead (needs their sources)
    #[arg(long, conflicts_with = "abort")]
    resume: bool,
    /// Fail running transfers whose owner is dead and remove their
    /// temporaries (the default)
    #[arg(long)]
    abort: bool,
    /// Treat owners on other hosts as dead
    #[arg(long)]
    force: bool,
    /// Stores finalized at once [default: one per core]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
    /// One JSON object on stdout
    #[arg(long)]
    json: bool,
    /// Read each file back before renaming it and compare it with the
    /// checksum stored when it was copied (a mismatch fails it, unrenamed)
    #[arg(long)]
    verify: bool,
}

/// `store`: the command's `--store`; a PostgreSQL one makes the arguments
/// the names of its transfers.
pub fn run(args: FinalizeArgs, store: Option<&Path>) -> Result<Exit, Exit> {
    let started = Instant::now();
    let shared_store = store.filter(|s| s.to_str().is_some_and(ferry_postgres::is_postgres_url));
    // The shared stores to finalize (each with the names of its transfers
    // to finalize: none for every one), and the SQLite paths.
    let (shared, paths): (Vec<(&Path, Vec<String>)>, Vec<PathBuf>) = match shared_store {
        Some(url) => {
            let names = args
                .paths
                .iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            (vec![(url, names)], Vec::new())
        }
        None => {
            let (urls, paths): (Vec<&PathBuf>, Vec<&PathBuf>) = args
                .paths
                .iter()
                .partition(|p| p.to_str().is_some_and(ferry_postgres::is_postgres_url));
            let urls = urls.into_iter().map(|u| (u.as_path(), Vec::new()));
            (urls.collect(), paths.into_iter().cloned().collect())
        }
    };
    if shared.is_empty() && paths.is_empty() {
        return Err(Exit::Refused {
            code: USAGE,
            message: "ferry finalize: give stores (paths or postgres:// URLs) or directories \
                      holding stores, or --store postgres://… and the names of its transfers"
                .into(),
        });
    }
    let (stores, skipped) = if paths.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        ferry::finalize::find_stores_reporting(&paths)?
    };
    let options = FinalizeOptions {
        dead: if args.resume {
            DeadPolicy::Resume
        } else {
            DeadPolicy::Abort
        },
        force: args.force,
        jobs: args.jobs.map_or_else(ferry::default_workers, usize::from),
        verify: args.verify,
    };
    let mut outcomes = ferry::finalize::finalize(&stores, options);
    for (url, names) in &shared {
        let opened = OpenedStore::open(url, Create::Nothing)?;
        outcomes.extend(ferry::finalize::finalize_shared(
            opened.store(),
            names,
            options,
        )?);
    }
    let stores_count = stores.len() + shared.len();
    let seconds = started.elapsed().as_secs_f64();
    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for o in &outcomes {
        *counts.entry(o.outcome).or_default() += 1;
    }
    let files: usize = outcomes.iter().map(|o| o.files_committed).sum();
    let removed: usize = outcomes.iter().map(|o| o.temporaries_removed).sum();
    let failed = counts.get(&Outcome::Failed).copied().unwrap_or(0);
    let left = counts.get(&Outcome::LeftLive).copied().unwrap_or(0)
        + counts.get(&Outcome::LeftUnknown).copied().unwrap_or(0);
    let aborted = outcomes.iter().filter(|o| o.aborted).count();
    let lost: Vec<&PathBuf> = outcomes.iter().flat_map(|o| &o.removed).collect();
    if args.json {
        // Keyed as each of `details` names its outcome (snake_case, stable
        // for scripts), not by the words the text report uses.
        let by_outcome: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(o, n)| (outcome_key(*o), serde_json::Value::from(*n)))
            .collect();
        let value = serde_json::json!({
            "stores": stores_count,
            "transfers": outcomes.len(),
            "files_committed": files,
            "temporaries_removed": removed,
            "seconds": seconds,
            "outcomes": by_outcome,
            "aborted": aborted,
            "removed": lost,
            "skipped": skipped,
            "details": outcomes,
        });
        println!("{value}");
    } else {
        for s in &skipped {
            eprintln!(
                "ferry finalize: skipped {}: {}; not finalized",
                s.path.display(),
                s.why
            );
        }
        for o in outcomes.iter().filter(|o| o.aborted) {
            eprintln!(
                "ferry finalize: aborted transfer {} (id {}) of {}: its owner is dead \
                 (`--resume` would have continued it)",
                o.transfer,
                o.id,
                o.store.display()
            );
        }
        if !lost.is_empty() {
            const SHOWN: usize = 5;
            let first: Vec<String> = lost
                .iter()
                .take(SHOWN)
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let more = if lost.len() > SHOWN {
                format!(" and {} more (`--json` lists them all)", lost.len() - SHOWN)
            } else {
                String::new()
            };
            eprintln!(
                "ferry finalize: removed the partial data of {} files that never reached their \
                 final name: {}{more}",
                lost.len(),
                first.join(", ")
            );
        }
        for o in outcomes.iter().filter(|o| {
            matches!(
                o.outcome,
                Outcome::Failed | Outcome::LeftLive | Outcome::LeftUnknown
            )
        }) {
            let what = if o.transfer.is_empty() {
                String::new()
            } else {
                format!(" transfer {}", o.transfer)
            };
            eprintln!(
                "ferry: {}{what}: {}: {}",
                o.store.display(),
                o.outcome.as_str(),
                o.detail.as_deref().unwrap_or("")
            );
        }
        println!(
            "ferry finalize: {} stores, {} transfers in {seconds:.2} s ({:.0} files/s)",
            stores_count,
            outcomes.len(),
            files as f64 / seconds.max(1e-9)
        );
        for (outcome, n) in &counts {
            let extra = match outcome {
                Outcome::Finalized | Outcome::Resumed => format!(" ({files} files committed)"),
                Outcome::Cleaned => format!(" ({removed} temporaries removed)"),
                Outcome::AlreadyFinalized if counts.len() == 1 => ": nothing to do".into(),
                _ => String::new(),
            };
            println!("  {}: {n}{extra}", outcome.as_str());
        }
    }
    Ok(if failed > 0 {
        Exit::TransferFailed
    } else if aborted > 0 || !lost.is_empty() {
        Exit::DataRemoved
    } else if left > 0 {
        Exit::LeftAlone
    } else {
        Exit::Ok
    })
}

/// The outcome's JSON name: the one `details` carries.
fn outcome_key(outcome: Outcome) -> String {
    match serde_json::to_value(outcome) {
        Ok(serde_json::Value::String(key)) => key,
        _ => unreachable!("a unit variant serializes as its name"),
    }
}

pub fn stop(store: &dyn Store, dead: bool, all: bool, force: bool) -> Result<Exit, Exit> {
    let which = match (dead, all) {
        (true, _) => ferry::finalize::StopWhich::Dead,
        (false, true) => ferry::finalize::StopWhich::All,
        (false, false) => ferry::finalize::StopWhich::Unfinished,
    };
    let stopped = ferry::finalize::stop(store, which, force)?;
    for s in &stopped {
        print_stopped(s);
    }
    if stopped.is_empty() {
        println!("ferry: nothing to stop");
    }
    if which == ferry::finalize::StopWhich::Unfinished {
        let kept: Vec<_> = store
            .transfers()
            .map_err(ferry::Error::from)?
            .into_iter()
            .filter(|t| {
                matches!(
                    t.state,
                    ferry::TransferState::Completed | ferry::TransferState::Finalized
                )
            })
            .collect();
        if let Some(first) = kept.first() {
            println!(
                "ferry: left {} completed transfer(s) ({}{}) and their names: `ferry forget NAME` \
                 frees one, `ferry stop --all` every one",
                kept.len(),
                first.name,
                if kept.len() > 1 { ", …" } else { "" }
            );
        }
    }
    Ok(Exit::Ok)
}

/// `ferry forget NAME`.
pub fn forget(store: &dyn Store, name: &str, force: bool) -> Result<Exit, Exit> {
    let stopped = ferry::finalize::forget(store, name, force)?;
    print_stopped(&stopped);
    println!("ferry: the name {name} is free; the transfer stays in the store's history");
    Ok(Exit::Ok)
}

fn print_stopped(s: &ferry::finalize::Stopped) {
    let what = if s.cancelled {
        "cancelled and freed"
    } else {
        "freed"
    };
    let temps = if s.owner_alive {
        "; its owner is alive and stops at its next write, temporaries left to it".to_owned()
    } else {
        format!(", {} temporaries removed", s.temporaries_removed)
    };
    println!("ferry: {} (id {}) {what}{temps}", s.transfer, s.id);
}
