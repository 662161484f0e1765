//! Unit tests of the per-user bounds and the input checks; the daemon's own
//! tests run it whole, in `ferry-cli/tests/serve.rs`.

use axum::http::StatusCode;

use super::peer::PerUser;
use super::request::{check_name, check_path};
use super::{NAME_BYTES_MAX, PATH_BYTES_MAX};

#[test]
fn one_user_cannot_take_every_slot() {
    let slots = PerUser::new(2);
    let a1 = slots.acquire(1000).unwrap();
    let _a2 = slots.acquire(1000).unwrap();
    assert!(
        slots.acquire(1000).is_none(),
        "a user holds at most its share"
    );
    assert!(slots.acquire(1001).is_some(), "another user still gets in");
    assert!(
        (0..10).all(|_| slots.acquire(0).is_some()),
        "root is not counted"
    );
    drop(a1);
    assert!(
        slots.acquire(1000).is_some(),
        "a slot comes back when released"
    );
}

#[test]
fn paths_must_be_absolute_without_nul_and_not_too_long() {
    assert!(check_path("source", "/a/b").is_ok());
    let e = check_path("source", "/a\0b").unwrap_err();
    assert_eq!(
        (e.status, e.kind),
        (StatusCode::BAD_REQUEST, "invalid_path")
    );
    assert!(e.message.contains("NUL"));
    assert!(
        check_path("source", "a/b")
            .unwrap_err()
            .message
            .contains("relative")
    );
    let long = format!("/{}", "x".repeat(PATH_BYTES_MAX));
    assert!(check_path("source", &long).is_err());
}

#[test]
fn names_are_bounded_and_printable() {
    assert!(check_name("ckpt-42").is_ok());
    for bad in ["", "a/b", "a\nb", &"x".repeat(NAME_BYTES_MAX + 1)] {
        assert_eq!(check_name(bad).unwrap_err().kind, "bad_request", "{bad:?}");
    }
}

#[test]
fn the_document_names_the_methods_of_every_route() {
    assert_eq!(super::routes::allowed_methods("/v1/transfers"), "GET, POST");
    assert_eq!(
        super::routes::allowed_methods("/v1/transfers/{name}/wait"),
        "GET"
    );
    assert_eq!(super::routes::allowed_methods("/nothing"), "");
}
