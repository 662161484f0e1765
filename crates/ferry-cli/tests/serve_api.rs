//! `ferry serve`'s HTTP API as its document (docs/openapi.json) promises
//! it: the document served, every refusal the JSON error body, statuses
//! and lists a page at a time, and the bound on a user's entries across
//! transfers, met before the daemon lists more than it allows.
//!
//! .ci/fuzz-api fuzzes the whole API against the document; these tests pin
//! what each fix of issue #18 is about, with the real binary.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use ferry_serve::api::{CreateRequest, RunRequest, TransferView};
use ferry_serve::client::Client;
use util::daemon::{Daemon, add};
use util::*;

const A: u32 = 64_021;

fn serve(s: &Scratch, bounds: &[&str]) -> Daemon {
    let socket = s.path("ferry.sock");
    let mut cmd = s.ferry();
    cmd.arg("--socket")
        .arg(&socket)
        .args(["serve", "--workers", "1"])
        .args(bounds);
    Daemon::spawn(s, cmd, socket)
}

/// `(status, body as JSON)`; the body must be JSON.
fn call(client: &Client, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = client.raw(method, path, body.as_bytes().to_vec()).unwrap();
    let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {status} with a body that is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

fn create(client: &Client, name: &str) {
    client
        .create(&CreateRequest {
            name: Some(name.into()),
            ..CreateRequest::default()
        })
        .unwrap();
}

#[test]
fn the_document_is_served_and_every_refusal_is_the_documented_json() {
    let s = Scratch::new();
    let daemon = serve(&s, &[]);
    let client = daemon.client();

    let (status, served) = client.raw("GET", "/openapi.json", Vec::new()).unwrap();
    assert_eq!(status, 200);
    let checked_in = fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ));
    assert_eq!(
        served,
        checked_in.unwrap(),
        "GET /openapi.json is docs/openapi.json"
    );

    // The framework's own refusals, as the API's error body.
    let (status, e) = call(&client, "DELETE", "/v1/transfers", "");
    assert_eq!(
        (status, e["kind"].as_str()),
        (405, Some("method_not_allowed")),
        "{e}"
    );
    assert!(
        e["error"].as_str().unwrap().contains("GET"),
        "names what it takes: {e}"
    );
    let (status, e) = call(&client, "GET", "/v1/transfers?limit=many", "");
    assert_eq!(
        (status, e["kind"].as_str()),
        (400, Some("bad_request")),
        "{e}"
    );
    assert!(e["error"].as_str().unwrap().contains("limit"), "{e}");
    let (status, e) = call(&client, "GET", "/v1/transfers/x/wait?colour=red", "");
    assert_eq!(status, 400, "an unknown parameter: {e}");
    let (status, e) = call(&client, "GET", "/v1/transfers/%FF%FE", "");
    assert_eq!(status, 400, "a name that is not UTF-8: {e}");

    // Bounds refused, not clamped.
    let (status, e) = call(&client, "GET", "/v1/transfers/x/wait?timeout_ms=60001", "");
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("60000"), "{e}");
    let (status, e) = call(&client, "GET", "/v1/transfers?limit=1001", "");
    assert_eq!(status, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("1000"), "{e}");

    // null is no string; a body is an object.
    let (status, e) = call(&client, "POST", "/v1/transfers", r#"{"name": null}"#);
    assert_eq!((status, e["kind"].as_str()), (400, Some("bad_json")), "{e}");
    let (status, e) = call(&client, "POST", "/v1/transfers", "[]");
    assert_eq!((status, e["kind"].as_str()), (400, Some("bad_json")), "{e}");

    // An integer may be written 2.0 (JSON Schema's integer); 2.5 is refused.
    write_file(&s.path("src/f"), b"data");
    add(&client, "t", &[&s.path("src/f")], &s.path("out"));
    let (status, e) = call(
        &client,
        "POST",
        "/v1/transfers/t/dispatch",
        r#"{"threads": 2.5}"#,
    );
    assert_eq!(status, 400, "{e}");
    let (status, view) = call(
        &client,
        "POST",
        "/v1/transfers/t/dispatch",
        r#"{"threads": 2.0, "umask": 18.0}"#,
    );
    assert_eq!(status, 202, "{view}");
    assert_eq!(client.wait("t").unwrap().state, "completed");
    assert_eq!(fs::read(s.path("out")).unwrap(), b"data");
}

#[test]
fn status_and_list_come_a_page_at_a_time_and_the_cli_pages_through() {
    let s = Scratch::new();
    let daemon = serve(&s, &[]);
    let client = daemon.client();
    // Five files whose sources are gone by the time they are copied: five
    // failures, in entry order.
    let sources: Vec<_> = (0..5).map(|i| s.path(&format!("src/f{i}"))).collect();
    for source in &sources {
        write_file(source, b"x");
    }
    fs::create_dir(s.path("out")).unwrap();
    let refs: Vec<&Path> = sources.iter().map(|p| p.as_path()).collect();
    add(&client, "lost", &refs, &s.path("out"));
    for source in &sources {
        fs::remove_file(source).unwrap();
    }
    client.dispatch("lost", &RunRequest::default()).unwrap();
    assert_eq!(client.wait("lost").unwrap().state, "failed");

    let page = |query: &str| -> TransferView {
        let (status, json) = call(&client, "GET", &format!("/v1/transfers/lost{query}"), "");
        assert_eq!(status, 200, "{json}");
        serde_json::from_value(json).unwrap()
    };
    let first = page("?limit=2");
    assert_eq!(
        (first.files, first.files_failed),
        (5, 5),
        "counts are whole"
    );
    assert_eq!(first.failures.len(), 2);
    let mut seen: Vec<String> = first.failures.iter().map(|f| f.path.clone()).collect();
    let mut after = first.failures_after;
    while let Some(cursor) = after {
        let next = page(&format!("?limit=2&after={cursor}"));
        assert!(next.failures.len() <= 2);
        seen.extend(next.failures.iter().map(|f| f.path.clone()));
        after = next.failures_after;
    }
    let expected: Vec<String> = (0..5)
        .map(|i| s.path(&format!("out/f{i}")).to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, expected, "every failure once, in order");
    assert_eq!(
        page("?limit=5").failures_after,
        None,
        "the last page says so"
    );
    // The client (and so the CLI) pages through.
    assert_eq!(client.status("lost").unwrap().failures.len(), 5);
    let out = run(s
        .ferry()
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["status", "--daemon", "lost"]));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in &expected {
        assert!(err.contains(path.as_str()), "{path} in {err}");
    }

    // The list: by id, `limit` at a time, `after` the last id seen.
    for name in ["b", "c"] {
        create(&client, name);
    }
    let list = |query: &str| -> Vec<TransferView> {
        let (status, json) = call(&client, "GET", &format!("/v1/transfers{query}"), "");
        assert_eq!(status, 200, "{json}");
        serde_json::from_value(json).unwrap()
    };
    let first = list("?limit=2");
    assert_eq!(first.len(), 2);
    let rest = list(&format!("?limit=2&after={}", first[1].id));
    let names: Vec<_> = first.iter().chain(&rest).map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["lost", "b", "c"]);
    assert_eq!(client.list().unwrap().len(), 3);
}

#[test]
fn a_user_over_the_entry_bound_across_transfers_is_refused_before_the_walk_goes_past_it() {
    if !root_or_skip("a second user's bound (root is not bound)") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // dir: five files, then a directory A may not list (walked last: a
    // directory's files come before its subdirectories).
    for i in 0..5 {
        write_file(&s.path(&format!("dir/f{i}")), b"x");
    }
    fs::create_dir(s.path("dir/zz-closed")).unwrap();
    fs::set_permissions(s.path("dir/zz-closed"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(s.path("dir"), fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.path("out");
    fs::create_dir(&out).unwrap();
    Command::new("chown")
        .arg(format!("{A}:{A}"))
        .arg(&out)
        .status()
        .unwrap();
    let daemon = serve(
        &s,
        &[
            "--max-entries-per-transfer",
            "4",
            "--max-entries-per-user",
            "8",
        ],
    );
    // As A, over the socket (curl: the CLI would dispatch, and a finished
    // transfer no longer counts).
    let as_a = |method: &str, path: &str, body: String| -> (u16, serde_json::Value) {
        let out = run_ok(
            Command::new("setpriv")
                .arg(format!("--reuid={A}"))
                .arg(format!("--regid={A}"))
                .arg("--clear-groups")
                .args(["curl", "-sS", "-w", "\n%{http_code}", "--unix-socket"])
                .arg(&daemon.socket)
                .args(["-X", method, "-d", &body])
                .arg(format!("http://ferry{path}")),
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (json, status) = text.rsplit_once('\n').unwrap();
        (status.parse().unwrap(), serde_json::from_str(json).unwrap())
    };
    let copy = |name: &str, source: &Path| {
        let (status, e) = as_a("POST", "/v1/transfers", format!(r#"{{"name": "{name}"}}"#));
        assert_eq!(status, 201, "{e}");
        let body = serde_json::json!({
            "sources": [source],
            "dest": s.path(&format!("out/{name}")),
            "recursive": true,
        });
        as_a(
            "POST",
            &format!("/v1/transfers/{name}/entries"),
            body.to_string(),
        )
    };
    // Over the transfer's bound of 4 at the fifth entry: refused for the
    // bound, not for the directory past it that A cannot list (which a
    // walk to the end would have met first).
    let (status, e) = copy("whole", &s.path("dir"));
    assert_eq!(
        (status, e["kind"].as_str()),
        (422, Some("over_limit")),
        "{e}"
    );
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("entries per transfer: 4"),
        "{e}"
    );

    // Three transfers of 3 entries each: the third would make 9, over the
    // user's 8; nothing of it is added.
    for i in 0..3 {
        for f in 0..2 {
            write_file(&s.path(&format!("small{i}/f{f}")), b"x");
        }
        let dir = s.path(&format!("small{i}"));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for i in 0..2 {
        let (status, e) = copy(&format!("s{i}"), &s.path(&format!("small{i}")));
        assert_eq!((status, e["added"].as_u64()), (200, Some(3)), "{e}");
    }
    let (status, e) = copy("s2", &s.path("small2"));
    assert_eq!(
        (status, e["kind"].as_str()),
        (422, Some("over_limit")),
        "{e}"
    );
    let message = e["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("uid {A}")) && message.contains("entries per user: 8"),
        "{message}"
    );
    let (_, view) = as_a("GET", "/v1/transfers/s2", String::new());
    assert_eq!(view["files"], 0, "nothing was added: {view}");
    // Cancelled, s0 no longer counts: s2 fits.
    let (status, e) = as_a("POST", "/v1/transfers/s0/cancel", String::new());
    assert_eq!(status, 200, "{e}");
    let body = serde_json::json!({
        "sources": [s.path("small2")],
        "dest": s.path("out/s2"),
        "recursive": true,
    });
    let (status, e) = as_a("POST", "/v1/transfers/s2/entries", body.to_string());
    assert_eq!(status, 200, "{e}");
}
