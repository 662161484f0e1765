//! [`Store`] on PostgreSQL: the same semantics as the SQLite store
//! (`ferry::store::sqlite`), with the decisions taken by
//! [`ferry::store::rules`] so that the two cannot drift apart.
//!
//! Every write runs in [`PgStore::write`] and appends its events with
//! [`Tx::event`]. Row locks are taken in one order: the transfer rows a
//! batch touches first (all of them, by id, `FOR UPDATE`), then entry rows,
//! then (at commit, by `write`) the event counter. So writers on many
//! connections serialize per transfer and never deadlock over their order;
//! a deadlock that happens anyway (a batch that adds rows another locks) is
//! retried by `write`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry::model::{
    ChecksumAlgo, EntryIndex, EntryRecord, Event, NewEntry, NewTransfer, Owner, TransferId,
    TransferRecord, TransferState,
};
use ferry::store::rules::{self, EntryRow, EventRow, TransferRow};
use ferry::store::{Change, ChangeToken, EventFilter, EventPage, EventReader, Store, StoreError};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{IsolationLevel, Row};
use serde_json::Value;

use crate::conn::{CachedTx, Db, PgConn};
use crate::{CHANNEL, NewEvent, PgStore, Tx, server_err};
use events::{PgEventReader, last_seq, query_events};

mod changes;
mod events;

/// The longest an event reader waits on its connection before it looks
/// at the store again (see `wait_changed`).
const READER_LOOK_AGAIN: Duration = Duration::from_secs(30);

const TRANSFER_COLUMNS: &str = "id, name, kind, state, owner_host, owner_boot_id, owner_pid,
    owner_start_time, preserve_mode, preserve_ownership, preserve_times, temp_suffix, created_ns,
    updated_ns, checksum_algo, caller_uid, caller_gid, caller_groups, owner_heartbeat_ns,
    owner_lease_ms";

pub(crate) const ENTRY_COLUMNS: &str =
    "idx, kind, source, dest, size, mode, uid, gid, atime_ns, mtime_ns,
    link_target, state, progress_bytes_durable, error, checksum_algo, checksum, link_group,
    xattrs, piece_digests";

/// The newest event's number: the counter ([`crate::EventNumbering::Ordered`]),
/// the highest row ([`crate::EventNumbering::Sequence`], where the counter
/// stays 0), or the compaction horizon, whichever is highest. In one
/// snapshot the counter and the rows agree: they commit together.
const LAST_SEQ: &str = "SELECT greatest(
    (SELECT last_seq FROM event_counter),
    (SELECT coalesce(max(seq), 0) FROM events),
    (SELECT value FROM meta WHERE key = 'events_horizon'))";

/// Entries inserted per statement: bounds one statement's parameters.
const INSERT_ROWS_MAX: usize = 4096;

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

impl PgStore {
    /// Entry rows read back as records.
    pub(crate) fn entry_records(
        &self,
        id: TransferId,
        rows: &[Row],
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let path = self.location_path();
        rows.iter()
            .map(|row| {
                entry_row(row)
                    .map_err(|e| self.err(e))?
                    .into_record(&path, id)
            })
            .collect()
    }

    pub(crate) fn event(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
        entry: Option<EntryIndex>,
        name: &str,
        context: &Value,
    ) -> Result<(), StoreError> {
        tx.event(NewEvent {
            time_ns: now_ns(),
            transfer: Some(id.0),
            entry: entry.map(|e| i64::from(e.0)),
            request: None,
            name: name.to_string(),
            context: context.to_string(),
        })
    }

    /// Locks every live transfer among `ids`, in id order: the first locks
    /// of a transaction, always taken in the same order.
    pub(crate) fn lock_transfers(&self, tx: &mut Tx<'_>, ids: &[i64]) -> Result<(), StoreError> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        tx.tx
            .execute(
                "SELECT id FROM transfers WHERE id = ANY($1) AND freed_ns IS NULL
                 ORDER BY id FOR UPDATE",
                &[&ids],
            )
            .map_err(|e| tx.err(e))?;
        Ok(())
    }

    /// The live transfer's state and owner (its row locked), or `None`.
    fn transfer_row(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
    ) -> Result<Option<(TransferState, Owner)>, StoreError> {
        let path = self.location_path();
        let Some(row) = tx
            .tx
            .query_opt(
                "SELECT state, owner_host, owner_boot_id, owner_pid, owner_start_time
                 FROM transfers WHERE id = $1 AND freed_ns IS NULL FOR UPDATE",
                &[&id.0],
            )
            .map_err(|e| self.err(e))?
        else {
            return Ok(None);
        };
        let state: String = row.try_get(0).map_err(|e| self.err(e))?;
        let pid: i64 = row.try_get(3).map_err(|e| self.err(e))?;
        let pid = u32::try_from(pid)
            .map_err(|_| rules::corrupt(&path, format!("transfer {id} has owner pid {pid}")))?;
        let owner = Owner {
            host: row.try_get(1).map_err(|e| self.err(e))?,
            boot_id: row.try_get(2).map_err(|e| self.err(e))?,
            pid,
            start_time: row.try_get::<_, i64>(4).map_err(|e| self.err(e))? as u64,
        };
        Ok(Some((
            rules::parse_transfer_state(&path, id, &state)?,
            owner,
        )))
    }

    fn transfer_state(&self, tx: &mut Tx<'_>, id: TransferId) -> Result<TransferState, StoreError> {
        match self.transfer_row(tx, id)? {
            Some((state, _)) => Ok(state),
            None => Err(rules::no_such_transfer(&self.location_path(), id)),
        }
    }

    fn check_owner(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
        expected: &Owner,
    ) -> Result<(), StoreError> {
        let recorded = self.transfer_row(tx, id)?.map(|(_, owner)| owner);
        rules::check_owner(&self.location_path(), id, recorded, expected)
    }

    /// See [`rules::check_moving`]; once per transfer and transaction.
    pub(crate) fn check_moving(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
        checked: &mut HashSet<TransferId>,
    ) -> Result<(), StoreError> {
        if checked.contains(&id) {
            return Ok(());
        }
        let state = self.transfer_state(tx, id)?;
        rules::check_moving(&self.location_path(), id, state)?;
        checked.insert(id);
        Ok(())
    }

    /// Appends entries (state `pending`) to a transfer that is still
    /// `created`, and one `transfer.added` event.
    fn insert_entries(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
        entries: &[NewEntry],
    ) -> Result<(), StoreError> {
        let state = self.transfer_state(tx, id)?;
        rules::check_planning(&self.location_path(), id, state, "added to")?;
        self.insert_entry_rows(tx, id, entries).map(|_| ())
    }

    /// The rows of [`Self::insert_entries`] and its event, without the check
    /// of the transfer's state (a distributed transfer's listings add entries
    /// while it moves). Returns the first new entry's index.
    pub(crate) fn insert_entry_rows(
        &self,
        tx: &mut Tx<'_>,
        id: TransferId,
        entries: &[NewEntry],
    ) -> Result<i64, StoreError> {
        let first: i64 = tx
            .tx
            .query_one(
                "SELECT coalesce(max(idx) + 1, 0) FROM entries WHERE transfer_id = $1",
                &[&id.0],
            )
            .and_then(|row| row.try_get(0))
            .map_err(|e| self.err(e))?;
        for (chunk_index, chunk) in entries.chunks(INSERT_ROWS_MAX).enumerate() {
            let start = chunk_index * INSERT_ROWS_MAX;
            let offsets = start..start + chunk.len();
            let index: Vec<i64> = offsets
                .clone()
                .map(|o| rules::entry_index(first, o))
                .collect();
            let kind: Vec<&str> = chunk.iter().map(|e| e.kind.as_str()).collect();
            let source: Vec<&[u8]> = chunk
                .iter()
                .map(|e| e.source.as_os_str().as_bytes())
                .collect();
            let dest: Vec<&[u8]> = chunk
                .iter()
                .map(|e| e.dest.as_os_str().as_bytes())
                .collect();
            let meta = |f: fn(&NewEntry) -> i64| chunk.iter().map(f).collect::<Vec<i64>>();
            let size = meta(|e| e.meta.size as i64);
            let mode = meta(|e| i64::from(e.meta.mode));
            let uid = meta(|e| i64::from(e.meta.uid));
            let gid = meta(|e| i64::from(e.meta.gid));
            let atime = meta(|e| e.meta.atime_ns);
            let mtime = meta(|e| e.meta.mtime_ns);
            let link_target: Vec<Option<&[u8]>> = chunk
                .iter()
                .map(|e| e.link_target.as_ref().map(|t| t.as_os_str().as_bytes()))
                .collect();
            let link_group: Vec<Option<i64>> = offsets
                .clone()
                .zip(chunk)
                .map(|(o, e)| rules::link_group_column(first, o, e))
                .collect();
            let xattrs: Vec<Option<Vec<u8>>> = chunk
                .iter()
                .map(|e| rules::xattrs_column(&e.xattrs))
                .collect();
            tx.tx
                .execute(
                    "INSERT INTO entries (transfer_id, idx, kind, source, dest, size, mode, uid,
                        gid, atime_ns, mtime_ns, link_target, link_group, xattrs, state)
                     SELECT $1, u.*, 'pending' FROM unnest($2::BIGINT[], $3::TEXT[],
                        $4::BYTEA[], $5::BYTEA[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[],
                        $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BYTEA[], $13::BIGINT[],
                        $14::BYTEA[]) AS u",
                    &[
                        &id.0,
                        &index,
                        &kind,
                        &source,
                        &dest,
                        &size,
                        &mode,
                        &uid,
                        &gid,
                        &atime,
                        &mtime,
                        &link_target,
                        &link_group,
                        &xattrs,
                    ],
                )
                .map_err(|e| self.err(e))?;
        }
        self.event(
            tx,
            id,
            None,
            rules::EVENT_ADDED,
            &rules::added_context(entries),
        )?;
        Ok(first)
    }

    pub(crate) fn apply_one(
        &self,
        tx: &mut Tx<'_>,
        change: &Change,
        checked: &mut HashSet<TransferId>,
    ) -> Result<(), StoreError> {
        let path = self.location_path();
        let now = now_ns();
        match change {
            Change::Transfer {
                id,
                to,
                owner,
                context,
            } => {
                if let Some(expected) = owner {
                    self.check_owner(tx, *id, expected)?;
                }
                let from = self.transfer_state(tx, *id)?;
                rules::check_transfer_transition(&path, *id, from, *to)?;
                tx.tx
                    .execute(
                        "UPDATE transfers SET state = $1, updated_ns = $2 WHERE id = $3",
                        &[&to.as_str(), &now, &id.0],
                    )
                    .map_err(|e| self.err(e))?;
                self.event(tx, *id, None, &rules::transfer_event_name(*to), context)
            }
            Change::Reattach { id, from, owner } => {
                self.check_owner(tx, *id, from)?;
                tx.tx
                    .execute(
                        "UPDATE transfers SET owner_host = $1, owner_boot_id = $2,
                         owner_pid = $3, owner_start_time = $4, updated_ns = $5,
                         owner_heartbeat_ns = $5, owner_lease_ms = NULL WHERE id = $6",
                        &[
                            &owner.host,
                            &owner.boot_id,
                            &i64::from(owner.pid),
                            &(owner.start_time as i64),
                            &now,
                            &id.0,
                        ],
                    )
                    .map_err(|e| self.err(e))?;
                let context = rules::reattached_context(owner);
                self.event(tx, *id, None, rules::EVENT_REATTACHED, &context)
            }
            Change::Entry {
                id,
                index,
                to,
                progress_bytes_durable,
                error,
                checksum,
                context,
            } => {
                self.check_moving(tx, *id, checked)?;
                let index_column = i64::from(index.0);
                let from: Option<String> = tx
                    .tx
                    .query_opt(
                        "SELECT state FROM entries WHERE transfer_id = $1 AND idx = $2
                         FOR UPDATE",
                        &[&id.0, &index_column],
                    )
                    .and_then(|row| row.map(|row| row.try_get(0)).transpose())
                    .map_err(|e| self.err(e))?;
                let from = from
                    .map(|state| rules::parse_file_state(&path, *id, *index, &state))
                    .transpose()?;
                rules::check_entry_transition(&path, *id, *index, from, *to)?;
                // Progress back to 0 restarts the file: its pieces' digests go.
                let progress = progress_bytes_durable.map(|p| p as i64);
                tx.tx
                    .execute(
                        "UPDATE entries SET state = $1, error = $2,
                         progress_bytes_durable = coalesce($3::BIGINT, progress_bytes_durable),
                         piece_digests = CASE WHEN $3::BIGINT = 0 THEN NULL
                                              ELSE piece_digests END
                         WHERE transfer_id = $4 AND idx = $5",
                        &[&to.as_str(), error, &progress, &id.0, &index_column],
                    )
                    .map_err(|e| self.err(e))?;
                if let Some(checksum) = checksum {
                    tx.tx
                        .execute(
                            "UPDATE entries SET checksum_algo = $1, checksum = $2
                             WHERE transfer_id = $3 AND idx = $4",
                            &[
                                &checksum.algo.as_str(),
                                &checksum.digest(),
                                &id.0,
                                &index_column,
                            ],
                        )
                        .map_err(|e| self.err(e))?;
                }
                self.event(tx, *id, Some(*index), &rules::file_event_name(*to), context)
            }
            Change::Owned { id, owner } => self.check_owner(tx, *id, owner),
            Change::Limit {
                id,
                bytes_per_second,
            } => {
                self.transfer_state(tx, *id)?;
                let context = rules::limited_context(*bytes_per_second);
                self.event(tx, *id, None, rules::EVENT_LIMITED, &context)
            }
            Change::Removed { id, path } => {
                self.check_moving(tx, *id, checked)?;
                let context = rules::removed_context(path);
                self.event(tx, *id, None, rules::EVENT_REMOVED, &context)
            }
            Change::Free { id } => {
                let state = self.transfer_state(tx, *id)?;
                rules::check_free(&path, *id, state)?;
                let changed = tx
                    .tx
                    .execute(
                        "UPDATE transfers SET freed_ns = $1 WHERE id = $2 AND freed_ns IS NULL",
                        &[&now, &id.0],
                    )
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::no_such_transfer(&path, *id));
                }
                self.event(tx, *id, None, rules::EVENT_FREED, &Value::Null)
            }
            Change::Named { id, name } => {
                rules::check_planning(&path, *id, self.transfer_state(tx, *id)?, "named")?;
                let holder = |tx: &mut Tx<'_>| {
                    tx.tx
                        .query_opt(
                            "SELECT id FROM transfers WHERE name = $1 AND freed_ns IS NULL",
                            &[name],
                        )
                        .and_then(|row| row.map(|row| row.try_get::<_, i64>(0)).transpose())
                        .map_err(|e| self.err(e))
                };
                let taken = |holder: i64| StoreError::DuplicateName {
                    path: path.clone(),
                    name: name.clone(),
                    id: TransferId(holder),
                };
                if let Some(holder) = holder(tx)? {
                    return Err(taken(holder));
                }
                // In a savepoint: a creator of the name whose row the look
                // above could not see yet makes the update fail on the
                // live-name index once it commits; it is then the holder.
                let updated = {
                    let mut savepoint = CachedTx {
                        tx: tx.tx.tx.transaction().map_err(|e| self.err(e))?,
                        statements: &mut *tx.tx.statements,
                    };
                    let updated = savepoint.execute(
                        "UPDATE transfers SET name = $1 WHERE id = $2 AND freed_ns IS NULL",
                        &[name, &id.0],
                    );
                    match updated {
                        Ok(changed) => savepoint.tx.commit().map(|()| Ok(changed)),
                        // Dropped: rolled back to the savepoint.
                        Err(e) => Ok(Err(e)),
                    }
                };
                let changed = match updated.map_err(|e| self.err(e))? {
                    Ok(changed) => changed,
                    Err(e) if is_duplicate_name(&e) => {
                        let holder = holder(tx)?.ok_or_else(|| self.err(e))?;
                        return Err(taken(holder));
                    }
                    Err(e) => return Err(self.err(e)),
                };
                if changed != 1 {
                    return Err(rules::no_such_transfer(&path, *id));
                }
                self.event(
                    tx,
                    *id,
                    None,
                    rules::EVENT_NAMED,
                    &rules::named_context(name),
                )
            }
            Change::Progress {
                id,
                index,
                progress_bytes_durable,
                piece_digests,
            } => {
                self.check_moving(tx, *id, checked)?;
                let changed = tx
                    .tx
                    .execute(
                        "UPDATE entries SET progress_bytes_durable = $1, piece_digests = $4
                         WHERE transfer_id = $2 AND idx = $3 AND progress_bytes_durable <= $1",
                        &[
                            &(*progress_bytes_durable as i64),
                            &id.0,
                            &i64::from(index.0),
                            &rules::piece_digests_column(piece_digests),
                        ],
                    )
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::progress_refused(
                        &path,
                        *id,
                        *index,
                        *progress_bytes_durable,
                    ));
                }
                let context = rules::progress_context(*progress_bytes_durable);
                self.event(tx, *id, Some(*index), rules::EVENT_PROGRESS, &context)
            }
        }
    }

    fn query_transfers(
        &self,
        filter: &str,
        params: &Params<'_>,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let sql = format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE freed_ns IS NULL {filter} ORDER BY id"
        );
        let rows = self.conn()?.query(&sql, params).map_err(|e| self.err(e))?;
        let path = self.location_path();
        rows.iter()
            .map(|row| {
                transfer_row(row)
                    .map_err(|e| self.err(e))?
                    .into_record(&path)
            })
            .collect()
    }
}

fn transfer_row(row: &Row) -> Result<TransferRow, postgres::Error> {
    Ok(TransferRow {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        kind: row.try_get(2)?,
        state: row.try_get(3)?,
        owner_host: row.try_get(4)?,
        owner_boot_id: row.try_get(5)?,
        owner_pid: row.try_get(6)?,
        owner_start_time: row.try_get(7)?,
        preserve: ferry::model::Preserve {
            mode: row.try_get(8)?,
            ownership: row.try_get(9)?,
            times: row.try_get(10)?,
        },
        temp_suffix: row.try_get(11)?,
        created_ns: row.try_get(12)?,
        updated_ns: row.try_get(13)?,
        checksum_algo: row.try_get(14)?,
        caller_uid: row.try_get(15)?,
        caller_gid: row.try_get(16)?,
        caller_groups: row.try_get(17)?,
        owner_heartbeat_ns: row.try_get(18)?,
        owner_lease_ms: row.try_get(19)?,
    })
}

pub(crate) fn entry_row(row: &Row) -> Result<EntryRow, postgres::Error> {
    Ok(EntryRow {
        index: row.try_get(0)?,
        kind: Cow::Owned(row.try_get(1)?),
        source: row.try_get(2)?,
        dest: row.try_get(3)?,
        size: row.try_get(4)?,
        mode: row.try_get(5)?,
        uid: row.try_get(6)?,
        gid: row.try_get(7)?,
        atime_ns: row.try_get(8)?,
        mtime_ns: row.try_get(9)?,
        link_target: row.try_get(10)?,
        state: Cow::Owned(row.try_get(11)?),
        progress_bytes_durable: row.try_get(12)?,
        error: row.try_get(13)?,
        checksum_algo: row.try_get::<_, Option<String>>(14)?.map(Cow::Owned),
        checksum: row.try_get(15)?,
        link_group: row.try_get(16)?,
        xattrs: row.try_get(17)?,
        piece_digests: row.try_get(18)?,
    })
}

/// Whether `e` is the live-name index refusing a second live transfer of
/// one name.
fn is_duplicate_name(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(|db| db.constraint()) == Some("transfers_live_name")
}

impl Store for PgStore {
    fn location(&self) -> PathBuf {
        self.location_path()
    }

    fn create_transfer(
        &self,
        new: &NewTransfer,
        entries: &[NewEntry],
    ) -> Result<TransferRecord, StoreError> {
        let path = self.location_path();
        let live_id = |client: &mut CachedTx<'_>, name: &str| {
            client
                .query_opt(
                    "SELECT id FROM transfers WHERE name = $1 AND freed_ns IS NULL",
                    &[&name],
                )
                .and_then(|row| row.map(|row| row.try_get::<_, i64>(0)).transpose())
                .map_err(|e| self.err(e))
        };
        let id = self.write(|tx| {
            // The transfer this one replaces gives up its name first
            // ([`NewTransfer::replaces`]); one freed already is passed over.
            if let Some(replaced) = new.replaces {
                self.lock_transfers(tx, &[replaced.0])?;
                match self.apply_one(tx, &Change::Free { id: replaced }, &mut HashSet::new()) {
                    Ok(()) | Err(StoreError::NoSuchTransfer { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            if let Some(name) = &new.name
                && let Some(existing) = live_id(&mut tx.tx, name)?
            {
                return Err(StoreError::DuplicateName {
                    path: path.clone(),
                    name: name.clone(),
                    id: TransferId(existing),
                });
            }
            // The id first, so that an unnamed transfer has its name
            // (`cp-ID`) when its row is inserted.
            let id: i64 = tx
                .tx
                .query_one(
                    "SELECT nextval(pg_get_serial_sequence('transfers', 'id'))",
                    &[],
                )
                .and_then(|row| row.try_get(0))
                .map_err(|e| self.err(e))?;
            let id = TransferId(id);
            let now = now_ns();
            let caller = new.caller.as_ref();
            // An unnamed transfer's name is the first `cp-ID[-N]` free; one
            // another creator takes between our look and our insert (its
            // row was not committed yet) sends us to the next.
            let mut n = 1;
            let name = loop {
                let name = match &new.name {
                    Some(name) => name.clone(),
                    None => {
                        let mut name = rules::unnamed_name(id, n);
                        while live_id(&mut tx.tx, &name)?.is_some() && n < rules::UNNAMED_TRIES_MAX
                        {
                            n += 1;
                            name = rules::unnamed_name(id, n);
                        }
                        name
                    }
                };
                // In a savepoint: a concurrent creator of the same name, whose
                // row the check above could not see yet, makes this insert fail
                // on the live-name index, and the transaction goes on to say so.
                let inserted = {
                    let mut savepoint = CachedTx {
                        tx: tx.tx.tx.transaction().map_err(|e| self.err(e))?,
                        statements: &mut *tx.tx.statements,
                    };
                    let inserted = savepoint.execute(
                        "INSERT INTO transfers (id, name, kind, state, owner_host, owner_boot_id,
                    owner_pid, owner_start_time, preserve_mode, preserve_ownership,
                    preserve_times, temp_suffix, created_ns, updated_ns, checksum_algo,
                    caller_uid, caller_gid, caller_groups)
                 VALUES ($1, $2, $3, 'created', $4, $5, $6, $7, $8, $9, $10, $11, $12, $12,
                    $13, $14, $15, $16)",
                        &[
                            &id.0,
                            &name,
                            &new.kind.as_str(),
                            &new.owner.host,
                            &new.owner.boot_id,
                            &i64::from(new.owner.pid),
                            &(new.owner.start_time as i64),
                            &new.preserve.mode,
                            &new.preserve.ownership,
                            &new.preserve.times,
                            &new.temp_suffix,
                            &now,
                            &new.checksum.map(ChecksumAlgo::as_str),
                            &caller.map(|c| i64::from(c.uid)),
                            &caller.map(|c| i64::from(c.gid)),
                            &caller.map(rules::caller_groups_column),
                        ],
                    );
                    match inserted {
                        Ok(_) => savepoint.tx.commit().map(|()| Ok(())),
                        // Dropped: rolled back to the savepoint.
                        Err(e) => Ok(Err(e)),
                    }
                };
                match inserted.map_err(|e| self.err(e))? {
                    Ok(()) => break name,
                    Err(e)
                        if is_duplicate_name(&e)
                            && new.name.is_none()
                            && n < rules::UNNAMED_TRIES_MAX =>
                    {
                        n += 1;
                    }
                    Err(e) if is_duplicate_name(&e) => {
                        return match live_id(&mut tx.tx, &name)? {
                            Some(existing) => Err(StoreError::DuplicateName {
                                path: path.clone(),
                                name,
                                id: TransferId(existing),
                            }),
                            // Freed again in the meantime: say what happened.
                            None => Err(self.err(e)),
                        };
                    }
                    Err(e) => return Err(self.err(e)),
                }
            };
            let context = rules::created_context(new, &name);
            let created = rules::transfer_event_name(TransferState::Created);
            self.event(tx, id, None, &created, &context)?;
            if !entries.is_empty() {
                self.insert_entries(tx, id, entries)?;
            }
            Ok(id)
        })?;
        let record = self
            .transfer(id)?
            .ok_or_else(|| rules::no_such_transfer(&path, id))?;
        rules::check_created(&record, new);
        Ok(record)
    }

    fn add_entries(&self, id: TransferId, entries: &[NewEntry]) -> Result<(), StoreError> {
        self.write(|tx| self.insert_entries(tx, id, entries))
    }

    fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = changes
            .iter()
            .map(|c| match c {
                Change::Transfer { id, .. }
                | Change::Reattach { id, .. }
                | Change::Entry { id, .. }
                | Change::Free { id }
                | Change::Named { id, .. }
                | Change::Removed { id, .. }
                | Change::Limit { id, .. }
                | Change::Owned { id, .. }
                | Change::Progress { id, .. } => id.0,
            })
            .collect();
        self.write(|tx| {
            self.lock_transfers(tx, &ids)?;
            self.apply_changes(tx, changes)
        })
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND id = $1", &[&id.0])?
            .into_iter()
            .next())
    }

    fn renew_lease(&self, id: TransferId, owner: &Owner, lease_ms: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            self.check_owner(tx, id, owner)?;
            tx.tx
                .execute(
                    "UPDATE transfers SET owner_heartbeat_ns = $1, owner_lease_ms = $2
                     WHERE id = $3",
                    &[&now_ns(), &(lease_ms as i64), &id.0],
                )
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND name = $1", &[&name])?
            .into_iter()
            .next())
    }

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        self.query_transfers("", &[])
    }

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let path = self.location_path();
        let rows = self
            .conn()?
            .query(
                &format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE transfer_id = $1 ORDER BY idx"),
                &[&id.0],
            )
            .map_err(|e| self.err(e))?;
        let records = self.entry_records(id, &rows)?;
        rules::check_entries(&path, id, records)
    }

    fn entries_from(
        &self,
        id: TransferId,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let path = self.location_path();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .conn()?
            .query(
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE transfer_id = $1 AND idx >= $2
                     ORDER BY idx LIMIT $3"
                ),
                &[&id.0, &i64::from(from.0), &limit],
            )
            .map_err(|e| self.err(e))?;
        let records = self.entry_records(id, &rows)?;
        rules::check_entries_from(&path, id, from, records)
    }

    fn reads_entry_ranges(&self) -> bool {
        true
    }

    fn directory_entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let records = self.dir_entries(id)?;
        rules::check_entries_sorted(&self.location_path(), id, records)
    }

    fn first_entry(&self, id: TransferId) -> Result<Option<EntryRecord>, StoreError> {
        let path = self.location_path();
        let row = self
            .conn()?
            .query_opt(
                &format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE transfer_id = $1 AND idx = 0"),
                &[&id.0],
            )
            .map_err(|e| self.err(e))?;
        let records = row
            .map(|row| {
                entry_row(&row)
                    .map_err(|e| self.err(e))?
                    .into_record(&path, id)
            })
            .transpose()?
            .into_iter()
            .collect();
        Ok(rules::check_entries(&path, id, records)?.pop())
    }

    fn events_since(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let mut conn = self.conn()?;
        query_events(&mut conn, &self.location_path(), after, filter, limit).map(|p| p.events)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn()?;
        last_seq(&mut conn, &self.location_path())
    }

    fn compact(&self, before: u64) -> Result<u64, StoreError> {
        self.write(|tx| {
            let horizon: i64 = tx
                .tx
                .query_one(
                    "SELECT value FROM meta WHERE key = 'events_horizon' FOR UPDATE",
                    &[],
                )
                .and_then(|row| row.try_get(0))
                .map_err(|e| self.err(e))?;
            let last: i64 = tx
                .tx
                .query_one(LAST_SEQ, &[])
                .and_then(|row| row.try_get(0))
                .map_err(|e| self.err(e))?;
            let Some(new_horizon) = rules::compact_horizon(before, last as u64, horizon as u64)
            else {
                return Ok(horizon as u64);
            };
            tx.tx
                .execute(
                    "DELETE FROM events WHERE seq <= $1",
                    &[&(new_horizon as i64)],
                )
                .map_err(|e| self.err(e))?;
            tx.tx
                .execute(
                    "UPDATE meta SET value = $1 WHERE key = 'events_horizon'",
                    &[&(new_horizon as i64)],
                )
                .map_err(|e| self.err(e))?;
            Ok(new_horizon)
        })
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        let location = self.location_path();
        // A LISTEN belongs to its connection: this one is the reader's own,
        // never the pool's.
        let mut conn = PgConn::connect(self.config()).map_err(|e| StoreError::Unreachable {
            path: location.clone(),
            detail: e.to_string(),
        })?;
        conn.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| server_err(&location, e))?;
        Ok(Box::new(PgEventReader {
            location,
            schema: self.schema().to_string(),
            conn,
            notifications_seen: 0,
        }))
    }
}
