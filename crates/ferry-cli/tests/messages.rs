//! What ferry says to people: causes in words, never "(os error N)", for
//! I/O errors provoked for real (ENOENT, EACCES, ENOSPC on a small tmpfs);
//! names holding control characters escaped for people (as `ls -b`) and
//! exact in JSON.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use util::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `out` failed, and stderr says `words` and carries no error number.
fn said_in_words(out: &Output, words: &[&str]) {
    assert!(!out.status.success(), "{out:?}");
    let text = stderr(out);
    assert!(!text.contains("os error"), "an error number: {text}");
    for word in words {
        assert!(text.contains(word), "{word:?} not in {text}");
    }
}

#[test]
fn a_missing_list_or_pattern_file_is_no_such_file_in_words() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"f");
    let missing = s.path("no-such-list");
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--files-from"])
        .arg(&missing)
        .arg(s.path("src"))
        .arg(s.path("dst")));
    said_in_words(
        &out,
        &[&missing.to_string_lossy(), "no such file or directory"],
    );
    let out = run(s
        .ferry()
        .args(["cp", "-r", "--exclude-from"])
        .arg(&missing)
        .arg(s.path("src"))
        .arg(s.path("dst")));
    said_in_words(
        &out,
        &[&missing.to_string_lossy(), "no such file or directory"],
    );
}

/// A list file and a destination directory the user may not read or
/// write: each refusal says "permission denied", not "(os error 13)".
#[test]
fn what_the_user_may_not_read_or_write_is_permission_denied_in_words() {
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    write_file(&s.path("src/f"), b"some data");
    fs::set_permissions(s.path("src"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(s.path("src/f"), fs::Permissions::from_mode(0o644)).unwrap();
    let closed = s.path("closed");
    fs::create_dir(&closed).unwrap();
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o555)).unwrap();
    let store = s.path("user.db");
    let as_user = |args: &[&str]| {
        let root = rustix::process::geteuid().is_root();
        let mut cmd = if root {
            // Root writes everywhere: the check needs an ordinary user.
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", FERRY]);
            cmd
        } else {
            Command::new(FERRY)
        };
        cmd.arg("--store").arg(&store).args(args);
        cmd
    };
    let secret = s.path("secret-list");
    write_file(&secret, b"f\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(as_user(&["cp", "--files-from"])
        .arg(&secret)
        .arg(s.path("src"))
        .arg(s.path("dst")));
    said_in_words(&out, &[&secret.to_string_lossy(), "permission denied"]);
    let out = run(as_user(&["cp", "--name", "closed"])
        .arg(s.path("src/f"))
        .arg(closed.join("f")));
    said_in_words(&out, &["permission denied"]);
}

/// A destination file system that fills up (a 1 MiB tmpfs): the file's
/// failure says so in words.
#[test]
fn a_full_destination_is_no_space_in_words() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test mounts a tmpfs: run it as root"
    );
    let s = Scratch::new();
    let mount = s.path("small");
    fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .output()
        .unwrap();
    assert!(mounted.status.success(), "mount: {mounted:?}");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mount);
    write_file(&s.path("src/big"), &vec![7u8; 3 << 20]);
    let out = run(s
        .ferry()
        .args(["cp", "--name", "full"])
        .arg(s.path("src/big"))
        .arg(mount.join("big")));
    let text = stderr(&out);
    assert!(
        text.contains("no space") || text.contains("not enough space"),
        "{text}"
    );
    said_in_words(&out, &[]);
}

/// Names with a newline and an ESC sequence: `-n`, `-v` and `status
/// --files` show them escaped on one line each (`\n`, `\033`), JSON gives
/// the exact names.
#[test]
fn control_characters_in_names_are_escaped_for_people_and_exact_in_json() {
    let s = Scratch::new();
    let src = s.path("src");
    let (newline, escape) = ("two\nlines", "\x1b[31mred");
    write_file(&src.join(newline), b"1");
    write_file(&src.join(escape), b"2");
    let shown = ["two\\nlines", "\\033[31mred"];
    let check = |what: &str, text: &str| {
        assert!(!text.contains('\x1b'), "{what}: a raw ESC: {text:?}");
        assert!(
            !text.contains("two\nlines"),
            "{what}: a raw newline: {text:?}"
        );
        for name in shown {
            assert!(text.contains(name), "{what}: {name} not in {text:?}");
        }
    };
    let dry = run_ok(
        s.ferry()
            .args(["cp", "-r", "-n"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    check("-n", &stdout(&dry));
    let verbose = run_ok(
        s.ferry()
            .args(["cp", "-r", "-v", "--name", "names"])
            .arg(&src)
            .arg(s.path("dst")),
    );
    check("-v", &stdout(&verbose));
    let files = run_ok(s.ferry().args(["status", "names", "--files"]));
    check("status --files", &stdout(&files));
    let json = json(&run_ok(
        s.ferry().args(["status", "names", "--files", "--json"]),
    ));
    let dests: Vec<String> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["dest"].as_str().unwrap().to_owned())
        .collect();
    for raw in [newline, escape] {
        assert!(
            dests.iter().any(|d| d.ends_with(raw)),
            "{raw:?} exact in {dests:?}"
        );
    }
}
