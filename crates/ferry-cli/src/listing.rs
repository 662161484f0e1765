//! `-v`: one line per file as it is committed (or skipped, or removed by
//! `--delete`), read from the transfer's events while it runs — the store
//! is where the engine says a file is done, so the list says only what is
//! durable.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry::model::TransferId;
use ferry::store::{EventFilter, Store};

/// Events read per query.
const PAGE_EVENTS_MAX: usize = 4096;

/// Runs `f`; meanwhile, when `verbose`, prints what transfer `id` commits.
pub fn with_listing<T>(
    store: Arc<dyn Store>,
    id: TransferId,
    verbose: bool,
    f: impl FnOnce() -> T,
) -> T {
    if !verbose {
        return f();
    }
    // Events before this run are not this run's to list.
    let Ok(start) = store.last_seq() else {
        return f();
    };
    let dests: HashMap<u32, PathBuf> = match store.entries(id) {
        Ok(entries) => entries.into_iter().map(|e| (e.index.0, e.dest)).collect(),
        Err(_) => return f(),
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let filter = EventFilter {
                transfer: Some(id),
                kind: Some("file".into()),
                ..Default::default()
            };
            let mut cursor = start;
            loop {
                // Read once more after the run ended: its last batch.
                let last_round = done.load(Ordering::Acquire);
                loop {
                    let Ok(page) = store.events_since(cursor, &filter, PAGE_EVENTS_MAX) else {
                        return;
                    };
                    for event in &page {
                        cursor = event.seq;
                        let path = || {
                            event
                                .entry
                                .and_then(|i| dests.get(&i.0))
                                .map(|p| ferry::words::escaped_path(p))
                                .unwrap_or_default()
                        };
                        match event.name.as_str() {
                            "file.committed" => println!("{}", path()),
                            "file.skipped" => println!(
                                "{} (skipped: {})",
                                path(),
                                event.context["rule"].as_str().unwrap_or("matches")
                            ),
                            "file.removed" => println!(
                                "removed {}",
                                ferry::words::escaped(
                                    event.context["path"].as_str().unwrap_or_default()
                                )
                            ),
                            _ => {}
                        }
                    }
                    if page.len() < PAGE_EVENTS_MAX {
                        break;
                    }
                }
                if last_round {
                    return;
                }
                // A display refresh, not a wait for an event.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = f();
        done.store(true, Ordering::Release);
        result
    })
}
