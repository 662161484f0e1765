//! rsync and cp spellings that ferry spells otherwise get a "did you
//! mean" with ferry's spelling (exit 2, nothing copied), and the help says
//! the global options once, in their own block.

mod util;

use util::*;

/// `ferry cp ARGS… SRC DST` is refused with exit 2, nothing is copied, and
/// stderr's "did you mean" contains each of `words`.
fn refused_with(args: &[&str], words: &[&str]) {
    let s = Scratch::new();
    let src = s.path("src");
    write_file(&src.join("f"), b"data");
    let dst = s.path("dst");
    let out = run(s.ferry().arg("cp").args(args).arg(&src).arg(&dst));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hint = stderr
        .lines()
        .find(|l| l.starts_with("ferry: did you mean: "))
        .unwrap_or_else(|| panic!("no did-you-mean in {stderr}"));
    for word in words {
        assert!(hint.contains(word), "{word:?} not in {hint:?}");
    }
    assert!(!dst.exists(), "nothing is copied");
}

#[test]
fn rsync_checksum_long_is_skip_checksum() {
    refused_with(&["-a", "--checksum"], &["--skip checksum"]);
}

#[test]
fn rsync_checksum_short_is_skip_checksum() {
    refused_with(&["-c"], &["--skip checksum"]);
}

#[test]
fn rsync_checksum_short_in_a_cluster_is_skip_checksum() {
    refused_with(&["-ac"], &["--skip checksum"]);
}

#[test]
fn cp_capital_r_is_r() {
    refused_with(&["-R"], &["`-r`", "--files-from"]);
}

#[test]
fn rsync_relative_is_files_from() {
    refused_with(&["-a", "--relative"], &["--files-from"]);
}

#[test]
fn rsync_progress_is_the_bar() {
    refused_with(&["-a", "--progress"], &["progress bar", "-q"]);
}

#[test]
fn rsync_capital_p_is_partial_and_progress() {
    refused_with(&["-aP"], &["ferry resume", "progress bar"]);
}

#[test]
fn rsync_partial_is_always_on() {
    refused_with(&["-a", "--partial"], &["ferry resume"]);
}

#[test]
fn rsync_compress_short_is_not_needed() {
    refused_with(&["-avz"], &["nothing to compress"]);
}

#[test]
fn rsync_compress_long_is_not_needed() {
    refused_with(&["-a", "--compress"], &["nothing to compress"]);
}

/// A misspelling that is no habit keeps clap's own refusal (and its tip).
#[test]
fn other_unknown_options_keep_clap_refusal() {
    let s = Scratch::new();
    let out = run(s.ferry().args(["cp", "--recursiv", "a", "b"]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("did you mean:"), "{stderr}");
    assert!(stderr.contains("--recursive"), "clap's tip: {stderr}");
}

/// `ferry cp --help`: its own options under "Options", the global ones
/// (--store, --socket, --daemon) once, under "Global options", and every
/// option described.
#[test]
fn help_gives_the_global_options_in_their_own_block() {
    let out = run_ok(std::process::Command::new(FERRY).args(["cp", "--help"]));
    let help = String::from_utf8(out.stdout).unwrap();
    let global_at = help
        .find("\nGlobal options:\n")
        .unwrap_or_else(|| panic!("no Global options block in {help}"));
    let (own, global) = help.split_at(global_at);
    for flag in ["--store", "--socket", "--daemon"] {
        assert!(!own.contains(flag), "{flag} among cp's own options: {help}");
        assert_eq!(global.matches(flag).count(), 1, "{flag} once: {help}");
    }
    // Every option line has a description after it.
    for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
        let words = line.trim();
        let described = words.contains("  ") || words.ends_with(']');
        assert!(
            described || help.contains(&format!("{line}\n          ")),
            "undescribed: {line:?}"
        );
    }
    assert!(
        help.contains("Usage: ferry cp [OPTIONS] SRC... DST\n"),
        "the usage line: {help}"
    );
}
