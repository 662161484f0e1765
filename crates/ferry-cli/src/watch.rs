//! `ferry watch` and `ferry wait`: both read the one ordered event log.

use std::io::Write;

use ferry::events::{
    OWNER_CHECK_INTERVAL, TransferNames, Watch, WatchItem, abandoned, is_terminal_event,
};
use ferry::model::Event;
use ferry::store::{EventFilter, Store};
use ferry::{TransferId, TransferState};

use crate::exit::Exit;

pub struct WatchArgs {
    pub since: Option<u64>,
    pub from_now: bool,
    pub transfer: Option<String>,
    pub event: Option<String>,
    pub until_done: Option<String>,
    pub json: bool,
}

/// A transfer named on the command line, which may not exist yet: it is
/// resolved from its `transfer.created` event when it appears.
struct NamedTransfer {
    name: String,
    id: Option<TransferId>,
}

impl NamedTransfer {
    fn new(store: &dyn Store, name: String) -> ferry::Result<NamedTransfer> {
        let id = store.transfer_by_name(&name)?.map(|t| t.id);
        Ok(NamedTransfer { name, id })
    }

    /// Learns the id from a creation event (only while no transfer of that
    /// name is known, or after the known one was freed: names are reused
    /// once freed, ids never); then says whether `event` is ours.
    fn matches(&mut self, event: &Event) -> bool {
        if event.transfer.is_some() && self.id == event.transfer && event.name == "transfer.freed" {
            self.id = None;
            return true;
        }
        if self.id.is_none()
            && event.name == "transfer.created"
            && event.context["name"].as_str() == Some(self.name.as_str())
        {
            self.id = event.transfer;
        }
        event.transfer.is_some() && self.id == event.transfer
    }
}

pub fn watch(store: &dyn Store, args: WatchArgs) -> Result<Exit, Exit> {
    let since = match (args.since, args.from_now) {
        (Some(seq), _) => seq,
        (None, true) => store.last_seq().map_err(ferry::Error::from)?,
        // Scripts replay the whole log by default; people see what happens
        // from now on, told what is behind them.
        (None, false) if args.json => 0,
        (None, false) => {
            let last = store.last_seq().map_err(ferry::Error::from)?;
            if last > 0 {
                eprintln!("ferry: watching from now; `--since 0` shows the {last} events before");
            }
            last
        }
    };
    let mut only = args
        .transfer
        .map(|n| NamedTransfer::new(store, n))
        .transpose()?;
    let mut until = args
        .until_done
        .map(|n| NamedTransfer::new(store, n))
        .transpose()?;
    // Already over before we started: its end is in the backlog (or before
    // the cursor), so stop once the backlog is delivered.
    let ended_before = match &until {
        Some(u) => store
            .transfer_by_name(&u.name)
            .map_err(ferry::Error::from)?
            .map(|t| t.state)
            .filter(|s| s.is_terminal()),
        None => None,
    };
    // Filtering by kind happens in the store, unless --until-done needs the
    // transfer events the kind would hide; by transfer here, because a
    // transfer named on the command line may not exist yet.
    let (filter, shown_kind) = if until.is_some() {
        (EventFilter::default(), args.event)
    } else {
        (
            EventFilter {
                transfer: None,
                kind: args.event,
                ..Default::default()
            },
            None,
        )
    };
    let kind_filter = EventFilter {
        transfer: None,
        kind: shown_kind,
        ..Default::default()
    };
    let mut names = TransferNames::default();
    let mut lines = crate::watch_line::Lines::new();
    let stdout = std::io::stdout();
    let mut watch = Watch::new(store, since, filter)?;
    let mut owner_checked = std::time::Instant::now();
    loop {
        let item = watch.next_timeout(Some(OWNER_CHECK_INTERVAL))?;
        // Other transfers' events may never let the watch time out: the
        // owner is looked at by the clock, quiet or not.
        if owner_checked.elapsed() >= OWNER_CHECK_INTERVAL {
            owner_checked = std::time::Instant::now();
            if let Some(id) = until.as_ref().and_then(|u| u.id)
                && let Some(record) = abandoned(store, id)?
            {
                return Err(Exit::OwnerDead(Box::new(record), store.location()));
            }
        }
        let Some(item) = item else {
            continue;
        };
        let mut out = stdout.lock();
        let event = match item {
            WatchItem::CaughtUp(seq) => {
                if args.json {
                    if writeln!(out, "{}", serde_json::json!({"bookmark": seq})).is_err() {
                        // The reader is gone (`ferry watch | head`): stop quietly.
                        return Ok(Exit::Ok);
                    }
                } else {
                    if writeln!(out, "-- caught up at {seq}; live events follow --").is_err() {
                        // The reader is gone (`ferry watch | head`): stop quietly.
                        return Ok(Exit::Ok);
                    }
                }
                if out.flush().is_err() {
                    return Ok(Exit::Ok);
                }
                if let Some(state) = ended_before {
                    return Ok(outcome(state));
                }
                continue;
            }
            WatchItem::Event(event) => event,
        };
        let done = until.as_mut().is_some_and(|u| u.matches(&event))
            && until_done_state(&until, &event).is_some();
        let shown = only.as_mut().is_none_or(|o| o.matches(&event)) && kind_filter.matches(&event);
        if shown {
            if args.json {
                let line = names.json_line(store, &event);
                if writeln!(out, "{line}").is_err() {
                    return Ok(Exit::Ok);
                }
            } else {
                let line = lines.line(store, &event);
                if writeln!(out, "{line}").is_err() {
                    // The reader is gone (`ferry watch | head`): stop quietly.
                    return Ok(Exit::Ok);
                }
            }
            if out.flush().is_err() {
                return Ok(Exit::Ok);
            }
        }
        if done {
            return Ok(outcome(event.transfer_state().expect("a terminal event")));
        }
    }
}

fn until_done_state(until: &Option<NamedTransfer>, event: &Event) -> Option<TransferState> {
    let id = until.as_ref()?.id?;
    is_terminal_event(event, id)
        .then(|| event.transfer_state())
        .flatten()
}

/// `ferry wait NAME`: returns when the transfer is terminal; the exit code
/// tells how it ended.
pub fn wait(store: &dyn Store, name: &str) -> Result<Exit, Exit> {
    // The cursor first, then the state: a change in between is in the log
    // after the cursor, so it cannot be missed.
    let since = store.last_seq().map_err(ferry::Error::from)?;
    let transfer = store
        .transfer_by_name(name)
        .map_err(ferry::Error::from)?
        .ok_or_else(|| ferry::Error::TransferNotFound {
            name: name.to_owned(),
            store: store.location(),
        })?;
    if transfer.state.is_terminal() {
        return Ok(outcome(transfer.state));
    }
    let filter = EventFilter {
        transfer: Some(transfer.id),
        kind: Some("transfer".into()),
        ..Default::default()
    };
    let mut watch = Watch::new(store, since, filter)?;
    loop {
        match watch.next_timeout(Some(OWNER_CHECK_INTERVAL))? {
            Some(WatchItem::Event(event)) if is_terminal_event(&event, transfer.id) => {
                let state = event.transfer_state().expect("a terminal event");
                println!("ferry: {name} {state}");
                return Ok(outcome(state));
            }
            Some(_) => {}
            None => {
                if let Some(record) = abandoned(store, transfer.id)? {
                    return Err(Exit::OwnerDead(Box::new(record), store.location()));
                }
            }
        }
    }
}

fn outcome(state: TransferState) -> Exit {
    match state {
        TransferState::Completed | TransferState::Finalized => Exit::Ok,
        TransferState::Cancelled => Exit::Cancelled,
        _ => Exit::TransferFailed,
    }
}

/// Families of events, each a name's first part.
const EVENT_FAMILIES: [&str; 6] = ["transfer", "file", "item", "request", "catalog", "hsm"];

/// Every event name the stores write.
fn event_names() -> Vec<String> {
    use ferry::model::{CatalogState, RequestState};
    use ferry::store::rules;
    let mut names: Vec<String> = ferry::TransferState::ALL
        .iter()
        .map(|s| rules::transfer_event_name(*s))
        .chain(
            ferry::FileState::ALL
                .iter()
                .map(|s| rules::file_event_name(*s)),
        )
        .chain(
            [
                rules::EVENT_ADDED,
                rules::EVENT_FREED,
                rules::EVENT_NAMED,
                rules::EVENT_REATTACHED,
                rules::EVENT_LIMITED,
                rules::EVENT_PROGRESS,
                rules::EVENT_REMOVED,
                "request.joined",
                "hsm.policy",
                // A distributed copy's work items (crates/ferry-postgres).
                "item.leased",
                "item.done",
            ]
            .map(String::from),
        )
        .chain(
            RequestState::ALL
                .iter()
                .map(|s| format!("request.{}", s.as_str())),
        )
        .chain(
            CatalogState::ALL
                .iter()
                .map(|s| format!("catalog.{}", s.as_str())),
        )
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `--event`'s parser: a family or a name the stores write (a typo would
/// watch nothing, forever).
pub fn event_name(event: &str) -> Result<String, String> {
    let names = event_names();
    if EVENT_FAMILIES.contains(&event) || names.iter().any(|n| n == event) {
        return Ok(event.to_owned());
    }
    Err(format!(
        "no event is named so: give a family ({}) or one of: {}",
        EVENT_FAMILIES.join(", "),
        names.join(", ")
    ))
}
