//! `ferry status`: one table and one JSON shape for every transfer, in the
//! store or in the daemon. A row is made from the store's records or from
//! the daemon's view of the same; it is printed one way.

use ferry::FileCounts;
use ferry::model::{EntryRecord, TransferRecord};
use ferry::store::{EntryTally, Store};
use ferry_serve::api::{Failure, TransferView};
use indicatif::HumanBytes;
use serde::Serialize;

use crate::exit::Exit;

#[derive(Serialize)]
pub struct StatusRow {
    id: i64,
    name: String,
    kind: String,
    state: String,
    owner: OwnerRow,
    /// Where its files are, counted as the bar and the summary count them.
    counts: CountsRow,
    /// Its directories (not counted among the files); unknown through the
    /// daemon.
    dirs: Option<u64>,
    bytes: u64,
    /// Of `bytes`, what is durable at the destination.
    bytes_durable: u64,
    /// The last change (progress included), RFC 3339 in UTC.
    updated: Option<String>,
    #[serde(skip)]
    updated_ns: Option<i64>,
    /// What to do next, if anything (a command).
    next: Option<String>,
    checksum: Option<String>,
    /// Where it lives: the store's path, or `daemon at SOCKET`.
    at: String,
    /// Every file that failed, with why.
    failures: Vec<Failure>,
    /// `--files`: every entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<serde_json::Value>>,
    /// A distributed transfer: what each node's workers have done.
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<Vec<ferry_postgres::items::HostProgress>>,
}

#[derive(Serialize)]
struct OwnerRow {
    host: String,
    pid: u32,
    liveness: String,
}

#[derive(Serialize)]
struct CountsRow {
    #[serde(flatten)]
    counts: FileCounts,
    pending: u64,
}

impl CountsRow {
    fn new(counts: FileCounts) -> CountsRow {
        CountsRow {
            pending: counts.pending(),
            counts,
        }
    }
}

/// `word` as a shell reads it back: as it is when it holds nothing the
/// shell treats specially, else in single quotes (a provisional plan's
/// name, ` NAME (planned by pid P)`, has spaces and parentheses).
fn shell_word(word: &str) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-/+:=@,%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.into();
    }
    format!("'{}'", word.replace('\'', r"'\''")).into()
}

impl StatusRow {
    /// A transfer of the store, with every entry (`--files`).
    pub fn local(
        store: &dyn Store,
        transfer: &TransferRecord,
        entries: &[EntryRecord],
    ) -> StatusRow {
        let failures = entries
            .iter()
            .filter(|e| e.state == ferry::FileState::Failed)
            .map(|e| Failure {
                path: e.dest.to_string_lossy().into_owned(),
                error: e.error.clone().unwrap_or_default(),
            })
            .collect();
        StatusRow {
            files: Some(entries.iter().map(file_row).collect()),
            ..StatusRow::of(store, transfer, &EntryTally::of(entries), failures)
        }
    }

    /// A transfer of the store by the store's counts, with at most
    /// `failures_max` of its failures: no entry is read but those (a
    /// status of a million-file transfer costs what one of ten does).
    pub fn counted(
        store: &dyn Store,
        transfer: &TransferRecord,
        failures_max: usize,
    ) -> Result<StatusRow, Exit> {
        let tally = store.entry_tally(transfer.id).map_err(ferry::Error::from)?;
        let mut failures = Vec::new();
        let mut after = None;
        while failures.len() < failures_max {
            let page = store
                .failed_entries(
                    transfer.id,
                    after,
                    FAILURES_PAGE.min(failures_max - failures.len()),
                )
                .map_err(ferry::Error::from)?;
            let Some(last) = page.last() else {
                break;
            };
            after = Some(last.index);
            failures.extend(page.into_iter().map(|f| Failure {
                path: f.dest.to_string_lossy().into_owned(),
                error: f.error,
            }));
        }
        Ok(StatusRow::of(store, transfer, &tally, failures))
    }

    /// The one way a row is made from the store's records.
    fn of(
        store: &dyn Store,
        transfer: &TransferRecord,
        tally: &EntryTally,
        failures: Vec<Failure>,
    ) -> StatusRow {
        let state = transfer.state.to_string();
        let liveness = format!("{:?}", transfer.owner_liveness()).to_lowercase();
        StatusRow {
            id: transfer.id.0,
            next: next_step(&transfer.name, &state, &liveness, false),
            name: transfer.name.clone(),
            kind: transfer.kind.as_str().into(),
            state,
            owner: OwnerRow {
                host: transfer.owner.host.clone(),
                pid: transfer.owner.pid,
                liveness,
            },
            counts: CountsRow::new(FileCounts {
                files: tally.files,
                copied: tally.files_committed,
                skipped: tally.files_skipped,
                failed: tally.files_failed,
            }),
            dirs: Some(tally.entries - tally.files),
            bytes: tally.bytes,
            bytes_durable: tally.bytes_durable,
            updated: Some(ferry::events::rfc3339_ns(transfer.updated_ns)),
            updated_ns: Some(transfer.updated_ns),
            checksum: transfer.checksum.map(|a| a.as_str().to_owned()),
            at: store.location().display().to_string(),
            failures,
            files: None,
            nodes: None,
        }
    }

    /// A transfer of the daemon on `socket`, as it reports it.
    pub fn daemon(view: &TransferView, socket: &std::path::Path) -> StatusRow {
        let owner = view.owner.clone();
        let liveness = owner
            .as_ref()
            .map(|o| o.liveness.clone())
            .unwrap_or_default();
        StatusRow {
            id: view.id,
            name: view.name.clone(),
            kind: view.kind.clone(),
            state: view.state.clone(),
            next: next_step(&view.name, &view.state, &liveness, true),
            owner: OwnerRow {
                host: owner.as_ref().map(|o| o.host.clone()).unwrap_or_default(),
                pid: owner.as_ref().map_or(0, |o| o.pid),
                liveness,
            },
            counts: CountsRow::new(FileCounts {
                files: view.files,
                copied: view.files_committed,
                skipped: view.files_skipped,
                failed: view.files_failed,
            }),
            dirs: None,
            bytes: view.bytes,
            bytes_durable: view.bytes_durable,
            updated: None,
            updated_ns: None,
            checksum: view.checksum.clone(),
            at: format!("daemon at {}", socket.display()),
            failures: view.failures.clone(),
            files: None,
            nodes: None,
        }
    }
}

/// What to do next with a transfer in `state`, if anything: a command to
/// type (through the daemon's socket for its transfers).
fn next_step(name: &str, state: &str, liveness: &str, daemon: bool) -> Option<String> {
    let via = if daemon { "--daemon " } else { "" };
    let name = shell_word(name);
    match state {
        "completed" | "finalized" => None,
        "failed" => Some(format!("ferry {via}resume {name} retries the failed files")),
        "cancelled" if daemon => Some(format!("ferry {via}resume {name} continues it")),
        "cancelled" => Some(format!(
            "ferry resume {name} continues it; ferry forget {name} drops it"
        )),
        "created" if liveness == "dead" && !daemon => Some(format!(
            "its owner died before dispatching it, so its list of files may be incomplete: \
             the command that made it, run again, plans it anew; ferry forget {name} drops it"
        )),
        _ if liveness == "dead" && !daemon => Some(format!(
            "its owner died: ferry resume {name} continues it; ferry forget {name} drops it"
        )),
        _ => Some(format!("ferry {via}wait {name} waits for it")),
    }
}

impl StatusRow {
    /// The same transfer (a daemon's row of a store also read locally).
    /// The transfer's id and kind, to look up its per-node progress.
    pub fn id_and_kind(&self) -> (i64, &str) {
        (self.id, &self.kind)
    }

    pub fn set_nodes(&mut self, nodes: Vec<ferry_postgres::items::HostProgress>) {
        self.nodes = Some(nodes);
    }

    pub fn same_transfer(&self, other: &StatusRow) -> bool {
        (self.id, &self.name, &self.kind) == (other.id, &other.name, &other.kind)
    }
}

fn file_row(e: &EntryRecord) -> serde_json::Value {
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
}

/// The store's transfers (or the one named), as rows.
pub fn local_rows(
    store: &dyn Store,
    name: Option<&str>,
    files: bool,
) -> Result<Vec<StatusRow>, Exit> {
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
    // A named transfer lists every failure; a table, as the daemon's does,
    // the first few of each.
    let failures_max = if name.is_some() {
        usize::MAX
    } else {
        ferry_serve::api::LIST_FAILURES_MAX
    };
    transfers
        .iter()
        .map(|t| {
            if files {
                let entries = store.entries(t.id).map_err(ferry::Error::from)?;
                Ok(StatusRow::local(store, t, &entries))
            } else {
                StatusRow::counted(store, t, failures_max)
            }
        })
        .collect()
}

/// Failures read from the store at a time.
const FAILURES_PAGE: usize = 1000;

/// Prints `rows`: one JSON object when `one` (a name was given), else an
/// array; or the table, and for the one named, its failures on stderr (as
/// a finished copy reports them). `nothing` is said when there are no rows.
pub fn print(rows: &[StatusRow], one: bool, json: bool, nothing: &str) {
    if json {
        let value = match rows {
            [row] if one => serde_json::to_value(row),
            _ => serde_json::to_value(rows),
        };
        println!("{}", value.expect("rows serialize"));
        return;
    }
    if rows.is_empty() {
        println!("{nothing}");
        return;
    }
    const HEADINGS: [&str; 9] = [
        "id", "name", "kind", "state", "files", "dirs", "done", "updated", "owner",
    ];
    let mut table = vec![HEADINGS.map(String::from)];
    for row in rows {
        let over = matches!(
            row.state.as_str(),
            "completed" | "finalized" | "failed" | "cancelled"
        );
        table.push([
            row.id.to_string(),
            row.name.clone(),
            row.kind.clone(),
            row.state.clone(),
            row.counts.counts.to_string(),
            row.dirs.map_or_else(|| "-".into(), |d| d.to_string()),
            done(row.bytes_durable, row.bytes),
            row.updated_ns
                .map_or_else(|| "-".into(), crate::watch_line::local_time),
            // Whether a finished transfer's process lives says nothing.
            if over {
                format!("pid {} on {}", row.owner.pid, row.owner.host)
            } else {
                format!(
                    "pid {} on {} ({})",
                    row.owner.pid, row.owner.host, row.owner.liveness
                )
            },
        ]);
    }
    // Each column as wide as its widest cell: ids and names of any length
    // keep the columns under their headings.
    let widths: Vec<usize> = (0..HEADINGS.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, cells) in table.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in cells.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            match c {
                // Numbers to the right, words to the left, the last unpadded.
                0 | 5 | 6 => line.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                8 => line.push_str(cell),
                _ => line.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        println!("{line}");
        if let Some(files) = i.checked_sub(1).and_then(|r| rows[r].files.as_ref()) {
            print_files(files);
        }
        if let Some(nodes) = i.checked_sub(1).and_then(|r| rows[r].nodes.as_ref()) {
            for node in nodes {
                println!(
                    "    node {}: {} items done, {} held, {} files, {}",
                    node.host,
                    node.items_done,
                    node.items_held,
                    node.files,
                    HumanBytes(node.bytes)
                );
            }
        }
    }
    if !one {
        // Under the table, what needs a hand (not what is merely moving).
        for row in rows.iter().filter(|r| {
            matches!(r.state.as_str(), "failed" | "cancelled") || r.owner.liveness == "dead"
        }) {
            if let Some(next) = &row.next {
                eprintln!("ferry: {}: {next}", row.name);
            }
        }
    }
    if let [row] = rows
        && one
    {
        if let Some(next) = &row.next {
            eprintln!("ferry: {}: {next}", row.name);
        }
        for failure in &row.failures {
            eprintln!(
                "ferry: {}: {}",
                ferry::words::escaped(&failure.path),
                failure.error
            );
        }
    }
}

fn print_files(files: &[serde_json::Value]) {
    for file in files {
        println!(
            "    {:<9} {:>10} {}{}{}",
            file["state"].as_str().unwrap_or(""),
            HumanBytes(file["size"].as_u64().unwrap_or(0)).to_string(),
            ferry::words::escaped(file["dest"].as_str().unwrap_or("")),
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

/// `42% of 1.5 GiB`: what is durable of the files' bytes.
fn done(durable: u64, total: u64) -> String {
    let percent = if total == 0 {
        100
    } else {
        (u128::from(durable) * 100 / u128::from(total)) as u64
    };
    format!("{percent}% of {}", HumanBytes(total))
}

/// `--state` and `--limit`: the rows in `state`, then the newest `limit`
/// of them (by id).
pub fn select(rows: &mut Vec<StatusRow>, state: Option<&str>, limit: Option<usize>) {
    if let Some(state) = state {
        rows.retain(|r| r.state == state);
    }
    if let Some(limit) = limit {
        rows.sort_by_key(|r| r.id);
        let drop = rows.len().saturating_sub(limit);
        rows.drain(..drop);
    }
}
