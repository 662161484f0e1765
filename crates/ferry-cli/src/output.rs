//! What the CLI prints: progress bars on a terminal, one summary line
//! otherwise, JSON for scripts.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::store::Store;
use ferry::{FileState, Progress, RunReport};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::exit::Exit;

/// Set once stdout's reader has gone away: the rest of the output has no
/// reader, so it is dropped, and the command still ends with its own exit
/// code (a worker keeps working; `cp`'s result is still its status).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// One line on stdout (the crate's `println!`). A closed pipe
/// (`ferry hsm list | head -1`) drops this line and the rest; any other
/// write error is reported once on stderr, and the output stops there too.
pub fn line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!(
                "ferry: cannot write to standard output: {e}; the rest of the output is dropped"
            );
        }
    }
}

/// Runs `f` (dispatch + wait) with a progress bar on stderr when stderr is
/// a terminal and no JSON was asked for.
pub fn with_progress<T>(
    progress: &Arc<Progress>,
    json: bool,
    f: impl FnOnce() -> ferry::Result<T>,
) -> Result<T, Exit> {
    if json || !std::io::stderr().is_terminal() {
        return f().map_err(Exit::from);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template"),
    );
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            // A display refresh, not a wait for an event: 10 frames a second.
            while !done.load(Ordering::Relaxed) {
                bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
                bar.set_position(
                    progress.bytes_reused.load(Ordering::Relaxed)
                        + progress.bytes_copied.load(Ordering::Relaxed),
                );
                bar.set_message(format!(
                    "{}/{} files",
                    progress.files_done.load(Ordering::Relaxed),
                    progress.files_total.load(Ordering::Relaxed)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        result
    });
    bar.finish_and_clear();
    result.map_err(Exit::from)
}

thread_local! {
    static STARTED: Instant = Instant::now();
}

/// Call early: the summary's seconds count from here.
pub fn start_clock() {
    STARTED.with(|_| {});
}

/// How a run ended: JSON, or the warnings, failures and one summary line
/// (with `quiet`, only the failures).
pub fn report(report: &RunReport, json: bool, quiet: bool) {
    let seconds = STARTED.with(|s| s.elapsed().as_secs_f64());
    if json {
        let failures: Vec<_> = report
            .failures
            .iter()
            .map(|f| serde_json::json!({"path": f.path.to_string_lossy(), "error": f.error}))
            .collect();
        let value = serde_json::json!({
            "transfer": report.name,
            "id": report.id.0,
            "state": report.state.to_string(),
            "files": report.files_total,
            "files_committed": report.files_committed,
            "files_failed": report.failures.len(),
            "bytes": report.bytes_total,
            "bytes_copied": report.bytes_copied,
            "bytes_reused": report.bytes_reused,
            "seconds": seconds,
            "failures": failures,
            "warnings": report.warnings,
        });
        println!("{value}");
        return;
    }
    for failure in &report.failures {
        eprintln!("ferry: {}", failure.error);
    }
    if quiet {
        return;
    }
    for warning in &report.warnings {
        eprintln!("ferry: warning: {warning}");
    }
    let rate = report.bytes_copied as f64 / seconds.max(1e-9);
    let mut line = format!(
        "ferry: {} {}: {} of {} files, {} copied in {:.2} s ({}/s)",
        report.name,
        report.state,
        report.files_committed,
        report.files_total,
        HumanBytes(report.bytes_copied),
        seconds,
        HumanBytes(rate as u64),
    );
    if report.bytes_reused > 0 {
        line.push_str(&format!(
            ", {} already durable",
            HumanBytes(report.bytes_reused)
        ));
    }
    if !report.failures.is_empty() {
        line.push_str(&format!(
            ", {} failed: `ferry resume {}` retries them",
            report.failures.len(),
            report.name
        ));
    }
    println!("{line}");
}

pub fn status(
    store: &dyn Store,
    name: Option<&str>,
    files: bool,
    json: bool,
) -> Result<Exit, Exit> {
    let transfers = match name {
        Some(name) => vec![
            store
                .transfer_by_name(name)
                .map_err(ferry::Error::from)?
                .ok_or_else(|| ferry::Error::TransferNotFound {
                    name: name.to_owned(),
                    store: store.location(),
                })?,
        ],
        None => store.transfers().map_err(ferry::Error::from)?,
    };
    let mut rows = Vec::new();
    for transfer in &transfers {
        let entries = store.entries(transfer.id).map_err(ferry::Error::from)?;
        let count = |state: FileState| entries.iter().filter(|e| e.state == state).count();
        let liveness = format!("{:?}", transfer.owner_liveness()).to_lowercase();
        let mut row = serde_json::json!({
            "id": transfer.id.0,
            "name": transfer.name,
            "kind": transfer.kind.as_str(),
            "state": transfer.state.to_string(),
            "owner": {"host": transfer.owner.host, "pid": transfer.owner.pid, "liveness": liveness},
            "entries": entries.len(),
            "bytes": entries.iter().map(|e| e.meta.size).sum::<u64>(),
            "committed": count(FileState::Committed),
            "skipped": count(FileState::Skipped),
            "failed": count(FileState::Failed),
            "pending": entries.len()
                - count(FileState::Committed)
                - count(FileState::Skipped)
                - count(FileState::Failed),
            "checksum": transfer.checksum.map(|a| a.as_str()),
        });
        if files {
            row["files"] = entries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "index": e.index.0,
                        "kind": e.kind.as_str(),
                        "source": e.source.to_string_lossy(),
                        "dest": e.dest.to_string_lossy(),
                        "size": e.meta.size,
                        "state": e.state.to_string(),
                        "progress_bytes_durable": e.progress_bytes_durable,
                        "checksum": e.checksum.map(|c| c.to_string()),
                        "hard_link_to": e.link_leader.map(|l| l.0),
                        "xattrs": e.xattrs.0.len(),
                        "error": e.error,
                    })
                })
                .collect();
        }
        rows.push(row);
    }
    if json {
        let value = if name.is_some() {
            rows.remove(0)
        } else {
            serde_json::Value::Array(rows)
        };
        println!("{value}");
        return Ok(Exit::Ok);
    }
    if rows.is_empty() {
        println!("no transfers in {}", store.location().display());
        return Ok(Exit::Ok);
    }
    println!(
        "{:>5}  {:<20} {:<8} {:<10} {:>17} {:>10}  owner",
        "id", "name", "kind", "state", "committed/entries", "bytes"
    );
    for row in &rows {
        println!(
            "{:>5}  {:<20} {:<8} {:<10} {:>17} {:>10}  pid {} on {} ({})",
            row["id"].to_string(),
            row["name"].as_str().unwrap_or(""),
            row["kind"].as_str().unwrap_or(""),
            row["state"].as_str().unwrap_or(""),
            format!("{}/{}", row["committed"], row["entries"]),
            HumanBytes(row["bytes"].as_u64().unwrap_or(0)).to_string(),
            row["owner"]["pid"],
            row["owner"]["host"].as_str().unwrap_or(""),
            row["owner"]["liveness"].as_str().unwrap_or(""),
        );
        if let Some(files) = row["files"].as_array() {
            for file in files {
                println!(
                    "       {:<9} {:>10} {}{}{}",
                    file["state"].as_str().unwrap_or(""),
                    HumanBytes(file["size"].as_u64().unwrap_or(0)).to_string(),
                    file["dest"].as_str().unwrap_or(""),
                    file["checksum"]
                        .as_str()
                        .map(|c| format!("  {c}"))
                        .unwrap_or_default(),
                    file["error"]
                        .as_str()
                        .map(|e| format!("  ({e})"))
                        .unwrap_or_default(),
                );
            }
        }
    }
    Ok(Exit::Ok)
}

/// `ferry status --at SEQ`: every transfer (or one) as the log says it was
/// right after event SEQ.
pub fn status_at(
    store: &dyn Store,
    seq: u64,
    name: Option<&str>,
    json: bool,
) -> Result<Exit, Exit> {
    let mut snapshot = ferry::events::snapshot_at(store, seq)?;
    if let Some(name) = name {
        snapshot.retain(|t| t.name == name);
        if snapshot.is_empty() {
            return Err(ferry::Error::TransferNotFound {
                name: name.to_owned(),
                store: store.location(),
            }
            .into());
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_value(&snapshot).expect("snapshots serialize")
        );
        return Ok(Exit::Ok);
    }
    println!("as of event {seq}:");
    for t in &snapshot {
        let done = t.entries.iter().filter(|e| e.state.is_done()).count();
        println!(
            "{:>5}  {:<20} {:<8} {:<10} {:>17}  pid {} on {}",
            t.id,
            t.name,
            t.kind,
            t.state.to_string(),
            format!("{}/{}", done, t.entries.len()),
            t.owner_pid,
            t.owner_host
        );
    }
    Ok(Exit::Ok)
}

/// `ferry store check`: exit 0 when the store is writable and intact, 19
/// when its disk still lacks room, 8 when the database is damaged.
pub fn store_check(store: &ferry::store::SqliteStore, json: bool) -> Result<Exit, Exit> {
    let report = store.check().map_err(ferry::Error::from)?;
    let location = store.location();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "store": location.display().to_string(),
                "read_only": report.read_only.as_ref().map(|c| c.detail.clone()),
                "free_bytes": report.free_bytes,
                "recover_bytes": report.recover_bytes,
                "reserve": report.reserve_path.display().to_string(),
                "reserve_bytes": report.reserve_bytes,
                "reserve_present": report.reserve_present,
                "integrity": report.integrity,
            })
        );
    } else {
        println!(
            "ferry: store {}: {}, {} free (needs {} to write), reserve {} {}, integrity {}",
            location.display(),
            if report.read_only.is_some() {
                "read-only"
            } else {
                "read-write"
            },
            HumanBytes(report.free_bytes),
            HumanBytes(report.recover_bytes),
            report.reserve_path.display(),
            if report.reserve_present {
                format!("present ({})", HumanBytes(report.reserve_bytes))
            } else if report.reserve_bytes == 0 {
                "disabled".to_string()
            } else {
                "missing".to_string()
            },
            report.integrity
        );
    }
    if report.integrity != "ok" {
        return Err(ferry::Error::Store(ferry::store::StoreError::Corrupt {
            path: location,
            detail: report.integrity,
        })
        .into());
    }
    match report.read_only {
        Some(cause) => Err(ferry::Error::Store(ferry::store::StoreError::ReadOnly {
            path: location,
            cause: cause.detail,
            recover_bytes: report.recover_bytes,
        })
        .into()),
        None => Ok(Exit::Ok),
    }
}
