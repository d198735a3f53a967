//! Errors of the process member.

use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong running instances as local processes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory under the data directory could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was being done (`writing`, `creating`, `removing`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process member (agent) uses this data directory.
    #[error("{} is in use by another process member (its lock file is held)", .0.display())]
    Busy(PathBuf),
    /// A state file does not hold what this backend writes.
    #[error("state file {path}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why it does not decode.
        #[source]
        source: serde_json::Error,
    },
    /// The set cannot run as a process: the field says why
    /// (`spec.template.spec.containers[0].command: required on a process member`).
    #[error("{field}: {reason}")]
    Template {
        /// The field of the InstanceSet.
        field: String,
        /// What is wrong with it here.
        reason: String,
    },
    /// A program the member runs is neither configured nor on `PATH`.
    #[error(
        "{0} was not found on PATH: install it or set binaries.{0} in the process member's configuration"
    )]
    NoBinary(String),
    /// Every loopback address of the member's block is taken.
    #[error("no free loopback address left in the member's block {0}")]
    NoAddress(String),
    /// Something on this host listens on the instance's port at every address.
    #[error(
        "port {0} is taken on every address of this host (something listens on 0.0.0.0:{0} or [::]:{0}): no loopback address can have it"
    )]
    PortTaken(u16),
    /// Testing whether an address is free failed for another reason than its being
    /// taken.
    #[error("binding {addr} to test it")]
    Bind {
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No node has room for the instance.
    #[error("{instance}: no node has room for it (requests, pods or maxInstancesPerNode)")]
    Unschedulable {
        /// `<set>-<ordinal>`.
        instance: String,
    },
    /// The instance's requests do not parse.
    #[error("{instance}: {invalid}")]
    Requests {
        /// `<set>-<ordinal>`.
        instance: String,
        /// The quantities that do not parse.
        invalid: flotilla_api::Invalid,
    },
    /// Starting the program failed.
    #[error("starting {instance} ({program})")]
    Spawn {
        /// `<set>-<ordinal>`.
        instance: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending a signal failed.
    #[error("signalling {instance} (pid {pid})")]
    Signal {
        /// `<set>-<ordinal>`.
        instance: String,
        /// Its process.
        pid: u32,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The process outlived SIGKILL.
    #[error("{instance} (pid {pid}) still runs {after:?} after SIGKILL")]
    Unkillable {
        /// `<set>-<ordinal>`.
        instance: String,
        /// Its process.
        pid: u32,
        /// How long it was given.
        after: Duration,
    },
    /// The instance keeps dying soon after it starts: it is restarted after a delay.
    #[error("{instance} {why} ({count} time(s) in a row; its log: {log}); restarting in {wait:.0?}", log = .log.display())]
    CrashLoop {
        /// `<set>-<ordinal>`.
        instance: String,
        /// How it ended last (`exit status: 1 0.1s after it started`).
        why: String,
        /// Early deaths in a row.
        count: u32,
        /// Its log file.
        log: PathBuf,
        /// How long until it is started again.
        wait: Duration,
    },
    /// A volume cannot be deleted while its instance exists.
    #[error("volume {volume} is in use by {instance}, which still exists")]
    VolumeInUse {
        /// `<claim>-<set>-<ordinal>`.
        volume: String,
        /// `<set>-<ordinal>`.
        instance: String,
    },
}

impl Error {
    /// The message and every cause, `a: b: c`.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }

    pub(crate) fn io(
        what: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io { what, path, source }
    }
}

/// The member side's error: a backend failure saying everything the chain says.
impl From<Error> for flotilla_member::Error {
    fn from(e: Error) -> flotilla_member::Error {
        flotilla_member::Error::Backend(e.chain())
    }
}

/// Results of the process member.
pub type Result<T, E = Error> = std::result::Result<T, E>;
