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
mod lease;
mod rows;

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
                AND ($6::TEXT[] IS NULL OR action = ANY($6))
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
