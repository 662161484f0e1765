//! Enqueue of a batch in a few statements, whatever its size: the same
//! decisions as [`PgStore::enqueue_one`] for each request in turn, taken in
//! memory from what one statement read and locked, then written with one
//! update, one insert and the events in the batch's order.
//!
//! It runs in a savepoint. When the insert meets a live request of the
//! same file and action that a concurrent enqueue committed after the read
//! (or a step the one-by-one path would refuse), it rolls back to the
//! savepoint and the caller takes the one-by-one path, which handles that
//! race (and says why it refuses).

use std::collections::HashMap;

use ferry::store::StoreError;
use ferry_hsm::rules::{self, Transition};
use ferry_hsm::{Action, Enqueued, NewRequest, Policy, RequestId, RequestRecord, RequestState};

use super::{CATALOG_COLUMNS, REQUEST_COLUMNS, path_bytes};
use crate::conn::Db;
use crate::{NewEvent, PgStore, Tx};

const SAVEPOINT: &str = "ferry_enqueue_batch";

/// A request the batch looks at or writes: as this transaction read and
/// locked it (`None`: the batch inserts it), and as it is now.
struct Slot {
    read: Option<RequestRecord>,
    now: RequestRecord,
    changed: bool,
}

enum Outcome {
    Queued(usize),
    Joined(usize, u32),
    Noop(String),
}

struct SlotEvent {
    slot: usize,
    name: String,
    context: String,
}

/// The batch's view of the queue, as the one-by-one path would see it.
struct Batch<'r> {
    now: i64,
    /// Live requests read and locked but not looked at yet, by file and
    /// action (parsed when first looked at, as the one-by-one path reads).
    unread: HashMap<(String, String), postgres::Row>,
    slots: Vec<Slot>,
    live: HashMap<(&'r str, Action), usize>,
    events: Vec<SlotEvent>,
}

impl<'r> Batch<'r> {
    /// The live request of `fid` and `action`, as it is now.
    fn live(
        &mut self,
        store: &PgStore,
        fid: &'r str,
        action: Action,
    ) -> Result<Option<usize>, StoreError> {
        if let Some(&slot) = self.live.get(&(fid, action)) {
            return Ok(Some(slot));
        }
        let Some(row) = self
            .unread
            .remove(&(fid.to_owned(), action.as_str().to_owned()))
        else {
            return Ok(None);
        };
        let record = store.request_from_row(&row)?;
        self.slots.push(Slot {
            read: Some(record.clone()),
            now: record,
            changed: false,
        });
        let slot = self.slots.len() - 1;
        self.live.insert((fid, action), slot);
        Ok(Some(slot))
    }

    /// [`PgStore::update_request`] in memory; false: the transition is
    /// refused (the one-by-one path says so).
    fn apply(&mut self, slot: usize, change: Transition) -> bool {
        let Transition {
            mut new,
            event,
            context,
        } = change;
        let old = &self.slots[slot].now;
        assert_eq!(old.id, new.id);
        new.updated_ns = self.now;
        if !rules::transition_allowed(old.state, new.state) {
            return false;
        }
        let context = rules::event_context(context, &new);
        self.events.push(SlotEvent {
            slot,
            name: format!("request.{event}"),
            context: context.to_string(),
        });
        self.slots[slot].now = new;
        self.slots[slot].changed = true;
        true
    }
}

fn is_live(state: RequestState) -> bool {
    matches!(state, RequestState::Waiting | RequestState::Started)
}

impl PgStore {
    /// The batch enqueued, or `None` (nothing written) when the caller
    /// must enqueue it one by one: see the module's documentation.
    pub(super) fn enqueue_batch(
        &self,
        tx: &mut Tx<'_>,
        policy: &Policy,
        batch: &[NewRequest],
        now: i64,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        tx.tx
            .tx
            .batch_execute(&format!("SAVEPOINT {SAVEPOINT}"))
            .map_err(|e| self.err(e))?;
        match self.enqueue_in_savepoint(tx, policy, batch, now)? {
            Some(enqueued) => Ok(Some(enqueued)),
            None => {
                tx.tx
                    .tx
                    .batch_execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"))
                    .map_err(|e| self.err(e))?;
                self.count_enqueue_fallback();
                Ok(None)
            }
        }
    }

    fn enqueue_in_savepoint(
        &self,
        tx: &mut Tx<'_>,
        policy: &Policy,
        batch: &[NewRequest],
        now: i64,
    ) -> Result<Option<Vec<Enqueued>>, StoreError> {
        // Every live request the one-by-one path would read, locked.
        let mut fids: Vec<&str> = Vec::with_capacity(batch.len());
        let mut actions: Vec<&str> = Vec::with_capacity(batch.len());
        for request in batch {
            fids.push(&request.fid);
            actions.push(request.action.as_str());
            if request.action == Action::Remove {
                fids.push(&request.fid);
                actions.push(Action::Archive.as_str());
            }
        }
        let rows = tx
            .tx
            .query(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM hsm_requests
                     WHERE state IN ('waiting', 'started')
                        AND (fid, action) IN (SELECT * FROM unnest($1::TEXT[], $2::TEXT[]))
                     ORDER BY id FOR UPDATE"
                ),
                &[&fids, &actions],
            )
            .map_err(|e| self.err(e))?;
        let unread = rows
            .into_iter()
            .map(|row| ((row.get(6), row.get(1)), row))
            .collect();
        // The catalog, unlocked as the one-by-one path reads it.
        let catalog: HashMap<String, postgres::Row> = tx
            .tx
            .query(
                &format!("SELECT {CATALOG_COLUMNS} FROM hsm_catalog WHERE fid = ANY($1)"),
                &[&fids],
            )
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|row| (row.get(0), row))
            .collect();

        let mut b = Batch {
            now,
            unread,
            slots: Vec::new(),
            live: HashMap::new(),
            events: Vec::new(),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch {
            let fid = request.fid.as_str();
            let mut superseded = false;
            if request.action == Action::Remove
                && let Some(slot) = b.live(self, fid, Action::Archive)?
                && b.slots[slot].now.state == RequestState::Waiting
            {
                if !b.apply(slot, rules::superseded(&b.slots[slot].now)) {
                    return Ok(None);
                }
                superseded = true;
                if !is_live(b.slots[slot].now.state) {
                    b.live.remove(&(fid, Action::Archive));
                }
            }
            if let Some(slot) = b.live(self, fid, request.action)? {
                if !b.apply(slot, rules::joined(&b.slots[slot].now)) {
                    return Ok(None);
                }
                if !is_live(b.slots[slot].now.state) {
                    b.live.remove(&(fid, request.action));
                }
                outcomes.push(Outcome::Joined(slot, b.slots[slot].now.waiters));
                continue;
            }
            let entry = catalog
                .get(fid)
                .map(|row| self.catalog_from_row(row))
                .transpose()?;
            if let Some(reason) = rules::enqueue_noop(request, entry.as_ref(), superseded) {
                outcomes.push(Outcome::Noop(reason));
                continue;
            }
            let Transition {
                mut new,
                event,
                context,
            } = rules::enqueued(policy, request, now);
            assert_eq!(new.state, RequestState::Waiting, "requests start waiting");
            new.updated_ns = now;
            let context = rules::event_context(context, &new);
            b.slots.push(Slot {
                read: None,
                now: new,
                changed: true,
            });
            let slot = b.slots.len() - 1;
            b.events.push(SlotEvent {
                slot,
                name: format!("request.{event}"),
                context: context.to_string(),
            });
            b.live.insert((fid, request.action), slot);
            outcomes.push(Outcome::Queued(slot));
        }

        self.update_read(tx, &b.slots, now)?;
        let Some(ids) = self.insert_new(tx, &b.slots, now)? else {
            return Ok(None);
        };
        let mut ids = ids.into_iter();
        let id_of: Vec<i64> = b
            .slots
            .iter()
            .map(|slot| match &slot.read {
                Some(read) => read.id.0,
                None => ids.next().expect("an id for each inserted request"),
            })
            .collect();
        for event in b.events {
            tx.event(NewEvent {
                time_ns: now,
                transfer: None,
                entry: None,
                request: Some(id_of[event.slot]),
                name: event.name,
                context: event.context,
            })?;
        }
        Ok(Some(
            outcomes
                .into_iter()
                .map(|outcome| match outcome {
                    Outcome::Queued(slot) => Enqueued::Queued {
                        id: RequestId(id_of[slot]),
                    },
                    Outcome::Joined(slot, waiters) => Enqueued::Joined {
                        id: RequestId(id_of[slot]),
                        waiters,
                    },
                    Outcome::Noop(reason) => Enqueued::Noop { reason },
                })
                .collect(),
        ))
    }

    /// Writes the requests read and changed, with the guard of
    /// [`PgStore::update_request`] on what was read, in one statement.
    fn update_read(&self, tx: &mut Tx<'_>, slots: &[Slot], now: i64) -> Result<(), StoreError> {
        let changed: Vec<(&RequestRecord, &RequestRecord)> = slots
            .iter()
            .filter(|slot| slot.changed)
            .filter_map(|slot| slot.read.as_ref().map(|read| (read, &slot.now)))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let id: Vec<i64> = changed.iter().map(|(old, _)| old.id.0).collect();
        let state: Vec<&str> = changed.iter().map(|(_, new)| new.state.as_str()).collect();
        let attempts: Vec<i64> = changed
            .iter()
            .map(|(_, new)| i64::from(new.attempts))
            .collect();
        let not_before: Vec<i64> = changed.iter().map(|(_, new)| new.not_before_ns).collect();
        let holder: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, new)| new.lease_holder.as_deref())
            .collect();
        let expires: Vec<Option<i64>> = changed
            .iter()
            .map(|(_, new)| new.lease_expires_ns)
            .collect();
        let waiters: Vec<i64> = changed
            .iter()
            .map(|(_, new)| i64::from(new.waiters))
            .collect();
        let error: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, new)| new.error.as_deref())
            .collect();
        let old_state: Vec<&str> = changed.iter().map(|(old, _)| old.state.as_str()).collect();
        let old_attempts: Vec<i64> = changed
            .iter()
            .map(|(old, _)| i64::from(old.attempts))
            .collect();
        let written = tx
            .tx
            .execute(
                "UPDATE hsm_requests AS h SET state = u.state, attempts = u.attempts,
                    not_before_ns = u.not_before_ns, lease_holder = u.lease_holder,
                    lease_expires_ns = u.lease_expires_ns, waiters = u.waiters,
                    error = u.error, updated_ns = $1
                 FROM unnest($2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[],
                    $7::BIGINT[], $8::BIGINT[], $9::TEXT[], $10::TEXT[], $11::BIGINT[])
                    AS u(id, state, attempts, not_before_ns, lease_holder, lease_expires_ns,
                         waiters, error, old_state, old_attempts)
                 WHERE h.id = u.id AND h.state = u.old_state AND h.attempts = u.old_attempts",
                &[
                    &now,
                    &id,
                    &state,
                    &attempts,
                    &not_before,
                    &holder,
                    &expires,
                    &waiters,
                    &error,
                    &old_state,
                    &old_attempts,
                ],
            )
            .map_err(|e| self.err(e))?;
        // We read them FOR UPDATE in this transaction: nobody changed them.
        assert_eq!(
            written,
            changed.len() as u64,
            "requests changed under our lock"
        );
        Ok(())
    }

    /// Inserts the batch's new requests, in its order (their ids in that
    /// order too), as they are after the whole batch. Their ids, or `None`
    /// when one met a live request of its file and action that a
    /// concurrent enqueue committed.
    fn insert_new(
        &self,
        tx: &mut Tx<'_>,
        slots: &[Slot],
        now: i64,
    ) -> Result<Option<Vec<i64>>, StoreError> {
        let new: Vec<&RequestRecord> = slots
            .iter()
            .filter(|slot| slot.read.is_none())
            .map(|slot| &slot.now)
            .collect();
        if new.is_empty() {
            return Ok(Some(Vec::new()));
        }
        for r in &new {
            // Enqueue, join and supersede leave these as a new request has them.
            assert!(r.attempts == 0 && r.lease_holder.is_none() && r.lease_expires_ns.is_none());
        }
        let col = |f: fn(&RequestRecord) -> i64| new.iter().map(|r| f(r)).collect::<Vec<i64>>();
        let action: Vec<&str> = new.iter().map(|r| r.action.as_str()).collect();
        let fsname: Vec<&str> = new.iter().map(|r| r.fsname.as_str()).collect();
        let archive_id = col(|r| i64::from(r.archive_id));
        let flags = col(|r| r.flags as i64);
        let data: Vec<&[u8]> = new.iter().map(|r| r.data.as_slice()).collect();
        let fid: Vec<&str> = new.iter().map(|r| r.fid.as_str()).collect();
        let path: Vec<Option<&[u8]>> = new.iter().map(|r| path_bytes(&r.path)).collect();
        let priority = col(|r| r.priority_ms);
        let rank = col(|r| r.rank);
        let state: Vec<&str> = new.iter().map(|r| r.state.as_str()).collect();
        let max_attempts = col(|r| i64::from(r.max_attempts));
        let not_before = col(|r| r.not_before_ns);
        let waiters = col(|r| i64::from(r.waiters));
        let error: Vec<Option<&str>> = new.iter().map(|r| r.error.as_deref()).collect();
        let created = col(|r| r.created_ns);
        let rows = tx
            .tx
            .query(
                "WITH input AS MATERIALIZED (
                    SELECT nextval(pg_get_serial_sequence('hsm_requests', 'id')) AS id, u.*
                    FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::BIGINT[], $5::BYTEA[],
                        $6::TEXT[], $7::BYTEA[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[],
                        $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], $14::TEXT[], $15::BIGINT[])
                        WITH ORDINALITY AS u(action, fsname, archive_id, flags, data, fid, path,
                            priority_ms, rank, state, max_attempts, not_before_ns, waiters,
                            error, created_ns, n)
                 ), inserted AS (
                    INSERT INTO hsm_requests (id, action, fsname, archive_id, flags, data, fid,
                        path, priority_ms, rank, state, attempts, max_attempts, not_before_ns,
                        waiters, error, created_ns, updated_ns)
                    SELECT id, action, fsname, archive_id, flags, data, fid, path, priority_ms,
                        rank, state, 0, max_attempts, not_before_ns, waiters, error, created_ns,
                        $16
                    FROM input ORDER BY n
                    ON CONFLICT (fid, action) WHERE state IN ('waiting', 'started') DO NOTHING
                    RETURNING id
                 )
                 SELECT input.id, inserted.id IS NOT NULL
                 FROM input LEFT JOIN inserted USING (id) ORDER BY input.n",
                &[
                    &action,
                    &fsname,
                    &archive_id,
                    &flags,
                    &data,
                    &fid,
                    &path,
                    &priority,
                    &rank,
                    &state,
                    &max_attempts,
                    &not_before,
                    &waiters,
                    &error,
                    &created,
                    &now,
                ],
            )
            .map_err(|e| self.err(e))?;
        if rows.iter().any(|row| !row.get::<_, bool>(1)) {
            return Ok(None);
        }
        Ok(Some(rows.iter().map(|row| row.get(0)).collect()))
    }
}
