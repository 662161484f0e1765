//! rsync and cp spellings that ferry spells otherwise: a command line clap
//! refuses because of one gets a "did you mean" naming ferry's spelling
//! (or why ferry needs none), instead of clap's bare refusal.

use clap::error::{ContextKind, ContextValue, ErrorKind};

/// (what the user typed, what ferry says to it). Short options are matched
/// alone and inside a cluster (`-avz`).
const HABITS: &[(&str, &str)] = &[
    (
        "-c",
        "rsync's -c (--checksum) is `--skip checksum` here: destinations whose content \
         matches are not copied again",
    ),
    (
        "--relative",
        "ferry has no --relative: `--files-from LIST SRCDIR DST` copies each listed path \
         to the same path below DST",
    ),
    (
        "-R",
        "cp's and rsync's -R is `-r` here (recursive); for rsync's --relative, \
         `--files-from LIST SRCDIR DST` copies each listed path to the same path below DST",
    ),
    (
        "--progress",
        "ferry draws a progress bar by itself on a terminal (-q hides it; -v lists each file)",
    ),
    (
        "-P",
        "rsync's -P is --partial --progress: ferry always keeps an unfinished file's \
         temporary for `ferry resume NAME`, and draws a progress bar by itself on a terminal",
    ),
    (
        "--partial",
        "ferry always keeps an unfinished file's temporary; `ferry resume NAME` continues it",
    ),
    (
        "-z",
        "ferry copies between mounted file systems: there is nothing to compress; leave -z out",
    ),
    (
        "--compress",
        "ferry copies between mounted file systems: there is nothing to compress; leave \
         --compress out",
    ),
];

/// The "did you mean" for a refused command line, when a habit explains it.
pub(crate) fn did_you_mean(e: &clap::Error) -> Option<&'static str> {
    let arg = match e.get(ContextKind::InvalidArg)? {
        ContextValue::String(s) => s.as_str(),
        _ => return None,
    };
    match e.kind() {
        ErrorKind::UnknownArgument => {
            let typed = arg.split('=').next().unwrap_or(arg);
            HABITS
                .iter()
                .find(|(spelling, _)| *spelling == typed)
                .map(|(_, hint)| *hint)
        }
        // rsync's --checksum takes no value; ferry's names the algorithm,
        // so the next word (a path) was refused as one.
        ErrorKind::InvalidValue if arg.starts_with("--checksum") => Some(
            "--checksum names the checksum every copied file gets (xxh3, blake3, none); \
             rsync's --checksum (-c) is `--skip checksum` here",
        ),
        _ => None,
    }
}
