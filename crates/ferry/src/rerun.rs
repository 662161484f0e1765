//! The same copy run again is the same transfer.
//!
//! `cp -r SRC DST` nests the second time (`DST` exists by then, so it
//! receives `DST/SRC`). For a job script re-run after a kill that would copy
//! everything again into a new place and leave the first run's half tree
//! beside it. So before `cp`'s destination rule is applied, the store is
//! asked for a live transfer that copied these sources to this destination
//! — with `DST` as the target itself, or as the directory receiving them —
//! and the caller continues it, or brings that destination up to date.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::plan::DestRule;
use crate::error::{Error, Result};
use crate::model::{EntryRecord, TransferRecord, TransferState};
use crate::store::Store;
use crate::transfer::Transfer;

/// A live transfer found for the same sources and destination.
#[derive(Debug)]
pub struct SameCopy {
    pub record: TransferRecord,
    /// How its sources were placed: [`DestRule::Exactly`] when its one
    /// source became the destination itself (`cp`'s rule would nest now).
    pub rule: DestRule,
}

/// What a re-run does with the [`SameCopy`] it found.
pub enum Rerun {
    /// Not over yet (its owner died), or it failed or was cancelled: this
    /// process took it over; resume it.
    Continue(Box<Transfer>),
    /// It completed: copy again onto the same destinations under `rule`,
    /// skipping what already matches.
    UpToDate(SameCopy),
}

/// The live transfer of `store` whose recorded roots are `sources`, each
/// copied to `dest` itself or to `dest/BASENAME` — the first one found, by
/// id. With a `name` (the caller's `--name`, part of its command line) only
/// a transfer of that name counts. Paths are compared as [`crate::plan`] records them (absolute,
/// symlinks not resolved). Reads the entries of every live transfer: the
/// cost of a `ferry status --files` of the store.
pub fn find_same_copy(
    store: &dyn Store,
    name: Option<&str>,
    sources: &[PathBuf],
    dest: &Path,
) -> Result<Option<SameCopy>> {
    find_same_copy_among(store, name, sources, dest, &|_| true)
}

/// [`find_same_copy`] among the transfers `keep` admits (the daemon: the
/// caller's own, not the one being filled).
pub fn find_same_copy_among(
    store: &dyn Store,
    name: Option<&str>,
    sources: &[PathBuf],
    dest: &Path,
    keep: &dyn Fn(&TransferRecord) -> bool,
) -> Result<Option<SameCopy>> {
    let absolute = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let dest = absolute(dest)?;
    let sources: Vec<PathBuf> = sources.iter().map(|s| absolute(s)).collect::<Result<_>>()?;
    let Some(first) = sources.first() else {
        return Ok(None);
    };
    let candidates = match name {
        Some(name) => store.transfer_by_name(name)?.into_iter().collect(),
        None => store.transfers()?,
    };
    for record in candidates.into_iter().filter(|r| keep(r)) {
        let entries = store.entries(record.id)?;
        // The first source's root is the transfer's first entry (the plan
        // lists each source's tree in order, its root first).
        let Some(root) = entries.first() else {
            continue;
        };
        if &root.source != first {
            continue;
        }
        let is_root = |source: &Path, entry: &EntryRecord| {
            entry.source == source
                && (entry.dest == dest
                    || source
                        .file_name()
                        .is_some_and(|base| entry.dest == dest.join(base)))
        };
        if is_root(first, root)
            && sources[1..]
                .iter()
                .all(|source| entries.iter().any(|e| is_root(source, e)))
        {
            // Its one source became DST itself: `cp`'s rule would nest
            // now that DST exists, so the re-run must not apply it.
            let rule = if sources.len() == 1 && root.dest == dest {
                DestRule::Exactly
            } else {
                DestRule::Cp
            };
            return Ok(Some(SameCopy { record, rule }));
        }
    }
    Ok(None)
}

/// Takes up `found` for a re-run: a transfer that is not over, or that
/// failed or was cancelled, is taken over from its (dead) owner and
/// continued; a completed one is brought up to date by a new transfer. A
/// live owner's transfer is refused ([`Error::OwnerAlive`]), as a second
/// `create` of its name would be.
pub fn take_up(store: Arc<dyn Store>, found: SameCopy) -> Result<Rerun> {
    match found.record.state {
        TransferState::Completed | TransferState::Finalized => Ok(Rerun::UpToDate(found)),
        _ => {
            let transfer = Transfer::take_over(store, found.record)?;
            Ok(Rerun::Continue(Box::new(transfer)))
        }
    }
}
