//! A directory ferry creates that holds only small files is written under
//! a temporary name and put in place whole, with one rename (engine
//! `staging`): killed at any step, nothing of it is visible under its final
//! name; the same command line then finishes it; a file of it that fails
//! keeps its own temporary inside it, as any other.

mod util;

use std::fs;
use std::path::{Path, PathBuf};

use util::*;

const FILES: usize = 40;

/// `top/` holds a file (so it is not staged) and the leaf `top/leaf/`.
fn make_tree(root: &Path) {
    let mut rng = fastrand::Rng::with_seed(7);
    write_file(&root.join("top/note"), b"not staged");
    for i in 0..FILES {
        let len = rng.usize(0..20_000);
        write_file(
            &root.join(format!("top/leaf/f{i:02}")),
            &random_bytes(&mut rng, len),
        );
    }
}

/// A scratch directory with the tree in `src`, and where `dst` and the
/// store go.
fn scratch() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    scratch_with(make_tree)
}

/// [`scratch`] with the tree `make` makes.
fn scratch_with(make: fn(&Path)) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst, store) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("s.db"),
    );
    make(&src);
    (tmp, src, dst, store)
}

/// The names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
}

fn cp(store: &Path, src: &Path, dst: &Path) -> std::process::Command {
    let mut cmd = ferry_at(store);
    cmd.args(["cp", "-a", "-q", "--threads", "1", "--name", "staged"])
        .arg(src)
        .arg(dst);
    cmd
}

#[test]
fn a_killed_copy_shows_no_part_of_a_staged_directory_and_the_same_command_finishes_it() {
    // Killed after the data was recorded `copied` (the rename step of a
    // staged file), and before anything was recorded (the data's sync).
    for failpoint in ["commit.rename:5=crash", "commit.sync_data:1=crash"] {
        let (_tmp, src, dst, store) = scratch();
        run_killed(cp(&store, &src, &dst).env("FERRY_FAILPOINT", failpoint));

        assert!(
            !dst.join("top/leaf").exists(),
            "{failpoint}: the staged directory is visible before it is complete"
        );
        let staged = named(&dst.join("top"), "leaf._ferry-");
        assert_eq!(staged.len(), 1, "{failpoint}: its temporary: {staged:?}");
        assert!(
            staged[0].join("f00").exists(),
            "{failpoint}: files are written under their own names inside it"
        );
        assert_no_partial_files(&src, &dst);

        run_ok(&mut cp(&store, &src, &dst));
        assert_same_tree(&src, &dst);
        assert!(
            named(&dst.join("top"), "leaf").len() == 1,
            "{failpoint}: only the directory is left beside it"
        );
    }
}

#[test]
fn a_failed_file_of_a_staged_directory_keeps_its_temporary_there_and_resume_finishes_it() {
    let (_tmp, src, dst, store) = scratch();
    // One worker reads the sources in order: the third read is in the leaf.
    let out = run(cp(&store, &src, &dst).env("FERRY_FAILPOINT", "source.read:3=eio"));
    assert!(!out.status.success(), "a file failed");

    // The directory is in place with every other file, and the failed one
    // as its temporary.
    let leaf = dst.join("top/leaf");
    let temps = temps(&leaf);
    assert_eq!(temps.len(), 1, "the failed file's temporary: {temps:?}");
    let finals = walk(&leaf).len() - 1;
    assert_eq!(finals, FILES - 1, "every other file under its name");
    assert!(named(&dst.join("top"), "leaf._ferry-").is_empty());
    assert_no_partial_files(&src, &dst);

    run_ok(ferry_at(&store).args(["resume", "staged"]));
    assert_same_tree(&src, &dst);
}

/// Finalize never needs the sources: a staged directory a dead run left
/// goes in place with the files it recorded `copied`, or, when none was,
/// is removed with what was written in it.
#[test]
fn finalize_places_or_removes_a_staged_directory_a_dead_run_left() {
    for (failpoint, copied) in [
        ("commit.rename:5=crash", true),
        ("commit.sync_data:1=crash", false),
    ] {
        let (_tmp, src, dst, store) = scratch();
        run_killed(cp(&store, &src, &dst).env("FERRY_FAILPOINT", failpoint));
        assert_eq!(named(&dst.join("top"), "leaf._ferry-").len(), 1);

        let out = run(ferry_at(&store).args(["finalize", "--abort"]).arg(&store));
        assert!(
            named(&dst.join("top"), "leaf._ferry-").is_empty(),
            "{failpoint}: the staged directory is left"
        );
        assert!(temps(&dst).is_empty(), "{failpoint}: {:?}", temps(&dst));
        match copied {
            true => {
                assert!(out.status.success(), "{out:?}");
                assert_same_tree(&src, &dst);
            }
            false => assert!(
                !dst.join("top/leaf").exists(),
                "{failpoint}: nothing of it was copied, nothing of it is placed"
            ),
        }
    }
}

/// Another transfer to the same destination removes the staged directory
/// of one whose owner died, as it removes such a transfer's temporaries,
/// and says so.
#[test]
fn a_dead_transfers_staged_directory_is_removed_by_the_next_copy_there() {
    let (_tmp, src, dst, store) = scratch();
    run_killed(cp(&store, &src, &dst).env("FERRY_FAILPOINT", "commit.sync_data:1=crash"));
    let left = named(&dst.join("top"), "leaf._ferry-");
    assert_eq!(left.len(), 1);

    let out = run_ok(
        ferry_at(&store)
            .args(["cp", "-a", "--json", "--name", "another"])
            .arg(src.join("."))
            .arg(&dst),
    );
    let warnings = json(&out)["warnings"].to_string();
    assert!(
        warnings.contains("removed stale temporary") && warnings.contains("leaf._ferry-"),
        "{warnings}"
    );
    assert!(!left[0].exists(), "{:?} is left", left[0]);
    assert_same_tree(&src, &dst);
}

/// `top/` with two leaves of [`FILES`] each, `a` before `b`.
fn two_leaves(root: &Path) {
    let mut rng = fastrand::Rng::with_seed(9);
    write_file(&root.join("top/note"), b"not staged");
    for leaf in ["a", "b"] {
        for i in 0..FILES {
            let len = rng.usize(0..20_000);
            write_file(
                &root.join(format!("top/{leaf}/f{i:02}")),
                &random_bytes(&mut rng, len),
            );
        }
    }
}

/// A directory goes in place as soon as its last file is recorded
/// `copied`, not at the end: with the placer held at `b`'s first file (one
/// worker, files placed in order: `note`, `a`'s, then `b`'s), `a` is in
/// place and whole, `b` not visible. Then killed; the same command line
/// finishes `b`.
#[test]
fn a_directory_goes_in_place_when_its_last_file_is_copied_not_at_the_end() {
    let (tmp, src, dst, store) = scratch_with(two_leaves);
    let fifo = tmp.path().join("pause");
    run_ok(std::process::Command::new("mkfifo").arg(&fifo));
    // Placed: `note`, then `a`'s files, then `b`'s: held at b's first.
    let held_at = 1 + FILES + 1;
    let mut child = cp(&store, &src, &dst)
        .env("FERRY_FAILPOINT", format!("commit.rename:{held_at}=pause"))
        .env("FERRY_FAILPOINT_FIFO", &fifo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Opening the FIFO's write end returns once the copy is held there.
    let pause = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    assert!(
        dst.join("top/a").is_dir(),
        "`a` is in place while `b` is held"
    );
    let a_count = fs::read_dir(dst.join("top/a")).unwrap().count();
    assert_eq!(a_count, FILES, "`a` appears with all its files at once");
    assert!(!dst.join("top/b").exists(), "`b` is still being written");
    assert_eq!(named(&dst.join("top"), "b._ferry-").len(), 1);
    assert_no_partial_files(&src, &dst);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pause);

    run_ok(&mut cp(&store, &src, &dst));
    assert_same_tree(&src, &dst);
}

/// A directory that cannot be renamed into place (here every `renameat2`
/// fails with EIO) fails its files with a message naming it, and leaves
/// them where the same command line finds and finishes them.
#[test]
fn a_directory_that_cannot_be_put_in_place_fails_its_files_and_a_rerun_finishes_them() {
    let (_tmp, src, dst, store) = scratch();
    let mut traced = std::process::Command::new("strace");
    traced
        .args(["-f", "-o", "/dev/null", "-e", "inject=renameat2:error=EIO"])
        .arg(FERRY)
        .arg("--store")
        .arg(&store)
        .args(["cp", "-a", "--threads", "1", "--name", "staged"])
        .arg(&src)
        .arg(&dst)
        .env_remove("FERRY_FAILPOINT");
    let out = run(&mut traced);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot put its directory in place") && stderr.contains("leaf"),
        "{stderr}"
    );
    assert!(!dst.join("top/leaf").exists());
    assert_no_partial_files(&src, &dst);

    run_ok(&mut cp(&store, &src, &dst));
    assert_same_tree(&src, &dst);
    assert!(named(&dst.join("top"), "leaf._ferry-").is_empty());
}

/// A symlink planted at a staged directory's predictable name (here after
/// a killed run, where the next run takes the name up) is removed, never
/// followed: nothing is written where it points.
#[test]
fn a_symlink_planted_at_a_staged_name_is_not_followed() {
    let (tmp, src, dst, store) = scratch();
    run_killed(cp(&store, &src, &dst).env("FERRY_FAILPOINT", "commit.sync_data:1=crash"));
    let [staged] = named(&dst.join("top"), "leaf._ferry-").try_into().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::remove_dir_all(&staged).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &staged).unwrap();

    run_ok(&mut cp(&store, &src, &dst));
    assert_eq!(
        fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "written through the planted link"
    );
    assert_same_tree(&src, &dst);
}
