//! `ferry generate`: man pages and shell completions made from the clap
//! definitions, checked as a packager and a shell would use them.

mod util;

use std::fs;
use std::process::Command;

use util::{Scratch, run};

#[test]
fn man_pages_cover_every_subcommand_and_touch_no_store() {
    let s = Scratch::new();
    let dir = s.path("share/man/man1");
    let out = run(s.ferry().arg("generate").arg("man").arg(&dir));
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "ferry.1",
        "ferry-cp.1",
        "ferry-resume.1",
        "ferry-finalize.1",
        "ferry-hsm-archive.1",
        "ferry-hsm-worker.1",
        "ferry-store-check.1",
    ] {
        let text = fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains("\n.TH "),
            "{page} is a man page"
        );
    }
    let cp = fs::read_to_string(dir.join("ferry-cp.1")).unwrap();
    assert!(cp.contains("\\-\\-skip"), "cp's page describes --skip");
    assert!(!s.store().exists(), "generating pages opens no store");
    // A man page renders when `man` is installed (it is on a developer's
    // machine; a minimal CI image may lack it).
    if Command::new("man").arg("--version").output().is_ok() {
        let rendered = Command::new("man")
            .arg("-l")
            .arg(dir.join("ferry-cp.1"))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&rendered.stdout).contains("SYNOPSIS"));
    }
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let s = Scratch::new();
    let out = run(s.ferry().args(["generate", "completions", "bash"]));
    assert_eq!(out.status.code(), Some(0));
    let script = s.path("ferry.bash");
    fs::write(&script, &out.stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n accepts the script");
    // What the shell does on TAB: call the completion function with the
    // words typed so far, then read COMPREPLY.
    let complete = |words: &[&str]| -> Vec<String> {
        let line = words.join(" ");
        let program = format!(
            "source {script}; COMP_WORDS=({line}); COMP_CWORD={cword}; COMP_LINE='{line}'; \
             COMP_POINT={point}; _ferry ferry '{current}' '{previous}'; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            cword = words.len() - 1,
            point = line.len(),
            current = words[words.len() - 1],
            previous = words[words.len() - 2],
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let subcommands = complete(&["ferry", "c"]);
    assert!(subcommands.contains(&"cp".to_string()), "{subcommands:?}");
    assert!(
        subcommands.contains(&"cancel".to_string()),
        "{subcommands:?}"
    );
    assert_eq!(complete(&["ferry", "cp", "--sk"]), ["--skip"]);
}

#[test]
fn every_shell_gets_a_script_and_an_unknown_one_is_refused() {
    let s = Scratch::new();
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = run(s.ferry().args(["generate", "completions", shell]));
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ferry"),
            "{shell}'s script names the command"
        );
    }
    let out = run(s.ferry().args(["generate", "completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}
