//! The HSM request queue and file catalog in the SQLite store.
//!
//! The queue keeps its tables (`hsm_requests`, `hsm_catalog`, policy keys
//! in `meta`) in the store's file, and reaches them only through the
//! store's own transactions ([`SqliteStore::write`], [`SqliteStore::read`]),
//! so its changes and their events share the store's one log, its read-only
//! switch and its commit fail point.
//!
//! Every request change goes through `Queue::write_request` and every
//! catalog change through `Queue::write_catalog`: each checks
//! the transition, writes the row with a guard on what it read, and appends
//! the event, inside the caller's transaction.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use rusqlite::{OptionalExtension, Row, Transaction, params};

use crate::rules::{
    self, CATALOG_COLUMNS, LeaseClass, POLICY_KEYS, REQUEST_COLUMNS, Transition, duration_ns,
};
use crate::{
    Action, BATCH_MAX, CatalogEntry, CatalogState, Enqueued, FailKind, Lease, LeaseFilter,
    NewRequest, Policy, QueueStats, RequestId, RequestQueue, RequestRecord, RequestState,
};
use ferry::store::StoreError;
use ferry::store::rules::path_from_bytes;
use ferry::store::{SqliteStore, Store, now_ns};

/// The queue's side of a [`SqliteStore`]: its rows, guards and events.
struct Queue<'a>(&'a SqliteStore);

impl std::ops::Deref for Queue<'_> {
    type Target = SqliteStore;

    fn deref(&self) -> &SqliteStore {
        self.0
    }
}

impl Queue<'_> {
    fn request_from_row(
        &self,
        row: &Row<'_>,
    ) -> rusqlite::Result<Result<RequestRecord, StoreError>> {
        let id = RequestId(row.get(0)?);
        let action: String = row.get(1)?;
        let state: String = row.get(10)?;
        let (Some(action), Some(state)) = (Action::parse(&action), RequestState::parse(&state))
        else {
            return Ok(Err(self.corrupt(format!(
                "HSM request {id} has unknown action {action:?} or state {state:?}"
            ))));
        };
        Ok(Ok(RequestRecord {
            id,
            action,
            fsname: row.get(2)?,
            archive_id: row.get(3)?,
            flags: row.get::<_, i64>(4)? as u64,
            data: row.get(5)?,
            fid: row.get(6)?,
            path: row.get::<_, Option<Vec<u8>>>(7)?.map(path_from_bytes),
            priority_ms: row.get(8)?,
            rank: row.get(9)?,
            state,
            attempts: row.get(11)?,
            max_attempts: row.get(12)?,
            not_before_ns: row.get(13)?,
            lease_holder: row.get(14)?,
            lease_expires_ns: row.get(15)?,
            waiters: row.get(16)?,
            error: row.get(17)?,
            created_ns: row.get(18)?,
            updated_ns: row.get(19)?,
        }))
    }

    /// Requests matching `filter`: `hsm_requests [INDEXED BY …] WHERE …`.
    fn query_requests(
        &self,
        conn: &rusqlite::Connection,
        filter: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let sql = format!("SELECT {REQUEST_COLUMNS} FROM {filter}");
        let rows = conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_map(params, |row| self.request_from_row(row))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.err(e))?;
        rows.into_iter().collect()
    }

    fn request_in(&self, tx: &Transaction<'_>, id: RequestId) -> Result<RequestRecord, StoreError> {
        self.query_requests(tx, "hsm_requests WHERE id = ?1", &[&id.0])?
            .pop()
            .ok_or_else(|| StoreError::NoSuchRequest {
                path: self.location(),
                id,
            })
    }

    fn live_request(
        &self,
        tx: &Transaction<'_>,
        fid: &str,
        action: Action,
    ) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self
            .query_requests(
                tx,
                "hsm_requests WHERE fid = ?1 AND action = ?2 AND state IN ('waiting', 'started')",
                &[&fid, &action.as_str()],
            )?
            .pop())
    }

    fn insert_request_event(
        &self,
        tx: &Transaction<'_>,
        request: Option<RequestId>,
        name: &str,
        context: &serde_json::Value,
    ) -> Result<(), StoreError> {
        tx.prepare_cached(
            "INSERT INTO events (time_ns, request_id, name, context) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                now_ns(),
                request.map(|r| r.0),
                name,
                context.to_string()
            ])
        })
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// THE way a request changes: `old` is what the caller read in this
    /// transaction (`None`: a new request). Checks the transition, writes
    /// the row only if it is still as read, and appends `request.<event>`.
    /// Returns the request as written (its id assigned).
    fn write_request(
        &self,
        tx: &Transaction<'_>,
        old: Option<&RequestRecord>,
        change: Transition,
    ) -> Result<RequestRecord, StoreError> {
        let now = now_ns();
        let Transition {
            mut new,
            event,
            context,
        } = change;
        new.updated_ns = now;
        if new.state == RequestState::Started {
            assert!(
                new.lease_holder.is_some() && new.lease_expires_ns.is_some(),
                "a started request has a lease"
            );
        }
        match old {
            None => {
                assert_eq!(new.state, RequestState::Waiting, "requests start waiting");
                tx.prepare_cached(
                    "INSERT INTO hsm_requests (action, fsname, archive_id, flags, data, fid, path,
                        priority_ms, rank, state, attempts, max_attempts, not_before_ns,
                        waiters, created_ns, updated_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?13, ?14, ?15)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        new.action.as_str(),
                        new.fsname,
                        new.archive_id,
                        new.flags as i64,
                        new.data,
                        new.fid,
                        new.path.as_ref().map(|p| p.as_os_str().as_bytes()),
                        new.priority_ms,
                        new.rank,
                        new.state.as_str(),
                        new.max_attempts,
                        new.not_before_ns,
                        new.waiters,
                        new.created_ns,
                        now
                    ])
                })
                .map_err(|e| self.err(e))?;
                new.id = RequestId(tx.last_insert_rowid());
            }
            Some(old) => {
                assert_eq!(old.id, new.id);
                if !rules::transition_allowed(old.state, new.state) {
                    return Err(StoreError::RequestTransition {
                        path: self.location(),
                        id: old.id,
                        from: old.state,
                        to: new.state,
                    });
                }
                let changed = tx
                    .prepare_cached(
                        "UPDATE hsm_requests SET state = ?1, attempts = ?2, not_before_ns = ?3,
                            lease_holder = ?4, lease_expires_ns = ?5, waiters = ?6, error = ?7,
                            updated_ns = ?8
                         WHERE id = ?9 AND state = ?10 AND attempts = ?11",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            new.state.as_str(),
                            new.attempts,
                            new.not_before_ns,
                            new.lease_holder,
                            new.lease_expires_ns,
                            new.waiters,
                            new.error,
                            now,
                            old.id.0,
                            old.state.as_str(),
                            old.attempts
                        ])
                    })
                    .map_err(|e| self.err(e))?;
                // We read the row in this transaction: nobody changed it since.
                assert_eq!(
                    changed, 1,
                    "request {} changed under our transaction",
                    old.id
                );
            }
        }
        let context = rules::event_context(context, &new);
        self.insert_request_event(tx, Some(new.id), &format!("request.{event}"), &context)?;
        Ok(new)
    }

    fn catalog_in(
        &self,
        conn: &rusqlite::Connection,
        fid: &str,
    ) -> Result<Option<CatalogEntry>, StoreError> {
        let sql = format!("SELECT {CATALOG_COLUMNS} FROM hsm_catalog WHERE fid = ?1");
        let row = conn
            .prepare_cached(&sql)
            .and_then(|mut stmt| {
                stmt.query_row([fid], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<Vec<u8>>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, u32>(3)?,
                        row.get::<_, Option<String>>(4)?,
                        [
                            row.get::<_, i64>(5)?,
                            row.get(6)?,
                            row.get(7)?,
                            row.get(9)?,
                            row.get(10)?,
                            row.get(11)?,
                        ],
                        row.get::<_, Option<String>>(8)?,
                    ))
                })
                .optional()
            })
            .map_err(|e| self.err(e))?;
        let Some((fid, path, state, archive_id, object, n, checksum)) = row else {
            return Ok(None);
        };
        let state = CatalogState::parse(&state).ok_or_else(|| {
            self.corrupt(format!("HSM catalog: {fid} has unknown state {state:?}"))
        })?;
        Ok(Some(CatalogEntry {
            fid,
            path: path.map(path_from_bytes),
            state,
            archive_id,
            object,
            size: n[0] as u64,
            mtime_ns: n[1],
            mode: n[2] as u32,
            checksum,
            updated_ns: n[3],
            ino: n[4] as u64,
            ctime_ns: n[5],
        }))
    }

    /// THE way the catalog changes: checks the transition from what this
    /// transaction reads, writes the row and appends `catalog.<state>`.
    fn write_catalog(
        &self,
        tx: &Transaction<'_>,
        new: &CatalogEntry,
        request: Option<RequestId>,
    ) -> Result<CatalogEntry, StoreError> {
        let old = self.catalog_in(tx, &new.fid)?;
        rules::check_catalog_change(&self.location(), old.as_ref(), new)?;
        let mut new = new.clone();
        new.updated_ns = now_ns();
        tx.prepare_cached(
            "INSERT OR REPLACE INTO hsm_catalog (fid, path, state, archive_id, object, size,
                mtime_ns, mode, checksum, updated_ns, ino, ctime_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                new.fid,
                new.path.as_ref().map(|p| p.as_os_str().as_bytes()),
                new.state.as_str(),
                new.archive_id,
                new.object,
                new.size as i64,
                new.mtime_ns,
                new.mode,
                new.checksum,
                new.updated_ns,
                new.ino as i64,
                new.ctime_ns
            ])
        })
        .map_err(|e| self.err(e))?;
        let context = rules::catalog_context(&new, old.as_ref().map(|o| o.state));
        self.insert_request_event(tx, request, &format!("catalog.{}", new.state), &context)?;
        Ok(new)
    }

    /// The next request to lease. One request per file at a time (a remove
    /// queued behind a started archive of the same file waits for it). With
    /// a restore share, restores and removes go first until they have had
    /// `restore_share` leases since the last archive; then the best archive
    /// gets one. Without, rank order. Each choice seeks an index (INDEXED
    /// BY: an error, never a silent scan, if the index cannot serve); a
    /// request still backing off is stepped over (there are few).
    fn next_ready(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        filter: &LeaseFilter,
        policy: &Policy,
        since_archive: i64,
    ) -> Result<Option<RequestRecord>, StoreError> {
        const READY: &str = "state = 'waiting' AND not_before_ns <= ?1
               AND (?2 IS NULL OR archive_id IN (0, ?2))
               AND NOT EXISTS (SELECT 1 FROM hsm_requests AS busy
                   WHERE busy.fid = hsm_requests.fid AND busy.state = 'started')";
        let best_of_action = |action: Action| -> Result<Option<RequestRecord>, StoreError> {
            if !filter.allows(action) {
                return Ok(None);
            }
            let found = self.query_requests(
                tx,
                &format!(
                    "hsm_requests INDEXED BY hsm_requests_ready_action
                     WHERE action = ?3 AND {READY} ORDER BY rank, id LIMIT 1"
                ),
                &[&now, &filter.archive_id, &action.as_str()],
            )?;
            Ok(found.into_iter().next())
        };
        // The better of each action's best, each found through its index.
        let best_of = |actions: &[Action]| -> Result<Option<RequestRecord>, StoreError> {
            let mut found = None;
            for &action in actions {
                found = match (found, best_of_action(action)?) {
                    (Some(a), Some(b)) => Some(rules::better(a, b)),
                    (a, b) => a.or(b),
                };
            }
            Ok(found)
        };
        let best_any = || -> Result<Option<RequestRecord>, StoreError> {
            if filter.actions.is_some() {
                return best_of(&Action::ALL);
            }
            let found = self.query_requests(
                tx,
                &format!(
                    "hsm_requests INDEXED BY hsm_requests_ready WHERE {READY}
                     ORDER BY rank, id LIMIT 1"
                ),
                &[&now, &filter.archive_id],
            )?;
            Ok(found.into_iter().next())
        };
        for class in rules::lease_order(policy, since_archive) {
            let found = match class {
                LeaseClass::Any => best_any()?,
                LeaseClass::Archives => best_of_action(Action::Archive)?,
                LeaseClass::FirstClass => best_of(&[Action::Restore, Action::Remove])?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn meta_in(&self, conn: &rusqlite::Connection, key: &str) -> Result<i64, StoreError> {
        conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)))
            .map_err(|e| self.err(e))
    }

    fn set_meta_in(&self, tx: &Transaction<'_>, key: &str, value: i64) -> Result<(), StoreError> {
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")
            .and_then(|mut stmt| stmt.execute(params![value, key]))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn policy_in(&self, conn: &rusqlite::Connection) -> Result<Policy, StoreError> {
        let mut v = [0i64; 7];
        for (slot, key) in v.iter_mut().zip(POLICY_KEYS) {
            *slot = conn
                .prepare_cached("SELECT value FROM meta WHERE key = ?1")
                .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)))
                .map_err(|e| self.err(e))?;
        }
        Ok(Policy {
            head_start_restore_ms: v[0],
            head_start_remove_ms: v[1],
            head_start_archive_ms: v[2],
            max_attempts: v[3].clamp(1, u32::MAX as i64) as u32,
            backoff_base_ms: v[4].max(0) as u64,
            backoff_max_ms: v[5].max(0) as u64,
            restore_share: v[6].clamp(0, u32::MAX as i64) as u32,
        })
    }

    /// The leased request as it is now, if `lease` is still its current
    /// lease; [`StoreError::StaleLease`] otherwise.
    fn check_lease(
        &self,
        tx: &Transaction<'_>,
        lease: &Lease,
    ) -> Result<RequestRecord, StoreError> {
        let current = self.request_in(tx, lease.id())?;
        if !rules::lease_is_current(&current, lease) {
            return Err(StoreError::StaleLease {
                path: self.location(),
                id: lease.id(),
                attempt: lease.attempt,
                current: current.attempts,
                state: current.state,
            });
        }
        Ok(current)
    }

    fn expire_in(&self, tx: &Transaction<'_>, now: i64) -> Result<usize, StoreError> {
        let expired = self.query_requests(
            tx,
            "hsm_requests INDEXED BY hsm_requests_leased
             WHERE state = 'started' AND lease_expires_ns < ?1 ORDER BY lease_expires_ns",
            &[&now],
        )?;
        for old in &expired {
            self.write_request(tx, Some(old), rules::expired(old, now))?;
        }
        Ok(expired.len())
    }

    fn enqueue_one(
        &self,
        tx: &Transaction<'_>,
        policy: &Policy,
        request: &NewRequest,
    ) -> Result<Enqueued, StoreError> {
        let mut superseded = false;
        if request.action == Action::Remove
            && let Some(archive) = self.live_request(tx, &request.fid, Action::Archive)?
            && archive.state == RequestState::Waiting
        {
            self.write_request(tx, Some(&archive), rules::superseded(&archive))?;
            superseded = true;
        }
        if let Some(live) = self.live_request(tx, &request.fid, request.action)? {
            let joined = self.write_request(tx, Some(&live), rules::joined(&live))?;
            return Ok(Enqueued::Joined {
                id: joined.id,
                waiters: joined.waiters,
            });
        }
        let catalog = self.catalog_in(tx, &request.fid)?;
        if let Some(reason) = rules::enqueue_noop(request, catalog.as_ref(), superseded) {
            return Ok(Enqueued::Noop { reason });
        }
        let written = self.write_request(tx, None, rules::enqueued(policy, request, now_ns()))?;
        Ok(Enqueued::Queued { id: written.id })
    }
}

fn check_batch(len: usize) {
    assert!(
        len <= BATCH_MAX,
        "a batch of {len} requests is over the bound of {BATCH_MAX}"
    );
}

impl RequestQueue for SqliteStore {
    fn recovers_from_read_only(&self) -> bool {
        true
    }

    fn wait_read_write(&self, timeout: Duration) -> bool {
        SqliteStore::wait_read_write(self, timeout)
    }

    fn enqueue(&self, batch: &[NewRequest]) -> Result<Vec<Enqueued>, StoreError> {
        let q = Queue(self);
        check_batch(batch.len());
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        q.write(|tx| {
            let policy = q.policy_in(tx)?;
            batch
                .iter()
                .map(|request| q.enqueue_one(tx, &policy, request))
                .collect()
        })
    }

    fn lease(
        &self,
        worker: &str,
        filter: &LeaseFilter,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        let q = Queue(self);
        check_batch(max);
        q.write(|tx| {
            let now = now_ns();
            q.expire_in(tx, now)?;
            let policy = q.policy_in(tx)?;
            let mut since_archive = q.meta_in(tx, "hsm.restores_since_archive")?;
            let expires_ns = now.saturating_add(duration_ns(lease));
            let mut leases = Vec::with_capacity(max);
            while leases.len() < max {
                let Some(old) = q.next_ready(tx, now, filter, &policy, since_archive)? else {
                    break;
                };
                since_archive = rules::since_archive_after(since_archive, old.action);
                let request =
                    q.write_request(tx, Some(&old), rules::started(&old, worker, expires_ns))?;
                leases.push(Lease {
                    attempt: request.attempts,
                    request,
                    worker: worker.to_owned(),
                    expires_ns,
                });
            }
            q.set_meta_in(tx, "hsm.restores_since_archive", since_archive)?;
            Ok(leases)
        })
    }

    fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<i64, StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            q.check_lease(tx, lease)?;
            // The lease's end is bookkeeping, not a state: no event.
            let expires = now_ns().saturating_add(duration_ns(extend));
            tx.prepare_cached("UPDATE hsm_requests SET lease_expires_ns = ?1 WHERE id = ?2")
                .and_then(|mut stmt| stmt.execute(params![expires, lease.id().0]))
                .map_err(|e| q.err(e))?;
            Ok(expires)
        })
    }

    fn ack(&self, lease: &Lease, catalog: Option<&CatalogEntry>) -> Result<(), StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            let old = q.check_lease(tx, lease)?;
            q.write_request(tx, Some(&old), rules::succeeded(&old))?;
            if let Some(entry) = catalog {
                assert_eq!(entry.fid, old.fid, "an ack names its request's file");
                q.write_catalog(tx, entry, Some(old.id))?;
            }
            Ok(())
        })
    }

    fn fail(&self, lease: &Lease, kind: FailKind, error: &str) -> Result<RequestState, StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            let policy = q.policy_in(tx)?;
            let old = q.check_lease(tx, lease)?;
            let change = rules::failed(&old, &policy, kind, error, now_ns());
            let to = q.write_request(tx, Some(&old), change)?.state;
            if kind == FailKind::Lost
                && let Some(mut entry) = q.catalog_in(tx, &old.fid)?
            {
                entry.state = CatalogState::Lost;
                q.write_catalog(tx, &entry, Some(old.id))?;
            }
            Ok(to)
        })
    }

    fn cancel(&self, id: RequestId) -> Result<(), StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            let old = q.request_in(tx, id)?;
            q.write_request(tx, Some(&old), rules::canceled(&old))?;
            Ok(())
        })
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        let q = Queue(self);
        q.write(|tx| q.expire_in(tx, now_ns()))
    }

    fn request(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let q = Queue(self);
        q.read_checked(|conn| {
            Ok(
                q.query_requests(conn, "hsm_requests WHERE id = ?1", &[&id.0])?
                    .pop(),
            )
        })
    }

    fn requests(
        &self,
        state: Option<RequestState>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        let q = Queue(self);
        check_batch(limit);
        q.read_checked(|conn| {
            q.query_requests(
                conn,
                "hsm_requests WHERE (?1 IS NULL OR state = ?1) ORDER BY id LIMIT ?2",
                &[&state.map(|s| s.as_str()), &(limit as i64)],
            )
        })
    }

    fn stats(&self) -> Result<QueueStats, StoreError> {
        let q = Queue(self);
        let now = now_ns();
        let (raw, backing_off, expired) = q.read(|conn| {
            let raw = conn
                .prepare_cached(
                    "SELECT action, state, count(*) FROM hsm_requests GROUP BY action, state",
                )?
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let backing_off: i64 = conn.query_row(
                "SELECT count(*) FROM hsm_requests WHERE state = 'waiting' AND not_before_ns > ?1",
                [now],
                |row| row.get(0),
            )?;
            let expired: i64 = conn.query_row(
                "SELECT count(*) FROM hsm_requests WHERE state = 'started' AND lease_expires_ns < ?1",
                [now],
                |row| row.get(0),
            )?;
            Ok((raw, backing_off, expired))
        })?;
        let counts = raw
            .into_iter()
            .map(
                |(action, state, n)| match (Action::parse(&action), RequestState::parse(&state)) {
                    (Some(a), Some(s)) => Ok((a, s, n as u64)),
                    _ => Err(q.corrupt(format!(
                        "HSM requests with unknown action {action:?} or state {state:?}"
                    ))),
                },
            )
            .collect::<Result<_, _>>()?;
        Ok(QueueStats {
            counts,
            backing_off: backing_off as u64,
            expired_leases: expired as u64,
        })
    }

    fn policy(&self) -> Result<Policy, StoreError> {
        let q = Queue(self);
        q.read_checked(|conn| q.policy_in(conn))
    }

    fn set_policy(&self, policy: &Policy) -> Result<(), StoreError> {
        let q = Queue(self);
        assert!(policy.max_attempts >= 1, "at least one attempt");
        let values = [
            policy.head_start_restore_ms,
            policy.head_start_remove_ms,
            policy.head_start_archive_ms,
            policy.max_attempts as i64,
            policy.backoff_base_ms.min(i64::MAX as u64) as i64,
            policy.backoff_max_ms.min(i64::MAX as u64) as i64,
            i64::from(policy.restore_share),
        ];
        q.write(|tx| {
            for (key, value) in POLICY_KEYS.iter().zip(values) {
                tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = ?2")
                    .and_then(|mut stmt| stmt.execute(params![value, key]))
                    .map_err(|e| q.err(e))?;
            }
            let context = serde_json::to_value(policy).expect("a policy serializes");
            q.insert_request_event(tx, None, "hsm.policy", &context)
        })
    }

    fn catalog_entry(&self, fid: &str) -> Result<Option<CatalogEntry>, StoreError> {
        let q = Queue(self);
        q.read_checked(|conn| q.catalog_in(conn, fid))
    }

    fn set_catalog_state(
        &self,
        fid: &str,
        from: CatalogState,
        to: CatalogState,
    ) -> Result<CatalogEntry, StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            let mut entry = q
                .catalog_in(tx, fid)?
                .ok_or_else(|| StoreError::NotInCatalog {
                    path: q.location(),
                    fid: fid.to_owned(),
                })?;
            if entry.state != from {
                return Err(StoreError::CatalogConflict {
                    path: q.location(),
                    fid: fid.to_owned(),
                    state: entry.state.to_string(),
                    expected: from,
                    hint: match from {
                        CatalogState::Archived => "only an archived, unchanged file can change so",
                        _ => "it changed meanwhile; look again",
                    },
                });
            }
            // A queued or running remove is about to delete the only copy.
            let removing: bool = to == CatalogState::Released
                && tx
                    .query_row(
                        "SELECT EXISTS (SELECT 1 FROM hsm_requests WHERE fid = ?1
                            AND action = 'remove' AND state IN ('waiting', 'started'))",
                        [fid],
                        |row| row.get(0),
                    )
                    .map_err(|e| q.err(e))?;
            if removing {
                return Err(StoreError::CatalogConflict {
                    path: q.location(),
                    fid: fid.to_owned(),
                    state: "being removed from the archive".into(),
                    expected: from,
                    hint: "a remove of its archived copy is queued; it cannot be released",
                });
            }
            entry.state = to;
            q.write_catalog(tx, &entry, None)
        })
    }

    fn set_catalog_stamp(
        &self,
        fid: &str,
        state: CatalogState,
        ino: u64,
        ctime_ns: i64,
    ) -> Result<bool, StoreError> {
        let q = Queue(self);
        q.write(|tx| {
            tx.prepare_cached(
                "UPDATE hsm_catalog SET ino = ?1, ctime_ns = ?2 WHERE fid = ?3 AND state = ?4",
            )
            .and_then(|mut stmt| stmt.execute(params![ino as i64, ctime_ns, fid, state.as_str()]))
            .map(|n| n == 1)
            .map_err(|e| q.err(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    crate::hsm_conformance_tests!(fresh);

    #[test]
    fn lease_query_seeks_the_ready_index() {
        let (_dir, store) = fresh();
        let plan: Vec<String> = store
            .read(|conn| {
                let mut stmt = conn.prepare(&format!(
                    "EXPLAIN QUERY PLAN SELECT {REQUEST_COLUMNS} FROM hsm_requests
                     INDEXED BY hsm_requests_ready WHERE state = 'waiting' AND not_before_ns <= ?1
                       AND (?2 IS NULL OR archive_id IN (0, ?2))
                     ORDER BY rank, id LIMIT ?3"
                ))?;
                stmt.query_map(params![0, Option::<u32>::None, 1], |row| row.get(3))?
                    .collect()
            })
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("hsm_requests_ready"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }
}
