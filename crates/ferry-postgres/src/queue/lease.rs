//! What a lease reads and decides: the server's clock, the policy, expired
//! leases, the next ready requests in the weighted order, and one
//! request's enqueue.

use super::*;

impl PgStore {
    pub(super) fn server_now(&self, client: &mut impl Db) -> Result<i64, StoreError> {
        Ok(client
            .query_one(&format!("SELECT {NOW_SQL}"), &[])
            .map_err(|e| self.err(e))?
            .get(0))
    }

    pub(super) fn policy_in(&self, client: &mut impl Db) -> Result<Policy, StoreError> {
        Ok(self.now_and_meta(client)?.1)
    }

    /// The server's clock (the transaction's one reading: see the module's
    /// "Clock"), the policy and [`SINCE_ARCHIVE`], in one statement.
    pub(super) fn now_and_meta(
        &self,
        client: &mut impl Db,
    ) -> Result<(i64, Policy, i64), StoreError> {
        let (now, policy, since_archive, _) = self.now_meta_expired(client)?;
        Ok((now, policy, since_archive))
    }

    /// [`PgStore::now_and_meta`], and whether, by that clock, some lease
    /// has expired.
    pub(super) fn now_meta_expired(
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
    pub(super) fn check_lease(
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
    pub(super) fn expire_in(&self, tx: &mut Tx<'_>, now: i64) -> Result<usize, StoreError> {
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
    /// `skipped`. "Ready": waiting, back-off over, the filter's archive
    /// and actions, and no started request of its file in this snapshot. With it,
    /// whether it took its file's advisory lock.
    ///
    /// One statement: each class in turn, the next one looked at only when
    /// the ones before it found nothing. Of a class of several actions
    /// (restores and removes), each one's best is locked and the better of
    /// them (smaller `(rank, id)`, [`rules::better`]) taken.
    pub(super) fn next_ready(
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
        let actions: Option<Vec<&str>> = filter
            .actions
            .as_ref()
            .map(|actions| actions.iter().map(|a| a.as_str()).collect());
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
                    &actions,
                ],
            )
            .map_err(|e| self.err(e))?;
        rows.first()
            .map(|row| Ok((self.request_from_row(row)?, row.get(20))))
            .transpose()
    }

    pub(super) fn enqueue_one(
        &self,
        tx: &mut Tx<'_>,
        policy: &Policy,
        request: &NewRequest,
        now: i64,
    ) -> Result<Enqueued, StoreError> {
        let mut superseded = false;
        for _ in 0..ENQUEUE_RACES_MAX {
            if request.action == Action::Remove
                && let Some(archive) = self.live_request(tx, &request.fid, Action::Archive)?
                && archive.state == RequestState::Waiting
            {
                self.update_request(tx, &archive, rules::superseded(&archive), now)?;
                superseded = true;
            }
            if let Some(live) = self.live_request(tx, &request.fid, request.action)? {
                let joined = self.update_request(tx, &live, rules::joined(&live), now)?;
                return Ok(Enqueued::Joined {
                    id: joined.id,
                    waiters: joined.waiters,
                });
            }
            let catalog = self.catalog_query(&mut tx.tx, &request.fid, false)?;
            if let Some(reason) = rules::enqueue_noop(request, catalog.as_ref(), superseded) {
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
