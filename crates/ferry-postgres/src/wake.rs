//! Waking idle workers: LISTEN/NOTIFY instead of polling.
//!
//! Every write with an event sends `pg_notify('ferry_events', schema)`,
//! which PostgreSQL delivers at commit. A [`WorkWaiter`] listens on its own
//! connection from the moment it is made, so a commit that comes between a
//! worker's empty lease and its wait is already queued on that connection:
//! the wait returns at once, and no wake-up is ever lost.
//!
//! Some work becomes ready without any write: a back-off ends, a lease
//! expires. The waiter asks the server when the next of those is due and
//! waits no longer than that, so an idle worker wakes exactly when there
//! may be work and otherwise sleeps in the kernel, however long.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry::store::StoreError;
use postgres::fallible_iterator::FallibleIterator;

use crate::conn::{Db, PgConn};
use crate::queue::NOW_SQL;
use crate::{CHANNEL, PgStore, server_err};

/// See the module documentation; made by [`PgStore::work_waiter`].
pub struct WorkWaiter {
    /// Its own connection (a LISTEN belongs to one), with its statements.
    conn: PgConn,
    schema: String,
    location: PathBuf,
}

impl std::fmt::Debug for WorkWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkWaiter")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// A waiter with a connection of its own, listening from now on: make
    /// it before the first lease, then [`WorkWaiter::wait`] after each
    /// lease that found nothing.
    pub fn work_waiter(&self) -> Result<WorkWaiter, StoreError> {
        let location = self.location_path();
        let mut conn = PgConn::connect(self.config()).map_err(|e| server_err(&location, e))?;
        conn.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(|e| server_err(&location, e))?;
        Ok(WorkWaiter {
            conn,
            schema: self.schema().to_owned(),
            location,
        })
    }
}

impl WorkWaiter {
    /// Blocks until this store committed a write since the last call (or
    /// since the waiter was made), until a back-off or lease ends, or at
    /// most `timeout`. Returns whether a commit woke it.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, StoreError> {
        let deadline = Instant::now() + timeout;
        // Commits already delivered: no need to ask the server anything.
        if self.drain()? {
            return Ok(true);
        }
        let due = self.next_due()?;
        let until = due.map_or(deadline, |d| deadline.min(Instant::now() + d));
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let got = self
                .conn
                .client
                .notifications()
                .timeout_iter(left)
                .next()
                .map_err(|e| server_err(&self.location, e))?;
            match got {
                None => return Ok(false),
                // Another store in the same database: not ours.
                Some(n) if n.payload() != self.schema => {}
                Some(_) => {
                    self.drain()?;
                    return Ok(true);
                }
            }
        }
    }

    /// Takes every notification already delivered; whether one was ours.
    fn drain(&mut self) -> Result<bool, StoreError> {
        let mut ours = false;
        let mut pending = self.conn.client.notifications();
        let mut iter = pending.iter();
        while let Some(n) = iter.next().map_err(|e| server_err(&self.location, e))? {
            ours |= n.payload() == self.schema;
        }
        Ok(ours)
    }

    /// How long until the next back-off or lease ends (by the server's
    /// clock, which set them), if any is pending.
    fn next_due(&mut self) -> Result<Option<Duration>, StoreError> {
        let row = self
            .conn
            .query_one(
                &format!(
                    "WITH now AS (SELECT {NOW_SQL} AS ns)
                     SELECT least(
                        (SELECT min(not_before_ns) FROM hsm_requests, now
                            WHERE state = 'waiting' AND not_before_ns > now.ns),
                        (SELECT min(lease_expires_ns) FROM hsm_requests
                            WHERE state = 'started')) - (SELECT ns FROM now)"
                ),
                &[],
            )
            .map_err(|e| server_err(&self.location, e))?;
        // Expiry is `lease_expires_ns < now`: one microsecond past it.
        Ok(row
            .get::<_, Option<i64>>(0)
            .map(|ns| Duration::from_nanos(ns.max(0) as u64) + Duration::from_micros(1)))
    }
}
