//! Request and catalog rows: reading them, and the one way each changes
//! (`write_request`, `write_catalog`: the transition checked, the row
//! guarded on what was read, the event appended).

use super::*;

impl PgStore {
    pub(super) fn corrupt(&self, detail: String) -> StoreError {
        ferry::store::rules::corrupt(&self.location_path(), detail)
    }

    pub(super) fn request_from_row(
        &self,
        row: &postgres::Row,
    ) -> Result<RequestRecord, StoreError> {
        let id = RequestId(row.get(0));
        let action: &str = row.get(1);
        let state: &str = row.get(10);
        let (Some(action), Some(state)) = (Action::parse(action), RequestState::parse(state))
        else {
            return Err(self.corrupt(format!(
                "HSM request {id} has unknown action {action:?} or state {state:?}"
            )));
        };
        let int = |i: usize| -> Result<u32, StoreError> {
            let v: i64 = row.get(i);
            u32::try_from(v).map_err(|_| {
                self.corrupt(format!("HSM request {id}: column {i} holds {v}, not a u32"))
            })
        };
        Ok(RequestRecord {
            id,
            action,
            fsname: row.get(2),
            archive_id: int(3)?,
            flags: row.get::<_, i64>(4) as u64,
            data: row.get(5),
            fid: row.get(6),
            path: path_from(row.get(7)),
            priority_ms: row.get(8),
            rank: row.get(9),
            state,
            attempts: int(11)?,
            max_attempts: int(12)?,
            not_before_ns: row.get(13),
            lease_holder: row.get(14),
            lease_expires_ns: row.get(15),
            waiters: int(16)?,
            error: row.get(17),
            created_ns: row.get(18),
            updated_ns: row.get(19),
        })
    }

    /// `SELECT REQUEST_COLUMNS FROM {rest}`.
    pub(super) fn query_requests(
        &self,
        client: &mut impl Db,
        rest: &str,
        params: Params<'_>,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM {rest}");
        client
            .query(&sql, params)
            .map_err(|e| self.err(e))?
            .iter()
            .map(|row| self.request_from_row(row))
            .collect()
    }

    /// The request, locked for this transaction, and the server's clock
    /// (the transaction's one reading: see the module's "Clock"), in one
    /// statement.
    pub(super) fn request_for_update(
        &self,
        tx: &mut Tx<'_>,
        id: RequestId,
    ) -> Result<(RequestRecord, i64), StoreError> {
        // The clock in the outer query: read once the row lock is ours,
        // not before a wait for it (a lease would start already shortened).
        let sql = format!(
            "SELECT locked.*, {NOW_SQL} FROM (SELECT {REQUEST_COLUMNS} FROM hsm_requests
             WHERE id = $1 FOR UPDATE) AS locked"
        );
        let Some(row) = tx.tx.query_opt(&sql, &[&id.0]).map_err(|e| self.err(e))? else {
            return Err(StoreError::NoSuchRequest {
                path: self.location_path(),
                id,
            });
        };
        Ok((self.request_from_row(&row)?, row.get(20)))
    }

    pub(super) fn live_request(
        &self,
        tx: &mut Tx<'_>,
        fid: &str,
        action: Action,
    ) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self
            .query_requests(
                &mut tx.tx,
                "hsm_requests WHERE fid = $1 AND action = $2
                    AND state IN ('waiting', 'started') FOR UPDATE",
                &[&fid, &action.as_str()],
            )?
            .pop())
    }

    pub(super) fn request_event(
        &self,
        tx: &mut Tx<'_>,
        request: Option<RequestId>,
        name: String,
        context: &serde_json::Value,
        now: i64,
    ) -> Result<(), StoreError> {
        tx.event(NewEvent {
            time_ns: now,
            transfer: None,
            entry: None,
            request: request.map(|r| r.0),
            name,
            context: context.to_string(),
        })
    }

    /// A new request: inserted with its `request.waiting` event, or `None`
    /// when a concurrent enqueue committed a live request of the same file
    /// and action first (the caller joins that one).
    pub(super) fn insert_request(
        &self,
        tx: &mut Tx<'_>,
        change: Transition,
        now: i64,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let Transition {
            mut new,
            event,
            context,
        } = change;
        assert_eq!(new.state, RequestState::Waiting, "requests start waiting");
        new.updated_ns = now;
        let row = tx
            .tx
            .query_opt(
                "INSERT INTO hsm_requests (action, fsname, archive_id, flags, data, fid, path,
                    priority_ms, rank, state, attempts, max_attempts, not_before_ns,
                    waiters, created_ns, updated_ns)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, $11, $12, $13, $14, $15)
                 ON CONFLICT (fid, action) WHERE state IN ('waiting', 'started') DO NOTHING
                 RETURNING id",
                &[
                    &new.action.as_str(),
                    &new.fsname,
                    &i64::from(new.archive_id),
                    &(new.flags as i64),
                    &new.data,
                    &new.fid,
                    &path_bytes(&new.path),
                    &new.priority_ms,
                    &new.rank,
                    &new.state.as_str(),
                    &i64::from(new.max_attempts),
                    &new.not_before_ns,
                    &i64::from(new.waiters),
                    &new.created_ns,
                    &now,
                ],
            )
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        new.id = RequestId(row.get(0));
        let context = rules::event_context(context, &new);
        self.request_event(tx, Some(new.id), format!("request.{event}"), &context, now)?;
        Ok(Some(new))
    }

    /// THE way a request changes: `old` is what this transaction read and
    /// locked. Checks the transition, writes the row with a guard on what
    /// was read, and appends `request.<event>`. Returns the request as
    /// written.
    pub(super) fn update_request(
        &self,
        tx: &mut Tx<'_>,
        old: &RequestRecord,
        change: Transition,
        now: i64,
    ) -> Result<RequestRecord, StoreError> {
        Ok(self
            .write_request(tx, old, change, now, false)?
            .expect("an unguarded update changes its row"))
    }

    /// [`PgStore::update_request`], and with `file_idle` only if, in this
    /// statement's snapshot, no request of the file is started: `None`
    /// (nothing written) if one is.
    pub(super) fn write_request(
        &self,
        tx: &mut Tx<'_>,
        old: &RequestRecord,
        change: Transition,
        now: i64,
        file_idle: bool,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let Transition {
            mut new,
            event,
            context,
        } = change;
        assert_eq!(old.id, new.id);
        new.updated_ns = now;
        if new.state == RequestState::Started {
            assert!(
                new.lease_holder.is_some() && new.lease_expires_ns.is_some(),
                "a started request has a lease"
            );
        }
        if !rules::transition_allowed(old.state, new.state) {
            return Err(StoreError::RequestTransition {
                path: self.location_path(),
                id: old.id,
                from: old.state,
                to: new.state,
            });
        }
        const UPDATE: &str = "UPDATE hsm_requests SET state = $1, attempts = $2,
                not_before_ns = $3, lease_holder = $4, lease_expires_ns = $5, waiters = $6,
                error = $7, updated_ns = $8
             WHERE id = $9 AND state = $10 AND attempts = $11";
        let sql = if file_idle {
            format!(
                "{UPDATE} AND NOT EXISTS (SELECT 1 FROM hsm_requests AS busy
                    WHERE busy.fid = hsm_requests.fid AND busy.state = 'started')"
            )
        } else {
            UPDATE.to_owned()
        };
        let changed = tx
            .tx
            .execute(
                &sql,
                &[
                    &new.state.as_str(),
                    &i64::from(new.attempts),
                    &new.not_before_ns,
                    &new.lease_holder,
                    &new.lease_expires_ns,
                    &i64::from(new.waiters),
                    &new.error,
                    &now,
                    &old.id.0,
                    &old.state.as_str(),
                    &i64::from(old.attempts),
                ],
            )
            .map_err(|e| self.err(e))?;
        if file_idle && changed == 0 {
            return Ok(None);
        }
        // We read it FOR UPDATE in this transaction: nobody changed it since.
        assert_eq!(changed, 1, "request {} changed under our lock", old.id);
        let context = rules::event_context(context, &new);
        self.request_event(tx, Some(new.id), format!("request.{event}"), &context, now)?;
        Ok(Some(new))
    }

    pub(super) fn catalog_query(
        &self,
        client: &mut impl Db,
        fid: &str,
        lock: bool,
    ) -> Result<Option<CatalogEntry>, StoreError> {
        let sql = format!(
            "SELECT {CATALOG_COLUMNS} FROM hsm_catalog WHERE fid = $1{}",
            if lock { " FOR UPDATE" } else { "" }
        );
        let Some(row) = client.query_opt(&sql, &[&fid]).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.catalog_from_row(&row).map(Some)
    }

    pub(super) fn catalog_from_row(&self, row: &postgres::Row) -> Result<CatalogEntry, StoreError> {
        let fid: String = row.get(0);
        let state: &str = row.get(2);
        let state = CatalogState::parse(state).ok_or_else(|| {
            self.corrupt(format!("HSM catalog: {fid} has unknown state {state:?}"))
        })?;
        let archive_id: i64 = row.get(3);
        let mode: i64 = row.get(7);
        let (Ok(archive_id), Ok(mode)) = (u32::try_from(archive_id), u32::try_from(mode)) else {
            return Err(self.corrupt(format!(
                "HSM catalog: {fid} has archive id {archive_id} or mode {mode} out of range"
            )));
        };
        Ok(CatalogEntry {
            path: path_from(row.get(1)),
            state,
            archive_id,
            object: row.get(4),
            size: row.get::<_, i64>(5) as u64,
            mtime_ns: row.get(6),
            mode,
            checksum: row.get(8),
            updated_ns: row.get(9),
            ino: row.get::<_, i64>(10) as u64,
            ctime_ns: row.get(11),
            fid,
        })
    }

    /// THE way the catalog changes: checks the transition from what this
    /// transaction reads (locked), writes the row and appends
    /// `catalog.<state>`.
    pub(super) fn write_catalog(
        &self,
        tx: &mut Tx<'_>,
        new: &CatalogEntry,
        request: Option<RequestId>,
        now: i64,
    ) -> Result<CatalogEntry, StoreError> {
        let old = self.catalog_query(&mut tx.tx, &new.fid, true)?;
        rules::check_catalog_change(&self.location_path(), old.as_ref(), new)?;
        let mut new = new.clone();
        new.updated_ns = now;
        tx.tx
            .execute(
                "INSERT INTO hsm_catalog (fid, path, state, archive_id, object, size,
                    mtime_ns, mode, checksum, updated_ns, ino, ctime_ns)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (fid) DO UPDATE SET path = EXCLUDED.path, state = EXCLUDED.state,
                    archive_id = EXCLUDED.archive_id, object = EXCLUDED.object,
                    size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, mode = EXCLUDED.mode,
                    checksum = EXCLUDED.checksum, updated_ns = EXCLUDED.updated_ns,
                    ino = EXCLUDED.ino, ctime_ns = EXCLUDED.ctime_ns",
                &[
                    &new.fid,
                    &path_bytes(&new.path),
                    &new.state.as_str(),
                    &i64::from(new.archive_id),
                    &new.object,
                    &(new.size as i64),
                    &new.mtime_ns,
                    &i64::from(new.mode),
                    &new.checksum,
                    &new.updated_ns,
                    &(new.ino as i64),
                    &new.ctime_ns,
                ],
            )
            .map_err(|e| self.err(e))?;
        let context = rules::catalog_context(&new, old.as_ref().map(|o| o.state));
        self.request_event(tx, request, format!("catalog.{}", new.state), &context, now)?;
        Ok(new)
    }
}
