//! What the process-level tests share: a real etcd, a `flotilla server` process,
//! `flotilla agent` processes, and the CLI to drive them.

#![allow(dead_code)] // each test binary uses its own part of it

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_store::testing::EtcdServer;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const TOKEN: &str = "e2e-admin-token";

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// etcd, one server, and helpers to drive them.
pub struct Federation {
    pub _rt: tokio::runtime::Runtime,
    pub _etcd: EtcdServer,
    pub endpoint: String,
    pub grpc: u16,
    pub http: u16,
    pub server: Option<Proc>,
    pub agents: BTreeMap<String, Proc>,
    pub dir: tempfile::TempDir,
    pub ttl: u64,
}

impl Federation {
    pub fn start(ttl: u64) -> Federation {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let etcd = rt.block_on(EtcdServer::start());
        let endpoint = etcd.endpoint();
        let mut f = Federation {
            _rt: rt,
            _etcd: etcd,
            endpoint,
            grpc: free_port(),
            http: free_port(),
            server: None,
            agents: BTreeMap::new(),
            dir: tempfile::tempdir().unwrap(),
            ttl,
        };
        f.start_server();
        f
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn start_server(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).unwrap();
        let child = Command::new(BIN)
            .args(["server", "--listen", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http", &format!("127.0.0.1:{}", self.http)])
            .args(["--etcd-endpoints", &self.endpoint, "--admin-token", TOKEN])
            .args(["--cluster-ttl-seconds", &self.ttl.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(Proc(child));
        eventually("the server ready", || {
            http_get(self.http, "/readyz").is_some_and(|(code, _)| code == 200)
        });
    }

    pub fn kill_server(&mut self) {
        self.server.take(); // SIGKILL
    }

    /// `flotilla ARGS` with the server and admin token in the environment.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("FLOTILLA_SERVER", self.url())
            .env("FLOTILLA_TOKEN", TOKEN)
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flotilla {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.server_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The lines of agent `name`'s log that contain `pattern`.
    pub fn agent_log(&self, name: &str, pattern: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join(format!("agent-{name}.log")))
            .unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(pattern))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The lines of the server's log that contain `pattern`.
    pub fn server_grep(&self, pattern: &str) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(pattern))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn server_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Registers a simulated member and starts its agent, dialing `via` (a proxy) or
    /// the server.
    pub fn member(&mut self, name: &str, region: &str, nodes: u32, via: Option<u16>) {
        let out = self.ok(&[
            "cluster",
            "add",
            name,
            "--label",
            &format!("region={region}"),
        ]);
        let token = out.lines().last().unwrap().trim().to_string();
        assert!(
            token.starts_with("flt_"),
            "the token is the last line: {out}"
        );
        let config = self.file(
            &format!("{name}.yaml"),
            &format!(
                "nodeGroups:\n- {{count: {nodes}, free: {{cpu: \"8\", memory: 32Gi, pods: 110}}}}\nstartDelayMs: 200\nreadyDelayMs: 100\n"
            ),
        );
        let server = match via {
            Some(port) => format!("http://127.0.0.1:{port}"),
            None => self.url(),
        };
        self.start_agent(name, &server, &token, "--sim-config", &config);
    }

    /// Registers cluster `name` with `labels` (`k=v`); its agent token.
    pub fn register(&self, name: &str, labels: &[&str]) -> String {
        let mut args = vec!["cluster", "add", name];
        for l in labels {
            args.extend(["--label", l]);
        }
        let out = self.ok(&args);
        let token = out.lines().last().unwrap().trim().to_string();
        assert!(
            token.starts_with("flt_"),
            "the token is the last line: {out}"
        );
        token
    }

    /// Starts the agent of cluster `name`; `flag` names its member kind
    /// (`--sim-config`, `--process-config`) and `config` the file.
    pub fn start_agent(
        &mut self,
        name: &str,
        server: &str,
        token: &str,
        flag: &str,
        config: &Path,
    ) {
        let log = std::fs::File::create(self.dir.path().join(format!("agent-{name}.log"))).unwrap();
        let child = Command::new(BIN)
            .args([
                "agent",
                "--server",
                server,
                "--cluster",
                name,
                "--token",
                token,
            ])
            .arg(flag)
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agents.insert(name.to_string(), Proc(child));
    }

    /// Waits until `n` clusters are ready (their agents connected and heartbeating).
    pub fn wait_ready_clusters(&self, n: usize) {
        eventually(&format!("{n} ready clusters"), || {
            let v: Value = serde_json::from_str(&self.ok(&["clusters", "-o", "json"])).unwrap();
            let items = v["items"].as_array().unwrap();
            items
                .iter()
                .filter(|c| c["status"]["ready"] == true)
                .count()
                == n
        });
    }

    pub fn get(&self, kind: &str, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", kind, name, "-o", "json"])).unwrap()
    }
}

pub fn eventually(what: &str, f: impl FnMut() -> bool) {
    eventually_or(what, f, String::new);
}

/// [`eventually`], and on timeout the panic says what `dump` tells.
pub fn eventually_or(what: &str, mut f: impl FnMut() -> bool, dump: impl FnOnce() -> String) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}\n{}", dump());
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split_once("\r\n\r\n")?.1.to_string()))
}
pub mod resp;
