//! `--bwlimit`: the bytes a run writes, paced to a rate shared by all its
//! workers, and changed while it runs by a `transfer.limited` event
//! (`ferry limit NAME RATE`), which the workers look for at most every
//! [`POLL`].
//!
//! Pacing is by account, not by buckets: since the rate was last set,
//! `bytes` may not run ahead of `rate × elapsed`. A worker that wrote a
//! chunk waits, in slices of at most [`SLICE`], until the account allows
//! it; a cancel or a new rate ends the wait early. A daemon's node-wide
//! limit is a [`SharedPace`] every run of the daemon keeps to as well.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::model::TransferId;
use crate::store::rules::EVENT_LIMITED;
use crate::store::{EventFilter, Store};

/// How often a new rate is looked for in the store.
pub const POLL: Duration = Duration::from_millis(250);
/// The longest single sleep of a paced worker.
const SLICE: Duration = Duration::from_millis(50);
/// Chunks are cut to what a quarter second at the rate allows (at least
/// this), so that the pace is smooth rather than a burst and a long pause.
const CHUNK_BYTES_MIN: u64 = 64 << 10;

struct Account {
    since: Instant,
    bytes: u64,
}

impl Account {
    fn new() -> Account {
        Account {
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Books `bytes`; returns when the rate allows them.
    fn book(&mut self, bytes: u64, rate: u64) -> Instant {
        self.bytes += bytes;
        self.since + Duration::from_secs_f64(self.bytes as f64 / rate as f64)
    }
}

/// A rate shared by every run that holds it: the daemon's node-wide limit
/// (`ferry serve --bwlimit`), over and above each transfer's own. Paced by
/// account, as a run's own limit is, from when the pace was made.
pub struct SharedPace {
    /// Bytes per second, more than 0.
    rate: u64,
    account: Mutex<Account>,
}

impl SharedPace {
    pub fn new(rate: u64) -> SharedPace {
        assert!(rate > 0, "a shared pace has a rate");
        SharedPace {
            rate,
            account: Mutex::new(Account::new()),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Books `bytes`; returns when they are due. An idle stretch gives no
    /// credit beyond one second: the account restarts when it is behind
    /// now by more, so that a daemon idle for an hour does not burst.
    fn book(&self, bytes: u64) -> Instant {
        let mut account = self.account.lock().expect("shared pace poisoned");
        let now = Instant::now();
        let due = account.since + Duration::from_secs_f64(account.bytes as f64 / self.rate as f64);
        if due + IDLE_CREDIT < now {
            *account = Account::new();
        }
        account.book(bytes, self.rate)
    }
}

/// The most a shared pace lets an idle stretch be caught up.
const IDLE_CREDIT: Duration = Duration::from_secs(1);

/// A run's shared pace.
pub struct Throttle<'a> {
    store: &'a dyn Store,
    id: TransferId,
    /// Bytes per second; 0 is no limit.
    rate: AtomicU64,
    account: Mutex<Account>,
    /// The last `transfer.limited` event seen, and when the store was asked.
    poll: Mutex<(u64, Instant)>,
    /// The node-wide rate this run shares with the daemon's others.
    shared: Option<std::sync::Arc<SharedPace>>,
}

impl<'a> Throttle<'a> {
    /// `rate`: bytes per second, `None` for none; `after`: the newest event
    /// already taken into account (a later `transfer.limited` changes it).
    /// `shared`: a node-wide pace this run also keeps to.
    pub fn new(
        store: &'a dyn Store,
        id: TransferId,
        rate: Option<u64>,
        after: u64,
        shared: Option<std::sync::Arc<SharedPace>>,
    ) -> Self {
        Throttle {
            store,
            id,
            rate: AtomicU64::new(rate.unwrap_or(0)),
            account: Mutex::new(Account::new()),
            poll: Mutex::new((after, Instant::now())),
            shared,
        }
    }

    /// The bytes of the next chunk: `want`, cut for a smooth pace (a
    /// quarter second at the lower of the two rates).
    pub fn chunk(&self, want: u64) -> u64 {
        let own = self.rate.load(Ordering::Relaxed);
        let shared = self.shared.as_ref().map_or(0, |s| s.rate());
        match [own, shared].into_iter().filter(|&r| r > 0).min() {
            None => want,
            Some(rate) => want.min((rate / 4).max(CHUNK_BYTES_MIN)),
        }
    }

    /// After `bytes` were written: waits until the run's rate allows them,
    /// then until the node-wide one does.
    pub fn pace(&self, bytes: u64, cancel: &AtomicBool) {
        self.look_for_new_rate();
        let rate = self.rate.load(Ordering::Relaxed);
        if rate > 0 {
            let due = self
                .account
                .lock()
                .expect("throttle poisoned")
                .book(bytes, rate);
            self.wait_until(due, cancel, Some(rate));
        }
        if let Some(shared) = &self.shared {
            self.wait_until(shared.book(bytes), cancel, None);
        }
    }

    /// Sleeps until `due`, in slices; a cancel, or a new rate of the run's
    /// own when `rate_then` is given, ends the wait early.
    fn wait_until(&self, due: Instant, cancel: &AtomicBool, rate_then: Option<u64>) {
        loop {
            let now = Instant::now();
            if now >= due || cancel.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep((due - now).min(SLICE));
            self.look_for_new_rate();
            if rate_then.is_some_and(|r| self.rate.load(Ordering::Relaxed) != r) {
                return;
            }
        }
    }

    /// Takes the newest `transfer.limited` event, when [`POLL`] has passed
    /// since the store was last asked (one worker asks; the others go on).
    fn look_for_new_rate(&self) {
        let Ok(mut poll) = self.poll.try_lock() else {
            return;
        };
        if poll.1.elapsed() < POLL {
            return;
        }
        poll.1 = Instant::now();
        let filter = EventFilter {
            transfer: Some(self.id),
            kind: Some(EVENT_LIMITED.into()),
            ..Default::default()
        };
        // A store that cannot answer now keeps the rate; the run's own
        // writes will say what is wrong with it.
        // The newest event is read first: what is found ends at it or later,
        // and with nothing found the next look starts there. Without that,
        // every look read the run's whole log again (its `file.*` events,
        // two per file): 95 % of a 10,000-file copy's instructions.
        let Ok(newest) = self.store.last_seq() else {
            return;
        };
        let Ok(events) = self.store.events_since(poll.0, &filter, 64) else {
            return;
        };
        let Some(last) = events.last() else {
            poll.0 = poll.0.max(newest);
            return;
        };
        poll.0 = last.seq;
        let rate = last.context["bytes_per_second"].as_u64().unwrap_or(0);
        self.rate.store(rate, Ordering::Relaxed);
        *self.account.lock().expect("throttle poisoned") = Account::new();
    }
}

/// A rate as people write it: bytes per second, with an optional binary
/// suffix (`50M` is 50 MiB/s; K, M, G, T) and an optional `/s`; `0` or
/// `none` is no limit (`None`).
pub fn parse_rate(text: &str) -> Result<Option<u64>, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (digits, shift) = match t.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'B' => 0,
                _ => return Err(format!("{text:?}: the suffix is K, M, G or T (binary)")),
            };
            (&t[..at], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate: write bytes per second, as 50M or 800K"))?;
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large a rate"))?;
    Ok((bytes > 0).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_people_write_them() {
        assert_eq!(parse_rate("50M"), Ok(Some(50 << 20)));
        assert_eq!(parse_rate("800k/s"), Ok(Some(800 << 10)));
        assert_eq!(parse_rate("1048576"), Ok(Some(1 << 20)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate("none"), Ok(None));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5X").is_err());
    }

    /// A look for a new rate reads only what was written since the last
    /// one: with no `transfer.limited` event, the next look starts at the
    /// newest event (it used to start at the run's start, so a long copy
    /// read its whole log every quarter second), and a limit written later
    /// is still found.
    #[test]
    fn each_look_for_a_new_rate_starts_where_the_last_ended() {
        use crate::store::{Change, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let entries: Vec<_> = (0..8)
            .map(|i| crate::conformance::file_entry(i, 10))
            .collect();
        let t = store
            .create_transfer(&crate::conformance::new_transfer(Some("t")), &entries)
            .unwrap();
        let throttle = Throttle::new(&store, t.id, None, 0, None);
        let due = |throttle: &Throttle| throttle.poll.lock().unwrap().1 -= POLL;

        due(&throttle);
        throttle.look_for_new_rate();
        let newest = store.last_seq().unwrap();
        assert!(newest > 0);
        assert_eq!(throttle.poll.lock().unwrap().0, newest);
        assert_eq!(throttle.rate.load(Ordering::Relaxed), 0);

        store
            .apply(&[Change::Limit {
                id: t.id,
                bytes_per_second: Some(1 << 20),
            }])
            .unwrap();
        due(&throttle);
        throttle.look_for_new_rate();
        assert_eq!(throttle.rate.load(Ordering::Relaxed), 1 << 20);
        assert_eq!(throttle.poll.lock().unwrap().0, store.last_seq().unwrap());
    }
}
