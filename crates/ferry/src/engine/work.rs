//! What flows through the engine's two channels: the work list the
//! workers take from, and what they hand the commit loop.

use super::commit::Ready;
use crate::model::EntryIndex;

/// One unit of work for a worker.
#[derive(Clone, Copy, Debug)]
pub(super) enum Work {
    Whole(EntryIndex),
    Range {
        index: EntryIndex,
        /// Which range of the file's range tracker.
        slot: usize,
        start: u64,
        end: u64,
    },
    Symlink(EntryIndex),
    /// A piece of a large file that an earlier run made durable: hashed
    /// from the temporary, so the file's checksum is the same as if it had
    /// been copied in one go. Never reads the source.
    Rehash {
        index: EntryIndex,
        piece: usize,
    },
}

pub(super) enum Done {
    Copied(Ready),
    Failed(EntryIndex, String),
}

/// The most small files one worker takes from the work list at once, and
/// the most outcomes in one message to the commit loop.
pub(super) const SPAN_ITEMS_MAX: usize = 256;

/// The longest a worker holds an outcome before sending it.
pub(super) const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Splits the work list into the spans workers take whole: a run of small
/// files and symlinks landing in one directory (at most
/// [`SPAN_ITEMS_MAX`]), or a single range or rehash. Creating a file takes
/// its directory's lock for writing, so two workers filling one directory
/// wait on each other (measured on ext4: a sixth of the run spent spinning
/// on that lock); one worker per directory at a time keeps them apart.
pub(super) fn spans<'a>(
    work: &[Work],
    directory_of: impl Fn(EntryIndex) -> &'a std::path::Path,
) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut directory: Option<&std::path::Path> = None;
    for (at, item) in work.iter().enumerate() {
        let here = match *item {
            Work::Whole(index) | Work::Symlink(index) => Some(directory_of(index)),
            Work::Range { .. } | Work::Rehash { .. } => None,
        };
        let joins = here.is_some() && here == directory && at - start < SPAN_ITEMS_MAX;
        if at > start && !joins {
            spans.push(start..at);
            start = at;
        }
        directory = here;
    }
    if start < work.len() {
        spans.push(start..work.len());
    }
    spans
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{SPAN_ITEMS_MAX, Work, spans};
    use crate::model::EntryIndex;

    /// Entry `i` lands in the directory `dirs[i]`.
    fn spans_of(work: &[Work], dirs: &[&str]) -> Vec<std::ops::Range<usize>> {
        let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        spans(work, |index: EntryIndex| -> &Path {
            &dirs[index.0 as usize]
        })
    }

    #[test]
    fn a_span_is_one_directory_s_small_files() {
        let work: Vec<Work> = (0..5).map(|i| Work::Whole(EntryIndex(i))).collect();
        let spans = spans_of(&work, &["a", "a", "b", "b", "a"]);
        assert_eq!(spans, vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn ranges_and_rehashes_are_spans_of_their_own() {
        let range = |index| Work::Range {
            index: EntryIndex(index),
            slot: 0,
            start: 0,
            end: 1,
        };
        let work = vec![
            Work::Whole(EntryIndex(0)),
            range(1),
            range(1),
            Work::Rehash {
                index: EntryIndex(1),
                piece: 0,
            },
            Work::Symlink(EntryIndex(2)),
            Work::Whole(EntryIndex(3)),
        ];
        let spans = spans_of(&work, &["a", "a", "a", "a"]);
        assert_eq!(spans, vec![0..1, 1..2, 2..3, 3..4, 4..6]);
    }

    #[test]
    fn a_large_directory_is_cut_into_spans_of_at_most_the_bound() {
        let n = 2 * SPAN_ITEMS_MAX + 1;
        let work: Vec<Work> = (0..n as u32).map(|i| Work::Whole(EntryIndex(i))).collect();
        let dirs = vec!["a"; n];
        let spans = spans_of(&work, &dirs);
        assert_eq!(
            spans,
            vec![
                0..SPAN_ITEMS_MAX,
                SPAN_ITEMS_MAX..2 * SPAN_ITEMS_MAX,
                2 * SPAN_ITEMS_MAX..n
            ]
        );
        assert!(spans_of(&[], &[]).is_empty());
    }
}
