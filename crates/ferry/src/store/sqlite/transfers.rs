//! The transfers' side of the store: entries, state changes with their
//! events ([`Store::apply`]), and the [`Store`] trait's reads.

use std::borrow::Cow;

use super::events::{SqliteEventReader, query_events};
use super::packed;
use super::tallies::{self, Counted, TallyDeltas};
use super::*;

/// The `UPDATE` of an entry's state to `to`, allowed only from the states
/// [`FileState::allowed_from`] names (spelled out with OR: an IN list
/// makes SQLite build a temporary table at each execution). Progress back to 0 restarts the file:
/// its pieces' digests go. A checksum, when given, is recorded with it.
fn entry_update_sql(to: FileState) -> &'static str {
    // Written once per state: the committer runs it twice per file.
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        // Indexed by code: `ALL` is in code order.
        assert!(
            (0..)
                .zip(FileState::ALL)
                .all(|(code, state)| rules::file_state_code(state) == code)
        );
        FileState::ALL
            .into_iter()
            .map(entry_update_sql_of)
            .collect()
    });
    &sql[rules::file_state_code(to) as usize]
}

fn entry_update_sql_of(to: FileState) -> String {
    let mut from: Vec<String> = to
        .allowed_from()
        .iter()
        .map(|s| format!("state = {}", rules::file_state_code(*s)))
        .collect();
    if from.is_empty() {
        // Entered from nowhere (`pending` is where entries start).
        from.push("0".into());
    }
    format!(
        "UPDATE entries SET state = ?1, error = ?2,
         progress_bytes_durable = coalesce(?3, progress_bytes_durable),
         piece_digests = CASE WHEN ?3 = 0 THEN NULL ELSE piece_digests END,
         checksum = coalesce(?6, checksum)
         WHERE transfer_id = ?4 AND idx = ?5 AND ({})",
        from.join(" OR ")
    )
}

impl SqliteStore {
    fn insert_event(
        &self,
        tx: &rusqlite::Transaction<'_>,
        transfer: TransferId,
        entry: Option<EntryIndex>,
        name: &str,
        context: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO events (time_ns, transfer_id, entry_idx, name, context)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.err(e))?;
        stmt.execute(params![
            now_ns(),
            transfer.0,
            entry.map(|i| i.0),
            name,
            context.to_string()
        ])
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The events of one batch of changes, in order: a run of two or more
    /// about one transfer shares one row (see `packed`), numbered after
    /// the last event the store ever numbered.
    fn insert_events(
        &self,
        tx: &rusqlite::Transaction<'_>,
        events: &[PendingEvent<'_>],
    ) -> Result<(), StoreError> {
        let runs = events.chunk_by(|a, b| a.transfer == b.transfer);
        for run in runs.flat_map(|run| run.chunks(packed::EVENTS_MAX)) {
            let [event] = run else {
                self.insert_packed(tx, run)?;
                continue;
            };
            self.insert_event(tx, event.transfer, event.entry, &event.name, &event.context)?;
        }
        Ok(())
    }

    fn insert_packed(
        &self,
        tx: &rusqlite::Transaction<'_>,
        run: &[PendingEvent<'_>],
    ) -> Result<(), StoreError> {
        assert!(run.len() >= 2, "a packed row holds two events or more");
        let packed: Vec<packed::PackedEvent<'_>> = run
            .iter()
            .map(|e| packed::PackedEvent {
                entry: e.entry,
                name: &e.name,
                context: &e.context,
            })
            .collect();
        let batch = packed::pack(&packed);
        debug_assert!(packed::unpack(&batch, run.len()).is_ok());
        // AUTOINCREMENT's high-water mark: never below any seq handed out,
        // compacted ones included.
        let last: i64 = tx
            .prepare_cached(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'events'",
            )
            .and_then(|mut s| s.query_row([], |row| row.get(0)))
            .map_err(|e| self.err(e))?;
        let n = run.len() as i64;
        tx.prepare_cached(
            "INSERT INTO events (seq, time_ns, transfer_id, name, context, n, batch)
             VALUES (?1, ?2, ?3, '', '', ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![last + n, now_ns(), run[0].transfer.0, n, batch]))
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Appends entries (state `pending`) to a transfer that is still
    /// `created`, and one `transfer.added` event.
    fn insert_entries(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        entries: &[NewEntry],
    ) -> Result<(), StoreError> {
        rules::check_planning(&self.path, id, self.transfer_state(tx, id)?, "added to")?;
        let first: i64 = tx
            .query_row(
                "SELECT coalesce(max(idx) + 1, 0) FROM entries WHERE transfer_id = ?1",
                [id.0],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        let (source_root, dest_root) = self.roots_for(tx, id, entries.first())?;
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO entries (transfer_id, idx, kind, source, dest, size, mode, uid,
                    gid, atime_ns, mtime_ns, link_target, link_group, xattrs, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )
            .map_err(|e| self.err(e))?;
        for (offset, entry) in entries.iter().enumerate() {
            let index = rules::entry_index(first, offset);
            let (source, dest) = stored_pair(
                source_root.as_deref(),
                dest_root.as_deref(),
                entry.source.as_os_str().as_bytes(),
                entry.dest.as_os_str().as_bytes(),
            );
            stmt.execute(params![
                id.0,
                index,
                rules::entry_kind_code(entry.kind),
                source,
                dest,
                entry.meta.size as i64,
                entry.meta.mode,
                entry.meta.uid,
                entry.meta.gid,
                entry.meta.atime_ns,
                entry.meta.mtime_ns,
                entry.link_target.as_ref().map(|t| t.as_os_str().as_bytes()),
                rules::link_group_column(first, offset, entry),
                rules::xattrs_column(&entry.xattrs),
                rules::file_state_code(FileState::Pending),
            ])
            .map_err(|e| self.err(e))?;
        }
        let context = rules::added_context(entries);
        self.insert_event(tx, id, None, rules::EVENT_ADDED, &context)
    }

    /// The transfer's root pair, chosen from `first` (its first entry)
    /// and recorded when it has none yet.
    fn roots_for(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        first: Option<&NewEntry>,
    ) -> Result<Roots, StoreError> {
        let roots = self.roots(tx, id)?;
        if roots.0.is_some() {
            return Ok(roots);
        }
        let Some(first) = first else {
            return Ok(roots);
        };
        let Some((source_root, dest_root)) = rules::root_pair(
            first.source.as_os_str().as_bytes(),
            first.dest.as_os_str().as_bytes(),
        ) else {
            return Ok(roots);
        };
        tx.prepare_cached("UPDATE transfers SET source_root = ?1, dest_root = ?2 WHERE id = ?3")
            .and_then(|mut s| s.execute(params![source_root, dest_root, id.0]))
            .map_err(|e| self.err(e))?;
        Ok((Some(source_root), Some(dest_root)))
    }

    fn roots(&self, conn: &Connection, id: TransferId) -> Result<Roots, StoreError> {
        read_roots(conn, id).map_err(|e| self.err(e))
    }

    fn transfer_state(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
    ) -> Result<TransferState, StoreError> {
        let state: Option<String> = tx
            .prepare_cached("SELECT state FROM transfers WHERE id = ?1 AND freed_ns IS NULL")
            .and_then(|mut s| s.query_row([id.0], |row| row.get(0)).optional())
            .map_err(|e| self.err(e))?;
        let state = state.ok_or_else(|| rules::no_such_transfer(&self.path, id))?;
        rules::parse_transfer_state(&self.path, id, &state)
    }

    /// The transfer a new one replaces gives up its name, with its event
    /// ([`NewTransfer::replaces`]).
    fn free_replaced(
        &self,
        tx: &rusqlite::Transaction<'_>,
        replaced: TransferId,
    ) -> Result<(), StoreError> {
        let free = Change::Free { id: replaced };
        let mut events = Vec::with_capacity(1);
        match self.apply_one(
            tx,
            &free,
            &mut HashMap::new(),
            &mut events,
            &mut TallyDeltas::default(),
        ) {
            Ok(()) => self.insert_events(tx, &events),
            // Another process freed it first.
            Err(StoreError::NoSuchTransfer { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Applies one change; its event joins `events`, written with the
    /// batch's others by [`SqliteStore::insert_events`].
    fn apply_one<'a>(
        &self,
        tx: &rusqlite::Transaction<'_>,
        change: &'a Change,
        checked: &mut HashMap<TransferId, ()>,
        events: &mut Vec<PendingEvent<'a>>,
        deltas: &mut TallyDeltas,
    ) -> Result<(), StoreError> {
        let mut event = |transfer: TransferId,
                         entry: Option<EntryIndex>,
                         name: Cow<'static, str>,
                         context: Cow<'a, serde_json::Value>| {
            events.push(PendingEvent {
                transfer,
                entry,
                name,
                context,
            });
            Ok(())
        };
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
                rules::check_transfer_transition(&self.path, *id, from, *to)?;
                tx.prepare_cached("UPDATE transfers SET state = ?1, updated_ns = ?2 WHERE id = ?3")
                    .and_then(|mut s| s.execute(params![to.as_str(), now, id.0]))
                    .map_err(|e| self.err(e))?;
                event(
                    *id,
                    None,
                    rules::transfer_event_name(*to).into(),
                    Cow::Borrowed(context),
                )
            }
            Change::Reattach { id, from, owner } => {
                self.check_owner(tx, *id, from)?;
                tx.prepare_cached(
                    // The new owner's heartbeat starts now, its lease unknown
                    // until it renews: never judged by the old owner's.
                    "UPDATE transfers SET owner_host = ?1, owner_boot_id = ?2,
                     owner_pid = ?3, owner_start_time = ?4, updated_ns = ?5,
                     owner_heartbeat_ns = ?5, owner_lease_ms = NULL WHERE id = ?6",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        owner.host,
                        owner.boot_id,
                        owner.pid,
                        owner.start_time as i64,
                        now,
                        id.0
                    ])
                })
                .map_err(|e| self.err(e))?;
                let context = rules::reattached_context(owner);
                event(
                    *id,
                    None,
                    rules::EVENT_REATTACHED.into(),
                    Cow::Owned(context),
                )
            }
            Change::Owned { id, owner } => self.check_owner(tx, *id, owner),
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
                let was = tallies::counted(tx, *id, index.0).map_err(|e| self.err(e))?;
                // The transition is checked by the UPDATE's WHERE (the
                // states `to` may be entered from).
                let changed = tx
                    .prepare_cached(entry_update_sql(*to))
                    .and_then(|mut s| {
                        s.execute(params![
                            rules::file_state_code(*to),
                            error,
                            progress_bytes_durable.map(|p| p as i64),
                            id.0,
                            index.0,
                            checksum.as_ref().map(|c| c.digest()),
                        ])
                    })
                    .map_err(|e| self.err(e))?;
                let Some(was) = was.filter(|_| changed == 1) else {
                    let from = self.entry_state(tx, *id, *index)?;
                    return Err(rules::entry_transition_refused(
                        &self.path, *id, *index, from, *to,
                    ));
                };
                let now = Counted {
                    state: rules::file_state_code(*to),
                    progress_bytes_durable: progress_bytes_durable
                        .map_or(was.progress_bytes_durable, |p| p as i64),
                    ..was
                };
                deltas.moved(*id, was, now);
                event(
                    *id,
                    Some(*index),
                    rules::file_event_name(*to).into(),
                    Cow::Borrowed(context),
                )
            }
            Change::Limit {
                id,
                bytes_per_second,
            } => {
                self.transfer_state(tx, *id)?;
                let context = rules::limited_context(*bytes_per_second);
                event(*id, None, rules::EVENT_LIMITED.into(), Cow::Owned(context))
            }
            Change::Removed { id, path } => {
                self.check_moving(tx, *id, checked)?;
                let context = rules::removed_context(path);
                event(*id, None, rules::EVENT_REMOVED.into(), Cow::Owned(context))
            }
            Change::Free { id } => {
                rules::check_free(&self.path, *id, self.transfer_state(tx, *id)?)?;
                let changed = tx
                    .prepare_cached(
                        "UPDATE transfers SET freed_ns = ?1 WHERE id = ?2 AND freed_ns IS NULL",
                    )
                    .and_then(|mut s| s.execute(params![now, id.0]))
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::no_such_transfer(&self.path, *id));
                }
                event(
                    *id,
                    None,
                    rules::EVENT_FREED.into(),
                    Cow::Owned(serde_json::Value::Null),
                )
            }
            Change::Named { id, name } => {
                rules::check_planning(&self.path, *id, self.transfer_state(tx, *id)?, "named")?;
                let holder: Option<i64> = tx
                    .prepare_cached("SELECT id FROM transfers WHERE name = ?1 AND freed_ns IS NULL")
                    .and_then(|mut s| s.query_row([name], |row| row.get(0)).optional())
                    .map_err(|e| self.err(e))?;
                if let Some(holder) = holder {
                    return Err(StoreError::DuplicateName {
                        path: self.path.clone(),
                        name: name.clone(),
                        id: TransferId(holder),
                    });
                }
                let changed = tx
                    .prepare_cached(
                        "UPDATE transfers SET name = ?1 WHERE id = ?2 AND freed_ns IS NULL",
                    )
                    .and_then(|mut s| s.execute(params![name, id.0]))
                    .map_err(|e| self.err(e))?;
                if changed != 1 {
                    return Err(rules::no_such_transfer(&self.path, *id));
                }
                event(
                    *id,
                    None,
                    rules::EVENT_NAMED.into(),
                    Cow::Owned(rules::named_context(name)),
                )
            }
            Change::Progress {
                id,
                index,
                progress_bytes_durable,
                piece_digests,
            } => {
                self.check_moving(tx, *id, checked)?;
                let digests = rules::piece_digests_column(piece_digests);
                let was = tallies::counted(tx, *id, index.0).map_err(|e| self.err(e))?;
                let changed = tx
                    .prepare_cached(
                        "UPDATE entries SET progress_bytes_durable = ?1, piece_digests = ?4
                         WHERE transfer_id = ?2 AND idx = ?3 AND progress_bytes_durable <= ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            *progress_bytes_durable as i64,
                            id.0,
                            index.0,
                            digests
                        ])
                    })
                    .map_err(|e| self.err(e))?;
                let Some(was) = was.filter(|_| changed == 1) else {
                    return Err(rules::progress_refused(
                        &self.path,
                        *id,
                        *index,
                        *progress_bytes_durable,
                    ));
                };
                let now = Counted {
                    progress_bytes_durable: *progress_bytes_durable as i64,
                    ..was
                };
                deltas.moved(*id, was, now);
                let context = rules::progress_context(*progress_bytes_durable);
                event(
                    *id,
                    Some(*index),
                    rules::EVENT_PROGRESS.into(),
                    Cow::Owned(context),
                )
            }
        }
    }

    fn check_owner(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        expected: &Owner,
    ) -> Result<(), StoreError> {
        let owner: Option<Owner> = tx
            .prepare_cached(
                "SELECT owner_host, owner_boot_id, owner_pid, owner_start_time
                 FROM transfers WHERE id = ?1 AND freed_ns IS NULL",
            )
            .and_then(|mut s| {
                s.query_row([id.0], |row| {
                    Ok(Owner {
                        host: row.get(0)?,
                        boot_id: row.get(1)?,
                        pid: row.get(2)?,
                        start_time: row.get::<_, i64>(3)? as u64,
                    })
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        rules::check_owner(&self.path, id, owner, expected)
    }

    /// Files change only while their transfer is moving: a cancel (or a
    /// finalize, or a free) stops every mover at its next store write.
    fn check_moving(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        checked: &mut HashMap<TransferId, ()>,
    ) -> Result<(), StoreError> {
        if checked.contains_key(&id) {
            return Ok(());
        }
        rules::check_moving(&self.path, id, self.transfer_state(tx, id)?)?;
        checked.insert(id, ());
        Ok(())
    }

    /// The entry's state; `None` when the transfer has no such entry.
    fn entry_state(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: TransferId,
        index: EntryIndex,
    ) -> Result<Option<FileState>, StoreError> {
        let state: Option<i64> = tx
            .prepare_cached("SELECT state FROM entries WHERE transfer_id = ?1 AND idx = ?2")
            .and_then(|mut s| {
                s.query_row(params![id.0, index.0], |row| row.get(0))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        state
            .map(|code| {
                rules::file_state_of_code(code).ok_or_else(|| {
                    self.corrupt(format!(
                        "entry {} of transfer {id} has unknown state {code}",
                        index.0
                    ))
                })
            })
            .transpose()
    }

    /// One `transfers` row, in the column order of `query_transfers`.
    fn row_to_transfer(row: &rusqlite::Row<'_>) -> rusqlite::Result<rules::TransferRow> {
        Ok(rules::TransferRow {
            id: row.get(0)?,
            name: row.get(1)?,
            kind: row.get(2)?,
            state: row.get(3)?,
            owner_host: row.get(4)?,
            owner_boot_id: row.get(5)?,
            owner_pid: row.get(6)?,
            owner_start_time: row.get(7)?,
            preserve: Preserve {
                mode: row.get(8)?,
                ownership: row.get(9)?,
                times: row.get(10)?,
            },
            temp_suffix: row.get(11)?,
            created_ns: row.get(12)?,
            updated_ns: row.get(13)?,
            checksum_algo: row.get(14)?,
            caller_uid: row.get(15)?,
            caller_gid: row.get(16)?,
            caller_groups: row.get(17)?,
            owner_heartbeat_ns: row.get(18)?,
            owner_lease_ms: row.get(19)?,
        })
    }

    /// One `entries` row, in the column order of [`ENTRY_COLUMNS`], its
    /// codes and paths read as the store's other implementations keep them.
    /// A value that cannot be ours is the inner `Err`, said in words.
    fn row_to_entry(
        roots: &Roots,
        row: &rusqlite::Row<'_>,
    ) -> rusqlite::Result<Result<rules::EntryRow, String>> {
        let index: i64 = row.get(0)?;
        let bad = |what: String| format!("entry {index}: {what}");
        Ok(Self::entry_row(roots, row, index)?.map_err(bad))
    }

    fn entry_row(
        roots: &Roots,
        row: &rusqlite::Row<'_>,
        index: i64,
    ) -> rusqlite::Result<Result<rules::EntryRow, String>> {
        macro_rules! bad {
            ($($arg:tt)*) => { return Ok(Err(format!($($arg)*))) };
        }
        let kind: i64 = row.get(1)?;
        let Some(kind) = rules::entry_kind_of_code(kind) else {
            bad!("unknown kind {kind}")
        };
        let state: i64 = row.get(11)?;
        let Some(state) = rules::file_state_of_code(state) else {
            bad!("unknown state {state}")
        };
        let paths = path_pair(
            roots,
            row.get_ref(2)?.as_blob()?,
            row.get_ref(3)?.as_blob_or_null()?,
        );
        let Some((source, dest)) = paths else {
            bad!("a path relative to no root")
        };
        let checksum: Option<Vec<u8>> = row.get(14)?;
        let checksum_algo = match &checksum {
            Some(digest) => match rules::checksum_algo_of_digest(digest) {
                Some(algo) => Some(Cow::Borrowed(algo.as_str())),
                None => bad!("a digest of {} bytes", digest.len()),
            },
            None => None,
        };
        Ok(Ok(rules::EntryRow {
            index,
            kind: Cow::Borrowed(kind.as_str()),
            source,
            dest,
            size: row.get(4)?,
            mode: row.get(5)?,
            uid: row.get(6)?,
            gid: row.get(7)?,
            atime_ns: row.get(8)?,
            mtime_ns: row.get(9)?,
            link_target: row.get(10)?,
            state: Cow::Borrowed(state.as_str()),
            progress_bytes_durable: row.get(12)?,
            error: row.get(13)?,
            checksum_algo,
            checksum,
            link_group: row.get(15)?,
            xattrs: row.get(16)?,
            piece_digests: row.get(17)?,
        }))
    }

    fn query_transfers(
        &self,
        filter: &str,
        param: Option<&dyn rusqlite::ToSql>,
    ) -> Result<Vec<TransferRecord>, StoreError> {
        let sql = format!(
            "SELECT id, name, kind, state, owner_host, owner_boot_id, owner_pid, owner_start_time,
                    preserve_mode, preserve_ownership, preserve_times, temp_suffix, created_ns,
                    updated_ns, checksum_algo, caller_uid, caller_gid, caller_groups,
                    owner_heartbeat_ns, owner_lease_ms
             FROM transfers WHERE freed_ns IS NULL {filter} ORDER BY id"
        );
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let params: Vec<&dyn rusqlite::ToSql> = param.into_iter().collect();
            let rows = stmt.query_map(params.as_slice(), Self::row_to_transfer)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|row| row.into_record(&self.path))
            .collect()
    }
}

impl Store for SqliteStore {
    fn location(&self) -> PathBuf {
        self.path.clone()
    }

    fn create_transfer(
        &self,
        new: &NewTransfer,
        entries: &[NewEntry],
    ) -> Result<TransferRecord, StoreError> {
        let id = self.write(|tx| {
            if let Some(replaced) = new.replaces {
                self.free_replaced(tx, replaced)?;
            }
            if let Some(name) = &new.name {
                let existing: Option<i64> = tx
                    .query_row(
                        "SELECT id FROM transfers WHERE name = ?1 AND freed_ns IS NULL",
                        [name],
                        |row| row.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?;
                if let Some(existing) = existing {
                    return Err(StoreError::DuplicateName {
                        path: self.path.clone(),
                        name: name.clone(),
                        id: TransferId(existing),
                    });
                }
            }
            let now = now_ns();
            // An unnamed transfer is named after its id, which exists only
            // once the row does: insert under a placeholder, then rename.
            let placeholder = format!("\u{1}unnamed-{}", new.owner.pid);
            tx.execute(
                "INSERT INTO transfers (name, kind, state, owner_host, owner_boot_id, owner_pid,
                    owner_start_time, preserve_mode, preserve_ownership, preserve_times,
                    temp_suffix, created_ns, updated_ns, checksum_algo, caller_uid, caller_gid,
                    caller_groups)
                 VALUES (?1, ?2, 'created', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12, ?13,
                    ?14, ?15)",
                params![
                    new.name.as_deref().unwrap_or(&placeholder),
                    new.kind.as_str(),
                    new.owner.host,
                    new.owner.boot_id,
                    new.owner.pid,
                    new.owner.start_time as i64,
                    new.preserve.mode,
                    new.preserve.ownership,
                    new.preserve.times,
                    new.temp_suffix,
                    now,
                    new.checksum.map(ChecksumAlgo::as_str),
                    new.caller.as_ref().map(|c| c.uid),
                    new.caller.as_ref().map(|c| c.gid),
                    new.caller.as_ref().map(rules::caller_groups_column),
                ],
            )
            .map_err(|e| self.err(e))?;
            let id = TransferId(tx.last_insert_rowid());
            let name = match &new.name {
                Some(name) => name.clone(),
                None => {
                    // `cp-ID`, unless someone chose that name already (a
                    // user of a shared daemon may): then `cp-ID-2`, -3…
                    // Bounded: a live name is taken at most once per try.
                    let taken = |name: &str| -> Result<bool, StoreError> {
                        tx.query_row(
                            "SELECT EXISTS (SELECT 1 FROM transfers
                                WHERE name = ?1 AND freed_ns IS NULL)",
                            [name],
                            |row| row.get(0),
                        )
                        .map_err(|e| self.err(e))
                    };
                    let mut n = 1;
                    let mut name = rules::unnamed_name(id, n);
                    while taken(&name)? {
                        n += 1;
                        name = rules::unnamed_name(id, n);
                    }
                    tx.execute(
                        "UPDATE transfers SET name = ?1 WHERE id = ?2",
                        params![name, id.0],
                    )
                    .map_err(|e| self.err(e))?;
                    name
                }
            };
            let context = rules::created_context(new, &name);
            self.insert_event(
                tx,
                id,
                None,
                &rules::transfer_event_name(TransferState::Created),
                &context,
            )?;
            if !entries.is_empty() {
                self.insert_entries(tx, id, entries)?;
            }
            Ok(id)
        })?;
        let record = self
            .transfer(id)?
            .ok_or_else(|| rules::no_such_transfer(&self.path, id))?;
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
        let writing = if rules::is_shutdown(changes) {
            Writing::Shutdown
        } else {
            Writing::Normal
        };
        self.write_as(writing, |tx| {
            let mut checked = HashMap::new();
            let mut events = Vec::with_capacity(changes.len());
            let mut tallies = TallyDeltas::default();
            for change in changes {
                self.apply_one(tx, change, &mut checked, &mut events, &mut tallies)?;
            }
            tallies.write(tx).map_err(|e| self.err(e))?;
            self.insert_events(tx, &events)
        })
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND id = ?1", Some(&id.0))?
            .into_iter()
            .next())
    }

    fn renew_lease(&self, id: TransferId, owner: &Owner, lease_ms: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            self.check_owner(tx, id, owner)?;
            tx.prepare_cached(
                "UPDATE transfers SET owner_heartbeat_ns = ?1, owner_lease_ms = ?2 WHERE id = ?3",
            )
            .and_then(|mut s| s.execute(params![now_ns(), lease_ms as i64, id.0]))
            .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    fn transfer_by_name(&self, name: &str) -> Result<Option<TransferRecord>, StoreError> {
        Ok(self
            .query_transfers("AND name = ?1", Some(&name))?
            .into_iter()
            .next())
    }

    fn transfers(&self) -> Result<Vec<TransferRecord>, StoreError> {
        self.query_transfers("", None)
    }

    fn entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let records = self.query_entries(id, "", EntryIndex(0), i64::MAX)?;
        rules::check_entries(&self.path, id, records)
    }

    fn entries_compared(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let records = self.query_entries_of(id, COMPARED_COLUMNS, "", EntryIndex(0), i64::MAX)?;
        rules::check_entries(&self.path, id, records)
    }

    fn entries_from(
        &self,
        id: TransferId,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        self.entry_range(id, ENTRY_COLUMNS, from, limit)
    }

    fn entries_compared_from(
        &self,
        id: TransferId,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        self.entry_range(id, COMPARED_COLUMNS, from, limit)
    }

    fn reads_entry_ranges(&self) -> bool {
        true
    }

    fn directory_entries(&self, id: TransferId) -> Result<Vec<EntryRecord>, StoreError> {
        let dirs = format!(
            "AND kind = {}",
            rules::entry_kind_code(crate::model::EntryKind::Dir)
        );
        let records = self.query_entries(id, &dirs, EntryIndex(0), i64::MAX)?;
        rules::check_entries_sorted(&self.path, id, records)
    }

    fn first_entry(&self, id: TransferId) -> Result<Option<EntryRecord>, StoreError> {
        let row = self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let roots = read_roots(&tx, id)?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE transfer_id = ?1 AND idx = 0"
            ))?;
            let row = stmt
                .query_row([id.0], |row| Self::row_to_entry(&roots, row))
                .optional()?;
            drop(stmt);
            tx.finish()?;
            Ok(row)
        })?;
        let records = row
            .map(|row| {
                row.map_err(|what| self.corrupt(format!("transfer {id}, {what}")))?
                    .into_record(&self.path, id)
            })
            .transpose()?
            .into_iter()
            .collect();
        Ok(rules::check_entries(&self.path, id, records)?.pop())
    }

    fn entry_tally(&self, id: TransferId) -> Result<EntryTally, StoreError> {
        let rows = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, is_file, n, bytes, durable FROM entry_tallies
                 WHERE transfer_id = ?1 AND n > 0",
            )?;
            let rows = stmt.query_map([id.0], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                ))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let mut tally = EntryTally::default();
        for (state, is_file, n, bytes, durable) in rows {
            let state = rules::file_state_of_code(state).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: format!("transfer {}: unknown entry state {state:?}", id.0),
            })?;
            let count = |v: i64| u64::try_from(v).unwrap_or(0);
            tally.add(state, is_file, count(bytes), count(n), count(durable));
        }
        Ok(tally)
    }

    fn failed_entries(
        &self,
        id: TransferId,
        after: Option<EntryIndex>,
        limit: usize,
    ) -> Result<Vec<FailedEntry>, StoreError> {
        let after = after.map_or(-1, |a| i64::from(a.0));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let roots = read_roots(&tx, id)?;
            // Named: SQLite 3.54 would rather walk the primary key (which
            // gives index order too), reading every entry of the transfer.
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT idx, source, dest, error FROM entries INDEXED BY entries_failed
                 WHERE transfer_id = ?1 AND state = {} AND idx > ?2
                 ORDER BY idx LIMIT ?3",
                rules::file_state_code(FileState::Failed)
            ))?;
            let rows = stmt.query_map(rusqlite::params![id.0, after, limit], |row| {
                let index: u32 = row.get(0)?;
                let dest = path_pair(
                    &roots,
                    row.get_ref(1)?.as_blob()?,
                    row.get_ref(2)?.as_blob_or_null()?,
                )
                .map(|(_, dest)| dest);
                Ok((index, dest, row.get::<_, Option<String>>(3)?))
            })?;
            let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|(index, dest, error)| {
                let dest = dest.ok_or_else(|| {
                    self.corrupt(format!(
                        "entry {index} of transfer {id}: a path relative to no root"
                    ))
                })?;
                Ok(FailedEntry {
                    index: EntryIndex(index),
                    dest: rules::path_from_bytes(dest),
                    error: error.unwrap_or_default(),
                })
            })
            .collect()
    }

    fn unfinished_entries_of_caller(&self, uid: u32) -> Result<u64, StoreError> {
        let terminal = TransferState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        self.read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT coalesce(sum(t.n), 0) FROM entry_tallies t
                     JOIN transfers ON transfers.id = t.transfer_id
                     WHERE transfers.caller_uid = ?1 AND transfers.freed_ns IS NULL
                       AND transfers.state NOT IN ({terminal})"
                ),
                [uid],
                |row| row.get::<_, i64>(0),
            )
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
    }

    fn events_since(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let conn = self.conn.lock().expect("store mutex poisoned");
        query_events(&conn, &self.path, after, filter, limit).map(|page| page.events)
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                row.get::<_, i64>(0)
            })
        })
        .map(|seq| seq as u64)
    }

    fn compact(&self, before: u64) -> Result<u64, StoreError> {
        self.write(|tx| {
            let last: i64 = tx
                .query_row("SELECT coalesce(max(seq), 0) FROM events", [], |row| {
                    row.get(0)
                })
                .map_err(|e| self.err(e))?;
            let horizon: i64 = tx
                .query_row(
                    "SELECT value FROM meta WHERE key = 'events_horizon'",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| self.err(e))?;
            let Some(new_horizon) = rules::compact_horizon(before, last as u64, horizon as u64)
            else {
                return Ok(horizon as u64);
            };
            tx.execute("DELETE FROM events WHERE seq <= ?1", [new_horizon as i64])
                .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'events_horizon'",
                [new_horizon as i64],
            )
            .map_err(|e| self.err(e))?;
            Ok(new_horizon)
        })
    }

    fn event_reader(&self) -> Result<Box<dyn EventReader>, StoreError> {
        let conn = Connection::open(&self.path).map_err(|e| self.err(e))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| self.err(e))?;
        Ok(Box::new(SqliteEventReader {
            path: self.path.clone(),
            conn,
            notifier: Arc::clone(&self.notifier),
        }))
    }
}

impl SqliteStore {
    /// At most `limit` entries of transfer `id` from index `from` on that
    /// pass `clause` (SQL after the `WHERE`, a constant), in index order.
    fn query_entries(
        &self,
        id: TransferId,
        clause: &str,
        from: EntryIndex,
        limit: i64,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        self.query_entries_of(id, ENTRY_COLUMNS, clause, from, limit)
    }

    /// At most `limit` entries from index `from` on, checked to be in a
    /// row; `columns` as for [`Self::query_entries_of`].
    fn entry_range(
        &self,
        id: TransferId,
        columns: &str,
        from: EntryIndex,
        limit: usize,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let records = self.query_entries_of(id, columns, "", from, limit)?;
        rules::check_entries_from(&self.path, id, from, records)
    }

    /// `columns`: [`ENTRY_COLUMNS`], or [`COMPARED_COLUMNS`] in their places.
    fn query_entries_of(
        &self,
        id: TransferId,
        columns: &str,
        clause: &str,
        from: EntryIndex,
        limit: i64,
    ) -> Result<Vec<EntryRecord>, StoreError> {
        let rows = self.read(|conn| {
            let tx = conn.unchecked_transaction()?;
            let roots = read_roots(&tx, id)?;
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {columns} FROM entries WHERE transfer_id = ?1 AND idx >= ?2 \
                 {clause} ORDER BY idx LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![id.0, from.0, limit], |row| {
                Self::row_to_entry(&roots, row)
            })?;
            let rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            drop(stmt);
            tx.finish()?;
            Ok(rows)
        })?;
        rows.into_iter()
            .map(|row| {
                row.map_err(|what| self.corrupt(format!("transfer {id}, {what}")))?
                    .into_record(&self.path, id)
            })
            .collect()
    }
}

/// The columns [`SqliteStore::row_to_entry`] reads, in its order.
const ENTRY_COLUMNS: &str = "idx, kind, source, dest, size, mode, uid, gid, atime_ns, mtime_ns,
    link_target, state, progress_bytes_durable, error, checksum, link_group, xattrs,
    piece_digests";

/// [`ENTRY_COLUMNS`] with what a re-run does not compare left empty
/// ([`Store::entries_compared`]): the same positions, so the same reader.
const COMPARED_COLUMNS: &str = "idx, kind, source, dest, size, mode, uid, gid, 0, mtime_ns,
    link_target, state, 0, NULL, NULL, NULL, NULL, NULL";

/// A transfer's root pair (`None`: its entries' paths are absolute).
type Roots = (Option<Vec<u8>>, Option<Vec<u8>>);

fn read_roots(conn: &Connection, id: TransferId) -> rusqlite::Result<Roots> {
    Ok(conn
        .prepare_cached("SELECT source_root, dest_root FROM transfers WHERE id = ?1")?
        .query_row([id.0], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?
        .unwrap_or((None, None)))
}

/// An entry's `source` and `dest` columns: the destination is left out
/// (NULL) when it is the source's relative path below the other root,
/// which is what `cp -a SRC DST` gives every entry.
fn stored_pair(
    source_root: Option<&[u8]>,
    dest_root: Option<&[u8]>,
    source: &[u8],
    dest: &[u8],
) -> (Vec<u8>, Option<Vec<u8>>) {
    let stored_source = rules::stored_path(source_root, source);
    if let (Some(source_root), Some(dest_root)) = (source_root, dest_root)
        && let Some(relative) = rules::path_below(source_root, source)
        && rules::path_below(dest_root, dest) == Some(relative)
    {
        return (stored_source, None);
    }
    let stored_dest = rules::stored_path(dest_root, dest);
    (stored_source, Some(stored_dest))
}

/// The inverse of [`stored_pair`]; `None` for a path relative to no root.
fn path_pair(roots: &Roots, source: &[u8], dest: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
    let (source_root, dest_root) = (roots.0.as_deref(), roots.1.as_deref());
    let full_source = rules::path_of_stored(source_root, source)?;
    let full_dest = match dest {
        Some(dest) => rules::path_of_stored(dest_root, dest)?,
        // Only a source stored relative leaves its destination out.
        None if !matches!(source.first(), Some(b'/' | 0)) => rules::path_joined(dest_root?, source),
        None => return None,
    };
    Some((full_source, full_dest))
}

/// An event of a batch of changes, waiting to be written with the others.
struct PendingEvent<'a> {
    transfer: TransferId,
    entry: Option<EntryIndex>,
    name: Cow<'static, str>,
    context: Cow<'a, serde_json::Value>,
}
