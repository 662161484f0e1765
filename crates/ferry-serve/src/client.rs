//! A blocking client of the daemon's API, for the CLI (`--kind daemon`,
//! `--daemon`), the benchmark and the tests. One connection per request:
//! the socket is local, and a connection costs microseconds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::*;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers on the socket (no daemon, or a dead one's socket).
    NoDaemon {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The daemon refused the request.
    Api {
        status: u16,
        kind: String,
        message: String,
        /// [`crate::api::ErrorBody::code`].
        code: Option<u8>,
    },
    /// The answer was not what the API promises (not a ferry daemon?).
    Protocol { socket: PathBuf, detail: String },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NoDaemon { socket, source } => write!(
                f,
                "no ferry daemon answers on {} ({source}): start one with `ferry serve`, or set \
                 $FERRY_SOCKET / --socket",
                socket.display()
            ),
            ClientError::Api { message, .. } => write!(f, "the daemon says: {message}"),
            ClientError::Protocol { socket, detail } => write!(
                f,
                "the daemon on {} answered something unexpected: {detail}",
                socket.display()
            ),
        }
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The code for a daemon error: a library error's own code (a missing
    /// source is 3 with or without the daemon), else the daemon's 30–39.
    pub fn code(&self) -> u8 {
        match self {
            ClientError::NoDaemon { .. } => 30,
            ClientError::Protocol { .. } => 34,
            ClientError::Api {
                code: Some(code), ..
            } => *code,
            ClientError::Api { kind, .. } => match kind.as_str() {
                "transfer_not_found" => 10,
                "name_in_use" => 11,
                "nothing_to_do" => 13,
                "forbidden" | "not_a_daemon_transfer" => 31,
                "bad_request" | "bad_json" | "body_too_large" | "invalid_path"
                | "no_such_route" => 32,
                "busy" => 33,
                "over_limit" => 40,
                _ => 34,
            },
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Why a path cannot go to the daemon (see [`api_path`]).
#[derive(Debug)]
pub enum ApiPathError {
    /// It could not be made absolute (the working directory is gone).
    Io(ferry::Error),
    /// It is not UTF-8: refused as the daemon would (`invalid_path`).
    NotUtf8(ClientError),
}

/// A path as the daemon's API takes it: absolute (the daemon runs
/// elsewhere) and UTF-8 (JSON). `local_kind` names what the caller can use
/// instead for such a path (`--kind threads`, `FERRY_KIND_THREADS`).
pub fn api_path(path: &Path, local_kind: &str) -> Result<String, ApiPathError> {
    let absolute = std::path::absolute(path).map_err(|e| {
        ApiPathError::Io(ferry::Error::Io {
            path: path.to_path_buf(),
            source: e,
        })
    })?;
    absolute.into_os_string().into_string().map_err(|p| {
        ApiPathError::NotUtf8(ClientError::Api {
            status: 400,
            kind: "invalid_path".into(),
            code: None,
            message: format!(
                "{}: the daemon's API takes UTF-8 paths only; use {local_kind} for this one",
                PathBuf::from(p).display()
            ),
        })
    })
}

/// A client of one daemon socket.
pub struct Client {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// Path segments are percent-encoded: a name may hold any character but
/// '/' and control characters.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(socket: &Path) -> ClientResult<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Protocol {
                socket: socket.to_path_buf(),
                detail: format!("cannot start a runtime: {e}"),
            })?;
        Ok(Client {
            socket: socket.to_path_buf(),
            runtime,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether a daemon answers on the socket (for `--kind default`).
    pub fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> ClientResult<Response<Incoming>> {
        let protocol = |detail: String| ClientError::Protocol {
            socket: self.socket.clone(),
            detail,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::NoDaemon {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| protocol(e.to_string()))
    }

    /// Sends `body` (raw bytes) and returns status and body: for tests of
    /// malformed requests, and the typed calls below.
    pub fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> ClientResult<(u16, Vec<u8>)> {
        self.runtime.block_on(async {
            let request = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).expect("a valid method"))
                .uri(path)
                .header("host", "ferry")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .expect("a valid request");
            let response = self.send(request).await?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol {
                    socket: self.socket.clone(),
                    detail: e.to_string(),
                })?
                .to_bytes();
            Ok((status, body.to_vec()))
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> ClientResult<T> {
        let body = body.map_or_else(Vec::new, |b| {
            serde_json::to_vec(b).expect("requests serialize")
        });
        let (status, body) = self.raw(method, path, body)?;
        if StatusCode::from_u16(status).is_ok_and(|s| s.is_success()) {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("status {status}, body not understood: {e}"),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(ClientError::Api {
                status,
                kind: e.kind,
                message: e.error,
                code: e.code,
            }),
            Err(_) => Err(ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("status {status}: {}", String::from_utf8_lossy(&body)),
            }),
        }
    }

    pub fn create(&self, request: &CreateRequest) -> ClientResult<TransferView> {
        self.call("POST", "/v1/transfers", Some(request))
    }

    pub fn add(&self, name: &str, request: &AddRequest) -> ClientResult<AddResponse> {
        let path = format!("/v1/transfers/{}/entries", encode(name));
        self.call("POST", &path, Some(request))
    }

    /// Dispatches `name`; unless `request` says otherwise, with this
    /// process's umask (files get the modes a local `cp` would give).
    pub fn dispatch(&self, name: &str, request: &RunRequest) -> ClientResult<TransferView> {
        let path = format!("/v1/transfers/{}/dispatch", encode(name));
        self.call("POST", &path, Some(&with_umask(request)))
    }

    /// Resumes `name`, with this process's umask as [`Client::dispatch`].
    pub fn resume(&self, name: &str, request: &RunRequest) -> ClientResult<TransferView> {
        let path = format!("/v1/transfers/{}/resume", encode(name));
        self.call("POST", &path, Some(&with_umask(request)))
    }

    pub fn cancel(&self, name: &str) -> ClientResult<TransferView> {
        let path = format!("/v1/transfers/{}/cancel", encode(name));
        self.call("POST", &path, None::<&()>)
    }

    /// Sets a transfer's bandwidth limit (`None`: none), also while it runs.
    pub fn limit(&self, name: &str, bytes_per_second: Option<u64>) -> ClientResult<TransferView> {
        let path = format!("/v1/transfers/{}/limit", encode(name));
        let body = crate::api::LimitRequest {
            bytes_per_second: bytes_per_second.unwrap_or(0),
        };
        self.call("POST", &path, Some(&body))
    }

    /// A transfer with all its failures: the daemon answers a page at a
    /// time, this asks for each.
    pub fn status(&self, name: &str) -> ClientResult<TransferView> {
        let path = format!("/v1/transfers/{}", encode(name));
        let mut view: TransferView = self.call("GET", &path, None::<&()>)?;
        while let Some(after) = view.failures_after.take() {
            let next: TransferView =
                self.call("GET", &format!("{path}?after={after}"), None::<&()>)?;
            view.failures.extend(next.failures);
            view.failures_after = next.failures_after;
        }
        Ok(view)
    }

    /// Reads back `name`'s committed files (as its user) and compares
    /// them with their stored checksums.
    pub fn verify(&self, name: &str) -> ClientResult<Vec<ferry::verify::Checked>> {
        let path = format!("/v1/transfers/{}/verify", encode(name));
        self.call("GET", &path, None::<&()>)
    }

    /// All the caller's transfers, a page of [`PAGE_MAX`] at a time.
    pub fn list(&self) -> ClientResult<Vec<TransferView>> {
        let mut all: Vec<TransferView> = Vec::new();
        loop {
            let path = match all.last() {
                None => format!("/v1/transfers?limit={PAGE_MAX}"),
                Some(last) => format!("/v1/transfers?limit={PAGE_MAX}&after={}", last.id),
            };
            let page: Vec<TransferView> = self.call("GET", &path, None::<&()>)?;
            let full = page.len() as u64 == PAGE_MAX;
            all.extend(page);
            if !full {
                return Ok(all);
            }
        }
    }

    /// One long-poll: returns when the transfer is over or `timeout` passed.
    pub fn wait_once(&self, name: &str, timeout: Duration) -> ClientResult<WaitResponse> {
        let path = format!(
            "/v1/transfers/{}/wait?timeout_ms={}",
            encode(name),
            timeout.as_millis()
        );
        self.call("GET", &path, None::<&()>)
    }

    /// Long-polls until the transfer is over.
    pub fn wait(&self, name: &str) -> ClientResult<WaitResponse> {
        loop {
            let answer = self.wait_once(name, Duration::from_millis(WAIT_MS_DEFAULT))?;
            if answer.done {
                return Ok(answer);
            }
        }
    }

    /// Follows `GET /v1/events` from `since`, handing each JSON line to
    /// `line` until it returns false or the stream ends (the daemon
    /// stopped: continue from the last `seq` with a new call).
    pub fn watch(
        &self,
        since: u64,
        transfer: Option<&str>,
        mut line: impl FnMut(serde_json::Value) -> bool,
    ) -> ClientResult<()> {
        let mut path = format!("/v1/events?since={since}");
        if let Some(name) = transfer {
            path.push_str(&format!("&transfer={}", encode(name)));
        }
        self.runtime.block_on(async {
            let request = Request::builder()
                .method(Method::GET)
                .uri(path)
                .header("host", "ferry")
                .body(Full::new(Bytes::new()))
                .expect("a valid request");
            let response = self.send(request).await?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    // The daemon went away mid-stream.
                    return Ok(());
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                pending.extend_from_slice(&data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let text: Vec<u8> = pending.drain(..=end).collect();
                    let value: serde_json::Value =
                        serde_json::from_slice(&text).map_err(|e| ClientError::Protocol {
                            socket: self.socket.clone(),
                            detail: format!("status {status}, a line that is not JSON: {e}"),
                        })?;
                    if status != 200 {
                        return Err(ClientError::Api {
                            status,
                            kind: value["kind"].as_str().unwrap_or_default().into(),
                            message: value["error"].as_str().unwrap_or_default().into(),
                            code: value["code"].as_u64().and_then(|c| u8::try_from(c).ok()),
                        });
                    }
                    if !line(value) {
                        return Ok(());
                    }
                }
            }
            if status != 200 {
                let value: serde_json::Value = serde_json::from_slice(&pending).unwrap_or_default();
                return Err(ClientError::Api {
                    status,
                    kind: value["kind"].as_str().unwrap_or_default().into(),
                    message: value["error"].as_str().unwrap_or_default().into(),
                    code: value["code"].as_u64().and_then(|c| u8::try_from(c).ok()),
                });
            }
            Ok(())
        })
    }

    pub fn metrics(&self) -> ClientResult<String> {
        let (status, body) = self.raw("GET", "/metrics", Vec::new())?;
        if status != 200 {
            return Err(ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("metrics answered {status}"),
            });
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The request, with this process's umask when it names none.
fn with_umask(request: &RunRequest) -> RunRequest {
    RunRequest {
        umask: request
            .umask
            .or_else(|| Some(ferry::engine::current_umask())),
        ..request.clone()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_percent_encoded_in_paths() {
        assert_eq!(super::encode("ckpt-4.2_x~"), "ckpt-4.2_x~");
        assert_eq!(super::encode("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(super::encode("é"), "%C3%A9");
    }
}
