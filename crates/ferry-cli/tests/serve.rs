//! `ferry serve`: transfers that outlive their caller and their daemon, who
//! may see and do what, and requests the daemon must refuse without harm.
//!
//! Each test starts its own daemon on a scratch store and socket, waits for
//! the socket to answer (bounded), and holds the daemon mid-transfer with a
//! fail point (`pause` on a FIFO, or `crash`) rather than hoping for timing.

mod util;

use std::fs;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_serve::api::{AddRequest, CreateRequest, RunRequest};
use ferry_serve::client::Client;
use util::daemon::{DEADLINE, Daemon, mkfifo, paused};
use util::*;

#[test]
fn caller_killed_after_dispatch_the_transfer_completes() {
    let s = Scratch::new();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..5 {
        write_file(
            &s.path(&format!("src/f{i}")),
            &random_bytes(&mut rng, 100_000),
        );
    }
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let daemon = Daemon::serve_paused(&s, "commit.write_data", &fifo);
    // The caller waits for the end; it is killed while the daemon holds
    // the transfer mid-copy.
    let mut caller = s
        .ferry()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["cp", "--kind", "daemon", "--wait", "--name", "orphan", "-a"])
        .arg(s.path("src"))
        .arg(s.path("dst"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pause = paused(&fifo);
    caller.kill().unwrap();
    let status = caller.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the caller died of SIGKILL");
    let client = daemon.client();
    assert_eq!(client.status("orphan").unwrap().state, "running");
    drop(pause);
    let done = client.wait("orphan").unwrap();
    assert_eq!(done.state, "completed", "{}", daemon.log());
    assert_same_tree(&s.path("src"), &s.path("dst"));
}

/// One JSON line of the daemon's watch.
fn seq(line: &serde_json::Value) -> Option<u64> {
    line["seq"].as_u64()
}

#[test]
fn daemon_killed_mid_transfer_is_resumed_by_the_next_without_restarting_files() {
    let s = Scratch::new();
    let mut rng = fastrand::Rng::with_seed(11);
    // 128 MiB with one copy thread: its ranges complete in order, so its
    // durable prefix is recorded at 32 MiB, and the second record (64 MiB)
    // is where the daemon dies, whatever the machine's load.
    write_file(&s.path("src/big"), &random_bytes(&mut rng, 128 << 20));
    for i in 0..8 {
        write_file(
            &s.path(&format!("src/small/{i}")),
            &random_bytes(&mut rng, 4096),
        );
    }
    let mut first = Daemon::serve(
        &s,
        &[(
            "FERRY_FAILPOINT",
            Path::new("commit.record_progress:2=crash"),
        )],
    );
    // A watcher from the start of the log, following across the crash.
    let watcher = {
        let socket = first.socket.clone();
        std::thread::spawn(move || {
            let mut lines = Vec::new();
            Client::new(&socket)
                .unwrap()
                .watch(0, None, |line| {
                    lines.push(line);
                    true
                })
                .unwrap();
            lines
        })
    };
    run_ok(
        s.ferry()
            .arg("--socket")
            .arg(&first.socket)
            .args([
                "cp",
                "--kind",
                "daemon",
                "--threads",
                "1",
                "--name",
                "big",
                "-a",
                "--verify",
                "copied",
            ])
            .arg(s.path("src"))
            .arg(s.path("dst")),
    );
    let status = first.exited();
    assert_eq!(
        status.signal(),
        Some(9),
        "the daemon SIGKILLed itself: {}",
        first.log()
    );
    // The stream ended with the daemon; the watcher has its cursor.
    let before = watcher.join().unwrap();
    let cursor = before
        .iter()
        .rev()
        .find_map(seq)
        .expect("events before the crash");

    let second = Daemon::serve(&s, &[]);
    let client = second.client();
    let mut after = Vec::new();
    let id = client.status("big").unwrap().id;
    client
        .watch(cursor, None, |line| {
            let end = line["event"] == "transfer.completed" && line["subject"]["transfer"] == id;
            after.push(line);
            !end
        })
        .unwrap();
    assert_eq!(client.wait("big").unwrap().state, "completed");
    assert_same_tree(&s.path("src"), &s.path("dst"));

    // No gap and no repeat across the restart: 1, 2, 3, … in order.
    let seqs: Vec<u64> = before.iter().chain(&after).filter_map(seq).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "the watcher's cursor continued without a gap"
    );
    assert!(
        after.iter().any(|l| l["event"] == "transfer.reattached"),
        "the second daemon re-attached the transfer"
    );
    // …and resumed it with the options it was dispatched with.
    let resumed = after
        .iter()
        .find(|l| l["event"] == "transfer.dispatched")
        .expect("the second daemon dispatched it again");
    assert_eq!(resumed["context"]["verify"], "copied", "{resumed}");
    assert_eq!(resumed["context"]["workers"], 1, "{resumed}");

    // What each file had durable before the crash, from the log…
    let mut durable: std::collections::HashMap<u64, u64> = Default::default();
    for line in &before {
        let Some(entry) = line["subject"]["entry"].as_u64() else {
            continue;
        };
        let bytes = match line["event"].as_str().unwrap() {
            "file.progress" => line["context"]["bytes_durable"].as_u64(),
            "file.copied" => line["context"]["bytes"].as_u64(),
            _ => None,
        };
        if let Some(bytes) = bytes {
            durable.insert(entry, bytes);
        }
    }
    let big_prefix = *durable.values().max().unwrap();
    assert!(
        big_prefix >= 32 << 20,
        "the big file's prefix was recorded: {durable:?}"
    );
    // …and no file starts again below it.
    for line in &after {
        let Some(entry) = line["subject"]["entry"].as_u64() else {
            continue;
        };
        match line["event"].as_str().unwrap() {
            "file.copying" => {
                let offset = line["context"]["offset"].as_u64().unwrap();
                assert!(
                    offset >= durable.get(&entry).copied().unwrap_or(0),
                    "entry {entry} restarted at {offset}, below its durable {:?}",
                    durable.get(&entry)
                );
                if durable.contains_key(&entry) {
                    assert!(offset > 0, "entry {entry} restarted from zero");
                }
            }
            "file.copied" if durable.get(&entry).is_some_and(|&d| d > 0) => {
                // Copied again only if it was not copied before.
                assert!(
                    !before.iter().any(|l| l["event"] == "file.copied"
                        && l["subject"]["entry"].as_u64() == Some(entry)),
                    "entry {entry} was copied twice"
                );
            }
            _ => {}
        }
    }
    let resumed_big = after.iter().any(|l| {
        l["event"] == "file.copying" && l["context"]["offset"].as_u64() == Some(big_prefix)
    });
    assert!(
        resumed_big,
        "the big file continued from {big_prefix}: {after:?}"
    );
}

/// `ferry …` as another user (no user database entry needed).
fn as_user(uid: u32, socket: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(FERRY)
        .arg("--socket")
        .arg(socket)
        .env_remove("FERRY_FAILPOINT");
    cmd
}

fn own(path: &Path, uid: u32, mode: u32) {
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(uid)),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn code(cmd: &mut Command) -> i32 {
    run(cmd).status.code().expect("an exit code")
}

#[test]
fn users_see_and_control_only_their_own_transfers_and_files() {
    if !root_or_skip("two users on one daemon") {
        return;
    }
    const A: u32 = 64_001;
    const B: u32 = 64_002;
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // A's private source and destination; B's own directory.
    write_file(&s.path("a/secret"), b"only A may read this");
    fs::create_dir(s.path("a-out")).unwrap();
    write_file(&s.path("b/mine"), b"B's file");
    own(&s.path("a/secret"), A, 0o600);
    own(&s.path("a"), A, 0o700);
    own(&s.path("a-out"), A, 0o700);
    own(&s.path("b/mine"), B, 0o644);
    own(&s.path("b"), B, 0o755);
    let fifo = s.path("pause");
    mkfifo(&fifo);
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o666)).unwrap();
    let daemon = Daemon::serve_paused(&s, "commit.write_data", &fifo);
    let socket = &daemon.socket;

    // A's transfer, held mid-copy.
    run_ok(
        as_user(A, socket)
            .args(["cp", "--kind", "daemon", "--name", "a-xfer"])
            .arg(s.path("a/secret"))
            .arg(s.path("a-out/")),
    );
    let pause = paused(&fifo);

    // B sees nothing of it, and cannot wait on it or cancel it.
    let list = run_ok(as_user(B, socket).args(["--daemon", "status", "--json"]));
    assert!(!String::from_utf8_lossy(&list.stdout).contains("a-xfer"));
    assert_eq!(
        code(as_user(B, socket).args(["--daemon", "status", "a-xfer"])),
        10
    );
    assert_eq!(
        code(as_user(B, socket).args(["--daemon", "wait", "a-xfer"])),
        10
    );
    assert_eq!(
        code(as_user(B, socket).args(["--daemon", "cancel", "a-xfer"])),
        10
    );
    assert_eq!(
        code(as_user(B, socket).args(["--daemon", "watch", "--json", "--transfer", "a-xfer"])),
        10
    );
    // Nor take its name.
    assert_eq!(
        code(
            as_user(B, socket)
                .args(["cp", "--kind", "daemon", "--name", "a-xfer"])
                .arg(s.path("b/mine"))
                .arg(s.path("b/copy"))
        ),
        11
    );
    // B cannot make the daemon read A's file…
    assert_eq!(
        code(
            as_user(B, socket)
                .args(["cp", "--kind", "daemon", "--wait"])
                .arg(s.path("a/secret"))
                .arg(s.path("b/stolen"))
        ),
        4,
        "planning as B: permission denied"
    );
    assert!(!s.path("b/stolen").exists());
    // …nor write where only A may.
    let into_a = code(
        as_user(B, socket)
            .args(["cp", "--kind", "daemon", "--wait"])
            .arg(s.path("b/mine"))
            .arg(s.path("a-out/planted")),
    );
    assert_ne!(into_a, 0, "B wrote into A's directory");
    assert!(!s.path("a-out/planted").exists());
    assert!(temps(&s.path("a-out")).len() <= 1, "only A's own temporary");

    // Root sees A's transfer.
    let root_view = daemon.client().status("a-xfer").unwrap();
    assert_eq!(root_view.uid, Some(A));
    drop(pause);
    // A can wait on it; the data was written as A.
    assert_eq!(
        code(as_user(A, socket).args(["--daemon", "wait", "a-xfer"])),
        0
    );
    let copy = s.path("a-out/secret");
    assert_eq!(fs::read(&copy).unwrap(), b"only A may read this");
    assert_eq!(
        fs::metadata(&copy).unwrap().uid(),
        A,
        "written with A's credentials"
    );
    // Root's watch shows A's events; B's shows B's own and none of A's.
    let mut seen = Vec::new();
    daemon
        .client()
        .watch(0, None, |line| {
            let bookmark = line.get("bookmark").is_some();
            seen.push(line);
            !bookmark
        })
        .unwrap();
    assert!(
        seen.iter().any(|l| l["subject"]["name"] == "a-xfer"),
        "root sees A's events"
    );
    let mut watch = as_user(B, socket)
        .args(["--daemon", "watch", "--json", "--since", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(watch.stdout.take().unwrap()).lines() {
        let line: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if line.get("bookmark").is_some() {
            break;
        }
        lines.push(line);
    }
    watch.kill().unwrap();
    watch.wait().unwrap();
    assert!(!lines.is_empty(), "B sees its own transfers' events");
    for line in &lines {
        assert_ne!(line["subject"]["name"], "a-xfer", "B saw A's event {line}");
        assert_ne!(
            line["subject"]["transfer"], root_view.id,
            "B saw A's event {line}"
        );
    }
}

/// Sends a request with a body of `len` bytes of `byte`, streamed, and
/// returns the status line and body of the answer.
fn huge_request(socket: &Path, len: usize) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = format!(
        "POST /v1/transfers HTTP/1.1\r\nhost: ferry\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let chunk = vec![b' '; 1 << 20];
        let mut sent = 0;
        while sent < len {
            // The daemon stops reading past its limit: a failed write is
            // the expected end.
            if writer.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let sent = sender.join().unwrap();
    assert!(
        sent < len,
        "the daemon read all {len} bytes instead of stopping at its limit"
    );
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn malformed_requests_get_a_clear_4xx_and_the_daemon_goes_on() {
    let s = Scratch::new();
    write_file(&s.path("src/f"), b"data");
    let daemon = Daemon::serve(&s, &[]);
    let client = daemon.client();
    let healthy = || {
        let (status, _) = client.raw("GET", "/v1/transfers", Vec::new()).unwrap();
        assert_eq!(status, 200, "the daemon still serves");
    };
    let body = |b: &[u8]| -> (u16, serde_json::Value) {
        let (status, body) = client.raw("POST", "/v1/transfers", b.to_vec()).unwrap();
        (status, serde_json::from_slice(&body).expect("a JSON error"))
    };

    let (status, e) = body(b"{\"name\": ");
    assert_eq!((status, e["kind"].as_str()), (400, Some("bad_json")));
    assert!(e["error"].as_str().unwrap().contains("EOF"), "{e}");
    healthy();

    let (status, e) = body(b"{\"name\": \"x\", \"colour\": \"red\"}");
    assert_eq!(status, 400);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{e}"
    );
    healthy();

    let (status, e) = body(b"[1, 2, 3]");
    assert_eq!((status, e["kind"].as_str()), (400, Some("bad_json")));
    healthy();

    let answer = huge_request(&daemon.socket, 100 << 20);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than 1048576 bytes"), "{answer}");
    healthy();

    let t = client
        .create(&CreateRequest {
            name: Some("nul".into()),
            ..CreateRequest::default()
        })
        .unwrap();
    let src = s.path("src/f").to_str().unwrap().to_owned();
    for (sources, dest, what) in [
        (
            vec![format!("{src}\0/etc/shadow")],
            s.path("d").to_str().unwrap().to_owned(),
            "NUL",
        ),
        (vec![src.clone()], "/tmp/x\0y".to_owned(), "NUL"),
        (
            vec!["relative/path".to_owned()],
            "/tmp/x".to_owned(),
            "relative",
        ),
    ] {
        let e = client
            .add(
                &t.name,
                &AddRequest {
                    sources,
                    dest,
                    recursive: false,
                    ..AddRequest::default()
                },
            )
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains(what), "{text}");
        assert!(
            matches!(e, ferry_serve::client::ClientError::Api { status: 400, .. }),
            "{e:?}"
        );
        healthy();
    }
    let (status, body) = client
        .raw("GET", "/v1/transfers/nul/wait?timeout_ms=x", Vec::new())
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = client.raw("GET", "/v1/nothing/here", Vec::new()).unwrap();
    assert_eq!(status, 404);
    let e = client
        .dispatch(
            &t.name,
            &RunRequest {
                threads: Some(1000),
                ..RunRequest::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("threads must be 1 to 64"), "{e}");
    healthy();

    // And a good request after all that works.
    client
        .add(
            &t.name,
            &AddRequest {
                sources: vec![src],
                dest: s.path("dst").to_str().unwrap().to_owned(),
                recursive: false,
                ..AddRequest::default()
            },
        )
        .unwrap();
    client.dispatch(&t.name, &RunRequest::default()).unwrap();
    assert_eq!(client.wait(&t.name).unwrap().state, "completed");
    assert_eq!(fs::read(s.path("dst")).unwrap(), b"data");
    let metrics = client.metrics().unwrap();
    assert!(metrics.contains("ferry_store_read_only 0"), "{metrics}");
    assert!(
        metrics.contains("ferry_transfers{state=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferry_errors_total{kind=\"request_4xx\"}"),
        "{metrics}"
    );
}

#[test]
fn sigterm_stops_the_daemon_within_its_bound_and_a_second_daemon_is_refused() {
    let s = Scratch::new();
    let mut daemon = Daemon::serve(&s, &[]);
    let second = run(s.ferry().arg("--socket").arg(&daemon.socket).arg("serve"));
    assert_eq!(second.status.code(), Some(35), "one daemon per socket");
    let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).unwrap();
    let signalled = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = daemon.exited();
    assert!(status.success(), "{status}: {}", daemon.log());
    assert!(
        signalled.elapsed() < ferry_serve::server::SHUTDOWN_MOVERS + Duration::from_secs(5),
        "stopped within its bound"
    );
    assert!(!daemon.socket.exists(), "the socket is removed");
    assert_eq!(
        code(
            s.ferry()
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["--daemon", "status"])
        ),
        30,
        "no daemon answers"
    );
}

/// Polls the daemon's log for `text` (bounded): the daemon says when it
/// got a signal.
fn wait_for_log(daemon: &Daemon, text: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !daemon.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the daemon never logged {text:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigterm_mid_transfer_leaves_it_running_for_the_next_daemon() {
    let s = Scratch::new();
    let mut rng = fastrand::Rng::with_seed(5);
    write_file(&s.path("src/big"), &random_bytes(&mut rng, 64 << 20));
    write_file(&s.path("src/small"), b"small");
    let fifo = s.path("pause");
    mkfifo(&fifo);
    let mut first = Daemon::serve_paused(&s, "commit.write_data:3", &fifo);
    run_ok(
        s.ferry()
            .arg("--socket")
            .arg(&first.socket)
            .args([
                "cp",
                "--kind",
                "daemon",
                "--threads",
                "1",
                "--name",
                "term",
                "-a",
            ])
            .arg(s.path("src"))
            .arg(s.path("dst")),
    );
    // Mid-copy, held (one copy thread: nothing else moves meanwhile); then
    // SIGTERM, and once the daemon took it, let go.
    let pause = paused(&fifo);
    let pid = rustix::process::Pid::from_raw(first.child.id() as i32).unwrap();
    let signalled = Instant::now();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    wait_for_log(&first, "SIGTERM");
    drop(pause);
    let status = first.exited();
    assert!(status.success(), "{status}: {}", first.log());
    assert!(
        signalled.elapsed() < ferry_serve::server::SHUTDOWN_MOVERS + Duration::from_secs(5),
        "stopped within its bound"
    );
    // Not failed, not cancelled: still running, for the next daemon.
    let local = json(&run_ok(s.ferry().args(["status", "term", "--json"])));
    assert_eq!(local["state"], "running", "{local}");
    assert!(
        !s.path("dst/big").exists(),
        "nothing partial under its final name"
    );

    let second = Daemon::serve(&s, &[]);
    assert_eq!(second.client().wait("term").unwrap().state, "completed");
    assert_same_tree(&s.path("src"), &s.path("dst"));
}
