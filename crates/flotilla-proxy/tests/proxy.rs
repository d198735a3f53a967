//! The proxy against real `redis-server` processes on loopback; the primary source is
//! the test, through [`Offers`]. Every process a test starts is stopped by PID when it
//! ends (`Drop`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use flotilla_proxy::policy::DEFAULT_DENY;
use flotilla_proxy::resp::{self, Value};
use flotilla_proxy::{Audit, BackendAuth, Config, Policy, Reads, Running, Source, Timing};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A `redis-server` on a free loopback port, killed by PID when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// With extra `redis-server` arguments. Ready once the server on its port says it
    /// is this child (`INFO server`'s `process_id`): with tests in parallel, a port
    /// found free can be taken before the server binds it, and the test would talk to
    /// another test's server. Then it starts again on another port.
    fn start_with(extra: &[&str]) -> Redis {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(extra)
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            let mut r = Redis {
                child,
                port,
                _dir: dir,
            };
            loop {
                assert!(Instant::now() < deadline, "redis-server did not start");
                if r.child.try_wait().unwrap().is_some() {
                    break; // it could not bind the port: another one
                }
                let password = extra
                    .iter()
                    .position(|a| *a == "--requirepass")
                    .and_then(|i| extra.get(i + 1).copied());
                if server_pid(&r.addr(), password) == Some(r.child.id()) {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free now and never handed out before in this process.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// The `process_id` of the Redis answering at `addr` (with `password`), if one answers.
fn server_pid(addr: &str, password: Option<&str>) -> Option<u32> {
    use std::io::{Read as _, Write as _};
    let mut c = std::net::TcpStream::connect(addr).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut request = Vec::new();
    if let Some(p) = password {
        request.extend_from_slice(&resp::encode(&["AUTH", p]));
    }
    request.extend_from_slice(&resp::encode(&["INFO", "server"]));
    c.write_all(&request).ok()?;
    let mut buf = Vec::new();
    let mut skip = usize::from(password.is_some());
    let mut chunk = [0u8; 4096];
    loop {
        let n = c.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        while skip > 0
            && let Ok(Some((_, n))) = resp::parse_value(&buf)
        {
            buf.drain(..n);
            skip -= 1;
        }
        if skip == 0
            && let Ok(Some((v, _))) = resp::parse_value(&buf)
        {
            return v
                .text()?
                .lines()
                .find_map(|l| l.trim().strip_prefix("process_id:")?.parse().ok());
        }
    }
}

/// A RESP client.
struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn open(addr: impl AsRef<str>) -> Client {
        Client {
            stream: TcpStream::connect(addr.as_ref()).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        self.stream.write_all(&resp::encode(args)).await
    }

    async fn read(&mut self) -> std::io::Result<Value> {
        let read = async {
            loop {
                if let Some((v, n)) = resp::parse_value(&self.buf).unwrap() {
                    let _ = self.buf.split_to(n);
                    return Ok(v);
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn cmd(&mut self, args: &[&str]) -> std::io::Result<Value> {
        self.send(args).await?;
        self.read().await
    }

    /// The reply's text (errors too), panicking on a connection error.
    async fn text(&mut self, args: &[&str]) -> String {
        let v = self.cmd(args).await.unwrap();
        v.text().unwrap_or_else(|| format!("{v:?}"))
    }
}

fn ok() -> String {
    "OK".into()
}

/// A client of `replica`, made a replica of `primary`.
async fn replica_of(replica: &Redis, primary: &Redis) -> Client {
    let mut c = Client::open(replica.addr()).await;
    assert_eq!(
        c.text(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()])
            .await,
        "OK"
    );
    c
}

/// A proxy for `primary`, fast timings for tests.
async fn proxy(primary: &Redis, policy: Policy, audit: Audit) -> Running {
    proxy_with(primary, policy, audit, None).await
}

/// [`proxy`], with the proxy's own credentials to Redis.
async fn proxy_with(
    primary: &Redis,
    policy: Policy,
    audit: Audit,
    backend_auth: Option<BackendAuth>,
) -> Running {
    proxy_reading(primary, policy, audit, backend_auth, Reads::Primary).await
}

async fn proxy_reading(
    primary: &Redis,
    policy: Policy,
    audit: Audit,
    backend_auth: Option<BackendAuth>,
    reads: Reads,
) -> Running {
    proxy_holding(
        primary,
        policy,
        audit,
        backend_auth,
        reads,
        Duration::from_secs(2),
    )
    .await
}

async fn proxy_holding(
    primary: &Redis,
    policy: Policy,
    audit: Audit,
    backend_auth: Option<BackendAuth>,
    reads: Reads,
    hold: Duration,
) -> Running {
    let verify = backend_auth.is_none();
    let mut config = Config::new("default/cache");
    config.reads = reads;
    config.backend_auth = backend_auth;
    config.hold_refused = hold;
    config.policy = policy;
    config.audit = audit;
    config.drain = Duration::from_secs(5);
    config.wait_for_primary = Duration::from_millis(500);
    config.timing = Timing {
        verify_every: Duration::from_millis(100),
        role_timeout: Duration::from_millis(500),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = flotilla_proxy::start(listener, config).unwrap();
    running
        .offers
        .offer(Source::Other("test".into()), primary.addr());
    if verify {
        wait_for(&running, Some(primary.addr())).await;
    }
    running
}

async fn wait_for(running: &Running, addr: Option<String>) {
    let mut rx = running.primary.clone();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|p| p.addr == addr))
        .await
        .unwrap_or_else(|_| panic!("the proxy never published {addr:?}"))
        .unwrap();
}

/// The port of the instance a client reached, from `INFO server`.
async fn backend_port(c: &mut Client) -> u16 {
    let info = c.text(&["INFO", "server"]).await;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("tcp_port:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no tcp_port in {info}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_transactions_pubsub_and_blocking_commands_work() {
    let redis = Redis::start();
    let p = proxy(&redis, Policy::new(None, None), Audit::none()).await;
    let mut c = Client::open(p.addr.to_string()).await;

    // 200 commands in one write, 200 replies in order.
    let mut batch = Vec::new();
    for i in 0..100 {
        batch.extend(resp::encode(&["SET", &format!("k{i}"), &format!("v{i}")]));
        batch.extend(resp::encode(&["GET", &format!("k{i}")]));
    }
    c.stream.write_all(&batch).await.unwrap();
    for i in 0..100 {
        assert_eq!(c.read().await.unwrap().text(), Some(ok()));
        assert_eq!(c.read().await.unwrap().text(), Some(format!("v{i}")));
    }
    // Inline commands too.
    c.stream.write_all(b"PING\r\n").await.unwrap();
    assert_eq!(c.read().await.unwrap().text().as_deref(), Some("PONG"));

    // MULTI/EXEC.
    assert_eq!(c.text(&["MULTI"]).await, "OK");
    assert_eq!(c.text(&["INCR", "n"]).await, "QUEUED");
    assert_eq!(c.text(&["INCR", "n"]).await, "QUEUED");
    assert_eq!(
        c.cmd(&["EXEC"]).await.unwrap(),
        Value::Array(Some(vec![Value::Integer(1), Value::Integer(2)]))
    );

    // SUBSCRIBE/PUBLISH.
    let mut sub = Client::open(p.addr.to_string()).await;
    let reply = sub.cmd(&["SUBSCRIBE", "news"]).await.unwrap();
    assert!(format!("{reply:?}").contains("subscribe"), "{reply:?}");
    assert_eq!(
        c.cmd(&["PUBLISH", "news", "hello"]).await.unwrap(),
        Value::Integer(1)
    );
    let message = sub.read().await.unwrap();
    assert!(format!("{message:?}").contains("hello"), "{message:?}");

    // BLPOP waits for a push from another client.
    let mut blocked = Client::open(p.addr.to_string()).await;
    blocked.send(&["BLPOP", "queue", "5"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        c.cmd(&["LPUSH", "queue", "job"]).await.unwrap(),
        Value::Integer(1)
    );
    let popped = blocked.read().await.unwrap();
    assert!(format!("{popped:?}").contains("job"), "{popped:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_authenticate_to_the_proxy() {
    let redis = Redis::start();
    let policy = Policy::new(Some("user-pw".into()), Some("admin-pw".into()));
    let p = proxy(&redis, policy, Audit::none()).await;
    let mut c = Client::open(p.addr.to_string()).await;
    assert_eq!(
        c.text(&["GET", "k"]).await,
        "NOAUTH Authentication required."
    );
    assert_eq!(c.text(&["PING"]).await, "PONG");
    assert_eq!(
        c.text(&["AUTH", "nope"]).await,
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        c.text(&["SET", "k", "v"]).await,
        "NOAUTH Authentication required."
    );
    assert_eq!(c.text(&["AUTH", "user-pw"]).await, "OK");
    assert_eq!(c.text(&["SET", "k", "v"]).await, "OK");
    let mut d = Client::open(p.addr.to_string()).await;
    assert_eq!(c.text(&["AUTH", "default", "user-pw"]).await, "OK");
    assert_eq!(
        d.text(&["AUTH", "default", "admin-pw"])
            .await
            .split(' ')
            .next(),
        Some("WRONGPASS")
    );
    // HELLO: before AUTH only with its AUTH option, which the backend never sees.
    let mut h = Client::open(p.addr.to_string()).await;
    assert!(
        h.text(&["HELLO", "2"])
            .await
            .starts_with("NOAUTH HELLO must be called")
    );
    assert!(
        h.text(&["HELLO", "2", "AUTH", "default", "nope"])
            .await
            .starts_with("WRONGPASS")
    );
    let hello = h
        .cmd(&["HELLO", "2", "AUTH", "default", "user-pw", "SETNAME", "app"])
        .await
        .unwrap();
    assert!(format!("{hello:?}").contains("redis"), "{hello:?}");
    assert_eq!(h.text(&["CLIENT", "GETNAME"]).await, "app");
    assert_eq!(h.text(&["GET", "k"]).await, "v");
    // Before AUTH a client may not declare big requests.
    d.stream.write_all(b"*1\r\n$100000\r\n").await.unwrap();
    let e = d.read().await.unwrap().text().unwrap();
    assert!(e.starts_with("ERR Protocol error"), "{e}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_commands_are_refused_unless_admin_and_audited_without_values() {
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let policy = Policy::new(Some("user-pw".into()), Some("admin-pw".into()));
    let p = proxy(&redis, policy, Audit::open(&log).unwrap()).await;
    let mut c = Client::open(p.addr.to_string()).await;
    assert_eq!(c.text(&["AUTH", "user-pw"]).await, "OK");
    assert_eq!(c.text(&["SET", "secret-key", "secret-value"]).await, "OK");
    for name in DEFAULT_DENY {
        let lower = name.to_ascii_lowercase();
        assert_eq!(
            c.text(&[&lower, "secret-value"]).await,
            format!("ERR command '{lower}' is denied by the flotilla proxy"),
        );
    }
    assert_eq!(
        c.text(&["GET", "secret-key"]).await,
        "secret-value",
        "nothing flushed"
    );
    // Inside MULTI: refused, and the transaction aborts as Redis's would.
    assert_eq!(c.text(&["MULTI"]).await, "OK");
    assert_eq!(c.text(&["SET", "a", "1"]).await, "QUEUED");
    assert!(c.text(&["FLUSHDB"]).await.contains("'flushdb' is denied"));
    assert!(c.text(&["EXEC"]).await.starts_with("EXECABORT"));
    assert_eq!(c.cmd(&["GET", "a"]).await.unwrap(), Value::Bulk(None));
    assert_eq!(c.text(&["GET", "secret-key"]).await, "secret-value");
    // A denied command in a pipeline is answered in its turn.
    let mut batch = resp::encode(&["SET", "b", "1"]);
    batch.extend(resp::encode(&["FLUSHALL"]));
    batch.extend(resp::encode(&["GET", "b"]));
    c.stream.write_all(&batch).await.unwrap();
    assert_eq!(c.read().await.unwrap().text(), Some(ok()));
    assert!(
        c.read()
            .await
            .unwrap()
            .text()
            .unwrap()
            .contains("'flushall'")
    );
    assert_eq!(c.read().await.unwrap().text().as_deref(), Some("1"));

    // The admin password unlocks the list.
    let mut admin = Client::open(p.addr.to_string()).await;
    assert_eq!(admin.text(&["AUTH", "admin-pw"]).await, "OK");
    let keys = admin.cmd(&["KEYS", "secret-*"]).await.unwrap();
    assert_eq!(
        keys,
        Value::Array(Some(vec![Value::Bulk(Some("secret-key".into()))]))
    );

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("secret"), "values in the audit log: {text}");
    assert!(!text.contains("pw"), "passwords in the audit log: {text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denied: Vec<&str> = lines
        .iter()
        .filter(|l| l["outcome"] == "denied")
        .map(|l| l["command"].as_str().unwrap())
        .collect();
    assert_eq!(denied.len(), DEFAULT_DENY.len() + 2, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l["time"].is_string() && l["client"].is_string())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["user"] == "admin" && l["command"] == "keys" && l["outcome"] == "allowed"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["user"] == "default" && l["command"] == "flushall"),
        "{text}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_of_primary_closes_old_connections_and_never_routes_to_a_replica() {
    let a = Redis::start();
    let b = Redis::start();
    let mut direct_b = replica_of(&b, &a).await;
    let p = proxy(&a, Policy::new(None, None), Audit::none()).await;

    // A replica offered is never published.
    p.offers.offer(Source::Other("stale".into()), b.addr());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.primary.borrow().addr, Some(a.addr()));

    let mut old = Client::open(p.addr.to_string()).await;
    assert_eq!(old.text(&["SET", "before", "1"]).await, "OK");
    assert_eq!(backend_port(&mut old).await, a.port);
    // A connection with state on its backend connection (a selected database).
    let mut selected = Client::open(p.addr.to_string()).await;
    assert_eq!(selected.text(&["SELECT", "0"]).await, "OK");
    assert_eq!(backend_port(&mut selected).await, a.port);

    // The switchover: b becomes the primary, a its replica; the source names b.
    assert_eq!(direct_b.text(&["REPLICAOF", "NO", "ONE"]).await, "OK");
    let mut direct_a = Client::open(a.addr()).await;
    assert_eq!(
        direct_a
            .text(&["REPLICAOF", "127.0.0.1", &b.port.to_string()])
            .await,
        "OK"
    );
    p.offers.offer(Source::Other("sentinel".into()), b.addr());
    wait_for(&p, Some(b.addr())).await;

    // The stateful connection: one error, then a new connection reaches b. The
    // stateless one moved to b unseen.
    let after = selected.cmd(&["SET", "after", "1"]).await;
    assert!(after.is_err(), "a command on the old connection: {after:?}");
    assert_eq!(old.text(&["SET", "after", "1"]).await, "OK");
    assert_eq!(backend_port(&mut old).await, b.port);
    let mut new = Client::open(p.addr.to_string()).await;
    assert_eq!(new.text(&["SET", "after", "1"]).await, "OK");
    assert_eq!(backend_port(&mut new).await, b.port);
    let role = new.cmd(&["ROLE"]).await.unwrap();
    let Value::Array(Some(items)) = role else {
        panic!("{role:?}")
    };
    assert_eq!(items[0].text().as_deref(), Some("master"));

    // The primary demoted with no new candidate: withdrawn, connections closed, new
    // commands refused rather than sent to a replica.
    let mut c = Client::open(p.addr.to_string()).await;
    assert_eq!(c.text(&["SET", "x", "1"]).await, "OK");
    assert_eq!(
        direct_b
            .text(&["REPLICAOF", "127.0.0.1", &a.port.to_string()])
            .await,
        "OK"
    );
    wait_for(&p, None).await;
    let refused = c.text(&["SET", "x", "2"]).await;
    assert!(
        refused.contains("no primary verified for default/cache"),
        "{refused}"
    );
    let mut late = Client::open(p.addr.to_string()).await;
    let refused = late.text(&["SET", "x", "3"]).await;
    assert!(
        refused.contains("no primary verified for default/cache"),
        "{refused}"
    );
    // a, b, none (and maybe none between a and b, if a verification saw a demoted
    // before the offer of b arrived).
    let metrics = p.metrics.encode();
    assert!(
        metric(&metrics, "flotilla_proxy_backend_switches_total") >= 3.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "flotilla_proxy_closed_on_switch_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "flotilla_proxy_backend_latency_seconds_count") > 0.0,
        "{metrics}"
    );
    p.stop().await;
}

/// A sample's value in OpenMetrics text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_an_in_flight_command_finish() {
    let redis = Redis::start();
    let p = proxy(&redis, Policy::new(None, None), Audit::none()).await;
    let addr = p.addr;
    let mut c = Client::open(addr.to_string()).await;
    c.send(&["BLPOP", "nothing", "1"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let stop = tokio::spawn(p.stop());
    // The blocked command still gets its answer (nil after 1 s), then the close.
    assert_eq!(c.read().await.unwrap(), Value::Array(None));
    assert!(c.read().await.is_err());
    stop.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_is_a_pause_for_a_writing_client_not_an_error() {
    let a = Redis::start();
    let b = Redis::start();
    replica_of(&b, &a).await;
    let p = proxy(&a, Policy::new(None, None), Audit::none()).await;
    let addr = p.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    // One client writing without pause; every reply is kept.
    let writer = tokio::spawn(async move {
        let mut c = Client::open(addr.to_string()).await;
        let mut replies = Vec::new();
        let mut i = 0;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("k:{i}");
            let reply = c.cmd(&["SET", &key, "v"]).await;
            replies.push((key, reply.map(|v| v.text().unwrap_or_default())));
            i += 1;
        }
        replies
    });
    // The linked replica caught up, then FAILOVER TO it; nobody offers b: the
    // proxy finds it as the master the demoted primary follows.
    let mut direct_a = Client::open(a.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !direct_a
        .text(&["INFO", "replication"])
        .await
        .contains("state=online")
    {
        assert!(Instant::now() < deadline, "b never linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        direct_a
            .text(&["FAILOVER", "TO", "127.0.0.1", &b.port.to_string()])
            .await,
        "OK"
    );
    wait_for(&p, Some(b.addr())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let replies = writer.await.unwrap();
    let failed: Vec<_> = replies
        .iter()
        .filter(|(_, r)| r.as_deref().ok() != Some("OK"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        replies.len()
    );
    // Every acknowledged write is on the new primary (no write reached the old one
    // after it turned replica: it would have been refused, not acknowledged).
    let mut check = Client::open(b.addr()).await;
    let mut absent = 0;
    for (key, _) in &replies {
        if check.cmd(&["EXISTS", key]).await.unwrap() != Value::Integer(1) {
            absent += 1;
        }
    }
    assert_eq!(absent, 0, "of {} writes", replies.len());
    let metrics = p.metrics.encode();
    assert_eq!(
        metric(&metrics, "flotilla_proxy_closed_on_switch_total"),
        0.0,
        "{metrics}"
    );
    println!(
        "{} writes through a FAILOVER TO; {} sent again after -READONLY, {} connections moved",
        replies.len(),
        metric(&metrics, "flotilla_proxy_resent_after_readonly_total"),
        metric(&metrics, "flotilla_proxy_moved_on_switch_total")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_authenticates_to_redis_with_its_own_credentials() {
    let redis = Redis::start_with(&["--requirepass", "backend-secret"]);
    let auth = |password: &str| BackendAuth {
        user: None,
        password: password.into(),
    };
    let p = proxy_with(
        &redis,
        Policy::new(Some("client-secret".into()), None),
        Audit::none(),
        Some(auth("backend-secret")),
    )
    .await;
    wait_for(&p, Some(redis.addr())).await;
    let mut c = Client::open(p.addr.to_string()).await;
    // The client's password is the proxy's; Redis's is never the client's to know.
    assert!(
        c.text(&["AUTH", "backend-secret"])
            .await
            .starts_with("WRONGPASS")
    );
    assert_eq!(c.text(&["AUTH", "client-secret"]).await, "OK");
    assert_eq!(c.text(&["SET", "k", "1"]).await, "OK");
    assert_eq!(c.text(&["GET", "k"]).await, "1");
    p.stop().await;

    // Wrong credentials to Redis: the primary never verifies, nothing is routed.
    let p = proxy_with(
        &redis,
        Policy::new(None, None),
        Audit::none(),
        Some(auth("wrong")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(p.primary.borrow().addr, None);
    let mut c = Client::open(p.addr.to_string()).await;
    let refused = c.text(&["SET", "k", "2"]).await;
    assert!(refused.contains("no primary verified"), "{refused}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_for_want_of_replicas_is_held_a_moment_then_refused() {
    let a = Redis::start_with(&["--min-replicas-to-write", "1"]);
    let b = Redis::start();
    let p = proxy(&a, Policy::new(None, None), Audit::none()).await;
    let mut c = Client::open(p.addr.to_string()).await;
    // No replica at all: held for a moment (2 s), then the refusal reaches the client.
    let started = Instant::now();
    let refused = c.text(&["SET", "k", "1"]).await;
    assert!(refused.starts_with("NOREPLICAS"), "{refused}");
    assert!(started.elapsed() >= Duration::from_secs(2), "held first");
    p.stop().await;
    // A replica joining while the write is held (a long hold: a loaded machine may
    // take seconds to link it): the write goes through.
    let p = proxy_holding(
        &a,
        Policy::new(None, None),
        Audit::none(),
        None,
        Reads::Primary,
        Duration::from_secs(60),
    )
    .await;
    let mut c = Client::open(p.addr.to_string()).await;
    let (b_addr, a_port) = (b.addr(), a.port);
    let joiner = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut direct_b = Client::open(b_addr).await;
        direct_b
            .text(&["REPLICAOF", "127.0.0.1", &a_port.to_string()])
            .await
    });
    assert_eq!(c.text(&["SET", "k", "2"]).await, "OK");
    assert_eq!(joiner.await.unwrap(), "OK");
    drop(b);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_reads_replicas_reads_go_to_a_caught_up_replica_and_writes_to_the_primary() {
    let a = Redis::start();
    let b = Redis::start();
    let mut direct_b = replica_of(&b, &a).await;
    let p = proxy_reading(
        &a,
        Policy::new(None, None),
        Audit::none(),
        None,
        Reads::Replicas,
    )
    .await;
    let mut c = Client::open(p.addr.to_string()).await;
    assert_eq!(c.text(&["SET", "k", "1"]).await, "OK");
    let replica_reads = |p: &Running| {
        p.metrics
            .encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix("flotilla_proxy_commands_total{outcome=\"replica\"} ")
                    .and_then(|n| n.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    // Once the primary lists b as caught up, reads go there (and still see the data).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(c.text(&["GET", "k"]).await, "1");
        if replica_reads(&p) > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no read reached the replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes still go to the primary; a write then a read on a replica-less primary.
    assert_eq!(c.text(&["SET", "k", "2"]).await, "OK");
    assert_eq!(a.port, backend_port(&mut c).await);
    // b leaves the primary: no read goes to it any more.
    assert_eq!(direct_b.text(&["REPLICAOF", "NO", "ONE"]).await, "OK");
    assert_eq!(direct_b.text(&["SET", "k", "from-b"]).await, "OK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        assert_eq!(c.text(&["GET", "k"]).await, "2", "read from the primary");
    }
    p.stop().await;
}
