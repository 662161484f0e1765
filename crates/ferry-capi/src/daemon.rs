//! Transfers of kind daemon (`FERRY_KIND_DAEMON`, and `FERRY_KIND_DEFAULT`
//! while a daemon answers): created in, and moved by, `ferry serve`, reached
//! through its socket with `ferry-serve`'s client. The caller may exit after
//! the dispatch; the daemon completes the transfer. Translation only: each
//! call is one request, its answer a result or a [`CError`] with the CLI's
//! exit code for it.

use std::path::{Path, PathBuf};

use ferry::engine::RunReport;
use ferry::engine::skip::SkipRule;
use ferry::{TransferId, TransferState};
use ferry_serve::api::{AddRequest, CreateRequest, RunRequest, TransferView};
use ferry_serve::client::{ApiPathError, Client, ClientError, api_path};

use crate::FerryConfig;
use crate::boundary::CError;

/// One transfer in the daemon, by name.
pub struct DaemonTransfer {
    socket: PathBuf,
    name: String,
    id: TransferId,
    reattached: bool,
    run: RunRequest,
}

fn daemon_error(e: ClientError) -> CError {
    CError {
        code: e.code().into(),
        message: e.to_string(),
    }
}

/// Whether a daemon answers on `socket` (for `FERRY_KIND_DEFAULT`).
pub fn answers(socket: &Path) -> bool {
    Client::new(socket).is_ok_and(|c| c.answers())
}

/// The daemon's API takes absolute UTF-8 paths (it runs elsewhere, JSON).
fn absolute(path: &Path) -> Result<String, CError> {
    api_path(path, "FERRY_KIND_THREADS").map_err(|e| match e {
        ApiPathError::Io(e) => CError::from(e),
        ApiPathError::NotUtf8(e) => daemon_error(e),
    })
}

impl DaemonTransfer {
    /// Creates `name` in the daemon on `socket` (re-attaching it when its
    /// caller died, as the daemon decides), with `config`'s options.
    pub fn create(
        socket: &Path,
        name: Option<String>,
        config: &FerryConfig,
    ) -> Result<DaemonTransfer, CError> {
        let client = Client::new(socket).map_err(daemon_error)?;
        let view = client
            .create(&CreateRequest {
                name,
                preserve: config.preserve != ferry::Preserve::NONE,
                checksum: Some(
                    config
                        .checksum
                        .map_or("none", ferry::model::ChecksumAlgo::as_str)
                        .to_owned(),
                ),
            })
            .map_err(daemon_error)?;
        Ok(DaemonTransfer {
            socket: socket.to_path_buf(),
            name: view.name,
            id: TransferId(view.id),
            reattached: view.reattached,
            run: RunRequest {
                threads: u16::try_from(config.workers).ok(),
                skip: (config.skip != SkipRule::Never).then(|| config.skip.as_str().to_owned()),
                verify: Some(config.verify.as_str().to_owned()),
                check_space: config.check_space,
                clean_orphans: config.clean_orphans,
                // Modes as a local copy would give them: the daemon has its own umask.
                umask: Some(ferry::engine::current_umask()),
                // The C configuration has no update, no-clobber nor limit.
                ..RunRequest::default()
            },
        })
    }

    /// A client per call: a cancel from another thread never queues behind
    /// a wait's long poll.
    fn client(&self) -> Result<Client, CError> {
        Client::new(&self.socket).map_err(daemon_error)
    }

    pub fn id(&self) -> TransferId {
        self.id
    }

    pub fn reattached(&self) -> bool {
        self.reattached
    }

    pub fn add(&self, source: &Path, dest: &Path) -> Result<usize, CError> {
        let request = AddRequest {
            sources: vec![absolute(source)?],
            dest: absolute(dest)?,
            recursive: true,
            hard_links: false,
            xattrs: None,
            // The C caller names each file pair itself: no cp re-run rule.
            rerun: false,
        };
        let added = self.client()?.add(&self.name, &request);
        Ok(added.map_err(daemon_error)?.added)
    }

    pub fn dispatch(&self) -> Result<(), CError> {
        let view = self.client()?.dispatch(&self.name, &self.run);
        view.map(drop).map_err(daemon_error)
    }

    pub fn resume(&self) -> Result<(), CError> {
        let view = self.client()?.resume(&self.name, &self.run);
        view.map(drop).map_err(daemon_error)
    }

    pub fn cancel(&self) -> Result<(), CError> {
        match self.client()?.cancel(&self.name) {
            Ok(_) => Ok(()),
            // Finished already: it stays as it ended, as a local cancel.
            Err(e) if e.code() == 13 => Ok(()),
            Err(e) => Err(daemon_error(e)),
        }
    }

    fn view(&self) -> Result<TransferView, CError> {
        self.client()?.status(&self.name).map_err(daemon_error)
    }

    pub fn recorded_state(&self) -> Result<TransferState, CError> {
        let view = self.view()?;
        TransferState::parse(&view.state).ok_or_else(|| {
            daemon_error(ClientError::Protocol {
                socket: self.socket.clone(),
                detail: format!("unknown transfer state {:?}", view.state),
            })
        })
    }

    /// Would a wait return at once: the transfer has ended.
    pub fn test(&self) -> Result<bool, CError> {
        Ok(self.recorded_state()?.is_terminal())
    }

    /// Waits for the daemon to end the transfer; its end as a run report
    /// (the bytes the daemon made durable count as copied).
    pub fn wait(&self) -> Result<RunReport, CError> {
        self.client()?.wait(&self.name).map_err(daemon_error)?;
        let view = self.view()?;
        let state = self.recorded_state()?;
        Ok(RunReport {
            id: self.id,
            name: view.name,
            state,
            files_total: view.files,
            // In place: copied or skipped, as a local run counts them.
            files_committed: view.files_committed + view.files_skipped,
            files_skipped: view.files_skipped,
            bytes_total: view.bytes,
            bytes_copied: view.bytes_durable,
            bytes_reused: 0,
            failures: view
                .failures
                .into_iter()
                .map(|f| ferry::engine::FileFailure {
                    path: f.path.into(),
                    error: f.error,
                })
                .collect(),
            warnings: view.warnings,
        })
    }
}
