//! Following the event log: one totally ordered log read from a cursor, as
//! etcd's watch, never a watch per object (which races with objects that
//! are created and change state before their watch is installed).
//!
//! The promises: **ordered** (strictly increasing `seq`), **unique** (each
//! event once), **reliable** (no gap; a compacted cursor is an error, never
//! a skip), **atomic** (a transaction's events become visible together),
//! **resumable** (continue from the last `seq` seen, across restarts),
//! **bookmarkable** ([`WatchItem::CaughtUp`] marks where history ends and
//! live events begin).
//!
//! [`snapshot_at`] rebuilds the state of every transfer right after a given
//! event by replaying the log; [`snapshot_now`] reads the same from the
//! tables. They agree: that is what makes the log trustworthy.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::Serialize;

use crate::error::Result;
use crate::model::{Event, FileState, TransferId, TransferRecord, TransferState};
use crate::owner::Liveness;
use crate::store::{EventFilter, EventReader, Store, StoreError};

/// Events fetched per read.
pub const PAGE_EVENTS_MAX: usize = 1024;

/// What a watch yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchItem {
    Event(Event),
    /// Everything up to this `seq` has been delivered: history ends here
    /// and live events follow. Sent once, when the backlog is drained.
    CaughtUp(u64),
}

/// A cursor over the event log that blocks for new events without busy
/// polling (see [`EventReader::wait_changed`]).
pub struct Watch {
    reader: Box<dyn EventReader>,
    filter: EventFilter,
    /// Where the next read starts: everything up to here was read.
    cursor: u64,
    /// The last item handed out; behind `cursor` while `pending` has items.
    delivered: u64,
    pending: VecDeque<WatchItem>,
    caught_up: bool,
}

impl Watch {
    /// Watches events with `seq > since` that pass `filter`.
    pub fn new(store: &dyn Store, since: u64, filter: EventFilter) -> Result<Watch> {
        // A cursor past the end is not from this log (a typo, or another
        // store): following it would silently skip what comes next.
        let last = store.last_seq()?;
        if since > last {
            return Err(StoreError::CursorAhead {
                path: store.location(),
                requested: since,
                last,
            }
            .into());
        }
        Ok(Watch {
            reader: store.event_reader()?,
            filter,
            cursor: since,
            delivered: since,
            pending: VecDeque::new(),
            caught_up: false,
        })
    }

    /// The `seq` of the last event delivered (or skipped by the filter):
    /// save it, and a later watch from here continues exactly there.
    pub fn cursor(&self) -> u64 {
        if self.pending.is_empty() {
            return self.cursor;
        }
        self.delivered
    }

    /// The next item, waiting at most `timeout` (`None`: forever) for one.
    /// `Ok(None)` when the time ran out.
    pub fn next_timeout(&mut self, timeout: Option<Duration>) -> Result<Option<WatchItem>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(item) = self.pending.pop_front() {
                self.delivered = match &item {
                    WatchItem::Event(event) => event.seq,
                    WatchItem::CaughtUp(seq) => *seq,
                };
                return Ok(Some(item));
            }
            // The token is taken before reading, so a commit between the
            // read and the wait still wakes us.
            let token = self.reader.change_token()?;
            let page = self
                .reader
                .events_since(self.cursor, &self.filter, PAGE_EVENTS_MAX)?;
            let full = page.events.len() == PAGE_EVENTS_MAX;
            for event in page.events {
                assert!(event.seq > self.cursor, "the log went backwards");
                self.cursor = event.seq;
                self.pending.push_back(WatchItem::Event(event));
            }
            if !full {
                // Nothing else matched up to the snapshot's newest event.
                self.cursor = self.cursor.max(page.last_seq);
                if !self.caught_up {
                    self.caught_up = true;
                    self.pending.push_back(WatchItem::CaughtUp(self.cursor));
                }
            }
            if !self.pending.is_empty() {
                continue;
            }
            let wait = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    left
                }
                None => Duration::from_secs(3600),
            };
            self.reader.wait_changed(token, wait)?;
        }
    }
}

impl Iterator for Watch {
    type Item = Result<WatchItem>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_timeout(None).transpose()
    }
}

impl Event {
    /// The documented line format:
    /// `{"seq":N,"time":"RFC 3339 with ns","subject":{...},"event":"...","context":{...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut subject = serde_json::json!({});
        if let Some(transfer) = self.transfer {
            subject["transfer"] = transfer.0.into();
        }
        if let Some(entry) = self.entry {
            subject["entry"] = entry.0.into();
        }
        if let Some(request) = self.request {
            subject["request"] = request.0.into();
        }
        serde_json::json!({
            "seq": self.seq,
            "time": rfc3339_ns(self.time_ns),
            "subject": subject,
            "event": self.name,
            "context": self.context,
        })
    }

    /// The transfer state this event puts its transfer in, if any.
    pub fn transfer_state(&self) -> Option<TransferState> {
        self.transfer?;
        self.name
            .strip_prefix("transfer.")
            .and_then(TransferState::parse)
    }
}

/// Transfer names for event lines (`subject.name`): learned from
/// `transfer.created` events, otherwise looked up once per transfer. One
/// map per watcher: `ferry watch --json` and the daemon's watch print the
/// same lines through it.
#[derive(Default)]
pub struct TransferNames(HashMap<TransferId, String>);

impl TransferNames {
    /// The transfer's name; a request or catalog event (no transfer) is
    /// named after its request, if any.
    pub fn name(&mut self, store: &dyn Store, event: &Event) -> String {
        let Some(transfer) = event.transfer else {
            return event
                .request
                .map(|r| format!("request {r}"))
                .unwrap_or_default();
        };
        if let Some(name) = event.context["name"]
            .as_str()
            .filter(|_| event.name == "transfer.created")
        {
            self.0.insert(transfer, name.to_owned());
        }
        self.0
            .entry(transfer)
            .or_insert_with(|| {
                store
                    .transfer(transfer)
                    .ok()
                    .flatten()
                    .map(|t| t.name)
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The documented JSON line, with the transfer's name in its subject
    /// (transfer events only).
    pub fn json_line(&mut self, store: &dyn Store, event: &Event) -> serde_json::Value {
        let mut line = event.to_json();
        if event.transfer.is_some() {
            line["subject"]["name"] = self.name(store, event).into();
        }
        line
    }
}

/// `2026-11-24T21:44:36.123456789Z`.
pub fn rfc3339_ns(time_ns: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_nanos(time_ns.max(0) as u64);
    humantime::format_rfc3339_nanos(time).to_string()
}

/// The state of one transfer, as the tables hold it or as the log rebuilds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransferSnapshot {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub state: TransferState,
    pub owner_host: String,
    pub owner_pid: u32,
    pub entries: Vec<EntrySnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntrySnapshot {
    pub index: u32,
    pub state: FileState,
    pub progress_bytes_durable: u64,
}

/// Every transfer as the tables hold it now.
pub fn snapshot_now(store: &dyn Store) -> Result<Vec<TransferSnapshot>> {
    let mut out = Vec::new();
    for t in store.transfers()? {
        let entries = store
            .entries(t.id)?
            .into_iter()
            .map(|e| EntrySnapshot {
                index: e.index.0,
                state: e.state,
                progress_bytes_durable: e.progress_bytes_durable,
            })
            .collect();
        out.push(TransferSnapshot {
            id: t.id.0,
            name: t.name,
            kind: t.kind.as_str().into(),
            state: t.state,
            owner_host: t.owner.host,
            owner_pid: t.owner.pid,
            entries,
        });
    }
    Ok(out)
}

/// Every transfer as it was right after event `seq`, rebuilt from the log.
/// Needs the whole log up to `seq`: a compacted store cannot answer.
pub fn snapshot_at(store: &dyn Store, seq: u64) -> Result<Vec<TransferSnapshot>> {
    let mut transfers: BTreeMap<i64, TransferSnapshot> = BTreeMap::new();
    let mut cursor = 0;
    let all = EventFilter::default();
    let corrupt = |event: &Event, what: &str| StoreError::Corrupt {
        path: store.location(),
        detail: format!("event {} ({}): {what}", event.seq, event.name),
    };
    'replay: loop {
        let page = store.events_since(cursor, &all, PAGE_EVENTS_MAX)?;
        if page.is_empty() {
            break;
        }
        for event in page {
            if event.seq > seq {
                break 'replay;
            }
            cursor = event.seq;
            // HSM request and catalog events are not about transfers.
            let Some(TransferId(id)) = event.transfer else {
                continue;
            };
            let context = &event.context;
            if event.name == "transfer.created" {
                transfers.insert(
                    id,
                    TransferSnapshot {
                        id,
                        name: context["name"].as_str().unwrap_or_default().into(),
                        kind: context["kind"].as_str().unwrap_or_default().into(),
                        state: TransferState::Created,
                        owner_host: context["host"].as_str().unwrap_or_default().into(),
                        owner_pid: context["pid"].as_u64().unwrap_or_default() as u32,
                        entries: Vec::new(),
                    },
                );
                continue;
            }
            let Some(t) = transfers.get_mut(&id) else {
                return Err(corrupt(&event, "for a transfer that was never created").into());
            };
            match event.name.as_str() {
                "transfer.added" => {
                    let added = context["entries"]
                        .as_u64()
                        .ok_or_else(|| corrupt(&event, "no entries"))?;
                    for _ in 0..added {
                        t.entries.push(EntrySnapshot {
                            index: t.entries.len() as u32,
                            state: FileState::Pending,
                            progress_bytes_durable: 0,
                        });
                    }
                }
                "transfer.freed" => {
                    transfers.remove(&id);
                }
                // What --delete removed is no entry of the transfer.
                "file.removed" => {}
                // A rate, no state.
                "transfer.limited" => {}
                // A distributed transfer's work items (ferry-postgres'
                // `items`): who did what, for per-node progress; the
                // entries' states come with their own events.
                "item.leased" | "item.done" => {}
                "transfer.reattached" => {
                    t.owner_host = context["host"].as_str().unwrap_or_default().into();
                    t.owner_pid = context["pid"].as_u64().unwrap_or_default() as u32;
                }
                name => {
                    if let Some(state) = event.transfer_state() {
                        t.state = state;
                        continue;
                    }
                    let index = event.entry.ok_or_else(|| corrupt(&event, "no entry"))?.0 as usize;
                    let entry = t
                        .entries
                        .get_mut(index)
                        .ok_or_else(|| corrupt(&event, "for an entry that was never added"))?;
                    match name {
                        "file.progress" => {
                            entry.progress_bytes_durable =
                                context["bytes_durable"].as_u64().unwrap_or(0)
                        }
                        _ => {
                            let state = name
                                .strip_prefix("file.")
                                .and_then(FileState::parse)
                                .ok_or_else(|| corrupt(&event, "unknown event"))?;
                            entry.state = state;
                            match state {
                                FileState::Copying => {
                                    entry.progress_bytes_durable =
                                        context["offset"].as_u64().unwrap_or(0)
                                }
                                FileState::Copied => {
                                    entry.progress_bytes_durable =
                                        context["bytes"].as_u64().unwrap_or(0)
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(transfers.into_values().collect())
}

/// The transfer `id`'s terminal event, if the log after `since` has one.
pub fn is_terminal_event(event: &Event, id: TransferId) -> bool {
    event.transfer == Some(id)
        && event
            .transfer_state()
            .is_some_and(TransferState::is_terminal)
}

/// How often a waiter ([`Watch::next_timeout`]) that sees no event looks at
/// the owner of the transfer it waits for: a job epilogue waiting on a
/// copier that was OOM-killed must end, not hang.
pub const OWNER_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The transfer `id` when nothing will ever end it: it is not over and its
/// owner is dead ([`crate::owner`]'s liveness: on this host, no such
/// process or a zombie; elsewhere, its lease ran out). `None` while it is
/// over, moving, or owned by a process elsewhere with no lease recorded.
pub fn abandoned(store: &dyn Store, id: TransferId) -> Result<Option<TransferRecord>> {
    let Some(before) = store.transfer(id)? else {
        return Ok(None);
    };
    if before.state.is_terminal() || before.owner_liveness() != Liveness::Dead {
        return Ok(None);
    }
    // The owner may have written the end just before it exited: read again
    // now that it is known dead (it writes nothing more), and a re-attach
    // in between gave the transfer a new owner.
    Ok(store.transfer(id)?.filter(|now| {
        let (a, b) = (&now.owner, &before.owner);
        !now.state.is_terminal()
            && (&a.host, &a.boot_id, a.pid, a.start_time)
                == (&b.host, &b.boot_id, b.pid, b.start_time)
    }))
}
