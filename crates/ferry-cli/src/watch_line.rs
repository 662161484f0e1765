//! `ferry watch` for people: one line per event — local time, transfer
//! name, event, the file's path, the few context fields that matter — cut
//! to the terminal's width. Scripts use `--json`, which keeps everything.

use std::collections::HashMap;
use std::path::PathBuf;

use ferry::TransferId;
use ferry::events::TransferNames;
use ferry::model::Event;
use ferry::store::Store;
use indicatif::HumanBytes;

/// Transfers whose destination paths are kept for naming file events; more
/// and the cache starts over (a watch over many transfers re-reads them).
const TRANSFERS_CACHED_MAX: usize = 16;

/// The context fields shown, in this order; the rest is for `--json`.
const CONTEXT_SHOWN: &[&str] = &[
    "error",
    "rule",
    "bytes",
    "offset",
    "bytes_per_second",
    "interrupted",
    "pid",
];

#[derive(Default)]
pub struct Lines {
    names: TransferNames,
    /// Each cached transfer's destinations, by entry index.
    dests: HashMap<TransferId, Vec<PathBuf>>,
    /// Columns a line may take; `None`: not cut (a pipe without $COLUMNS).
    width: Option<usize>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines {
            width: width(),
            ..Lines::default()
        }
    }

    /// `event` as one line for people.
    pub fn line(&mut self, store: &dyn Store, event: &Event) -> String {
        let mut line = format!(
            "{} {} {}",
            local_time(event.time_ns),
            self.names.name(store, event),
            event.name
        );
        if let Some(path) = self.path(store, event) {
            line.push(' ');
            line.push_str(&ferry::words::escaped(&path));
        }
        for key in CONTEXT_SHOWN {
            let Some(value) = event.context.get(*key) else {
                continue;
            };
            let value = match (*key, value.as_u64(), value.as_str()) {
                ("bytes" | "offset", Some(n), _) => HumanBytes(n).to_string(),
                ("bytes_per_second", Some(n), _) => format!("{}/s", HumanBytes(n)),
                ("bytes_per_second", None, _) if value.is_null() => "none".into(),
                (_, _, Some(text)) => ferry::words::escaped(text).into_owned(),
                _ => value.to_string(),
            };
            line.push_str(&format!(" {key}={value}"));
        }
        fit(line, self.width)
    }

    /// The file an event is about: its entry's destination, or the path a
    /// removal names.
    fn path(&mut self, store: &dyn Store, event: &Event) -> Option<String> {
        if let Some(path) = event.context.get("path").and_then(|p| p.as_str()) {
            return Some(path.to_owned());
        }
        let (transfer, entry) = (event.transfer?, event.entry?);
        if !self.dests.contains_key(&transfer) {
            if self.dests.len() >= TRANSFERS_CACHED_MAX {
                self.dests.clear();
            }
            let dests = store
                .entries(transfer)
                .map(|entries| entries.into_iter().map(|e| e.dest).collect())
                .unwrap_or_default();
            self.dests.insert(transfer, dests);
        }
        let dest = self.dests[&transfer].get(entry.0 as usize)?;
        Some(dest.to_string_lossy().into_owned())
    }
}

/// `line`, cut to `width` columns with an ellipsis.
fn fit(line: String, width: Option<usize>) -> String {
    match width {
        Some(width) if line.chars().count() > width => {
            let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => line,
    }
}

/// $COLUMNS when set, else the width of the terminal on stdout, else none.
fn width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(columns);
    }
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which outlives
    // the call; on a descriptor that is no terminal it fails and writes
    // nothing.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

/// The event's time on this machine's clock: `HH:MM:SS`, with the date
/// before it when that is not today.
pub(crate) fn local_time(time_ns: i64) -> String {
    let Some((date, time)) = local(time_ns.div_euclid(1_000_000_000)) else {
        return ferry::events::rfc3339_ns(time_ns);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match local(now) {
        Some((today, _)) if today == date => time,
        _ => format!("{date} {time}"),
    }
}

/// (`YYYY-MM-DD`, `HH:MM:SS`) of `secs` since the epoch, in local time.
fn local(secs: i64) -> Option<(String, String)> {
    let t: libc::time_t = secs;
    // SAFETY: an all-zero `tm` is a valid value (integers and, on glibc, a
    // null zone-name pointer) for localtime_r to overwrite.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `t` and writes only `tm`, both live
    // locals; it is the reentrant variant, safe beside other threads.
    let filled = unsafe { libc::localtime_r(&t, &mut tm) };
    if filled.is_null() {
        return None;
    }
    Some((
        format!(
            "{:04}-{:02}-{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        ),
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_to_the_width_with_an_ellipsis() {
        assert_eq!(fit("abcdef".into(), Some(4)), "abc…");
        assert_eq!(fit("abcd".into(), Some(4)), "abcd");
        assert_eq!(fit("abcdef".into(), None), "abcdef");
    }
}
