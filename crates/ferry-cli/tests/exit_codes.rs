//! The exit-code table in docs/user-guide.md against the code: every code
//! the CLI can exit with has a row, and every row is a code it uses. Read
//! from the sources where the codes are assigned (`ferry::Error::code()`,
//! the daemon client's `ClientError::code()`, the CLI's exit.rs, and 128 +
//! each signal signals.rs handles), so a new
//! code without a row fails here.

use std::collections::BTreeSet;
use std::path::Path;

fn source(rel: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text of the function `name` (from its `fn` to the next line that
/// closes it at the indentation it opened with).
fn function<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text
        .find(&format!("fn {name}("))
        .unwrap_or_else(|| panic!("no fn {name}"));
    let line = text[..start].rsplit('\n').next().unwrap_or("");
    let indent = &line[..line.len() - line.trim_start().len()];
    let close = format!("\n{indent}}}");
    let end = text[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("fn {name} never closes"));
    &text[start..start + end]
}

/// Every integer literal that follows `marker` in `text`.
fn numbers_after(text: &str, marker: &str) -> BTreeSet<u8> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = text[at + marker.len()..].trim_start();
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Every code the CLI exits with, read from where each is assigned.
fn codes_in_use() -> BTreeSet<u8> {
    let error = source("crates/ferry/src/error.rs");
    let exit = source("crates/ferry-cli/src/exit.rs");
    let signals = source("crates/ferry-cli/src/signals.rs");
    let mut codes = numbers_after(function(&error, "code"), "=>");
    let client = source("crates/ferry-serve/src/client.rs");
    codes.extend(numbers_after(function(&client, "code"), "=>"));
    codes.extend(numbers_after(function(&exit, "serve_code"), "=>"));
    codes.extend(numbers_after(&exit, "ExitCode::from("));
    for constant in ["OWNER_DEAD", "USAGE", "DAEMON_MALFORMED"] {
        codes.extend(numbers_after(&exit, &format!("pub const {constant}: u8 =")));
    }
    // Each signal `cp` and `resume` handle ends them with 128 + its number.
    for (signal, number) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        if function(&signals, "name").contains(&format!("libc::{signal} =>")) {
            codes.insert(128 + number as u8);
        }
    }
    // clap's own refusal of a command line.
    codes.insert(2);
    codes.insert(0);
    codes
}

/// The codes of the table's rows (`| 12 |`, `| 130, 143 |`).
fn codes_in_table() -> BTreeSet<u8> {
    let guide = source("docs/user-guide.md");
    let table = guide
        .split("## Exit codes")
        .nth(1)
        .expect("docs/user-guide.md has an Exit codes section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| {
            cell.split(',')
                .filter_map(|n| n.trim().parse::<u8>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_exit_code_table_has_every_code_the_cli_uses_and_no_other() {
    let used = codes_in_use();
    let table = codes_in_table();
    // The parse found the codes at all (a moved function would give none).
    for known in [1, 3, 10, 12, 15, 28, 30, 38, 74, 130, 143] {
        assert!(used.contains(&known), "{known} not found in the sources");
    }
    let missing: Vec<_> = used.difference(&table).collect();
    assert!(
        missing.is_empty(),
        "exit codes used but not in docs/user-guide.md's table: {missing:?}"
    );
    let stale: Vec<_> = table.difference(&used).collect();
    assert!(
        stale.is_empty(),
        "rows of docs/user-guide.md's exit-code table no code uses: {stale:?}"
    );
}

#[test]
fn the_readme_points_to_the_exit_code_table() {
    let readme = source("README.md");
    assert!(
        readme.contains("user-guide.md#exit-codes"),
        "README.md links the exit-code table"
    );
}
