//! `ferry serve`: a node-local daemon that moves `daemon`-kind transfers
//! after their caller has exited or died, with an HTTP/JSON API on a Unix
//! socket (`docs/openapi.json`, served at `GET /openapi.json`), and the client
//! the CLI uses.
//!
//! # Brief overview
//!
//! - [`server::serve`] runs the daemon: it resumes every daemon transfer a
//!   previous daemon left dispatched or running, then answers requests
//!   until SIGTERM. Movers ([`server::Config::workers`]) run transfers one
//!   each, with the file credentials of the user who made them.
//! - [`creds`] reads a connection's peer credentials and runs code as that
//!   caller (per-thread fsuid, fsgid and groups); the only place in ferry
//!   that changes credentials.
//! - [`api`] holds the requests and answers; [`client::Client`] calls them.
//!
//! ```no_run
//! use ferry_serve::{api, client::Client, server::default_socket_path};
//!
//! let client = Client::new(&default_socket_path())?;
//! let t = client.create(&api::CreateRequest {
//!     name: Some("ckpt".into()),
//!     preserve: true,
//!     ..Default::default()
//! })?;
//! client.add(&t.name, &api::AddRequest {
//!     sources: vec!["/bb/ckpt".into()],
//!     dest: "/pfs/ckpt".into(),
//!     recursive: true,
//!     ..Default::default()
//! })?;
//! client.dispatch(&t.name, &api::RunRequest::default())?;
//! let done = client.wait(&t.name)?;
//! println!("{} {}", done.name, done.state);
//! # Ok::<(), ferry_serve::client::ClientError>(())
//! ```

pub mod api;
pub mod client;
pub mod creds;
mod error;
mod metrics;
pub mod server;

pub use error::ServeError;
