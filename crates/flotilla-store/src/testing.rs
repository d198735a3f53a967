//! Real etcd processes for tests (feature `testing`).
//!
//! [`EtcdServer::start`] runs the `etcd` binary (from `FLOTILLA_ETCD`, else `PATH`) on
//! free loopback ports with a fresh data directory, waits until it serves requests,
//! and kills it when dropped (also when the test panics). A test that needs etcd and
//! cannot find it fails, saying how to install it: it is never silently skipped.
//!
//! The server runs with a 10 ms heartbeat and 100 ms election timeout, so that a single
//! member elects itself at once and etcd's minimum lease TTL is 1 s instead of 2 s.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How to get an etcd binary, for the failure message when there is none.
pub const INSTALL_HINT: &str = "tests of flotilla-store run a real etcd: install it with \
`apt-get install etcd-server` (Debian/Ubuntu, gives /usr/bin/etcd), or point FLOTILLA_ETCD \
at an etcd binary";

/// How long a starting etcd may take to answer before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds the etcd binary: `explicit` (the value of `FLOTILLA_ETCD`) if given, else
/// `etcd` in the directories of `path` (the value of `PATH`).
pub fn locate_etcd(explicit: Option<OsString>, path: Option<OsString>) -> Result<PathBuf, String> {
    if let Some(explicit) = explicit.filter(|e| !e.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return if explicit.is_file() {
            Ok(explicit)
        } else {
            Err(format!(
                "FLOTILLA_ETCD is {} but that is not a file; {INSTALL_HINT}",
                explicit.display()
            ))
        };
    }
    path.iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("no `etcd` on PATH and FLOTILLA_ETCD is not set; {INSTALL_HINT}"))
}

/// A running etcd, killed on drop. Its data directory lives as long as it does.
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd on free loopback ports with an empty data directory and waits until
    /// it answers.
    ///
    /// # Panics
    /// When there is no etcd binary (with [`INSTALL_HINT`]), or it does not come up.
    pub async fn start() -> EtcdServer {
        let binary = locate_etcd(std::env::var_os("FLOTILLA_ETCD"), std::env::var_os("PATH"))
            .unwrap_or_else(|message| panic!("{message}"));
        let dir = tempfile::Builder::new()
            .prefix("flotilla-etcd-")
            .tempdir()
            .expect("creating a temporary directory for etcd");
        let mut server = EtcdServer {
            binary,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        // Ports are picked by binding port 0 and released before etcd binds them, so
        // another process may take one in between: then etcd exits and we try again.
        for attempt in 1.. {
            (server.client_port, server.peer_port) = free_ports();
            match server.run().await {
                Ok(()) => break,
                Err(log) if attempt < 5 && log.contains("address already in use") => {
                    server.kill();
                    let _ = std::fs::remove_dir_all(server.data_dir());
                }
                Err(log) => panic!("etcd ({}) did not start:\n{log}", server.binary.display()),
            }
        }
        server
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The etcd process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops etcd with SIGSTOP (by its PID): it keeps its sockets open and answers
    /// nothing, as a stuck etcd (a frozen VM, a disk that hangs) would, until
    /// [`EtcdServer::resume`]. Dropping a stopped server still kills it (SIGKILL ends
    /// a stopped process).
    ///
    /// # Panics
    /// When etcd does not run.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        // A signal is delivered asynchronously: wait until the kernel says it stopped.
        let stat = format!("/proc/{}/stat", self.pid().expect("etcd runs"));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // `pid (comm) state ...`: the state follows the last ')'.
            if state
                .rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("etcd did not stop within {START_TIMEOUT:?} of SIGSTOP");
    }

    /// Lets a paused etcd run again (SIGCONT).
    ///
    /// # Panics
    /// When etcd does not run.
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = self.pid().expect("etcd is not running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits in i32"));
        nix::sys::signal::kill(pid, signal)
            .unwrap_or_else(|e| panic!("sending {signal} to etcd ({pid}): {e}"));
    }

    /// Kills etcd with SIGKILL, as a crash would: nothing is flushed or shut down.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only fails if it already exited; either way it is gone after `wait`.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd (SIGKILL) if it runs, and starts it again on the same data directory
    /// and ports, waiting until it answers.
    ///
    /// # Panics
    /// When it does not come back.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.run().await {
            panic!("etcd ({}) did not restart:\n{log}", self.binary.display());
        }
    }

    /// Runs etcd and waits for it to answer; on failure returns its log.
    async fn run(&mut self) -> Result<(), String> {
        let log_path = self.dir.path().join("etcd.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .arg("--name=flotilla-test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=flotilla-test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // etcd reads ETCD_* variables as flags and refuses to start when one shadows a
        // flag given here; none from the caller's environment may leak in.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        // etcd 3.4 refuses to run on architectures it does not support officially
        // unless told to.
        if !matches!(std::env::consts::ARCH, "x86_64" | "aarch64" | "powerpc64") {
            command.env("ETCD_UNSUPPORTED_ARCH", etcd_arch());
        }
        let child = command
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_until_serving(&log_path).await
    }

    async fn wait_until_serving(&mut self, log_path: &Path) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited ({status}); its log:\n{}",
                    tail(log_path)
                ));
            }
            if self.answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "etcd did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    tail(log_path)
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether etcd serves a linearizable read (so it has a leader).
    async fn answers(&self) -> bool {
        let attempt = async {
            let mut client = etcd_client::Client::connect([self.endpoint()], None).await?;
            client.get("flotilla-health", None).await
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two distinct free loopback ports (both held while the second is picked).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let b = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let port = |l: &TcpListener| l.local_addr().expect("a bound address").port();
    (port(&a), port(&b))
}

/// The name etcd uses for this architecture in `ETCD_UNSUPPORTED_ARCH`.
fn etcd_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "386",
        "arm" => "arm",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "powerpc64le" | "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The end of etcd's log, for failure messages.
fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_etcd_fails_with_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = locate_etcd(None, Some(empty.path().as_os_str().to_owned())).unwrap_err();
        assert!(err.contains("apt-get install etcd-server"), "{err}");
        assert!(err.contains("FLOTILLA_ETCD"), "{err}");
        let err = locate_etcd(Some(empty.path().join("etcd").into()), None).unwrap_err();
        assert!(
            err.contains("not a file") && err.contains("apt-get install etcd-server"),
            "{err}"
        );
    }

    #[test]
    fn etcd_is_found_on_path_or_where_flotilla_etcd_says() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("etcd");
        std::fs::write(&fake, "").unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(locate_etcd(None, Some(path)).unwrap(), fake);
        assert_eq!(locate_etcd(Some(fake.clone().into()), None).unwrap(), fake);
    }
}
