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
    // Two lines within the terminal's width: the bar with the bytes, then
    // the rates, times and files (a finished frame: the time and counts).
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {percent:>3}% {prefix}\n{msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let frame = |bar: &ProgressBar, finished: bool| {
        let copied = progress.bytes_copied.load(Ordering::Relaxed);
        let reused = progress.bytes_reused.load(Ordering::Relaxed);
        let total = progress.bytes_total.load(Ordering::Relaxed);
        bar.set_length(total.max(1));
        bar.set_position(if total == 0 { 1 } else { copied + reused });
        if !finished && progress.files_total.load(Ordering::Relaxed) == 0 {
            // Before the plan is counted, no share of nothing.
            bar.set_position(0);
            bar.set_prefix("listing the sources");
        } else {
            bar.set_prefix(bytes_line(copied, reused, total));
        }
    };
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            // A display refresh, not a wait for an event: 10 frames a second.
            while !done.load(Ordering::Relaxed) {
                frame(&bar, false);
                bar.set_message(rates_line(progress, started.elapsed()));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::Relaxed);
        result
    });
    match result.as_ref().ok().and_then(last) {
        Some(counts) => {
            frame(&bar, true);
            bar.finish_with_message(format!("done in {} · {counts}", clock(started.elapsed())));
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

/// The bar's first line after the percentage: `1.2 GiB of 2.9 GiB`, with
/// what an earlier run made durable apart (`+ 300 MiB reused`).
fn bytes_line(copied: u64, reused: u64, total: u64) -> String {
    if reused == 0 {
        format!("{} of {}", HumanBytes(copied), HumanBytes(total))
    } else {
        format!(
            "{} + {} reused of {}",
            HumanBytes(copied),
            HumanBytes(reused),
            HumanBytes(total)
        )
    }
}

/// The bar's second line: this run's rate, elapsed, an ETA that counts the
/// files still to commit as well as the bytes, files done and per second,
/// and the large file being copied — cut to the terminal's width.
fn rates_line(progress: &Progress, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let copied = progress.bytes_copied.load(Ordering::Relaxed);
    let bytes_left = progress
        .bytes_total
        .load(Ordering::Relaxed)
        .saturating_sub(copied + progress.bytes_reused.load(Ordering::Relaxed));
    let files = progress.files_total.load(Ordering::Relaxed);
    let done = progress.files_done.load(Ordering::Relaxed);
    let byte_rate = copied as f64 / seconds;
    let file_rate = done as f64 / seconds;
    // By the bytes while there are bytes to write (files go by at any
    // pace meanwhile: a large one holds them all); then by the files still
    // to commit.
    let eta = if bytes_left > 0 {
        (byte_rate > 0.0).then(|| bytes_left as f64 / byte_rate)
    } else {
        (files > done && file_rate > 0.0).then(|| (files - done) as f64 / file_rate)
    };
    let eta = match eta {
        Some(s) => clock(Duration::from_secs_f64(s.min(1e7))),
        None if files > done => "?".into(),
        None => "0:00".into(),
    };
    let mut line = format!(
        "{}/s, {} elapsed, ETA {eta} · {done}/{files} files, {:.0}/s",
        HumanBytes(byte_rate as u64),
        clock(elapsed),
        file_rate
    );
    if let Some(name) = progress
        .large_file
        .lock()
        .expect("progress")
        .as_deref()
        .and_then(|p| p.file_name())
    {
        line.push_str(" · ");
        line.push_str(&ferry::words::escaped_path(std::path::Path::new(name)));
    }
    let width = terminal_width().saturating_sub(1);
    match line.char_indices().nth(width) {
        Some((cut, _)) => line[..cut].to_owned(),
        None => line,
    }
}

/// `m:ss`, or `h:mm:ss` past an hour.
fn clock(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// Columns of the terminal on stderr (80 when it will not say).
fn terminal_width() -> usize {
    rustix::termios::tcgetwinsize(std::io::stderr())
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|&c| c > 0)
        .unwrap_or(80)
}
