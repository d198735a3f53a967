//! Which instance is the primary: candidates come from sources (the federation's
//! watch of the set's `status.primary`, the set's sentinels' `+switch-master`, or a
//! test), and one task verifies them with `ROLE` before it publishes one.
//!
//! ```text
//! federation watch ─┐ offer(endpoint)
//! sentinel a, b, c ─┼──────────────▶ discovery task ──ROLE──▶ candidate
//! a test double   ──┘                   │ publishes (generation, Some(addr) | None)
//!                                       ▼ watch channel
//!                          every client session (closes on a new generation)
//! ```
//!
//! Architecture invariant: nothing is published that `ROLE` did not just call
//! `master`, and the published primary is re-verified every `verify_every`; one that
//! answers anything but `master`, refuses the connection, or times out twice in a row
//! is withdrawn (generation + 1, `None`), which closes every client connection
//! attached to it. A newer candidate that did not verify is tried again at every
//! verification.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::resp::{self, Value};

/// The verified primary, as published.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Primary {
    /// Bumped at every change; a session attached to an older one closes.
    pub generation: u64,
    /// `host:port`, or `None` while no candidate verifies.
    pub addr: Option<String>,
}

/// Where a candidate came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The federation's `status.primary.endpoint`.
    Federation,
    /// A sentinel (its address).
    Sentinel(String),
    /// The master a withdrawn primary replicates from once demoted (a planned
    /// switchover: `FAILOVER TO`, or Sentinel's failover with the old one reachable).
    Followed,
    /// Anything else (tests).
    Other(String),
}

enum Message {
    Offer(Source, String),
    Sentinels(String, Vec<String>),
    /// A session saw the primary refuse a write (`-READONLY`): verify it now.
    Verify,
}

/// Feeds the discovery task.
#[derive(Debug, Clone)]
pub struct Offers {
    tx: mpsc::UnboundedSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Offer(s, e) => write!(f, "offer {e} from {s:?}"),
            Message::Sentinels(n, e) => write!(f, "sentinels of {n}: {e:?}"),
            Message::Verify => write!(f, "verify now"),
        }
    }
}

impl Offers {
    /// `source` names `endpoint` as the primary: the newest offer is tried first.
    pub fn offer(&self, source: Source, endpoint: impl Into<String>) {
        let _ = self.tx.send(Message::Offer(source, endpoint.into()));
    }

    /// The sentinels that watch `master_name` (replaces the previous list): each is
    /// asked `SENTINEL GET-MASTER-ADDR-BY-NAME` and followed on `+switch-master`.
    pub fn sentinels(&self, master_name: impl Into<String>, endpoints: Vec<String>) {
        let _ = self
            .tx
            .send(Message::Sentinels(master_name.into(), endpoints));
    }

    /// The published primary refused a write as a replica: verify it at once rather
    /// than at the next tick.
    pub(crate) fn verify_now(&self) {
        let _ = self.tx.send(Message::Verify);
    }
}

/// Timings of the discovery task.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often the published primary is re-verified (and, without one, candidates
    /// tried again).
    pub verify_every: Duration,
    /// The longest a `ROLE` may take.
    pub role_timeout: Duration,
}

/// The proxy's own credentials to Redis (`AUTH [user] password`), sent first on every
/// connection it opens: its sessions' and its `ROLE` checks'. Clients never see them.
#[derive(Clone, Default)]
pub struct BackendAuth {
    /// An ACL user; `None` for the default user (`requirepass`).
    pub user: Option<String>,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl BackendAuth {
    /// The `AUTH` command, on the wire.
    pub fn command(&self) -> Vec<u8> {
        match &self.user {
            Some(u) => resp::encode(&[&b"AUTH"[..], u.as_bytes(), self.password.as_bytes()]),
            None => resp::encode(&[&b"AUTH"[..], self.password.as_bytes()]),
        }
    }
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            verify_every: Duration::from_millis(500),
            role_timeout: Duration::from_secs(1),
        }
    }
}

/// What discovery publishes.
#[derive(Debug)]
pub struct Published {
    /// Feeds discovery.
    pub offers: Offers,
    /// The verified primary.
    pub primary: watch::Receiver<Primary>,
    /// Its replicas whose acknowledged offset trails it by at most [`READ_LAG_BYTES`],
    /// as the primary's own `ROLE` lists them at the last verification.
    pub readable: watch::Receiver<Vec<String>>,
    /// The discovery task.
    pub task: JoinHandle<()>,
}

/// Starts the discovery task: the offers it takes, and what it publishes.
pub fn start(timing: Timing, auth: Option<BackendAuth>, metrics: Arc<Metrics>) -> Published {
    let (tx, rx) = mpsc::unbounded_channel();
    let (publish, primary) = watch::channel(Primary::default());
    let (readable_tx, readable) = watch::channel(Vec::new());
    let offers = Offers { tx };
    let task = Discovery {
        timing,
        auth,
        readable: readable_tx,
        metrics,
        publish,
        offers: offers.clone(),
        candidates: BTreeMap::new(),
        seq: 0,
        timeouts: 0,
        sentinels: BTreeMap::new(),
    };
    let handle = tokio::spawn(task.run(rx));
    Published {
        offers,
        primary,
        readable,
        task: handle,
    }
}

struct Discovery {
    timing: Timing,
    auth: Option<BackendAuth>,
    /// The published primary's caught-up replicas (for `--reads replicas`).
    readable: watch::Sender<Vec<String>>,
    metrics: Arc<Metrics>,
    publish: watch::Sender<Primary>,
    offers: Offers,
    /// The latest endpoint each source named, with the order it was named in.
    candidates: BTreeMap<Source, (u64, String)>,
    seq: u64,
    /// `ROLE`s of the published primary that timed out in a row.
    timeouts: u32,
    /// One follower task per sentinel address.
    sentinels: BTreeMap<String, JoinHandle<()>>,
}

impl Discovery {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Message>) {
        let mut tick = tokio::time::interval(self.timing.verify_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    // Every sender (the proxy's handle and our own clone) is gone
                    // only when the discovery task itself is dropped.
                    None => return,
                    Some(Message::Offer(source, endpoint)) => {
                        self.seq += 1;
                        let changed = self.candidates.get(&source).map(|(_, e)| e) != Some(&endpoint);
                        self.candidates.insert(source.clone(), (self.seq, endpoint.clone()));
                        if changed {
                            tracing::info!(%endpoint, ?source, "primary candidate");
                            self.choose().await;
                        }
                    }
                    Some(Message::Sentinels(name, endpoints)) => self.follow(&name, endpoints),
                    Some(Message::Verify) => self.verify().await,
                },
                _ = tick.tick() => self.verify().await,
            }
        }
    }

    /// Re-verifies the published primary; without one (or when it fails), tries the
    /// candidates.
    async fn verify(&mut self) {
        let current = self.publish.borrow().addr.clone();
        if let Some(addr) = current {
            match role_of(&addr, self.auth.as_ref(), self.timing.role_timeout).await {
                Ok(r) if r.role == "master" => {
                    self.timeouts = 0;
                    let caught_up: Vec<String> = r
                        .replicas
                        .iter()
                        .filter(|(_, o)| *o >= r.offset - READ_LAG_BYTES)
                        .map(|(a, _)| a.clone())
                        .collect();
                    self.readable.send_if_modified(|v| {
                        let changed = *v != caught_up;
                        *v = caught_up;
                        changed
                    });
                    if self.newest().as_deref() == Some(addr.as_str()) {
                        return;
                    }
                    // A newer candidate that did not verify yet: try it again.
                }
                // One slow answer is not a demotion; two in a row withdraw it.
                Err(RoleError::Timeout(_)) if self.timeouts == 0 => {
                    self.timeouts += 1;
                    return;
                }
                outcome => {
                    self.timeouts = 0;
                    tracing::warn!(%addr, ?outcome, "the primary is no longer verified by ROLE; withdrawing it");
                    self.set(None);
                    // Demoted in a planned switchover: the master it follows now is the
                    // first candidate to try (verified like any other).
                    if let Ok(Role {
                        master: Some(m), ..
                    }) = outcome
                    {
                        self.seq += 1;
                        tracing::info!(endpoint = %m, "primary candidate: the master the old primary follows");
                        self.candidates.insert(Source::Followed, (self.seq, m));
                    }
                }
            }
        }
        self.choose().await;
    }

    /// The endpoint named last.
    fn newest(&self) -> Option<String> {
        self.candidates
            .values()
            .max_by_key(|(seq, _)| *seq)
            .map(|(_, e)| e.clone())
    }

    /// Tries the candidates, newest first: the first that `ROLE` calls `master` is
    /// published (if it is not already).
    async fn choose(&mut self) {
        let mut ordered: Vec<(u64, String)> = self.candidates.values().cloned().collect();
        ordered.sort_by_key(|c| std::cmp::Reverse(c.0));
        let mut seen = Vec::new();
        for (_, endpoint) in ordered {
            if seen.contains(&endpoint) {
                continue;
            }
            seen.push(endpoint.clone());
            if self.publish.borrow().addr.as_deref() == Some(endpoint.as_str()) {
                // The newest candidate verified is the one published.
                return;
            }
            match role_of(&endpoint, self.auth.as_ref(), self.timing.role_timeout).await {
                Ok(r) if r.role == "master" => {
                    self.set(Some(endpoint));
                    return;
                }
                outcome => tracing::debug!(%endpoint, ?outcome, "candidate not a primary"),
            }
        }
    }

    fn set(&mut self, addr: Option<String>) {
        // Replicas of the old primary serve no reads until the new one lists them.
        self.readable.send_if_modified(|v| {
            let changed = !v.is_empty();
            v.clear();
            changed
        });
        let mut previous = None;
        self.publish.send_modify(|p| {
            previous = p.addr.clone();
            p.generation += 1;
            p.addr = addr.clone();
        });
        self.metrics.backend_switches.inc();
        self.metrics.set_ready(addr.is_some());
        tracing::info!(from = ?previous, to = ?addr, "primary verified by ROLE");
    }

    fn follow(&mut self, name: &str, endpoints: Vec<String>) {
        self.sentinels.retain(|addr, task| {
            let keep = endpoints.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        // Offers from sentinels no longer followed are forgotten.
        self.candidates
            .retain(|s, _| !matches!(s, Source::Sentinel(a) if !endpoints.contains(a)));
        for addr in endpoints {
            if !self.sentinels.contains_key(&addr) {
                let task = tokio::spawn(follow_sentinel(
                    addr.clone(),
                    name.to_string(),
                    self.offers.clone(),
                ));
                self.sentinels.insert(addr, task);
            }
        }
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for task in self.sentinels.values() {
            task.abort();
        }
    }
}

/// Why a `ROLE` did not say `master`.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// An answer that is not a `ROLE` reply.
    #[error("unexpected reply {0:?}")]
    Reply(String),
}

/// What `ROLE` says of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// `master`, `slave`, `sentinel`.
    pub role: String,
    /// A replica's master, `host:port`.
    pub master: Option<String>,
    /// A master's replication offset.
    pub offset: i64,
    /// A master's connected replicas: `host:port` and the offset each acknowledged.
    pub replicas: Vec<(String, i64)>,
}

/// How far (bytes of replication stream) a replica's acknowledged offset may trail
/// its master's and still serve reads (`--reads replicas`).
pub const READ_LAG_BYTES: i64 = 1 << 20;

fn join(host: &str, port: &str) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn number(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(n) => Some(*n),
        other => other.text()?.parse().ok(),
    }
}

/// The first element of `ROLE` at `addr` (`master`, `slave`, `sentinel`).
pub async fn role(addr: &str, timeout: Duration) -> Result<String, RoleError> {
    role_of(addr, None, timeout).await.map(|r| r.role)
}

/// `ROLE` at `addr`, authenticated first with `auth` when given.
pub async fn role_of(
    addr: &str,
    auth: Option<&BackendAuth>,
    timeout: Duration,
) -> Result<Role, RoleError> {
    let ask = async {
        let mut conn = TcpStream::connect(addr).await?;
        if let Some(a) = auth {
            conn.write_all(&a.command()).await?;
            let mut buf = BytesMut::with_capacity(128);
            match read_value(&mut conn, &mut buf).await? {
                Value::Simple(_) => {}
                other => return Err(RoleError::Reply(format!("AUTH: {other:?}"))),
            }
        }
        match request(&mut conn, &[b"ROLE"]).await? {
            Value::Array(Some(items)) => {
                let role = items
                    .first()
                    .and_then(Value::text)
                    .ok_or_else(|| RoleError::Reply(format!("{items:?}")))?;
                let master = (role == "slave")
                    .then(|| {
                        let host = items.get(1)?.text()?;
                        let port = number(items.get(2)?)?;
                        Some(join(&host, &port.to_string()))
                    })
                    .flatten();
                let mut offset = 0;
                let mut replicas = Vec::new();
                if role == "master" {
                    offset = items.get(1).and_then(number).unwrap_or(0);
                    if let Some(Value::Array(Some(list))) = items.get(2) {
                        for r in list {
                            if let Value::Array(Some(f)) = r
                                && let (Some(h), Some(p), Some(o)) = (
                                    f.first().and_then(Value::text),
                                    f.get(1).and_then(Value::text),
                                    f.get(2).and_then(number),
                                )
                            {
                                replicas.push((join(&h, &p), o));
                            }
                        }
                    }
                }
                Ok(Role {
                    role,
                    master,
                    offset,
                    replicas,
                })
            }
            other => Err(RoleError::Reply(format!("{other:?}"))),
        }
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| RoleError::Timeout(timeout))?
}

/// Sends one command and reads its reply (control connections).
async fn request(conn: &mut TcpStream, args: &[&[u8]]) -> Result<Value, RoleError> {
    conn.write_all(&resp::encode(args)).await?;
    let mut buf = BytesMut::with_capacity(512);
    read_value(conn, &mut buf).await
}

/// The next reply on a control connection (bytes past it stay in `buf`).
async fn read_value(conn: &mut TcpStream, buf: &mut BytesMut) -> Result<Value, RoleError> {
    loop {
        match resp::parse_value(buf) {
            Ok(Some((v, n))) => {
                let _ = buf.split_to(n);
                return Ok(v);
            }
            Ok(None) => {}
            Err(e) => return Err(RoleError::Reply(e.to_string())),
        }
        if conn.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// The new primary (`host:port`) of master `name` a sentinel event announces:
/// `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`, or
/// `+promoted-slave slave <ip>:<port> <ip> <port> @ <name> <master-ip> <master-port>`.
fn announced(channel: &str, text: &str, name: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (ip, port) = match (channel, &words[..]) {
        ("+switch-master", [master, _, _, ip, port]) if *master == name => (ip, port),
        ("+promoted-slave", ["slave", _, ip, port, "@", master, _, _]) if *master == name => {
            (ip, port)
        }
        _ => return None,
    };
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// Follows one sentinel for `name`, reconnecting after a failure: its current
/// answer to `GET-MASTER-ADDR-BY-NAME`, then every `+switch-master` and
/// `+promoted-slave`.
async fn follow_sentinel(addr: String, name: String, offers: Offers) {
    loop {
        if let Err(e) = follow_once(&addr, &name, &offers).await {
            tracing::debug!(sentinel = %addr, error = %e, "sentinel connection ended; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow_once(addr: &str, name: &str, offers: &Offers) -> Result<(), RoleError> {
    let mut conn = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| RoleError::Timeout(Duration::from_secs(2)))??;
    let source = Source::Sentinel(addr.to_string());
    // Subscribe first, then ask: a switch between the two is not missed.
    // `+promoted-slave` names the new primary as soon as Sentinel saw it promoted,
    // before it re-pointed every replica and announced `+switch-master`.
    conn.write_all(&resp::encode(&[
        &b"SUBSCRIBE"[..],
        b"+switch-master",
        b"+promoted-slave",
    ]))
    .await?;
    let mut buf = BytesMut::with_capacity(512);
    for _ in 0..2 {
        read_value(&mut conn, &mut buf).await?;
    }
    // A subscribed connection cannot ask; a second one does.
    let mut ask = TcpStream::connect(addr).await?;
    let reply = request(
        &mut ask,
        &[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", name.as_bytes()],
    )
    .await?;
    drop(ask);
    if let Value::Array(Some(items)) = reply
        && let [host, port] = &items[..]
        && let (Some(h), Some(p)) = (host.text(), port.text())
    {
        offers.offer(source.clone(), format!("{h}:{p}"));
    }
    loop {
        let message = read_value(&mut conn, &mut buf).await?;
        if let Value::Array(Some(items)) = message
            && let Some(channel) = items.get(1).and_then(Value::text)
            && let Some(text) = items.get(2).and_then(Value::text)
            && let Some(new) = announced(&channel, &text, name)
        {
            tracing::info!(sentinel = %addr, %new, event = %channel, "sentinel names a new primary");
            offers.offer(source.clone(), new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::announced;

    #[test]
    fn sentinel_events_name_the_new_primary_of_their_master_only() {
        assert_eq!(
            announced(
                "+switch-master",
                "shard 127.0.0.1 6379 127.0.0.2 6380",
                "shard"
            )
            .as_deref(),
            Some("127.0.0.2:6380")
        );
        assert_eq!(
            announced(
                "+promoted-slave",
                "slave 127.0.0.2:6380 127.0.0.2 6380 @ shard 127.0.0.1 6379",
                "shard"
            )
            .as_deref(),
            Some("127.0.0.2:6380")
        );
        assert_eq!(
            announced(
                "+promoted-slave",
                "slave [::1]:7000 ::1 7000 @ shard ::1 6379",
                "shard"
            )
            .as_deref(),
            Some("[::1]:7000")
        );
        assert_eq!(
            announced(
                "+switch-master",
                "other 127.0.0.1 6379 127.0.0.2 6380",
                "shard"
            ),
            None
        );
        assert_eq!(
            announced(
                "+promoted-slave",
                "sentinel 127.0.0.2:26379 127.0.0.2 26379 @ shard 127.0.0.1 6379",
                "shard"
            ),
            None
        );
        assert_eq!(
            announced("+sdown", "master shard 127.0.0.1 6379", "shard"),
            None
        );
    }
}
