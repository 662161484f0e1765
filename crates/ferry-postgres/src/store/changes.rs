//! Applying a batch of [`Change`]s on PostgreSQL. Each statement is a
//! round trip to the server (~80 µs here, more across a network), so a
//! run of entry changes of one transfer — what a commit of a batch of
//! files is — takes two statements, whatever its length: one that locks
//! the rows and reads their states, one that writes them all. Per file,
//! that was two statements for each change (4 for a copied file).

use std::collections::{HashMap, HashSet};

use ferry::model::{EntryIndex, TransferId};
use ferry::store::rules;
use ferry::store::{Change, StoreError};

use crate::conn::Db;
use crate::{PgStore, Tx};

/// Entry changes written by one pair of statements at most: bounds a
/// statement's arrays (and the rows one statement locks).
const ENTRY_RUN_MAX: usize = 4096;

impl PgStore {
    /// Applies `changes` in their order, each with its event, inside `tx`
    /// (the transfers' rows already locked by the caller): the one loop
    /// behind every write of changes.
    pub(crate) fn apply_changes(
        &self,
        tx: &mut Tx<'_>,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let mut checked = HashSet::new();
        let mut rest = changes;
        while let Some(first) = rest.first() {
            let run = entry_run(rest);
            if run > 1 {
                self.apply_entry_run(tx, &rest[..run], &mut checked)?;
                rest = &rest[run..];
            } else {
                self.apply_one(tx, first, &mut checked)?;
                rest = &rest[1..];
            }
        }
        Ok(())
    }

    /// `run`: entry changes of one transfer, each entry at most once (see
    /// [`entry_run`]). The same checks, in the same order, as applying them
    /// one by one with [`PgStore::apply_one`].
    fn apply_entry_run(
        &self,
        tx: &mut Tx<'_>,
        run: &[Change],
        checked: &mut HashSet<TransferId>,
    ) -> Result<(), StoreError> {
        let Some(Change::Entry { id, .. }) = run.first() else {
            unreachable!("a run starts with an entry change");
        };
        let id = *id;
        self.check_moving(tx, id, checked)?;
        let path = self.location_path();
        let mut indexes = Vec::with_capacity(run.len());
        let mut states = Vec::with_capacity(run.len());
        let mut errors = Vec::with_capacity(run.len());
        let mut progress = Vec::with_capacity(run.len());
        let mut algos = Vec::with_capacity(run.len());
        let mut digests = Vec::with_capacity(run.len());
        for change in run {
            let Change::Entry {
                index,
                to,
                progress_bytes_durable,
                error,
                checksum,
                ..
            } = change
            else {
                unreachable!("a run holds entry changes only");
            };
            indexes.push(i64::from(index.0));
            states.push(to.as_str());
            errors.push(error.as_deref());
            progress.push(progress_bytes_durable.map(|p| p as i64));
            algos.push(checksum.as_ref().map(|c| c.algo.as_str()));
            digests.push(checksum.as_ref().map(|c| c.digest()));
        }
        // Locked in index order, as one entry at a time would have (in
        // batch order): the transfer's row, locked first, already orders
        // every writer of these rows.
        let rows = tx
            .tx
            .query(
                "SELECT idx, state FROM entries WHERE transfer_id = $1 AND idx = ANY($2)
                 ORDER BY idx FOR UPDATE",
                &[&id.0, &indexes],
            )
            .map_err(|e| self.err(e))?;
        let mut recorded = HashMap::with_capacity(rows.len());
        for row in &rows {
            let index: i64 = row.try_get(0).map_err(|e| self.err(e))?;
            let state: String = row.try_get(1).map_err(|e| self.err(e))?;
            recorded.insert(index, state);
        }
        for change in run {
            let Change::Entry { index, to, .. } = change else {
                unreachable!("a run holds entry changes only");
            };
            let from = recorded
                .get(&i64::from(index.0))
                .map(|state| rules::parse_file_state(&path, id, *index, state))
                .transpose()?;
            rules::check_entry_transition(&path, id, *index, from, *to)?;
        }
        // Progress back to 0 restarts the file: its pieces' digests go.
        let written = tx
            .tx
            .execute(
                "UPDATE entries e SET state = u.state, error = u.error,
                    progress_bytes_durable = coalesce(u.progress, e.progress_bytes_durable),
                    piece_digests = CASE WHEN u.progress = 0 THEN NULL ELSE e.piece_digests END,
                    checksum_algo = CASE WHEN u.digest IS NULL THEN e.checksum_algo
                                         ELSE u.algo END,
                    checksum = coalesce(u.digest, e.checksum)
                 FROM unnest($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                             $7::BYTEA[]) AS u(idx, state, error, progress, algo, digest)
                 WHERE e.transfer_id = $1 AND e.idx = u.idx",
                &[
                    &id.0, &indexes, &states, &errors, &progress, &algos, &digests,
                ],
            )
            .map_err(|e| self.err(e))?;
        assert_eq!(
            written,
            run.len() as u64,
            "every entry of the run was found and locked above"
        );
        for change in run {
            let Change::Entry {
                index, to, context, ..
            } = change
            else {
                unreachable!("a run holds entry changes only");
            };
            self.event(tx, id, Some(*index), &rules::file_event_name(*to), context)?;
        }
        Ok(())
    }
}

/// How many of `changes`' first changes form a run for
/// [`PgStore::apply_entry_run`]: entry changes of the first one's
/// transfer, no entry twice (a second change of an entry must see the
/// first's state), at most [`ENTRY_RUN_MAX`]. 0 or 1: apply one by one.
fn entry_run(changes: &[Change]) -> usize {
    let Some(Change::Entry { id: first, .. }) = changes.first() else {
        return 0;
    };
    let mut seen: HashSet<EntryIndex> = HashSet::new();
    changes
        .iter()
        .take(ENTRY_RUN_MAX)
        .take_while(|change| match change {
            Change::Entry { id, index, .. } => id == first && seen.insert(*index),
            _ => false,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry::model::FileState;
    use serde_json::Value;

    fn entry(id: i64, index: u32) -> Change {
        Change::Entry {
            id: TransferId(id),
            index: EntryIndex(index),
            to: FileState::Copied,
            progress_bytes_durable: None,
            error: None,
            checksum: None,
            context: Value::Null,
        }
    }

    #[test]
    fn a_run_stops_at_another_transfer_a_repeated_entry_or_another_change() {
        assert_eq!(entry_run(&[]), 0);
        assert_eq!(entry_run(&[Change::Free { id: TransferId(1) }]), 0);
        assert_eq!(entry_run(&[entry(1, 0), entry(1, 1), entry(1, 2)]), 3);
        assert_eq!(entry_run(&[entry(1, 0), entry(1, 1), entry(2, 2)]), 2);
        assert_eq!(entry_run(&[entry(1, 0), entry(1, 1), entry(1, 0)]), 2);
        let free = Change::Free { id: TransferId(1) };
        assert_eq!(entry_run(&[entry(1, 0), free, entry(1, 1)]), 1);
        let long: Vec<Change> = (0..ENTRY_RUN_MAX as u32 + 5).map(|i| entry(1, i)).collect();
        assert_eq!(entry_run(&long), ENTRY_RUN_MAX);
    }
}
