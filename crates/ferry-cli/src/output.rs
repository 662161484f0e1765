//! What the CLI prints: progress bars on a terminal, one summary line
//! otherwise, JSON for scripts.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry::store::Store;
use ferry::{Progress, RunReport};
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
                "ferry: cannot write to standard output: {}; the rest of the output is dropped",
                ferry::words::cause(&e)
            );
        }
    }
}

/// Runs `f` (dispatch + wait) with a progress bar on stderr when stderr is
/// a terminal and no JSON was asked for. The bar's last frame stays on
/// screen with the counts `last` gives for what `f` returned (the run's
/// own, as its summary says them); it is cleared when `last` gives none
/// (an interruption) or `f` failed.
pub fn with_progress<T>(
    progress: &Arc<Progress>,
    json: bool,
    f: impl FnOnce() -> ferry::Result<T>,
    last: impl FnOnce(&T) -> Option<ferry::FileCounts>,
) -> Result<T, Exit> {
    if json || !std::io::stderr().is_terminal() {
        return f().map_err(Exit::from);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            // The bar takes what the counts leave of the terminal's width:
            // one line on an 80-column terminal (the summary says the rate).
            "{wide_bar} {bytes}/{total_bytes} ETA {eta} {msg}",
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
                bar.set_message(progress.counts().to_string());
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        result
    });
    match result.as_ref().ok().and_then(last) {
        Some(counts) => {
            bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
            bar.set_position(
                progress.bytes_reused.load(Ordering::Relaxed)
                    + progress.bytes_copied.load(Ordering::Relaxed),
            );
            bar.finish_with_message(counts.to_string());
            // The cursor stays at the end of the bar: what follows goes
            // below it, not after it.
            eprintln!();
        }
        None => bar.finish_and_clear(),
    }
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
            "files_skipped": report.files_skipped,
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
        "ferry: {} {}: {}; {} written in {:.2} s ({}/s)",
        report.name,
        report.state,
        report.counts(),
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
