//! `ferry status`: one table and one JSON shape for every transfer, in the
//! store or in the daemon. A row is made from the store's records or from
//! the daemon's view of the same; it is printed one way.

use ferry::FileCounts;
use ferry::model::{EntryRecord, TransferRecord};
use ferry::store::Store;
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
    bytes: u64,
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

impl StatusRow {
    /// A transfer of the store, with every entry when `files`.
    pub fn local(
        store: &dyn Store,
        transfer: &TransferRecord,
        entries: &[EntryRecord],
        files: bool,
    ) -> StatusRow {
        StatusRow {
            id: transfer.id.0,
            name: transfer.name.clone(),
            kind: transfer.kind.as_str().into(),
            state: transfer.state.to_string(),
            owner: OwnerRow {
                host: transfer.owner.host.clone(),
                pid: transfer.owner.pid,
                liveness: format!("{:?}", transfer.owner_liveness()).to_lowercase(),
            },
            counts: CountsRow::new(FileCounts::of(entries)),
            bytes: entries
                .iter()
                .filter(|e| e.kind != ferry::EntryKind::Dir)
                .map(|e| e.meta.size)
                .sum(),
            checksum: transfer.checksum.map(|a| a.as_str().to_owned()),
            at: store.location().display().to_string(),
            failures: entries
                .iter()
                .filter(|e| e.state == ferry::FileState::Failed)
                .map(|e| Failure {
                    path: e.dest.to_string_lossy().into_owned(),
                    error: e.error.clone().unwrap_or_default(),
                })
                .collect(),
            files: files.then(|| entries.iter().map(file_row).collect()),
            nodes: None,
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
        let counts = FileCounts {
            files: tally.files,
            copied: tally.files_committed,
            skipped: tally.files_skipped,
            failed: tally.files_failed,
        };
        Ok(StatusRow {
            counts: CountsRow::new(counts),
            bytes: tally.bytes,
            failures,
            files: None,
            ..StatusRow::local(store, transfer, &[], false)
        })
    }

    /// A transfer of the daemon on `socket`, as it reports it.
    pub fn daemon(view: &TransferView, socket: &std::path::Path) -> StatusRow {
        let owner = view.owner.clone();
        StatusRow {
            id: view.id,
            name: view.name.clone(),
            kind: view.kind.clone(),
            state: view.state.clone(),
            owner: OwnerRow {
                host: owner.as_ref().map(|o| o.host.clone()).unwrap_or_default(),
                pid: owner.as_ref().map_or(0, |o| o.pid),
                liveness: owner.map(|o| o.liveness).unwrap_or_default(),
            },
            counts: CountsRow::new(FileCounts {
                files: view.files,
                copied: view.files_committed,
                skipped: view.files_skipped,
                failed: view.files_failed,
            }),
            bytes: view.bytes,
            checksum: view.checksum.clone(),
            at: format!("daemon at {}", socket.display()),
            failures: view.failures.clone(),
            files: None,
            nodes: None,
        }
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
                Ok(StatusRow::local(store, t, &entries, files))
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
    let mut table =
        vec![["id", "name", "kind", "state", "files", "bytes", "owner"].map(String::from)];
    for row in rows {
        table.push([
            row.id.to_string(),
            row.name.clone(),
            row.kind.clone(),
            row.state.clone(),
            row.counts.counts.to_string(),
            HumanBytes(row.bytes).to_string(),
            format!(
                "pid {} on {} ({})",
                row.owner.pid, row.owner.host, row.owner.liveness
            ),
        ]);
    }
    // Each column as wide as its widest cell: ids and names of any length
    // keep the columns under their headings.
    let widths: Vec<usize> = (0..7)
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
                0 | 5 => line.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                6 => line.push_str(cell),
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
    if let [row] = rows
        && one
    {
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
