//! TLS and mutual TLS between real processes: `flotilla server --tls-cert --tls-key
//! --client-ca` on the embedded store, `flotilla agent` and the CLI dialling it with
//! certificates made here (good, expired, for the wrong name, self-signed, of another
//! CA), plaintext against TLS, and certificates rotated under a running server.
//!
//! Every process is stopped by its handle when the test ends.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_tls::testing::{Ca, Leaf, Validity};
use serde_json::Value;
use support::{BIN, Proc, TOKEN, eventually, free_port, http_get};

struct Server {
    proc: Proc,
    grpc: u16,
    http: u16,
    dir: PathBuf,
}

fn start_server(dir: &Path, tls: &[&str], grpc: u16, http: u16) -> Server {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let child = Command::new(BIN)
        .args(["server", "--listen", &format!("127.0.0.1:{grpc}")])
        .args(["--http", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(dir.join("store"))
        .args(["--admin-token", TOKEN, "--cluster-ttl-seconds", "4"])
        .args(tls)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Server {
        proc: Proc(child),
        grpc,
        http,
        dir: dir.to_path_buf(),
    }
}

impl Server {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    /// `flotilla ARGS` against `server` with the admin token and `tls` flags.
    fn cli_at(&self, server: &str, tls: &[&str], args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(tls)
            .env("FLOTILLA_SERVER", server)
            .env("FLOTILLA_TOKEN", TOKEN)
            .env_remove("FLOTILLA_CA")
            .output()
            .unwrap()
    }

    fn cli(&self, tls: &[&str], args: &[&str]) -> Output {
        self.cli_at(&self.url(), tls, args)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn ready_clusters(&self, ca: &str) -> Vec<String> {
        let out = self.cli(&["--ca", ca], &["clusters", "-o", "json"]);
        if !out.status.success() {
            return Vec::new();
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"]["ready"] == true)
            .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
            .collect()
    }

    /// Registers `name`; its agent token.
    fn register(&self, ca: &str, name: &str) -> String {
        let out = self.cli(&["--ca", ca], &["cluster", "add", name]);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .to_string()
    }

    /// Starts an agent of `cluster` on a small simulated member, logging to
    /// `agent-<cluster>.log`.
    fn agent(&self, cluster: &str, token: &str, tls: &[&str]) -> Child {
        let config = self.dir.join(format!("{cluster}-sim.yaml"));
        std::fs::write(&config, "nodeGroups:\n- {count: 1}\n").unwrap();
        let log = std::fs::File::create(self.dir.join(format!("agent-{cluster}.log"))).unwrap();
        Command::new(BIN)
            .args(["agent", "--server", &self.url(), "--cluster", cluster])
            .args(["--token", token])
            .arg("--sim-config")
            .arg(&config)
            .args(tls)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An agent's exit code and log once it exits (within 30 s; killed otherwise).
fn exit_of(child: Child, log: &Path) -> (Option<i32>, String) {
    let mut child = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return (
                status.code(),
                std::fs::read_to_string(log).unwrap_or_default(),
            );
        }
        if Instant::now() > deadline {
            return (None, "still running after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GET over HTTPS (trusting `ca`): status code and body.
fn https_get(port: u16, ca: &str, path: &str) -> Result<(u16, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    let _ = tls.read_to_string(&mut buf);
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {buf:?}"))?;
    Ok((
        code,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tls_and_mutual_tls_between_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, other) = (Ca::new("flotilla test CA"), Ca::new("another CA"));
    let ca_file = ca.write(d, "ca");
    let other_file = other.write(d, "other-ca");
    let (cert, key) = ca.leaf(&["127.0.0.1"], Validity::Now).write(d, "server");
    let s = start_server(
        d,
        &[
            "--tls-cert",
            path(&cert),
            "--tls-key",
            path(&key),
            "--client-ca",
            path(&ca_file),
        ],
        free_port(),
        free_port(),
    );
    let ca_flag = path(&ca_file);
    eventually("the server answers over TLS", || {
        s.cli(&["--ca", ca_flag], &["clusters"]).status.success()
    });

    // The HTTP port is TLS too; plaintext gets no answer.
    assert_eq!(
        https_get(s.http, &ca.pem, "/healthz").unwrap(),
        (200, "ok\n".into())
    );
    assert!(http_get(s.http, "/healthz").is_none_or(|(code, _)| code != 200));

    // Clients that must not get through, each told why (exit 1).
    let refusals: [(&str, String, Vec<&str>, &str); 4] = [
        (
            "no CA: the system roots",
            s.url(),
            vec![],
            "not signed by a CA this client trusts",
        ),
        (
            "another CA",
            s.url(),
            vec!["--ca", path(&other_file)],
            "not signed by a CA this client trusts",
        ),
        (
            "a name the certificate lacks",
            format!("https://localhost:{}", s.grpc),
            vec!["--ca", ca_flag],
            "does not name the host",
        ),
        (
            "plaintext to TLS",
            format!("http://127.0.0.1:{}", s.grpc),
            vec![],
            "use https://",
        ),
    ];
    for (what, url, tls, says) in &refusals {
        let out = s.cli_at(url, tls, &["clusters"]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
    }
    let out = s.cli_at(
        &format!("http://127.0.0.1:{}", s.grpc),
        &["--ca", ca_flag],
        &["clusters"],
    );
    assert_eq!(out.status.code(), Some(2), "--ca with http://");
    assert!(stderr(&out).contains("--ca: "), "{}", stderr(&out));

    // Agents: a certificate naming the cluster, signed by the client CA.
    let token_a = s.register(ca_flag, "a");
    let token_b = s.register(ca_flag, "b");
    let write = |leaf: Leaf, name: &str| {
        let (c, k) = leaf.write(d, name);
        (path(&c).to_string(), path(&k).to_string())
    };
    let (a_cert, a_key) = write(ca.leaf(&["a"], Validity::Now), "a");
    let (b_cert, b_key) = write(ca.leaf(&["b"], Validity::Now), "b");
    let (old_cert, old_key) = write(ca.leaf(&["b"], Validity::Expired), "b-expired");
    let (self_cert, self_key) = write(Leaf::self_signed(&["b"]), "b-self");
    let (foreign_cert, foreign_key) = write(other.leaf(&["b"], Validity::Now), "b-other");
    let _a = Proc(s.agent(
        "a",
        &token_a,
        &["--ca", ca_flag, "--cert", &a_cert, "--key", &a_key],
    ));
    eventually("cluster a ready over mutual TLS", || {
        s.ready_clusters(ca_flag) == ["a"]
    });

    let attempts: [(&str, &str, Vec<&str>, &str); 7] = [
        (
            "cluster a's certificate for b",
            &token_b,
            vec!["--ca", ca_flag, "--cert", &a_cert, "--key", &a_key],
            "refused this agent's client certificate: --cert/--key",
        ),
        (
            "no client certificate",
            &token_b,
            vec!["--ca", ca_flag],
            "no client certificate",
        ),
        (
            "an expired certificate",
            &token_b,
            vec!["--ca", ca_flag, "--cert", &old_cert, "--key", &old_key],
            "the client certificate was refused: invalid peer certificate: certificate expired",
        ),
        (
            "a self-signed certificate",
            &token_b,
            vec!["--ca", ca_flag, "--cert", &self_cert, "--key", &self_key],
            "the client certificate was refused: invalid peer certificate: UnknownIssuer",
        ),
        (
            "a certificate of another CA",
            &token_b,
            vec![
                "--ca",
                ca_flag,
                "--cert",
                &foreign_cert,
                "--key",
                &foreign_key,
            ],
            "the client certificate was refused: invalid peer certificate: UnknownIssuer",
        ),
        (
            "a server certificate it does not trust",
            &token_b,
            vec![
                "--ca",
                path(&other_file),
                "--cert",
                &b_cert,
                "--key",
                &b_key,
            ],
            "not signed by a CA this client trusts",
        ),
        (
            "cluster a's token with b's certificate",
            &token_a,
            vec!["--ca", ca_flag, "--cert", &b_cert, "--key", &b_key],
            "the agent token of cluster \"a\" may not open a session for cluster \"b\"",
        ),
    ];
    for (what, token, tls, says) in &attempts {
        let (code, err) = exit_of(s.agent("b", token, tls), &d.join("agent-b.log"));
        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
    }
    assert_eq!(s.ready_clusters(ca_flag), ["a"], "no attempt got in");

    let _b = Proc(s.agent(
        "b",
        &token_b,
        &["--ca", ca_flag, "--cert", &b_cert, "--key", &b_key],
    ));
    eventually("both clusters ready", || {
        s.ready_clusters(ca_flag) == ["a", "b"]
    });
    assert!(!s.log().contains(&token_a), "no token in the server's log");
}

#[test]
fn certificates_rotate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (one, two) = (Ca::new("one"), Ca::new("two"));
    let (one_file, two_file) = (one.write(d, "one"), two.write(d, "two"));
    let (one_flag, two_flag) = (path(&one_file), path(&two_file));
    let (cert, key) = one.leaf(&["127.0.0.1"], Validity::Now).write(d, "server");
    let (grpc, http) = (free_port(), free_port());
    let tls = [
        "--tls-cert",
        path(&cert),
        "--tls-key",
        path(&key),
        "--client-ca",
        one_flag,
    ];
    let mut s = start_server(d, &tls, grpc, http);
    eventually("the server answers over TLS", || {
        s.cli(&["--ca", one_flag], &["clusters"]).status.success()
    });
    let token = s.register(one_flag, "a");
    let (a_cert, a_key) = one.leaf(&["a"], Validity::Now).write(d, "a");
    let agent_tls = [
        "--ca",
        one_flag,
        "--cert",
        path(&a_cert),
        "--key",
        path(&a_key),
    ];
    let _agent = Proc(s.agent("a", &token, &agent_tls));
    eventually("the agent ready", || s.ready_clusters(one_flag) == ["a"]);

    // The server's certificate replaced in place by one of another CA: new
    // connections get it, the process is the same.
    let pid = s.proc.0.id();
    two.leaf(&["127.0.0.1"], Validity::Now).write(d, "server");
    eventually("the new certificate served", || {
        s.cli(&["--ca", two_flag], &["clusters"]).status.success()
    });
    let out = s.cli(&["--ca", one_flag], &["clusters"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(s.proc.0.try_wait().unwrap().is_none() && s.proc.0.id() == pid);
    assert!(
        s.log().contains("TLS certificate files changed"),
        "{}",
        s.log()
    );

    // An expired one is served too (the operator's mistake), and clients say so.
    two.leaf(&["127.0.0.1"], Validity::Expired)
        .write(d, "server");
    eventually("clients refuse the expired certificate", || {
        let out = s.cli(&["--ca", two_flag], &["clusters"]);
        out.status.code() == Some(1) && stderr(&out).contains("expired")
    });
    two.leaf(&["127.0.0.1"], Validity::Now).write(d, "server");

    // The agent reads its files at every connection: after the server restarts
    // (same port, same store) it presents what the files hold then: an expired
    // certificate is refused, a good one gets it back.
    one.leaf(&["a"], Validity::Expired).write(d, "a");
    // Both sides trust both CAs from now on (the server's certificate is CA two's).
    std::fs::write(&one_file, format!("{}{}", one.pem, two.pem)).unwrap();
    drop(s);
    let s = start_server(d, &tls, grpc, http);
    eventually("the restarted server answers", || {
        s.cli(&["--ca", two_flag], &["clusters"]).status.success()
    });
    let agent_log = || std::fs::read_to_string(d.join("agent-a.log")).unwrap_or_default();
    support::eventually_or(
        "the agent refused with its expired certificate",
        || agent_log().contains("the client certificate was refused"),
        || format!("agent:\n{}\nserver:\n{}", agent_log(), s.log()),
    );
    one.leaf(&["a"], Validity::Now).write(d, "a");
    eventually("the agent back with its rotated certificate", || {
        s.ready_clusters(two_flag) == ["a"]
    });
}
