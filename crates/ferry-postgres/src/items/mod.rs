//! Distributed transfers: their work items, leased by `ferry worker`s on any
//! number of nodes, as the HSM queue's requests are (`crate::queue`).
//!
//! A distributed transfer (kind `distributed`) is created with its roots as
//! entries and their first items; workers lease items `FOR UPDATE SKIP
//! LOCKED` (never one item twice, never waiting on each other), renew the
//! lease by heartbeat, and complete each item fenced by its attempt: every
//! write a worker makes for an item — entries `copied` and `committed`, the
//! entries and items a listing adds, the item's completion — runs in one
//! transaction that first checks the item is still `started` at that
//! attempt by that holder. A worker whose lease expired and was taken over
//! can therefore never write again ([`StoreError::StaleItem`]).
//!
//! Lock order, as in `crate::store`: the transfer row, then the item row,
//! then entry rows, then (at commit) the event counter. Lease expiry uses the
//! server's clock.
//!
//! Events (each with the transfer): `item.leased` (item, kind, attempt,
//! host), `item.done` (item, kind, attempt, host, files, bytes). Per-node
//! progress (`ferry status`) is the sum of `item.done` by host.

mod plan;

use std::collections::HashSet;

use ferry::model::{
    EntryIndex, EntryKind, EntryRecord, FileState, NewEntry, NewTransfer, TransferId,
    TransferRecord, TransferState,
};
use ferry::store::rules;
use ferry::store::{Change, Store, StoreError};
use serde_json::json;

use crate::conn::Db;
use crate::store::{ENTRY_COLUMNS, now_ns};
use crate::{PgStore, Tx};
pub use plan::{
    BATCH_BYTES_MAX, BATCH_FILES_MAX, DIR_ITEM_DIRS_MAX, ItemKind, LISTING_DIR_ENTRIES_MAX,
    LISTING_ENTRIES_BUDGET, NewItem, OpenBatch, Planned, RANGE_ITEM_BYTES, RANGED_FROM_BYTES,
    dir_items, items_of,
};

/// The server's clock in ns, read once per statement.
const NOW_SQL: &str = "(extract(epoch from clock_timestamp()) * 1000000000)::BIGINT";

/// Event names.
pub const EVENT_ITEM_LEASED: &str = "item.leased";
pub const EVENT_ITEM_DONE: &str = "item.done";

/// An item a worker holds.
#[derive(Clone, Debug)]
pub struct ItemLease {
    pub item: i64,
    pub transfer: TransferId,
    pub kind: ItemKind,
    pub entries: Vec<EntryIndex>,
    pub range: Option<(u64, u64)>,
    pub files: u64,
    pub bytes: u64,
    /// 1 for the first lease; each lease after an expiry adds one.
    pub attempt: u32,
    pub holder: String,
    pub host: String,
}

/// What the items of one transfer's host have done.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostProgress {
    pub host: String,
    pub items_done: u64,
    pub items_held: u64,
    pub files: u64,
    pub bytes: u64,
}

impl PgStore {
    /// Creates a distributed transfer with `roots` as its entries, dispatches
    /// it and adds its first items: directory items for the root
    /// directories, batch or range items for root files.
    pub fn create_distributed(
        &self,
        new: &NewTransfer,
        roots: &[NewEntry],
    ) -> Result<TransferRecord, StoreError> {
        let record = self.create_transfer(new, roots)?;
        let id = record.id;
        self.write(|tx| {
            self.lock_transfers(tx, &[id.0])?;
            self.apply_one(
                tx,
                &Change::Transfer {
                    id,
                    to: TransferState::Dispatched,
                    owner: Some(new.owner.clone()),
                    context: json!({"distributed": true}),
                },
                &mut HashSet::new(),
            )?;
            insert_items(tx, id, &items_of(0, roots, None).items)
        })?;
        self.transfer(id)?
            .ok_or_else(|| rules::no_such_transfer(&self.location_path(), id))
    }

    /// Leases the oldest expired item, else the oldest waiting one (of
    /// `only`, when given), for `lease_ms` by the server's clock. `None`:
    /// nothing to do now.
    pub fn lease_item(
        &self,
        holder: &str,
        host: &str,
        lease_ms: u64,
        only: Option<TransferId>,
    ) -> Result<Option<ItemLease>, StoreError> {
        let leased = self.write(|tx| self.lease_in(tx, holder, host, lease_ms, only))?;
        let Some((lease, dispatched)) = leased else {
            return Ok(None);
        };
        self.start_running(&lease, dispatched)?;
        Ok(Some(lease))
    }

    /// The first item leased moves the transfer to `running`; a worker that
    /// loses this race to another finds it running.
    fn start_running(&self, lease: &ItemLease, dispatched: bool) -> Result<(), StoreError> {
        if dispatched {
            let moved = self.apply(&[Change::Transfer {
                id: lease.transfer,
                to: TransferState::Running,
                owner: None,
                context: json!({"host": lease.host}),
            }]);
            if let Some(state) = self.transfer(lease.transfer)?.map(|t| t.state)
                && state != TransferState::Dispatched
            {
                // Ours or another's: either way no longer `dispatched`.
            } else {
                moved?;
            }
        }
        Ok(())
    }

    /// [`PgStore::lease_item`] inside `tx`; `true`: the transfer is still
    /// `dispatched`.
    fn lease_in(
        &self,
        tx: &mut Tx<'_>,
        holder: &str,
        host: &str,
        lease_ms: u64,
        only: Option<TransferId>,
    ) -> Result<Option<(ItemLease, bool)>, StoreError> {
        let only = only.map(|t| t.0);
        // Two statements, each on its index: an `OR` of both would scan.
        for which in [
            "state = 'started' AND lease_expires_ns < (SELECT ns FROM clock) \
             ORDER BY lease_expires_ns",
            "state = 'waiting' ORDER BY id",
        ] {
            let (cond, order) = which.split_once(" ORDER BY ").expect("two parts");
            let row = tx
                .tx
                .query_opt(
                    &format!(
                        "WITH clock AS MATERIALIZED (SELECT {NOW_SQL} AS ns),
                         candidate AS (
                            SELECT id FROM work_items
                            WHERE {cond} AND ($1::BIGINT IS NULL OR transfer_id = $1)
                              -- A cancelled (or freed) transfer's items stay.
                              AND EXISTS (SELECT 1 FROM transfers t
                                  WHERE t.id = transfer_id AND t.freed_ns IS NULL
                                  AND t.state IN ('dispatched', 'running'))
                            ORDER BY {order} LIMIT 1 FOR UPDATE SKIP LOCKED)
                         UPDATE work_items w SET state = 'started', attempt = attempt + 1,
                            lease_holder = $2, lease_host = $3,
                            lease_expires_ns = clock.ns + $4::BIGINT * 1000000, updated_ns = clock.ns
                         FROM candidate, clock WHERE w.id = candidate.id
                         RETURNING w.id, w.transfer_id, w.kind, w.entries, w.range_start,
                            w.range_end, w.files, w.bytes, w.attempt,
                            (SELECT state FROM transfers t WHERE t.id = w.transfer_id)"
                    ),
                    &[&only, &holder, &host, &(lease_ms as i64)],
                )
                .map_err(|e| tx.err(e))?;
            let Some(row) = row else { continue };
            let get = |i| row.try_get::<_, i64>(i);
            let kind: String = row.try_get(2).map_err(|e| tx.err(e))?;
            let kind = ItemKind::parse(&kind).ok_or_else(|| {
                rules::corrupt(&self.location_path(), format!("work item kind {kind}"))
            })?;
            let entries: Vec<i64> = row.try_get(3).map_err(|e| tx.err(e))?;
            let start: Option<i64> = row.try_get(4).map_err(|e| tx.err(e))?;
            let end: Option<i64> = row.try_get(5).map_err(|e| tx.err(e))?;
            let lease = ItemLease {
                item: get(0).map_err(|e| tx.err(e))?,
                transfer: TransferId(get(1).map_err(|e| tx.err(e))?),
                kind,
                entries: entries.iter().map(|i| EntryIndex(*i as u32)).collect(),
                range: start.zip(end).map(|(s, e)| (s as u64, e as u64)),
                files: get(6).map_err(|e| tx.err(e))? as u64,
                bytes: get(7).map_err(|e| tx.err(e))? as u64,
                attempt: get(8).map_err(|e| tx.err(e))? as u32,
                holder: holder.to_string(),
                host: host.to_string(),
            };
            let state: String = row.try_get(9).map_err(|e| tx.err(e))?;
            let dispatched = state == TransferState::Dispatched.as_str();
            self.event(
                tx,
                lease.transfer,
                None,
                EVENT_ITEM_LEASED,
                &json!({"item": lease.item, "kind": kind.as_str(),
                        "attempt": lease.attempt, "host": host}),
            )?;
            return Ok(Some((lease, dispatched)));
        }
        Ok(None)
    }

    /// Renews `lease` for `lease_ms`; `Ok(false)`: it is no longer ours
    /// (expired and taken, or done), so its work must stop.
    pub fn heartbeat_item(&self, lease: &ItemLease, lease_ms: u64) -> Result<bool, StoreError> {
        let renewed = self
            .conn()?
            .execute(
                &format!(
                    "UPDATE work_items SET lease_expires_ns = {NOW_SQL} + $1::BIGINT * 1000000
                     WHERE id = $2 AND attempt = $3 AND state = 'started' AND lease_holder = $4"
                ),
                &[
                    &(lease_ms as i64),
                    &lease.item,
                    &i64::from(lease.attempt),
                    &lease.holder,
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(renewed == 1)
    }

    /// Applies `changes` (of the item's transfer) only if `lease` still
    /// holds its item: one transaction.
    pub fn apply_leased(&self, lease: &ItemLease, changes: &[Change]) -> Result<(), StoreError> {
        self.write(|tx| {
            self.lock_transfers(tx, &[lease.transfer.0])?;
            check_lease(self, tx, lease)?;
            self.apply_changes(tx, changes)
        })
    }

    /// A directory item's end: its listed `entries` added, their items
    /// inserted, `changes` applied (directories that could not be listed),
    /// a new directory item for each [`DIR_ITEM_DIRS_MAX`] of the `deferred`
    /// directories (the item's own it left unlisted, over
    /// [`LISTING_ENTRIES_BUDGET`]), and the item done, in one transaction
    /// fenced by `lease`.
    /// Small files first fill the transfer's latest batch item that no
    /// worker has leased yet: a tree of small directories is copied in full
    /// batches (one commit, two `syncfs` per [`BATCH_FILES_MAX`] files), not
    /// one batch per directory.
    /// With `next` (a lease's length in ms), the worker's next item of the
    /// transfer is leased in the same transaction ([`PgStore::lease_item`]).
    pub fn complete_listing(
        &self,
        lease: &ItemLease,
        entries: &[NewEntry],
        changes: &[Change],
        deferred: &[EntryIndex],
        next: Option<u64>,
    ) -> Result<Option<ItemLease>, StoreError> {
        debug_assert!(deferred.iter().all(|d| lease.entries.contains(d)));
        self.write(|tx| {
            self.lock_transfers(tx, &[lease.transfer.0])?;
            check_lease(self, tx, lease)?;
            if !entries.is_empty() {
                let first = self.insert_entry_rows(tx, lease.transfer, entries)?;
                // Subdirectories are recorded `copied` here, before a worker
                // creates them (as the engine records a directory before its
                // `mkdir`): their own items need no transaction for it.
                let copied: Vec<Change> = entries
                    .iter()
                    .enumerate()
                    .filter(|(_, entry)| entry.kind == EntryKind::Dir)
                    .map(|(offset, entry)| Change::Entry {
                        id: lease.transfer,
                        index: EntryIndex((first + offset as i64) as u32),
                        to: FileState::Copied,
                        progress_bytes_durable: None,
                        error: None,
                        checksum: None,
                        context: json!({"bytes": entry.meta.size}),
                    })
                    .collect();
                self.apply_changes(tx, &copied)?;
                let open = open_batch(tx, lease.transfer)?;
                let planned = items_of(first, entries, open.map(|(_, o)| o));
                if let Some((item, _)) = open {
                    fill_batch(tx, item, &planned)?;
                }
                insert_items(tx, lease.transfer, &planned.items)?;
            }
            let deferred: Vec<i64> = deferred.iter().map(|d| i64::from(d.0)).collect();
            insert_items(tx, lease.transfer, &dir_items(&deferred))?;
            self.finish_item(tx, lease, changes)?;
            self.lease_next(tx, lease, next)
        })
        .and_then(|next| self.started(next))
    }

    /// Completes `lease`'s item, fenced, with `changes` in the same
    /// transaction. The last range of a file adds the file's commit item;
    /// the last item of a transfer adds its finish item.
    pub fn complete_item(&self, lease: &ItemLease, changes: &[Change]) -> Result<(), StoreError> {
        self.complete_and_lease(lease, changes, None).map(|_| ())
    }

    /// [`PgStore::complete_item`], and with `next` (a lease's length in ms)
    /// the worker's next item of the transfer leased in the same
    /// transaction: one round of commits per item, not two.
    pub fn complete_and_lease(
        &self,
        lease: &ItemLease,
        changes: &[Change],
        next: Option<u64>,
    ) -> Result<Option<ItemLease>, StoreError> {
        self.write(|tx| {
            self.lock_transfers(tx, &[lease.transfer.0])?;
            check_lease(self, tx, lease)?;
            self.finish_item(tx, lease, changes)?;
            self.lease_next(tx, lease, next)
        })
        .and_then(|next| self.started(next))
    }

    fn lease_next(
        &self,
        tx: &mut Tx<'_>,
        lease: &ItemLease,
        next: Option<u64>,
    ) -> Result<Option<(ItemLease, bool)>, StoreError> {
        match next {
            Some(lease_ms) => self.lease_in(
                tx,
                &lease.holder,
                &lease.host,
                lease_ms,
                Some(lease.transfer),
            ),
            None => Ok(None),
        }
    }

    fn started(&self, next: Option<(ItemLease, bool)>) -> Result<Option<ItemLease>, StoreError> {
        let Some((lease, dispatched)) = next else {
            return Ok(None);
        };
        self.start_running(&lease, dispatched)?;
        Ok(Some(lease))
    }

    fn finish_item(
        &self,
        tx: &mut Tx<'_>,
        lease: &ItemLease,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let now = now_ns();
        tx.tx
            .execute(
                "UPDATE work_items SET state = 'done', lease_expires_ns = NULL, updated_ns = $1
                 WHERE id = $2",
                &[&now, &lease.item],
            )
            .map_err(|e| tx.err(e))?;
        self.event(
            tx,
            lease.transfer,
            None,
            EVENT_ITEM_DONE,
            &json!({"item": lease.item, "kind": lease.kind.as_str(), "attempt": lease.attempt,
                    "host": lease.host, "files": lease.files, "bytes": lease.bytes}),
        )?;
        // After the item's event: the finish item's `transfer.completed`
        // is then the transfer's last event, where watchers stop.
        self.apply_changes(tx, changes)?;
        let id = lease.transfer.0;
        if lease.kind == ItemKind::Range {
            let file = lease.entries[0];
            let open: i64 = tx
                .tx
                .query_one(
                    "SELECT count(*) FROM work_items WHERE transfer_id = $1 AND kind = 'range'
                     AND entries[1] = $2 AND state <> 'done'",
                    &[&id, &i64::from(file.0)],
                )
                .and_then(|r| r.try_get(0))
                .map_err(|e| tx.err(e))?;
            if open == 0 {
                let commit = NewItem {
                    kind: ItemKind::Commit,
                    entries: vec![i64::from(file.0)],
                    range: None,
                    files: 1,
                    bytes: 0,
                };
                insert_items(tx, lease.transfer, &[commit])?;
            }
        }
        if lease.kind != ItemKind::Finish {
            let open: i64 = tx
                .tx
                .query_one(
                    "SELECT count(*) FROM work_items WHERE transfer_id = $1 AND state <> 'done'",
                    &[&id],
                )
                .and_then(|r| r.try_get(0))
                .map_err(|e| tx.err(e))?;
            if open == 0 {
                let finish = NewItem {
                    kind: ItemKind::Finish,
                    entries: Vec::new(),
                    range: None,
                    files: 0,
                    bytes: 0,
                };
                insert_items(tx, lease.transfer, &[finish])?;
            }
        }
        Ok(())
    }

    /// The entries of `id` at `indexes`, sorted by index.
    pub fn entries_at(
        &self,
        id: TransferId,
        indexes: &[EntryIndex],
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let wanted: Vec<i64> = indexes.iter().map(|i| i64::from(i.0)).collect();
        self.entries_where(id, "AND idx = ANY($2)", &wanted)
    }

    /// The directory entries of `id`, deepest (latest listed) last.
    pub fn dir_entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        // $2, the empty list, is not needed here.
        self.entries_where(
            id,
            "AND kind = 'dir' AND cardinality($2::BIGINT[]) = 0",
            &[],
        )
    }

    /// How many entries of `id` failed.
    pub fn failed_entries(&self, id: TransferId) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()?
            .query_one(
                "SELECT count(*) FROM entries WHERE transfer_id = $1 AND state = 'failed'",
                &[&id.0],
            )
            .and_then(|r| r.try_get(0))
            .map_err(|e| self.err(e))?;
        Ok(n as u64)
    }

    fn entries_where(
        &self,
        id: TransferId,
        filter: &str,
        param: &[i64],
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let param = param.to_vec();
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE transfer_id = $1 {filter}
                     ORDER BY idx"
                ),
                &[&id.0, &param],
            )
            .map_err(|e| self.err(e))?;
        self.entry_records(id, &rows)
    }

    /// Per host (node): items done and held, files and bytes done.
    pub fn host_progress(&self, id: TransferId) -> Result<Vec<HostProgress>, StoreError> {
        let rows = self
            .conn()?
            .query(
                "SELECT lease_host,
                        count(*) FILTER (WHERE state = 'done'),
                        count(*) FILTER (WHERE state = 'started'),
                        coalesce(sum(files) FILTER (WHERE state = 'done'), 0)::BIGINT,
                        coalesce(sum(bytes) FILTER (WHERE state = 'done'), 0)::BIGINT
                 FROM work_items WHERE transfer_id = $1 AND lease_host IS NOT NULL
                 GROUP BY lease_host ORDER BY lease_host",
                &[&id.0],
            )
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok(HostProgress {
                    host: r.try_get(0)?,
                    items_done: r.try_get::<_, i64>(1)? as u64,
                    items_held: r.try_get::<_, i64>(2)? as u64,
                    files: r.try_get::<_, i64>(3)? as u64,
                    bytes: r.try_get::<_, i64>(4)? as u64,
                })
            })
            .collect::<Result<_, postgres::Error>>()
            .map_err(|e| self.err(e))
    }
}

/// Refuses the transaction unless `lease` still holds its item: `started`,
/// at its attempt, by its holder. Locks the item's row.
fn check_lease(store: &PgStore, tx: &mut Tx<'_>, lease: &ItemLease) -> Result<(), StoreError> {
    let row = tx
        .tx
        .query_opt(
            "SELECT state, attempt, lease_holder FROM work_items WHERE id = $1 FOR UPDATE",
            &[&lease.item],
        )
        .map_err(|e| tx.err(e))?;
    let stale = |current: i64, done: bool| StoreError::StaleItem {
        path: store.location_path(),
        id: lease.transfer,
        item: lease.item,
        attempt: lease.attempt,
        current: current as u32,
        done,
    };
    let Some(row) = row else {
        return Err(stale(0, false));
    };
    let state: String = row.try_get(0).map_err(|e| tx.err(e))?;
    let attempt: i64 = row.try_get(1).map_err(|e| tx.err(e))?;
    let holder: Option<String> = row.try_get(2).map_err(|e| tx.err(e))?;
    if state != "started"
        || attempt != i64::from(lease.attempt)
        || holder.as_deref() != Some(&lease.holder)
    {
        return Err(stale(attempt, state == "done"));
    }
    Ok(())
}

/// The transfer's latest batch item still `waiting` with room, locked: a
/// worker leasing it skips it until this transaction ends, and once leased
/// (`started`) it is never filled, so a lease's entries never change.
fn open_batch(tx: &mut Tx<'_>, id: TransferId) -> Result<Option<(i64, OpenBatch)>, StoreError> {
    let row = tx
        .tx
        .query_opt(
            "SELECT id, files, bytes FROM work_items
             WHERE state = 'waiting' AND transfer_id = $1 AND kind = 'batch'
               AND files < $2 AND bytes < $3
             ORDER BY id DESC LIMIT 1 FOR UPDATE SKIP LOCKED",
            &[&id.0, &(BATCH_FILES_MAX as i64), &(BATCH_BYTES_MAX as i64)],
        )
        .map_err(|e| tx.err(e))?;
    let Some(row) = row else { return Ok(None) };
    let get = |i| row.try_get::<_, i64>(i).map_err(|e| tx.err(e));
    Ok(Some((
        get(0)?,
        OpenBatch {
            files: get(1)? as u64,
            bytes: get(2)? as u64,
        },
    )))
}

/// Appends a listing's small files to the open batch `item`.
fn fill_batch(tx: &mut Tx<'_>, item: i64, planned: &Planned) -> Result<(), StoreError> {
    if planned.appended.is_empty() {
        return Ok(());
    }
    tx.tx
        .execute(
            "UPDATE work_items SET entries = entries || $2::BIGINT[], files = files + $3,
                bytes = bytes + $4, updated_ns = $5
             WHERE id = $1 AND state = 'waiting'",
            &[
                &item,
                &planned.appended,
                &(planned.appended.len() as i64),
                &(planned.appended_bytes as i64),
                &now_ns(),
            ],
        )
        .map_err(|e| tx.err(e))?;
    Ok(())
}

fn insert_items(tx: &mut Tx<'_>, id: TransferId, items: &[NewItem]) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let now = now_ns();
    let kinds: Vec<&str> = items.iter().map(|i| i.kind.as_str()).collect();
    // Arrays of arrays must be rectangular in PostgreSQL: one text each.
    let entries: Vec<String> = items
        .iter()
        .map(|i| {
            let list: Vec<String> = i.entries.iter().map(i64::to_string).collect();
            format!("{{{}}}", list.join(","))
        })
        .collect();
    let starts: Vec<Option<i64>> = items.iter().map(|i| i.range.map(|r| r.0 as i64)).collect();
    let ends: Vec<Option<i64>> = items.iter().map(|i| i.range.map(|r| r.1 as i64)).collect();
    let files: Vec<i64> = items.iter().map(|i| i.files as i64).collect();
    let bytes: Vec<i64> = items.iter().map(|i| i.bytes as i64).collect();
    tx.tx
        .execute(
            "INSERT INTO work_items (transfer_id, kind, entries, range_start, range_end, files,
                bytes, state, created_ns, updated_ns)
             SELECT $1, u.k, u.e::BIGINT[], u.s, u.en, u.f, u.b, 'waiting', $8, $8
             FROM unnest($2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[],
                         $7::BIGINT[]) AS u(k, e, s, en, f, b)",
            &[
                &id.0, &kinds, &entries, &starts, &ends, &files, &bytes, &now,
            ],
        )
        .map_err(|e| tx.err(e))?;
    Ok(())
}
