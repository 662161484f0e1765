//! What a person at a terminal sees: `ferry cp` on a pseudo-terminal, its
//! progress bar, Ctrl-C typed at it, and the words its counts are said in.

mod util;

use std::time::{Duration, Instant};

use ferry::store::SqliteStore;
use util::daemon::{mkfifo, paused};
use util::pty::Pty;
use util::*;

/// `N files: a copied, b skipped, c failed`, as said on `line`.
fn counts_phrase(line: &str) -> Option<String> {
    let at = line.find(" files: ")?;
    let start = line[..at]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    let end = at + line[at..].find(" failed")? + " failed".len();
    Some(line[start..end].to_owned())
}

/// The bar's second line, if one is left on `screen`: its `ETA` while it
/// runs, `done in` and the counts once finished.
fn bar_line(screen: &[String]) -> Option<&String> {
    screen
        .iter()
        .find(|l| l.contains(" ETA ") || l.starts_with("done in "))
}

/// Ctrl-C typed at the terminal while `cp` is surely mid-copy (paused at
/// its first write) after its bar was drawn: the bar is gone from the
/// screen, the last line says what happened and the resume that continues
/// it, the exit code is 130, and that resume completes the copy.
#[test]
fn ctrl_c_at_the_terminal_clears_the_bar_says_how_to_resume_and_exits_130() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    random_files(&src, 6, 2, 7, |i| 50_000 + i * 1000);
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let mut cmd = s.ferry();
    cmd.env("FERRY_FAILPOINT", "commit.write_data=pause")
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .args(["cp", "-a", "--threads", "1", "--name", "ctrl-c"])
        .arg(&src)
        .arg(&dst);
    let mut pty = Pty::spawn(cmd);
    let pause = paused(&fifo);
    pty.wait_for("the bar's first frame", |t| t.contains(" ETA "));
    let store = SqliteStore::open(&s.store()).unwrap();
    let filter = ferry::store::EventFilter {
        kind: Some("transfer.cancelled".into()),
        ..Default::default()
    };
    let mut watch = ferry::events::Watch::new(&store, 0, filter).unwrap();
    pty.type_in(b"\x03");
    // The interruption is recorded before the paused write may go on.
    let deadline = Instant::now() + Duration::from_secs(60);
    let cancelled = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no interruption recorded: {:?}",
            pty.bytes()
        );
        if let Some(ferry::events::WatchItem::Event(e)) = watch.next_timeout(Some(left)).unwrap() {
            break e;
        }
    };
    assert_eq!(cancelled.context["interrupted"], "SIGINT", "{cancelled:?}");
    drop(pause);
    let (code, screen) = pty.finish();
    assert_eq!(code, Some(130), "{screen:#?}");
    assert!(
        bar_line(&screen).is_none(),
        "a bar remnant is left: {screen:#?}"
    );
    let last = screen.last().expect("something on screen");
    assert!(
        last.contains("interrupted by SIGINT") && last.contains("`ferry resume ctrl-c`"),
        "the last line says what happened and what to do: {screen:#?}"
    );
    run_ok(s.ferry().args(["resume", "ctrl-c"]));
    assert_same_tree(&src, &dst);
}

/// A tree copied on a terminal, then two of its files changed and the same
/// command run again (which copies what changed), then again by size
/// (which skips every file): the bar's final line, the summary and `ferry
/// status` give the same counts in the same words, each time.
#[test]
fn the_bar_the_summary_and_status_count_files_in_the_same_words() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    random_files(&src, 6, 2, 11, |i| 1000 + i * 100);
    let cp = || {
        let mut cmd = s.ferry();
        cmd.args(["cp", "-a"]).arg(&src).arg(&dst);
        cmd
    };
    let mut expected = vec!["6 files: 6 copied, 0 skipped, 0 failed"];
    let first = Pty::spawn(cp()).finish();
    let mut runs = vec![first];
    write_file(&src.join("d0/f0"), b"changed");
    write_file(&src.join("d1/f1"), b"changed too");
    // The same command again: only what changed since is a new transfer.
    runs.push(Pty::spawn(cp()).finish());
    expected.push("2 files: 2 copied, 0 skipped, 0 failed");
    // By size: every file compared again, and recorded skipped.
    runs.push(
        Pty::spawn({
            let mut cmd = cp();
            cmd.args(["--skip", "size"]);
            cmd
        })
        .finish(),
    );
    expected.push("6 files: 0 copied, 6 skipped, 0 failed");
    let table = String::from_utf8(run_ok(s.ferry().arg("status")).stdout).unwrap();
    for ((code, screen), expected) in runs.iter().zip(expected) {
        assert_eq!(*code, Some(0), "{screen:#?}");
        let bar = bar_line(screen).expect("the bar's final frame stays");
        let summary = screen
            .iter()
            .find(|l| l.contains(" completed: "))
            .expect("a summary line");
        // `ferry: NAME completed: …`
        let name = summary
            .trim_start_matches("ferry: ")
            .split(' ')
            .next()
            .unwrap();
        let row = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} in\n{table}"));
        for (what, line) in [
            ("bar", bar),
            ("summary", summary),
            ("status", &row.to_owned()),
        ] {
            assert_eq!(
                counts_phrase(line).as_deref(),
                Some(expected),
                "{what}: {line}"
            );
        }
        let status = json(&run_ok(s.ferry().args(["status", name, "--json"])));
        let counts = &status["counts"];
        let numbers = format!(
            "{} files: {} copied, {} skipped, {} failed",
            counts["files"], counts["copied"], counts["skipped"], counts["failed"]
        );
        assert_eq!(numbers, expected, "{status}");
    }
    assert_same_tree(&src, &dst);
}

/// The terminal's width in these tests: the narrowest a person commonly has.
const NARROW: u16 = 80;

/// Every line of `screen` fits in `columns`.
fn assert_fits(screen: &[String], columns: u16) {
    for line in screen {
        assert!(
            line.chars().count() <= usize::from(columns),
            "a line wider than {columns} columns ({}): {line:?}\n{screen:#?}",
            line.chars().count()
        );
    }
}

/// `ferry cp` on an 80-column terminal, with names long enough to overflow
/// it: the bar's final frame stays within 80 columns.
#[test]
fn the_bar_fits_an_80_column_terminal() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    let long = "a-name-long-enough-to-overflow-an-eighty-column-terminal-by-itself-alone";
    for i in 0..3 {
        write_file(&src.join(format!("{long}-{i}")), &vec![i as u8; 200_000]);
    }
    let mut cmd = s.ferry();
    cmd.args(["cp", "-a", "--name", "narrow"])
        .arg(&src)
        .arg(&dst);
    let (code, screen) = Pty::spawn_sized(cmd, NARROW).finish();
    assert_eq!(code, Some(0), "{screen:#?}");
    let bar = bar_line(&screen).expect("the bar's final frame stays");
    assert!(bar.contains("3 files: 3 copied"), "{bar}");
    // The summary after it is a sentence, which the terminal wraps.
    assert_fits(std::slice::from_ref(bar), NARROW);
    assert_same_tree(&src, &dst);
}

/// `ferry watch` on an 80-column terminal while a copy with long names
/// runs: it starts from now (saying how much history it leaves out), and
/// each event is one line within 80 columns — local time, transfer name,
/// event, path (escaped), a few context fields — never raw JSON.
#[test]
fn watch_lines_fit_an_80_column_terminal() {
    let s = Scratch::new();
    // History before the watch starts: left out, and said so.
    write_file(&s.path("old/f"), b"old");
    run_ok(
        s.ferry()
            .args(["cp", "-r"])
            .arg(s.path("old"))
            .arg(s.path("old-copy")),
    );
    let (src, dst) = (s.path("src"), s.path("dst"));
    let long = "a-name-long-enough-to-overflow-an-eighty-column-terminal-by-itself-alone";
    write_file(&src.join(long), b"long");
    write_file(&src.join("esc\x1b[2Jape"), b"escape");
    let mut watch = s.ferry();
    watch.args(["watch", "--until-done", "wide"]);
    let pty = Pty::spawn_sized(watch, NARROW);
    pty.wait_for("the end of history", |t| t.contains("caught up"));
    run_ok(
        s.ferry()
            .args(["cp", "-r", "--name", "wide"])
            .arg(&src)
            .arg(&dst),
    );
    let (code, screen) = pty.finish();
    assert_eq!(code, Some(0), "{screen:#?}");
    assert_fits(&screen, NARROW);
    assert!(
        screen
            .iter()
            .any(|l| l.contains("from now") && l.contains("--since 0")),
        "the note of what came before: {screen:#?}"
    );
    let events: Vec<&String> = screen.iter().filter(|l| l.contains(" wide ")).collect();
    assert!(
        events.iter().all(|l| !l.contains("old-copy")),
        "history is left out: {screen:#?}"
    );
    let committed: Vec<&&String> = events
        .iter()
        .filter(|l| l.contains(" file.committed "))
        .collect();
    // The two files and their directory.
    assert_eq!(committed.len(), 3, "{screen:#?}");
    assert!(
        committed.iter().any(|l| l.ends_with('…')),
        "the long path is cut at the edge: {screen:#?}"
    );
    assert!(
        committed.iter().any(|l| l.contains("esc\\033[2Jape")),
        "the ESC is shown escaped: {screen:#?}"
    );
    for line in &events {
        let time = line.split(' ').next().unwrap();
        assert!(
            time.len() == 8 && time.chars().filter(|&c| c == ':').count() == 2,
            "HH:MM:SS first: {line}"
        );
        assert!(!line.contains('{'), "no raw JSON: {line}");
    }
    assert!(
        events.iter().any(|l| l.contains(" transfer.completed")),
        "{screen:#?}"
    );
}

/// What the bar says while a large file is copied, at 80 columns: the
/// percentage, the bytes, this run's rate, elapsed and ETA, files done and
/// per second, and the large file's name (the file count stands still
/// through it); finished, the time and the counts.
#[test]
fn the_bar_names_the_large_file_it_copies_within_80_columns() {
    let s = Scratch::new();
    let (src, dst) = (s.path("src"), s.path("dst"));
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    write_file(&src.join("big.dat"), &big);
    write_file(&src.join("small"), b"small");
    let mut cmd = s.ferry();
    // Slow enough that frames are drawn while it runs.
    cmd.args(["cp", "-a", "--bwlimit", "16M", "--name", "big"])
        .arg(&src)
        .arg(&dst);
    let pty = Pty::spawn_sized(cmd, NARROW);
    pty.wait_for("a frame naming the large file", |t| {
        t.lines().any(|l| {
            l.contains(" ETA ")
                && l.contains(" elapsed")
                && l.contains(" files, ")
                && l.contains("big.dat")
        })
    });
    let (code, screen) = pty.finish();
    assert_eq!(code, Some(0), "{screen:#?}");
    let bar = bar_line(&screen).expect("the bar's final frame stays");
    assert!(bar.starts_with("done in 0:0"), "{bar}");
    assert!(bar.contains("2 files: 2 copied"), "{bar}");
    let percent = screen
        .iter()
        .find(|l| l.contains("100% "))
        .unwrap_or_else(|| panic!("the bar's first line: {screen:#?}"));
    assert!(percent.contains("40.00 MiB of 40.00 MiB"), "{percent}");
    assert_fits(&screen[..screen.len().min(2)], NARROW);
    assert_same_tree(&src, &dst);
}
