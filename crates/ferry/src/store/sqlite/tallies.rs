//! `entry_tallies` kept by the writer: what one batch of entry updates
//! moves between its rows, summed and written once at the end of the
//! batch. (A trigger did it row by row, two statements per update: a fifth
//! of a small-file copy's instructions.) Inserts and deletes still go
//! through their triggers.

use std::collections::HashMap;

use rusqlite::{Transaction, params};

use crate::model::TransferId;

/// `entry_tallies`' key: transfer, state code, and whether it is a file.
type Bucket = (i64, i64, bool);

/// One entry as `entry_tallies` counts it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Counted {
    pub state: i64,
    pub is_file: bool,
    pub size: i64,
    pub progress_bytes_durable: i64,
}

impl Counted {
    /// The bytes of it that are durable: all of them once copied or
    /// committed (codes 2, 3), else its recorded progress (as the schema's
    /// insert trigger counts them).
    fn durable(&self) -> i64 {
        if matches!(self.state, 2 | 3) {
            self.size
        } else {
            self.progress_bytes_durable
        }
    }
}

/// The changes of one batch, by row of `entry_tallies`: (n, bytes,
/// durable). At most one key per transfer, state and kind in the batch.
#[derive(Default)]
pub(super) struct TallyDeltas(HashMap<Bucket, (i64, i64, i64)>);

impl TallyDeltas {
    /// An entry of `id` went from `was` to `now`.
    pub fn moved(&mut self, id: TransferId, was: Counted, now: Counted) {
        debug_assert_eq!(was.is_file, now.is_file, "an update never changes a kind");
        let before = self.0.entry((id.0, was.state, was.is_file)).or_default();
        *before = (before.0 - 1, before.1 - was.size, before.2 - was.durable());
        let after = self.0.entry((id.0, now.state, now.is_file)).or_default();
        *after = (after.0 + 1, after.1 + now.size, after.2 + now.durable());
    }

    /// Adds the batch's changes to `entry_tallies`, in `tx`.
    pub fn write(self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        for ((id, state, is_file), (n, bytes, durable)) in self.0 {
            if (n, bytes, durable) == (0, 0, 0) {
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO entry_tallies VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (transfer_id, state, is_file) DO UPDATE SET
                    n = n + excluded.n, bytes = bytes + excluded.bytes,
                    durable = durable + excluded.durable",
            )?
            .execute(params![id, state, is_file, n, bytes, durable])?;
        }
        Ok(())
    }
}

/// `id`'s entry `index` as `entry_tallies` counts it, read before an
/// update (None: no such entry).
pub(super) fn counted(
    tx: &Transaction<'_>,
    id: TransferId,
    index: u32,
) -> rusqlite::Result<Option<Counted>> {
    use rusqlite::OptionalExtension;
    tx.prepare_cached(
        "SELECT state, kind != 1, size, progress_bytes_durable FROM entries
         WHERE transfer_id = ?1 AND idx = ?2",
    )?
    .query_row(params![id.0, index], |row| {
        Ok(Counted {
            state: row.get(0)?,
            is_file: row.get(1)?,
            size: row.get(2)?,
            progress_bytes_durable: row.get(3)?,
        })
    })
    .optional()
}
