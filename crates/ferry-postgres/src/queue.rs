//! The HSM request queue and file catalog on PostgreSQL: the same
//! [`RequestQueue`] as the SQLite store, deciding every step with
//! [`ferry_hsm::rules`] and writing it here.
//!
//! **Concurrency.** Many workers on many nodes share one queue:
//! - Every write reads the rows it changes `FOR UPDATE` (a lease: `FOR
//!   UPDATE SKIP LOCKED`, so workers never wait on each other's candidates
//!   and never lease one request twice), then updates them with a guard on
//!   what it read, inside [`PgStore::write`] with its event.
//! - One request per file at a time: a lease takes a transaction-scoped
//!   advisory lock on the file (`pg_try_advisory_xact_lock`, never waiting,
//!   in the statement that finds the request) and then looks again, in a
//!   new snapshot (the statement that starts the request, which changes
//!   nothing if it finds one), for a started request of that file. Only a
//!   lease starts a request and it holds that lock until it commits, so two
//!   workers never start two requests of one file.
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

use crate::conn::Db;
use ferry::store::StoreError;
use ferry_hsm::rules::{
    self, CATALOG_COLUMNS, LeaseClass, POLICY_KEYS, REQUEST_COLUMNS, Transition, duration_ns,
};
use ferry_hsm::{
    Action, BATCH_MAX, CatalogEntry, CatalogState, Enqueued, FailKind, Lease, LeaseFilter,
    NewRequest, Policy, QueueStats, RequestId, RequestQueue, RequestRecord, RequestState,
};
use postgres::types::ToSql;

use crate::{NewEvent, PgStore, Tx};

mod batch;

const SINCE_ARCHIVE: &str = "hsm.restores_since_archive";

/// The server's clock in ns since the epoch (see the module's "Clock").
const NOW_SQL: &str = "(extract(epoch from clock_timestamp()) * 1000000000)::BIGINT";

/// The first key of the per-file advisory locks of leases ('FRRY', as the
/// migration lock; the two-key space does not overlap the one-key one).
const FILE_LOCK_CLASS: i32 = 1_179_800_153;
/// The first key of the per-file locks enqueues take (see `enqueue`).
const ENQUEUE_LOCK_CLASS: i32 = FILE_LOCK_CLASS + 1;

/// A lease steps over at most this many candidates whose file is busy
/// before it returns what it has.
const SKIPS_MAX: usize = BATCH_MAX;

/// How often an enqueue meets a concurrent enqueue of the same file and
/// action (each time the other one's request ended meanwhile) before it
/// gives up.
const ENQUEUE_RACES_MAX: usize = 8;

/// The best ready request of `class` (see [`PgStore::next_ready`]): a
/// query of parameters `$1` now, `$2` the filter's archive id, `$3` the
/// ids to skip. A text per action (a literal), so that each plan seeks
/// its own index.
fn class_sql(class: LeaseClass) -> String {
    let head = |by_action: &str| {
        format!(
            "(SELECT {REQUEST_COLUMNS} FROM hsm_requests AS r
                WHERE state = 'waiting' {by_action} AND not_before_ns <= $1
                AND ($2::BIGINT IS NULL OR archive_id IN (0, $2))
                AND id <> ALL($3)
                AND NOT EXISTS (SELECT 1 FROM hsm_requests AS busy
                    WHERE busy.fid = r.fid AND busy.state = 'started')
             ORDER BY rank, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        )
    };
    let by_action = |action: Action| head(&format!("AND action = '{action}'"));
    match class {
        LeaseClass::Any => format!("SELECT * FROM {} AS head", head("")),
        LeaseClass::Archives => format!("SELECT * FROM {} AS head", by_action(Action::Archive)),
        LeaseClass::FirstClass => {
            // Each head a subquery: a locking clause may not stand in a
            // branch of a UNION itself.
            let heads: Vec<String> = [Action::Restore, Action::Remove]
                .iter()
                .map(|&action| format!("SELECT * FROM {} AS {action}", by_action(action)))
                .collect();
            format!(
                "SELECT * FROM ({}) AS heads ORDER BY rank, id LIMIT 1",
                heads.join(" UNION ALL ")
            )
        }
    }
}

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
    fn request_for_update(
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
        Ok(self
            .write_request(tx, old, change, now, false)?
            .expect("an unguarded update changes its row"))
    }

    /// [`PgStore::update_request`], and with `file_idle` only if, in this
    /// statement's snapshot, no request of the file is started: `None`
    /// (nothing written) if one is.
    fn write_request(
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

    fn catalog_query(
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

    fn catalog_from_row(&self, row: &postgres::Row) -> Result<CatalogEntry, StoreError> {
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
    fn write_catalog(
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

    fn server_now(&self, client: &mut impl Db) -> Result<i64, StoreError> {
        Ok(client
            .query_one(&format!("SELECT {NOW_SQL}"), &[])
            .map_err(|e| self.err(e))?
            .get(0))
    }

    fn policy_in(&self, client: &mut impl Db) -> Result<Policy, StoreError> {
        Ok(self.now_and_meta(client)?.1)
    }

    /// The server's clock (the transaction's one reading: see the module's
    /// "Clock"), the policy and [`SINCE_ARCHIVE`], in one statement.
    fn now_and_meta(&self, client: &mut impl Db) -> Result<(i64, Policy, i64), StoreError> {
        let (now, policy, since_archive, _) = self.now_meta_expired(client)?;
        Ok((now, policy, since_archive))
    }

    /// [`PgStore::now_and_meta`], and whether, by that clock, some lease
    /// has expired.
    fn now_meta_expired(
        &self,
        client: &mut impl Db,
    ) -> Result<(i64, Policy, i64, bool), StoreError> {
        let keys: Vec<&str> = POLICY_KEYS
            .iter()
            .chain([&SINCE_ARCHIVE])
            .copied()
            .collect();
        let row = client
            .query_one(
                &format!(
                    "WITH clock AS MATERIALIZED (SELECT {NOW_SQL} AS ns)
                     SELECT clock.ns,
                        array(SELECT m.value
                            FROM unnest($1::TEXT[]) WITH ORDINALITY AS k(key, n)
                            LEFT JOIN meta AS m ON m.key = k.key ORDER BY k.n),
                        EXISTS (SELECT 1 FROM hsm_requests
                            WHERE state = 'started' AND lease_expires_ns < clock.ns)
                     FROM clock"
                ),
                &[&keys],
            )
            .map_err(|e| self.err(e))?;
        let values: Vec<Option<i64>> = row.get(1);
        let mut v = [0i64; 8];
        for ((slot, key), value) in v.iter_mut().zip(&keys).zip(values) {
            *slot = value.ok_or_else(|| self.corrupt(format!("meta has no {key}")))?;
        }
        let policy = Policy {
            head_start_restore_ms: v[0],
            head_start_remove_ms: v[1],
            head_start_archive_ms: v[2],
            max_attempts: v[3].clamp(1, u32::MAX as i64) as u32,
            backoff_base_ms: v[4].max(0) as u64,
            backoff_max_ms: v[5].max(0) as u64,
            restore_share: v[6].clamp(0, u32::MAX as i64) as u32,
        };
        Ok((row.get(0), policy, v[7], row.get(2)))
    }

    /// The leased request as it is now, locked, if `lease` is still its
    /// current lease; [`StoreError::StaleLease`] otherwise.
    /// With the server's clock, as [`PgStore::request_for_update`].
    fn check_lease(
        &self,
        tx: &mut Tx<'_>,
        lease: &Lease,
    ) -> Result<(RequestRecord, i64), StoreError> {
        let (current, now) = self.request_for_update(tx, lease.id())?;
        if !rules::lease_is_current(&current, lease) {
            return Err(StoreError::StaleLease {
                path: self.location_path(),
                id: lease.id(),
                attempt: lease.attempt,
                current: current.attempts,
                state: current.state,
            });
        }
        Ok((current, now))
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

    /// The next request to lease, by the weighted order
    /// ([`rules::lease_order`]), locked (`SKIP LOCKED`: another leaser's
    /// candidates are stepped over, never waited for), not one of
    /// `skipped`. "Ready": waiting, back-off over, the filter's archive,
    /// and no started request of its file in this snapshot. With it,
    /// whether it took its file's advisory lock.
    ///
    /// One statement: each class in turn, the next one looked at only when
    /// the ones before it found nothing. Of a class of several actions
    /// (restores and removes), each one's best is locked and the better of
    /// them (smaller `(rank, id)`, [`rules::better`]) taken.
    fn next_ready(
        &self,
        tx: &mut Tx<'_>,
        now: i64,
        filter: &LeaseFilter,
        policy: &Policy,
        since_archive: i64,
        skipped: &[i64],
    ) -> Result<Option<(RequestRecord, bool)>, StoreError> {
        let classes = rules::lease_order(policy, since_archive);
        let sql = match classes {
            [class] => class_sql(*class),
            _ => {
                // Each class a materialized query, run only if none of the
                // classes before it found one (its filter is a constant:
                // the planner checks it once, before running the query).
                let mut ctes = Vec::new();
                for (i, class) in classes.iter().enumerate() {
                    let before: Vec<String> = (0..i)
                        .map(|j| format!("AND NOT EXISTS (SELECT 1 FROM class{j})"))
                        .collect();
                    ctes.push(format!(
                        "class{i} AS MATERIALIZED (SELECT * FROM ({}) AS found WHERE TRUE {})",
                        class_sql(*class),
                        before.join(" ")
                    ));
                }
                let all: Vec<String> = (0..classes.len())
                    .map(|i| format!("SELECT * FROM class{i}"))
                    .collect();
                format!("WITH {} {}", ctes.join(", "), all.join(" UNION ALL "))
            }
        };
        // The one request found takes its file's advisory lock for this
        // transaction, without waiting (key: `SCHEMA/FID`). Not taken:
        // another lease has it. Taken: the caller starts the request only
        // if, in a snapshot taken after this statement (its update's), no
        // request of the file is started: another lease may have had the
        // lock and committed.
        let sql = format!(
            "SELECT found.*, pg_try_advisory_xact_lock($4, hashtext($5 || '/' || found.fid))
             FROM ({sql}) AS found"
        );
        let archive_id = filter.archive_id.map(i64::from);
        let rows = tx
            .tx
            .query(
                &sql,
                &[
                    &now,
                    &archive_id,
                    &skipped,
                    &FILE_LOCK_CLASS,
                    &self.schema(),
                ],
            )
            .map_err(|e| self.err(e))?;
        rows.first()
            .map(|row| Ok((self.request_from_row(row)?, row.get(20))))
            .transpose()
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
        let fids: Vec<&str> = batch.iter().map(|r| r.fid.as_str()).collect();
        self.write(|tx| {
            // Enqueuers of overlapping files wait on each other's
            // uncommitted inserts (the live-request index), each in its
            // batch's order: a deadlock cycle, found only after the
            // server's deadlock_timeout. Every enqueue first takes its
            // files' enqueue locks, in one global order, and waits there.
            tx.tx
                .execute(
                    "SELECT pg_advisory_xact_lock($1, key) FROM (SELECT DISTINCT hashtext(fid) \
                     AS key FROM unnest($2::TEXT[]) AS fid) AS keys ORDER BY key",
                    &[&ENQUEUE_LOCK_CLASS, &fids],
                )
                .map_err(|e| self.err(e))?;
            let (now, policy, _) = self.now_and_meta(&mut tx.tx)?;
            if batch.len() > 1
                && let Some(enqueued) = self.enqueue_batch(tx, &policy, batch, now)?
            {
                return Ok(enqueued);
            }
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
            let (now, policy, mut since_archive, expired) = self.now_meta_expired(&mut tx.tx)?;
            // A lease that expires after this look is returned by the next.
            if expired {
                self.expire_in(tx, now)?;
            }
            let expires_ns = now.saturating_add(duration_ns(lease));
            let mut leases: Vec<Lease> = Vec::with_capacity(max.min(1024));
            let mut skipped: Vec<i64> = Vec::new();
            while leases.len() < max && skipped.len() < SKIPS_MAX {
                let Some((old, file_locked)) =
                    self.next_ready(tx, now, filter, &policy, since_archive, &skipped)?
                else {
                    break;
                };
                if !file_locked {
                    skipped.push(old.id.0);
                    continue;
                }
                let change = rules::started(&old, worker, expires_ns);
                let Some(request) = self.write_request(tx, &old, change, now, true)? else {
                    skipped.push(old.id.0);
                    continue;
                };
                since_archive = rules::since_archive_after(since_archive, old.action);
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
            let (_, now) = self.check_lease(tx, lease)?;
            // The lease's end is bookkeeping, not a state: no event.
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
            let (old, now) = self.check_lease(tx, lease)?;
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
            let (_, policy, _) = self.now_and_meta(&mut tx.tx)?;
            let (old, now) = self.check_lease(tx, lease)?;
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
            let (old, now) = self.request_for_update(tx, id)?;
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

    fn set_catalog_stamp(
        &self,
        fid: &str,
        state: CatalogState,
        ino: u64,
        ctime_ns: i64,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            tx.tx
                .execute(
                    "UPDATE hsm_catalog SET ino = $1, ctime_ns = $2 WHERE fid = $3 AND state = $4",
                    &[&(ino as i64), &ctime_ns, &fid, &state.as_str()],
                )
                .map(|n| n == 1)
                .map_err(|e| self.err(e))
        })
    }
}
