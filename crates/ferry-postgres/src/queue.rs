//! The HSM request queue and file catalog on PostgreSQL: the same
//! [`RequestQueue`] as the SQLite store, deciding every step with
//! [`ferry::hsm::rules`] and writing it here.
//!
//! **Concurrency.** Many workers on many nodes share one queue:
//! - Every write reads the rows it changes `FOR UPDATE` (a lease: `FOR
//!   UPDATE SKIP LOCKED`, so workers never wait on each other's candidates
//!   and never lease one request twice), then updates them with a guard on
//!   what it read, inside [`PgStore::write`] with its event.
//! - One request per file at a time: a lease takes a transaction-scoped
//!   advisory lock on the file (`pg_try_advisory_xact_lock`, never waiting)
//!   and then looks again, in a new snapshot, for a started request of that
//!   file. Only a lease starts a request and it holds that lock until it
//!   commits, so two workers never start two requests of one file.
//! - Two enqueuers of the same file and action meet at the unique index of
//!   live requests: the second one's insert does nothing and it joins the
//!   first one's request instead.
//! - The weighted order's count (`hsm.restores_since_archive`) is read
//!   without a lock and written at the end of a lease, as `value + n` when
//!   no archive was leased (concurrent leases add up) or as the count after
//!   the batch's last archive: exact for one leaser at a time, a close
//!   approximation of the share when several lease at once, and never a
//!   wait before the lease's own work is done (its row lock is taken just
//!   before the event counter's, which every write with an event takes).
//!
//! **Clock.** Lease expiry, back-off (`not_before_ns`), ranks and the
//! `*_ns` fields are read from the database server's clock
//! (`clock_timestamp()`, microseconds, in ns): the one clock every node of
//! a shared queue agrees on. A node whose own clock is off neither expires
//! other nodes' leases early nor jumps the queue. One reading per
//! transaction: everything a transaction writes carries the same time.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use ferry::hsm::rules::{self, LeaseClass, Transition, duration_ns};
use ferry::hsm::{
    Action, BATCH_MAX, CatalogEntry, CatalogState, Enqueued, FailKind, Lease, LeaseFilter,
    NewRequest, Policy, QueueStats, RequestId, RequestQueue, RequestRecord, RequestState,
};
use ferry::store::StoreError;
use postgres::GenericClient;
use postgres::types::ToSql;

use crate::{NewEvent, PgStore, Tx};

const REQUEST_COLUMNS: &str = "id, action, fsname, archive_id, flags, data, fid, path, \
     priority_ms, rank, state, attempts, max_attempts, not_before_ns, lease_holder, \
     lease_expires_ns, waiters, error, created_ns, updated_ns";

const CATALOG_COLUMNS: &str =
    "fid, path, state, archive_id, object, size, mtime_ns, mode, checksum, updated_ns";

/// `meta` keys of the [`Policy`], in the order of its fields.
const POLICY_KEYS: [&str; 7] = [
    "hsm.head_start_restore_ms",
    "hsm.head_start_remove_ms",
    "hsm.head_start_archive_ms",
    "hsm.max_attempts",
    "hsm.backoff_base_ms",
    "hsm.backoff_max_ms",
    "hsm.restore_share",
];

const SINCE_ARCHIVE: &str = "hsm.restores_since_archive";

/// The server's clock in ns since the epoch (see the module's "Clock").
const NOW_SQL: &str = "(extract(epoch from clock_timestamp()) * 1000000000)::BIGINT";

/// The first key of the per-file advisory locks of leases ('FRRY', as the
/// migration lock; the two-key space does not overlap the one-key one).
const FILE_LOCK_CLASS: i32 = 1_179_800_153;

/// A lease steps over at most this many candidates whose file is busy
/// before it returns what it has.
const SKIPS_MAX: usize = BATCH_MAX;

/// How often an enqueue meets a concurrent enqueue of the same file and
/// action (each time the other one's request ended meanwhile) before it
/// gives up.
const ENQUEUE_RACES_MAX: usize = 8;

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn check_batch(len: usize) {
    assert!(
        len <= BATCH_MAX,
        "a batch of {len} requests is over the bound of {BATCH_MAX}"
    );
}

fn path_bytes(path: &Option<PathBuf>) -> Option<&[u8]> {
    path.as_ref().map(|p| p.as_os_str().as_bytes())
}

fn path_from(bytes: Option<Vec<u8>>) -> Option<PathBuf> {
    bytes.map(ferry::store::rules::path_from_bytes)
}

impl PgStore {
    fn corrupt(&self, detail: String) -> StoreError {
        ferry::store::rules::corrupt(&self.location_path(), detail)
    }

    fn request_from_row(&self, row: &postgres::Row) -> Result<RequestRecord, StoreError> {
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
    fn query_requests(
        &self,
        client: &mut impl GenericClient,
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

    /// The request, locked for this transaction.
    fn request_for_update(
        &self,
        tx: &mut Tx<'_>,
        id: RequestId,
    ) -> Result<RequestRecord, StoreError> {
        self.query_requests(
            &mut tx.tx,
            "hsm_requests WHERE id = $1 FOR UPDATE",
            &[&id.0],
        )?
        .pop()
        .ok_or_else(|| StoreError::NoSuchRequest {
            path: self.location_path(),
            id,
        })
    }

    fn live_request(
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

    fn request_event(
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
    fn insert_request(
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
    fn update_request(
        &self,
        tx: &mut Tx<'_>,
        old: &RequestRecord,
        change: Transition,
        now: i64,
    ) -> Result<RequestRecord, StoreError> {
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
        let changed = tx
            .tx
            .execute(
                "UPDATE hsm_requests SET state = $1, attempts = $2, not_before_ns = $3,
                    lease_holder = $4, lease_expires_ns = $5, waiters = $6, error = $7,
                    updated_ns = $8
                 WHERE id = $9 AND state = $10 AND attempts = $11",
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
        // We read it FOR UPDATE in this transaction: nobody changed it since.
        assert_eq!(changed, 1, "request {} changed under our lock", old.id);
        let context = rules::event_context(context, &new);
        self.request_event(tx, Some(new.id), format!("request.{event}"), &context, now)?;
        Ok(new)
    }

    fn catalog_query(
        &self,
        client: &mut impl GenericClient,
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
        Ok(Some(CatalogEntry {
            path: path_from(row.get(1)),
            state,
            archive_id,
            object: row.get(4),
            size: row.get::<_, i64>(5) as u64,
            mtime_ns: row.get(6),
            mode,
            checksum: row.get(8),
            updated_ns: row.get(9),
            fid,
        }))
    }

    /// THE way the catalog changes: checks the transition from what this
    /// transaction reads (locked), writes the row and appends
    /// `catalog.<state>`.
    fn write_catalog(
        &self,
        tx: &mut Tx<'_>,
        new: &CatalogEntry,
        request: Option<RequestId>,
        now: i64,
    ) -> Result<CatalogEntry, StoreError> {
        let old = self.catalog_query(&mut tx.tx, &new.fid, true)?;
        let from = old.as_ref().map(|o| o.state);
        if !new.state.allowed_from().contains(&from) {
            return Err(StoreError::CatalogConflict {
                path: self.location_path(),
                fid: new.fid.clone(),
                state: from.map_or("unknown".into(), |s| s.to_string()),
                expected: new.state,
                hint: "the catalog refuses that change",
            });
        }
        // An archived or released file has a copy to come back from.
        if matches!(new.state, CatalogState::Archived | CatalogState::Released) {
            assert!(
                new.object.is_some() && new.checksum.is_some(),
                "an archived file has an object and a checksum"
            );
        }
        let mut new = new.clone();
        new.updated_ns = now;
        tx.tx
            .execute(
                "INSERT INTO hsm_catalog (fid, path, state, archive_id, object, size,
                    mtime_ns, mode, checksum, updated_ns)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (fid) DO UPDATE SET path = EXCLUDED.path, state = EXCLUDED.state,
                    archive_id = EXCLUDED.archive_id, object = EXCLUDED.object,
                    size = EXCLUDED.size, mtime_ns = EXCLUDED.mtime_ns, mode = EXCLUDED.mode,
                    checksum = EXCLUDED.checksum, updated_ns = EXCLUDED.updated_ns",
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
                ],
            )
            .map_err(|e| self.err(e))?;
        let context = rules::catalog_context(&new, from);
        self.request_event(tx, request, format!("catalog.{}", new.state), &context, now)?;
        Ok(new)
    }

    fn server_now(&self, client: &mut impl GenericClient) -> Result<i64, StoreError> {
        Ok(client
            .query_one(&format!("SELECT {NOW_SQL}"), &[])
            .map_err(|e| self.err(e))?
            .get(0))
    }

    fn policy_in(&self, client: &mut impl GenericClient) -> Result<Policy, StoreError> {
        let keys: Vec<&str> = POLICY_KEYS.to_vec();
        let rows = client
            .query("SELECT key, value FROM meta WHERE key = ANY($1)", &[&keys])
            .map_err(|e| self.err(e))?;
        let mut v = [0i64; 7];
        for (slot, key) in v.iter_mut().zip(POLICY_KEYS) {
            *slot = rows
                .iter()
                .find(|row| row.get::<_, &str>(0) == key)
                .map(|row| row.get(1))
                .ok_or_else(|| self.corrupt(format!("meta has no {key}")))?;
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

    fn meta_in(&self, client: &mut impl GenericClient, key: &str) -> Result<i64, StoreError> {
        client
            .query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
            .map_err(|e| self.err(e))?
            .map(|row| row.get(0))
            .ok_or_else(|| self.corrupt(format!("meta has no {key}")))
    }

    /// The leased request as it is now, locked, if `lease` is still its
    /// current lease; [`StoreError::StaleLease`] otherwise.
    fn check_lease(&self, tx: &mut Tx<'_>, lease: &Lease) -> Result<RequestRecord, StoreError> {
        let current = self.request_for_update(tx, lease.id())?;
        if !rules::lease_is_current(&current, lease) {
            return Err(StoreError::StaleLease {
                path: self.location_path(),
                id: lease.id(),
                attempt: lease.attempt,
                current: current.attempts,
                state: current.state,
            });
        }
        Ok(current)
    }

    /// Returns expired leases to the queue (at most [`BATCH_MAX`] per call;
    /// one being changed by another transaction right now is left to it).
    fn expire_in(&self, tx: &mut Tx<'_>, now: i64) -> Result<usize, StoreError> {
        let expired = self.query_requests(
            &mut tx.tx,
            "hsm_requests WHERE state = 'started' AND lease_expires_ns < $1
             ORDER BY lease_expires_ns LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &(BATCH_MAX as i64)],
        )?;
        for old in &expired {
            self.update_request(tx, old, rules::expired(old, now), now)?;
        }
        Ok(expired.len())
    }

    /// The best ready request of `class`, locked (`SKIP LOCKED`: another
    /// leaser's candidates are stepped over, never waited for), not one of
    /// `skipped`. "Ready": waiting, back-off over, the filter's archive,
    /// and no started request of its file in this snapshot.
    fn best_ready(
        &self,
        tx: &mut Tx<'_>,
        now: i64,
        filter: &LeaseFilter,
        action: Option<Action>,
        skipped: &[i64],
    ) -> Result<Option<RequestRecord>, StoreError> {
        let archive_id = filter.archive_id.map(i64::from);
        let action = action.map(Action::as_str);
        // Two texts, so that each plan seeks its own index.
        let by_action = if action.is_some() {
            "AND action = $4"
        } else {
            "AND $4::TEXT IS NULL"
        };
        let sql = format!(
            "hsm_requests AS r WHERE state = 'waiting' {by_action} AND not_before_ns <= $1
                AND ($2::BIGINT IS NULL OR archive_id IN (0, $2))
                AND id <> ALL($3)
                AND NOT EXISTS (SELECT 1 FROM hsm_requests AS busy
                    WHERE busy.fid = r.fid AND busy.state = 'started')
             ORDER BY rank, id LIMIT 1 FOR UPDATE SKIP LOCKED"
        );
        Ok(self
            .query_requests(&mut tx.tx, &sql, &[&now, &archive_id, &skipped, &action])?
            .pop())
    }

    /// The next request to lease, by the weighted order
    /// ([`rules::lease_order`]).
    fn next_ready(
        &self,
        tx: &mut Tx<'_>,
        now: i64,
        filter: &LeaseFilter,
        policy: &Policy,
        since_archive: i64,
        skipped: &[i64],
    ) -> Result<Option<RequestRecord>, StoreError> {
        for class in rules::lease_order(policy, since_archive) {
            let found = match class {
                LeaseClass::Any => self.best_ready(tx, now, filter, None, skipped)?,
                LeaseClass::Archives => {
                    self.best_ready(tx, now, filter, Some(Action::Archive), skipped)?
                }
                LeaseClass::FirstClass => {
                    let restore =
                        self.best_ready(tx, now, filter, Some(Action::Restore), skipped)?;
                    let remove = self.best_ready(tx, now, filter, Some(Action::Remove), skipped)?;
                    match (restore, remove) {
                        (Some(a), Some(b)) => Some(rules::better(a, b)),
                        (a, b) => a.or(b),
                    }
                }
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    /// Takes the file for this transaction: its advisory lock (without
    /// waiting), then, in a snapshot taken after it, no started request of
    /// the file. False: another lease has it, or had it and committed.
    fn claim_file(&self, tx: &mut Tx<'_>, fid: &str) -> Result<bool, StoreError> {
        let key = format!("{}/{fid}", self.schema());
        let locked: bool = tx
            .tx
            .query_one(
                "SELECT pg_try_advisory_xact_lock($1, hashtext($2))",
                &[&FILE_LOCK_CLASS, &key],
            )
            .map_err(|e| self.err(e))?
            .get(0);
        if !locked {
            return Ok(false);
        }
        let busy: bool = tx
            .tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM hsm_requests WHERE fid = $1 AND state = 'started')",
                &[&fid],
            )
            .map_err(|e| self.err(e))?
            .get(0);
        Ok(!busy)
    }

    fn enqueue_one(
        &self,
        tx: &mut Tx<'_>,
        policy: &Policy,
        request: &NewRequest,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        for _ in 0..ENQUEUE_RACES_MAX {
            if request.action == Action::Remove
                && let Some(archive) = self.live_request(tx, &request.fid, Action::Archive)?
                && archive.state == RequestState::Waiting
            {
                self.update_request(tx, &archive, rules::superseded(&archive), now)?;
            }
            if let Some(live) = self.live_request(tx, &request.fid, request.action)? {
                let joined = self.update_request(tx, &live, rules::joined(&live), now)?;
                return Ok(Enqueued::Joined {
                    id: joined.id,
                    waiters: joined.waiters,
                });
            }
            let catalog = self.catalog_query(&mut tx.tx, &request.fid, false)?;
            if let Some(reason) = rules::enqueue_noop(request, catalog.as_ref()) {
                return Ok(Enqueued::Noop { reason });
            }
            if let Some(written) =
                self.insert_request(tx, rules::enqueued(policy, request, now), now)?
            {
                return Ok(Enqueued::Queued { id: written.id });
            }
            // A concurrent enqueue of the same file and action committed
            // first: join it (the next round finds it).
        }
        Err(StoreError::Server {
            path: self.location_path(),
            source: Box::new(std::io::Error::other(format!(
                "the {} of {} raced {ENQUEUE_RACES_MAX} concurrent requests of that file; \
                 enqueue it again",
                request.action, request.fid
            ))),
        })
    }
}

impl RequestQueue for PgStore {
    fn enqueue(&self, batch: &[NewRequest]) -> Result<Vec<Enqueued>, StoreError> {
        check_batch(batch.len());
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            let policy = self.policy_in(&mut tx.tx)?;
            batch
                .iter()
                .map(|request| self.enqueue_one(tx, &policy, request, now))
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
        check_batch(max);
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            self.expire_in(tx, now)?;
            let policy = self.policy_in(&mut tx.tx)?;
            let mut since_archive = self.meta_in(&mut tx.tx, SINCE_ARCHIVE)?;
            let expires_ns = now.saturating_add(duration_ns(lease));
            let mut leases: Vec<Lease> = Vec::with_capacity(max.min(1024));
            let mut skipped: Vec<i64> = Vec::new();
            while leases.len() < max && skipped.len() < SKIPS_MAX {
                let Some(old) =
                    self.next_ready(tx, now, filter, &policy, since_archive, &skipped)?
                else {
                    break;
                };
                if !self.claim_file(tx, &old.fid)? {
                    skipped.push(old.id.0);
                    continue;
                }
                since_archive = rules::since_archive_after(since_archive, old.action);
                let change = rules::started(&old, worker, expires_ns);
                let request = self.update_request(tx, &old, change, now)?;
                leases.push(Lease {
                    attempt: request.attempts,
                    request,
                    worker: worker.to_owned(),
                    expires_ns,
                });
            }
            if !leases.is_empty() {
                // See the module's "Concurrency" for why not a plain set.
                let archived = leases.iter().any(|l| l.request.action == Action::Archive);
                let n = leases.len() as i64;
                let (sql, value) = if archived {
                    ("UPDATE meta SET value = $1 WHERE key = $2", since_archive)
                } else {
                    ("UPDATE meta SET value = value + $1 WHERE key = $2", n)
                };
                tx.tx
                    .execute(sql, &[&value, &SINCE_ARCHIVE])
                    .map_err(|e| self.err(e))?;
            }
            Ok(leases)
        })
    }

    fn heartbeat(&self, lease: &Lease, extend: Duration) -> Result<i64, StoreError> {
        self.write(|tx| {
            self.check_lease(tx, lease)?;
            // The lease's end is bookkeeping, not a state: no event.
            let now = self.server_now(&mut tx.tx)?;
            let expires = now.saturating_add(duration_ns(extend));
            tx.tx
                .execute(
                    "UPDATE hsm_requests SET lease_expires_ns = $1 WHERE id = $2",
                    &[&expires, &lease.id().0],
                )
                .map_err(|e| tx.err(e))?;
            Ok(expires)
        })
    }

    fn ack(&self, lease: &Lease, catalog: Option<&CatalogEntry>) -> Result<(), StoreError> {
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            let old = self.check_lease(tx, lease)?;
            self.update_request(tx, &old, rules::succeeded(&old), now)?;
            if let Some(entry) = catalog {
                assert_eq!(entry.fid, old.fid, "an ack names its request's file");
                self.write_catalog(tx, entry, Some(old.id), now)?;
            }
            Ok(())
        })
    }

    fn fail(&self, lease: &Lease, kind: FailKind, error: &str) -> Result<RequestState, StoreError> {
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            let policy = self.policy_in(&mut tx.tx)?;
            let old = self.check_lease(tx, lease)?;
            let change = rules::failed(&old, &policy, kind, error, now);
            let to = self.update_request(tx, &old, change, now)?.state;
            if kind == FailKind::Lost
                && let Some(mut entry) = self.catalog_query(&mut tx.tx, &old.fid, true)?
            {
                entry.state = CatalogState::Lost;
                self.write_catalog(tx, &entry, Some(old.id), now)?;
            }
            Ok(to)
        })
    }

    fn cancel(&self, id: RequestId) -> Result<(), StoreError> {
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            let old = self.request_for_update(tx, id)?;
            self.update_request(tx, &old, rules::canceled(&old), now)?;
            Ok(())
        })
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            self.expire_in(tx, now)
        })
    }

    fn request(&self, id: RequestId) -> Result<Option<RequestRecord>, StoreError> {
        let mut conn = self.conn()?;
        Ok(self
            .query_requests(&mut *conn, "hsm_requests WHERE id = $1", &[&id.0])?
            .pop())
    }

    fn requests(
        &self,
        state: Option<RequestState>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        check_batch(limit);
        let mut conn = self.conn()?;
        self.query_requests(
            &mut *conn,
            "hsm_requests WHERE ($1::TEXT IS NULL OR state = $1) ORDER BY id LIMIT $2",
            &[&state.map(RequestState::as_str), &(limit as i64)],
        )
    }

    fn stats(&self) -> Result<QueueStats, StoreError> {
        let mut conn = self.conn()?;
        // One statement: one snapshot, one reading of the server's clock.
        let rows = conn
            .query(
                &format!(
                    "WITH now AS (SELECT {NOW_SQL} AS ns)
                     SELECT action, state, count(*),
                        count(*) FILTER (WHERE state = 'waiting' AND not_before_ns > now.ns),
                        count(*) FILTER (WHERE state = 'started' AND lease_expires_ns < now.ns)
                     FROM hsm_requests, now GROUP BY action, state"
                ),
                &[],
            )
            .map_err(|e| self.err(e))?;
        let mut stats = QueueStats::default();
        for row in &rows {
            let (action, state): (&str, &str) = (row.get(0), row.get(1));
            let (Some(a), Some(s)) = (Action::parse(action), RequestState::parse(state)) else {
                return Err(self.corrupt(format!(
                    "HSM requests with unknown action {action:?} or state {state:?}"
                )));
            };
            stats.counts.push((a, s, row.get::<_, i64>(2) as u64));
            stats.backing_off += row.get::<_, i64>(3) as u64;
            stats.expired_leases += row.get::<_, i64>(4) as u64;
        }
        Ok(stats)
    }

    fn policy(&self) -> Result<Policy, StoreError> {
        let mut conn = self.conn()?;
        self.policy_in(&mut *conn)
    }

    fn set_policy(&self, policy: &Policy) -> Result<(), StoreError> {
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
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            for (key, value) in POLICY_KEYS.iter().zip(values) {
                tx.tx
                    .execute("UPDATE meta SET value = $1 WHERE key = $2", &[&value, key])
                    .map_err(|e| self.err(e))?;
            }
            let context = serde_json::to_value(policy).expect("a policy serializes");
            self.request_event(tx, None, "hsm.policy".into(), &context, now)
        })
    }

    fn catalog_entry(&self, fid: &str) -> Result<Option<CatalogEntry>, StoreError> {
        let mut conn = self.conn()?;
        self.catalog_query(&mut *conn, fid, false)
    }

    fn set_catalog_state(
        &self,
        fid: &str,
        from: CatalogState,
        to: CatalogState,
    ) -> Result<CatalogEntry, StoreError> {
        self.write(|tx| {
            let now = self.server_now(&mut tx.tx)?;
            let mut entry = self.catalog_query(&mut tx.tx, fid, true)?.ok_or_else(|| {
                StoreError::NotInCatalog {
                    path: self.location_path(),
                    fid: fid.to_owned(),
                }
            })?;
            if entry.state != from {
                return Err(StoreError::CatalogConflict {
                    path: self.location_path(),
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
            let removing = to == CatalogState::Released
                && tx
                    .tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM hsm_requests WHERE fid = $1
                            AND action = 'remove' AND state IN ('waiting', 'started'))",
                        &[&fid],
                    )
                    .map_err(|e| self.err(e))?
                    .get::<_, bool>(0);
            if removing {
                return Err(StoreError::CatalogConflict {
                    path: self.location_path(),
                    fid: fid.to_owned(),
                    state: "being removed from the archive".into(),
                    expected: from,
                    hint: "a remove of its archived copy is queued; it cannot be released",
                });
            }
            entry.state = to;
            self.write_catalog(tx, &entry, None, now)
        })
    }
}
