//! The Prometheus text exposition of `GET /metrics`: a few counters kept
//! with atomics, request latency histograms with fixed buckets, and gauges
//! read from the store at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the request latency buckets, in seconds.
const BUCKETS_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Metrics {
    /// Bytes written by finished runs (live runs are added at scrape time).
    pub bytes_moved: AtomicU64,
    pub files_moved: AtomicU64,
    /// Files that failed in finished runs.
    pub file_errors: AtomicU64,
    /// Runs that ended with an error rather than a report.
    pub run_errors: AtomicU64,
    /// Requests answered 4xx / 5xx.
    pub client_errors: AtomicU64,
    pub server_errors: AtomicU64,
    /// Per route: bucket counts, count, sum of seconds.
    latency: Mutex<BTreeMap<String, Histogram>>,
}

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS_SECONDS.len()],
    count: u64,
    sum_seconds: f64,
}

/// What the store says at scrape time.
pub struct Gauges {
    pub transfers_by_state: Vec<(&'static str, u64)>,
    pub read_only: bool,
    pub bytes_moving: u64,
    pub transfers_queued: u64,
    pub transfers_moving: u64,
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, took: Duration) {
        match status {
            400..=499 => self.client_errors.fetch_add(1, Ordering::Relaxed),
            500..=599 => self.server_errors.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let seconds = took.as_secs_f64();
        let mut latency = self.latency.lock().expect("metrics poisoned");
        let h = latency.entry(route.to_owned()).or_default();
        for (bound, count) in BUCKETS_SECONDS.iter().zip(h.buckets.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum_seconds += seconds;
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
            );
        };
        counter(
            "ferry_bytes_moved_total",
            "Bytes written to temporaries by the daemon's movers.",
            load(&self.bytes_moved) + gauges.bytes_moving,
        );
        counter(
            "ferry_files_moved_total",
            "Files committed by finished runs.",
            load(&self.files_moved),
        );
        let _ = write!(
            out,
            "# HELP ferry_errors_total Errors by kind: files that failed, runs that ended in an \
             error, requests answered 4xx and 5xx.\n# TYPE ferry_errors_total counter\n\
             ferry_errors_total{{kind=\"file\"}} {}\nferry_errors_total{{kind=\"run\"}} {}\n\
             ferry_errors_total{{kind=\"request_4xx\"}} {}\nferry_errors_total{{kind=\"request_5xx\"}} {}\n",
            load(&self.file_errors),
            load(&self.run_errors),
            load(&self.client_errors),
            load(&self.server_errors),
        );
        let _ = writeln!(
            out,
            "# HELP ferry_transfers Live transfers of the daemon's store by state.\n\
             # TYPE ferry_transfers gauge"
        );
        for (state, n) in &gauges.transfers_by_state {
            let _ = writeln!(out, "ferry_transfers{{state=\"{state}\"}} {n}");
        }
        let _ = write!(
            out,
            "# HELP ferry_store_read_only 1 while the store is read-only because its disk is full.\n\
             # TYPE ferry_store_read_only gauge\nferry_store_read_only {}\n\
             # HELP ferry_transfers_queued Dispatched transfers waiting for a mover.\n\
             # TYPE ferry_transfers_queued gauge\nferry_transfers_queued {}\n\
             # HELP ferry_transfers_moving Transfers a mover is running.\n\
             # TYPE ferry_transfers_moving gauge\nferry_transfers_moving {}\n",
            u8::from(gauges.read_only),
            gauges.transfers_queued,
            gauges.transfers_moving,
        );
        let _ = writeln!(
            out,
            "# HELP ferry_request_duration_seconds Time to answer a request (to the first byte \
             of a streamed answer).\n# TYPE ferry_request_duration_seconds histogram"
        );
        let latency = self.latency.lock().expect("metrics poisoned");
        for (route, h) in latency.iter() {
            for (bound, count) in BUCKETS_SECONDS.iter().zip(h.buckets.iter()) {
                let _ = writeln!(
                    out,
                    "ferry_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = write!(
                out,
                "ferry_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {c}\n\
                 ferry_request_duration_seconds_sum{{route=\"{route}\"}} {s}\n\
                 ferry_request_duration_seconds_count{{route=\"{route}\"}} {c}\n",
                c = h.count,
                s = h.sum_seconds,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.bytes_moved.fetch_add(10, Ordering::Relaxed);
        m.observe("/v1/transfers", 201, Duration::from_millis(3));
        m.observe("/v1/transfers", 400, Duration::from_millis(700));
        let text = m.render(&Gauges {
            transfers_by_state: vec![("running", 2)],
            read_only: true,
            bytes_moving: 5,
            transfers_queued: 1,
            transfers_moving: 1,
        });
        assert!(text.contains("ferry_bytes_moved_total 15\n"), "{text}");
        assert!(text.contains("ferry_store_read_only 1\n"));
        assert!(text.contains("ferry_transfers{state=\"running\"} 2\n"));
        assert!(text.contains("ferry_errors_total{kind=\"request_4xx\"} 1\n"));
        let bucket = |le: &str| {
            let key = format!("route=\"/v1/transfers\",le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.contains(&key)).unwrap();
            line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(
            (
                bucket("0.001"),
                bucket("0.005"),
                bucket("1"),
                bucket("+Inf")
            ),
            (0, 1, 2, 2)
        );
    }
}
