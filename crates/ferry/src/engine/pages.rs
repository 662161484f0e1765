//! A run reads its transfer a page at a time, so that its memory does not
//! grow with the transfer, and overlaps each page's end with the next
//! page's start: the next page's workers start copying as soon as the last
//! worker of a page is done, while that page's committer syncs and records
//! its last batch (a page's end left a core idle for about 85 ms of syncs
//! and reads, six times on 100,000 files).
//!
//! **Invariants:** at most two pages are held at once (one committing its
//! end, one running); a page starts only once the page before it has no
//! worker left, and the page before that is over; a page with a hard link
//! whose leader is on an earlier page starts only once that page is over
//! (the link is made from where the leader's data is, which the store says
//! only then).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::thread::ScopedJoinHandle;

use super::Run;
use crate::error::Result;
use crate::model::{EntryIndex, EntryRecord, TransferId};
use crate::store::{Store, StoreError};

/// Entries a run reads at once: it reads the transfer from the store a
/// page at a time (on a store that reads ranges, see
/// [`Store::reads_entry_ranges`]), so that its memory does not grow with
/// the transfer. It holds two pages at most (see the module's invariants);
/// besides them, the records of the hard links' leaders on earlier pages
/// (at most one per follower of the page), and at its end the directories
/// (their modes and times go on last, deepest first) or, with `--delete`,
/// every entry. Two pages of 4,096 hold fewer entries than 10^4 files do:
/// peak RSS at 10^6 files is 1.4 × that at 10^4 (16,384 made it 2.2 ×, the
/// copy of 100,000 × 4 KiB no faster).
pub const PAGE_ENTRIES: usize = 4_096;

/// [`PAGE_ENTRIES`], or less in a test that wants many pages.
pub(super) fn page_entries() -> usize {
    #[cfg(test)]
    if let Some(page) = paging::PAGE_ENTRIES.get() {
        return page;
    }
    PAGE_ENTRIES
}

/// What one page's run gives back: the entries that failed, and the
/// directories left as they were.
type PageDone = (Vec<(EntryIndex, String)>, HashSet<EntryIndex>);

/// A page being worked on by its own thread.
struct PageRun<'scope> {
    thread: ScopedJoinHandle<'scope, Result<PageDone>>,
    /// Disconnected once the page's last worker is done.
    workers_gone: Receiver<()>,
    #[cfg(test)]
    entries: usize,
}

impl<'scope> PageRun<'scope> {
    /// Waits until the page is over, and adds what it gives back.
    fn join(
        self,
        failed: &mut Vec<(EntryIndex, String)>,
        left_alone: &mut HashSet<EntryIndex>,
    ) -> Result<()> {
        let (page_failed, page_left_alone) = match self.thread.join() {
            Ok(done) => done?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        failed.extend(page_failed);
        left_alone.extend(page_left_alone);
        release_freed_memory();
        Ok(())
    }
}

impl Run<'_> {
    /// Calls `each` with the transfer's entries, a page at a time, in
    /// index order, until it has seen them all or the run is cancelled.
    pub(super) fn pages(&self, mut each: impl FnMut(&[EntryRecord]) -> Result<()>) -> Result<()> {
        pages(
            self.store,
            self.transfer.id,
            self.page_max,
            &self.options.cancel,
            |page| each(&page),
        )
    }

    /// Copies and commits every page, adding what failed to `failed` and
    /// the directories left as they were to `left_alone`.
    pub(super) fn run_pages(
        &self,
        failed: &mut Vec<(EntryIndex, String)>,
        left_alone: &mut HashSet<EntryIndex>,
    ) -> Result<()> {
        std::thread::scope(|scope| {
            // The page last started: its workers may still be copying.
            let mut running: Option<PageRun> = None;
            let read = pages(
                self.store,
                self.transfer.id,
                self.page_max,
                &self.options.cancel,
                |page| {
                    #[cfg(test)]
                    paging::held(page.len() + running.as_ref().map_or(0, |r| r.entries));
                    let mut ending = None;
                    if let Some(before) = running.take() {
                        // Blocks until the last worker drops its sender.
                        let _ = before.workers_gone.recv();
                        let first = page.first().map_or(EntryIndex(0), |e| e.index);
                        match page
                            .iter()
                            .any(|e| e.link_leader.is_some_and(|l| l < first))
                        {
                            true => before.join(failed, left_alone)?,
                            false => ending = Some(before),
                        }
                    }
                    running = Some(self.spawn_page(scope, page));
                    // The page before ends while this one copies; the next
                    // is read only once it is over (two pages at most).
                    match ending {
                        Some(before) => before.join(failed, left_alone),
                        None => Ok(()),
                    }
                },
            );
            if read.is_err() {
                // The page still running stops; the first error is the run's.
                self.options.cancel.store(true, Ordering::Relaxed);
            }
            let last = running.map(|page| page.join(failed, left_alone));
            read.and(last.unwrap_or(Ok(())))
        })
    }

    /// Starts a thread that copies and commits `page`.
    fn spawn_page<'scope, 'run>(
        &'run self,
        scope: &'scope std::thread::Scope<'scope, 'run>,
        page: Vec<EntryRecord>,
    ) -> PageRun<'scope> {
        let (gone, workers_gone) = channel();
        #[cfg(test)]
        let entries = page.len();
        let thread = crate::signals::spawn_blocked(|| {
            scope.spawn(move || {
                let mut done = PageDone::default();
                self.engine(&page)
                    .run_page(&mut done.0, &mut done.1, gone)?;
                Ok(done)
            })
        });
        PageRun {
            thread,
            workers_gone,
            #[cfg(test)]
            entries,
        }
    }
}

/// Gives the memory a page freed back to the system. A page is worked on
/// by a dozen threads, and glibc's allocator keeps an arena per thread
/// that holds what was freed in it: without this, peak RSS at 10^6 files
/// was 52 MiB rather than 32 (and grew with the number of pages, as
/// arenas were added), against 23 MiB at 10^4.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists and
    // returns free pages to the system; no pointer of ours is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Calls `each` with transfer `id`'s entries, `page_max` at a time, in
/// index order, until it has seen them all or `cancel` is set.
pub(super) fn pages(
    store: &dyn Store,
    id: TransferId,
    page_max: usize,
    cancel: &AtomicBool,
    mut each: impl FnMut(Vec<EntryRecord>) -> Result<()>,
) -> Result<()> {
    pages_read(
        |from, limit| store.entries_from(id, from, limit),
        page_max,
        |page| {
            #[cfg(test)]
            paging::held(page.len());
            each(page)?;
            Ok(!cancel.load(Ordering::Relaxed))
        },
    )
}

/// Reads entries with `read` (from an index, at most so many), `page_max`
/// at a time in index order, and hands each page to `each` until all are
/// read or `each` says stop (`false`).
pub(crate) fn pages_read(
    read: impl Fn(EntryIndex, usize) -> std::result::Result<Vec<EntryRecord>, StoreError>,
    page_max: usize,
    mut each: impl FnMut(Vec<EntryRecord>) -> Result<bool>,
) -> Result<()> {
    let mut from = EntryIndex(0);
    loop {
        let page = read(from, page_max)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        let next = EntryIndex(last.index.0 + 1);
        let full = page.len() >= page_max;
        if !each(page)? || !full {
            return Ok(());
        }
        from = next;
    }
}

/// How many entries a run called on this thread held at once, at most:
/// the memory bound made a check (see [`PAGE_ENTRIES`]).
#[cfg(test)]
pub(crate) mod paging {
    use std::cell::Cell;

    thread_local! {
        pub static PAGE_ENTRIES: Cell<Option<usize>> = const { Cell::new(None) };
        pub static HELD_MAX: Cell<usize> = const { Cell::new(0) };
    }

    pub fn held(entries: usize) {
        HELD_MAX.set(HELD_MAX.get().max(entries));
    }
}
