//! A dispatch's run options, as its `transfer.dispatched` event records
//! them and a resume reads them back.

use crate::engine::{self, skip::SkipRule};
use crate::error::Result;
use crate::model::TransferId;
use crate::store::Store;
use crate::verify::Verify;

/// The run options of a dispatch or resume, as its `transfer.dispatched`
/// event records them: what a later resume runs with unless told otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSettings {
    pub workers: Option<usize>,
    pub skip: SkipRule,
    pub verify: Verify,
    pub check_space: bool,
    pub clean_orphans: bool,
    /// The umask modes are computed with (a daemon's caller's); `None`:
    /// the running process's.
    pub umask: Option<u32>,
    /// `--update`: destinations newer than their source are kept.
    pub update: bool,
    /// `--no-clobber`: existing destinations are kept.
    pub no_clobber: bool,
    /// `--delete`: the destination's extra files are removed at the end.
    pub delete: bool,
    /// `--bwlimit`: bytes per second, `None` for none. A later `ferry
    /// limit` (a `transfer.limited` event) overrides what the dispatch
    /// recorded.
    pub bwlimit: Option<u64>,
    /// The include/exclude rules the entries were chosen by (`+ PATTERN`,
    /// `- PATTERN`): what `--delete` leaves alone.
    pub filter: Vec<String>,
}

/// Bound on the `transfer.dispatched` events read to find the last one: a
/// transfer resumed more often than this runs with the defaults.
const DISPATCHES_MAX: usize = 10_000;

impl RunSettings {
    /// Transfer `id`'s last dispatch or resume options, from its newest
    /// `transfer.dispatched` event; `None` when it was never dispatched.
    pub fn recorded(store: &dyn Store, id: TransferId) -> Result<Option<RunSettings>> {
        let filter = crate::store::EventFilter {
            transfer: Some(id),
            kind: Some("transfer.dispatched".into()),
            ..Default::default()
        };
        let events = store.events_since(0, &filter, DISPATCHES_MAX)?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let mut settings = RunSettings::from_context(&last.context);
        let limits = crate::store::EventFilter {
            transfer: Some(id),
            kind: Some(crate::store::rules::EVENT_LIMITED.into()),
            ..Default::default()
        };
        if let Some(limit) = store
            .events_since(last.seq, &limits, DISPATCHES_MAX)?
            .last()
        {
            settings.bwlimit = limit.context["bytes_per_second"]
                .as_u64()
                .filter(|n| *n > 0);
        }
        Ok(Some(settings))
    }

    /// Read back from a `transfer.dispatched` event's context.
    pub fn from_context(c: &serde_json::Value) -> RunSettings {
        RunSettings {
            workers: c["workers"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=engine::WORKERS_MAX).contains(n)),
            skip: c["skip"]
                .as_str()
                .and_then(SkipRule::parse)
                .unwrap_or_default(),
            verify: c["verify"]
                .as_str()
                .and_then(Verify::parse)
                .unwrap_or_default(),
            check_space: c["check_space"].as_bool().unwrap_or(false),
            clean_orphans: c["clean_orphans"].as_bool().unwrap_or(false),
            umask: c["umask"]
                .as_u64()
                .and_then(|u| u32::try_from(u).ok())
                .map(|u| u & 0o777),
            update: c["update"].as_bool().unwrap_or(false),
            no_clobber: c["no_clobber"].as_bool().unwrap_or(false),
            delete: c["delete"].as_bool().unwrap_or(false),
            bwlimit: c["bwlimit"].as_u64().filter(|n| *n > 0),
            filter: c["filter"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .filter_map(|r| r.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
