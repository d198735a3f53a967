//! One client session: its own backend connection to the verified primary (so that
//! `MULTI`/`EXEC`, `SUBSCRIBE`, blocking commands and pipelining keep Redis's
//! semantics), requests checked against the [`Policy`] and forwarded as they are,
//! replies copied back as they come.
//!
//! Replies the proxy makes itself (`AUTH`, a denied command, `-NOAUTH`) must reach
//! the client in request order, between the backend's: every forwarded request
//! leaves an [`Expect`] in a queue, the [`ReplyScanner`] says where each backend
//! reply ends, and a local reply waits in the queue behind the backend replies still
//! due before it.
//!
//! Architecture invariant: a session writes only to the primary of the generation it
//! connected in; once a newer generation is published it writes nothing more to it.
//! A session with no state on its backend connection (no `SELECT`, `WATCH`, `MULTI`,
//! subscription, `HELLO`, `CLIENT` …) and nothing in flight moves to the new primary
//! unseen; any other closes the client's connection (the client sees one connection
//! error and reconnects, to the new primary).
//!
//! A planned switchover: the old primary pauses writes, then answers them `-READONLY`
//! as a replica, which means the command did not run. A movable session's only
//! command in flight answered so is sent again to the new primary once one is
//! published (the client sees a pause, not an error); discovery is told to verify at
//! once and tries first the master the old primary now follows.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::policy::{Auth, Outcome, Policy, User, deny_error};
use crate::primary::Primary;
use crate::resp::{Limits, ReplyScanner, Request, RequestReader};
use crate::{Reads, Shared};

/// How long a session waits for the old primary's answer to the one command in flight
/// when the primary changes (then the client's connection is closed).
const OLD_REPLY_WAIT: Duration = Duration::from_secs(3);

/// How often a command refused for now (`-NOREPLICAS`, `-LOADING`) is sent again
/// while it is held ([`crate::Config::hold_refused`]).
const HOLD_RETRY_EVERY: Duration = Duration::from_millis(50);

/// What the client is owed next, in order.
#[derive(Debug)]
enum Expect {
    /// `remaining` replies from the backend; copied to the client when `forward`,
    /// swallowed otherwise (a `DISCARD` the proxy sent in place of an `EXEC`).
    Backend {
        remaining: usize,
        forward: bool,
        /// When the request went out (for the latency histogram).
        sent: tokio::time::Instant,
        /// The request, kept when it may be sent again to a new primary after a
        /// `-READONLY` (one reply, no connection state).
        retry: Option<Bytes>,
    },
    /// A reply the proxy made.
    Local(Bytes),
}

struct Backend {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    /// The generation of the primary this connection goes to.
    generation: u64,
    addr: String,
    scanner: ReplyScanner,
}

/// How a session ends.
#[derive(Debug)]
enum End {
    /// The client closed, or sent `QUIT`.
    Client,
    /// The primary changed.
    Switched,
    /// Draining finished (or its deadline passed).
    Drained,
    /// A protocol or I/O error (logged).
    Failed(String),
}

struct Session {
    peer: SocketAddr,
    shared: Arc<Shared>,
    user: Option<User>,
    in_multi: bool,
    /// The backend connection holds state of the client's (see the module docs): the
    /// session cannot move to a new primary unseen.
    sticky: bool,
    /// A request answered `-READONLY` to send again (with that reply, for the client if
    /// no new primary comes).
    resend: Option<(Bytes, Bytes)>,
    /// The last backend bytes ended inside a reply (its start already forwarded).
    mid_reply: bool,
    /// The primary changed with one command in flight: its answer is awaited from the
    /// old primary until then.
    awaiting_old: Option<tokio::time::Instant>,
    /// A request refused for now (`-NOREPLICAS`, `-LOADING`: it did not run) to send
    /// again, with that reply.
    hold: Option<(Bytes, Bytes)>,
    /// Since when the command in flight has been refused for now.
    held_since: Option<tokio::time::Instant>,
    /// Requests in `pending` not yet written to the backend (in `to_backend`).
    unsent: usize,
    /// `--reads replicas`: the connection to the replica reads go to.
    replica: Option<(String, TcpStream)>,
    /// A command inside `MULTI` was refused: `EXEC` must abort.
    multi_dirty: bool,
    pending: VecDeque<Expect>,
    /// Bytes for the client, written after each step.
    out: Vec<u8>,
    /// Bytes for the backend, written after each step.
    to_backend: Vec<u8>,
    backend: Option<Backend>,
    primary: watch::Receiver<Primary>,
    quit: bool,
}

/// Serves one client until it leaves, its primary changes, or draining ends.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) {
    shared.metrics.connections.inc();
    let primary = shared.primary.clone();
    let mut session = Session {
        peer,
        user: shared.policy.initial_user(),
        shared: shared.clone(),
        in_multi: false,
        sticky: false,
        resend: None,
        mid_reply: false,
        awaiting_old: None,
        hold: None,
        held_since: None,
        replica: None,
        unsent: 0,
        multi_dirty: false,
        pending: VecDeque::new(),
        out: Vec::new(),
        to_backend: Vec::new(),
        backend: None,
        primary,
        quit: false,
    };
    let (mut read, mut write) = client.into_split();
    let end = session.run(&mut read, &mut write, &mut drain).await;
    // Whatever the client is owed and has arrived goes out before the close.
    let _ = write.write_all(&session.out).await;
    let _ = write.shutdown().await;
    match &end {
        End::Failed(e) => tracing::debug!(%peer, error = %e, "client session failed"),
        End::Switched => {
            shared.metrics.closed_on_switch.inc();
            tracing::info!(%peer, "closed: the primary changed");
        }
        _ => tracing::debug!(%peer, ?end, "client session ended"),
    }
    shared.metrics.connections.dec();
}

impl Session {
    async fn run(
        &mut self,
        read: &mut OwnedReadHalf,
        write: &mut OwnedWriteHalf,
        drain: &mut watch::Receiver<bool>,
    ) -> End {
        let mut reader = RequestReader::default();
        let mut inbuf = BytesMut::with_capacity(16 * 1024);
        let mut backend_buf = vec![0u8; 16 * 1024];
        let mut draining = *drain.borrow();
        let drain_for = self.shared.drain;
        let mut deadline = None;
        loop {
            if draining {
                if self.pending.is_empty() {
                    return End::Drained;
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + drain_for);
            }
            let has_backend = self.backend.is_some();
            let until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                biased;
                changed = self.primary.changed(), if has_backend => {
                    if changed.is_err() {
                        return End::Switched;
                    }
                    if self.switched() {
                        if self.movable() && self.pending.is_empty() {
                            // Nothing in flight, no state: the next command goes to the
                            // new primary.
                            self.backend = None;
                            self.shared.metrics.moved_on_switch.inc();
                        } else if self.movable() && self.one_retryable_in_flight() {
                            // Its answer is still due from the old primary (a paused
                            // write answers -READONLY once demoted, and is sent again);
                            // nothing more is written there meanwhile.
                            self.awaiting_old = Some(tokio::time::Instant::now() + OLD_REPLY_WAIT);
                        } else {
                            return End::Switched;
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.awaiting_old.unwrap_or(until)), if self.awaiting_old.is_some() => {
                    return End::Switched;
                }
                _ = drain.changed(), if !draining => draining = true,
                _ = tokio::time::sleep_until(until), if deadline.is_some() => return End::Drained,
                n = read_backend(&mut self.backend, &mut backend_buf), if has_backend => match n {
                    Ok(0) => return End::Failed("the backend closed the connection".into()),
                    Ok(n) => {
                        if let Err(e) = self.on_backend_bytes(n, &backend_buf) {
                            return End::Failed(e);
                        }
                        if let Some((wire, refused)) = self.resend.take()
                            && let Err(end) = self.send_again(wire, refused).await
                        {
                            return end;
                        }
                        if let Some((wire, refused)) = self.hold.take()
                            && let Err(end) = self.hold_again(wire, refused).await
                        {
                            return end;
                        }
                        if self.switched() && self.pending.is_empty() && self.movable() {
                            // The old primary's last answer is in: on to the new one.
                            self.backend = None;
                            self.awaiting_old = None;
                            self.shared.metrics.moved_on_switch.inc();
                        }
                    }
                    Err(e) => return End::Failed(format!("backend: {e}")),
                },
                n = read.read_buf(&mut inbuf), if !draining && !self.quit => match n {
                    Ok(0) => return End::Client,
                    Ok(_) => {
                        loop {
                            let limits = if self.user.is_some() { Limits::OPEN } else { Limits::UNAUTHENTICATED };
                            match reader.next(&mut inbuf, limits) {
                                Ok(Some(request)) => {
                                    if let Err(end) = self.handle(request).await {
                                        return end;
                                    }
                                    if self.quit { break; }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    self.local(format!("-ERR Protocol error: {e}\r\n").into_bytes());
                                    return End::Failed(format!("protocol error: {e}"));
                                }
                            }
                        }
                    }
                    Err(e) => return End::Failed(format!("client: {e}")),
                },
            }
            if let Err(e) = self.flush_backend().await {
                return e;
            }
            if !self.out.is_empty() {
                if let Err(e) = write.write_all(&self.out).await {
                    return End::Failed(format!("client: {e}"));
                }
                self.out.clear();
            }
            if self.quit && self.pending.is_empty() {
                return End::Client;
            }
        }
    }

    /// Whether the published primary is no longer this session's.
    fn switched(&self) -> bool {
        match &self.backend {
            Some(b) => self.primary.borrow().generation != b.generation,
            None => false,
        }
    }

    /// Whether the session may move to another primary unseen.
    fn movable(&self) -> bool {
        !self.sticky && !self.in_multi
    }

    /// Writes what is due to the backend, unless the primary changed: then nothing
    /// (or, for a movable session with nothing in flight, to the new primary).
    async fn flush_backend(&mut self) -> Result<(), End> {
        if self.to_backend.is_empty() {
            return Ok(());
        }
        if self.switched() {
            // Nothing sent to the old primary is still unanswered: only what waits in
            // `to_backend`, which goes to the new one instead.
            let sent = self
                .pending
                .iter()
                .filter(|e| matches!(e, Expect::Backend { .. }))
                .count()
                .saturating_sub(self.unsent);
            let idle = sent == 0;
            if !self.movable() || !idle {
                return Err(End::Switched);
            }
            self.backend = None;
            self.unsent = 0;
            self.shared.metrics.moved_on_switch.inc();
            if !self.connect().await? {
                return Ok(());
            }
        }
        let Some(b) = &mut self.backend else {
            return Ok(());
        };
        if let Err(e) = b.write.write_all(&self.to_backend).await {
            return Err(End::Failed(format!("backend {}: {e}", b.addr)));
        }
        self.to_backend.clear();
        self.unsent = 0;
        Ok(())
    }

    /// `--reads replicas`: `request` (read-only, nothing else in flight) answered by a
    /// caught-up replica of the primary; `false` when there is none or it fails (the
    /// primary answers instead: a read may run twice).
    async fn read_from_replica(&mut self, request: &Request) -> bool {
        let list = self.shared.readable.borrow().clone();
        if self.replica.as_ref().is_some_and(|r| !list.contains(&r.0)) {
            self.replica = None;
        }
        if list.is_empty() {
            return false;
        }
        let auth = self.shared.backend_auth.as_ref().map(|a| a.command());
        let pick = list[usize::from(self.peer.port()) % list.len()].clone();
        let exchange = async {
            if self.replica.is_none() {
                let stream = TcpStream::connect(&pick).await?;
                let _ = stream.set_nodelay(true);
                let mut conn = (pick.clone(), stream);
                if let Some(a) = &auth {
                    let reply = exchange_one(&mut conn.1, a).await?;
                    if !reply.starts_with(b"+") {
                        return Err(std::io::Error::other("AUTH refused"));
                    }
                }
                self.replica = Some(conn);
            }
            let Some((_, stream)) = self.replica.as_mut() else {
                return Err(std::io::Error::other("no replica"));
            };
            exchange_one(stream, &request.wire).await
        };
        match tokio::time::timeout(REPLICA_TIMEOUT, exchange).await {
            Ok(Ok(reply)) if !reply.starts_with(b"-") => {
                self.shared.metrics.command("replica");
                self.out.extend_from_slice(&reply);
                true
            }
            outcome => {
                tracing::debug!(peer = %self.peer, replica = %pick, ?outcome, "read from a replica failed; the primary answers");
                self.replica = None;
                false
            }
        }
    }

    /// Whether exactly one request is in flight and it may be sent again.
    fn one_retryable_in_flight(&self) -> bool {
        self.pending.len() == 1
            && matches!(
                self.pending.front(),
                Some(Expect::Backend {
                    retry: Some(_),
                    remaining: 1,
                    ..
                })
            )
    }

    /// Sends `wire` again after a pause, refused for now (`refused`) by the primary it
    /// went to; after `hold_refused` of refusals the client gets the last one.
    async fn hold_again(&mut self, wire: Bytes, refused: Bytes) -> Result<(), End> {
        let now = tokio::time::Instant::now();
        let since = *self.held_since.get_or_insert(now);
        if now - since >= self.shared.hold_refused {
            self.held_since = None;
            self.pending.pop_front();
            self.out.extend_from_slice(&refused);
            self.shared.metrics.command("refused_after_hold");
            return Ok(());
        }
        tokio::time::sleep(HOLD_RETRY_EVERY).await;
        if self.switched() {
            // The primary changed meanwhile: sent to the new one.
            return self.send_again(wire, refused).await;
        }
        let mut bytes = wire.to_vec();
        bytes.extend_from_slice(&self.to_backend);
        self.to_backend = bytes;
        self.unsent += 1;
        Ok(())
    }

    /// Sends `wire` (whose reply, `refused`, was `-READONLY`) again once a newer
    /// primary than this backend's is published; without one in time, the client gets
    /// the refusal.
    async fn send_again(&mut self, wire: Bytes, refused: Bytes) -> Result<(), End> {
        self.awaiting_old = None;
        let Some(old) = self.backend.take() else {
            return Ok(());
        };
        let wait = self.shared.wait_for_primary;
        let newer = tokio::time::timeout(
            wait,
            self.primary
                .wait_for(|p| p.generation > old.generation && p.addr.is_some()),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !newer {
            self.pending.pop_front();
            self.out.extend_from_slice(&refused);
            self.shared.metrics.command("readonly");
            return Ok(());
        }
        // In front of anything queued behind it (one was in flight: nothing else was
        // sent since), behind the proxy's own AUTH that connecting puts first.
        self.to_backend.splice(0..0, wire.iter().copied());
        self.unsent += 1;
        if !self.connect().await? {
            self.to_backend.drain(..wire.len());
            self.unsent -= 1;
            self.pending.pop_front();
            self.out.extend_from_slice(&refused);
            return Ok(());
        }
        tracing::debug!(peer = %self.peer, from = %old.addr, "a command refused as READONLY sent again to the new primary");
        self.shared.metrics.resent.inc();
        Ok(())
    }

    /// A reply of the proxy's own, in its turn.
    fn local(&mut self, reply: impl Into<Bytes>) {
        let reply = reply.into();
        if self.pending.is_empty() {
            self.out.extend_from_slice(&reply);
        } else {
            self.pending.push_back(Expect::Local(reply));
        }
    }

    /// Copies backend bytes to the client, each reply where it belongs.
    fn on_backend_bytes(&mut self, n: usize, buf: &[u8]) -> Result<(), String> {
        let chunk = &buf[..n];
        let Some(b) = &mut self.backend else {
            return Ok(());
        };
        let ends = b
            .scanner
            .feed(chunk)
            .map_err(|e| format!("backend reply: {e}"))?;
        let mut start = 0;
        let alone = self.pending.len() == 1;
        for end in ends {
            let piece = &chunk[start..end.end];
            start = end.end;
            let alone_retryable = alone
                && self.resend.is_none()
                && self.hold.is_none()
                && !self.sticky
                && !(piece.as_ptr() == chunk.as_ptr() && self.mid_reply)
                && matches!(
                    self.pending.front(),
                    Some(Expect::Backend {
                        retry: Some(_),
                        remaining: 1,
                        forward: true,
                        ..
                    })
                );
            if !end.push
                && alone_retryable
                && (piece.starts_with(b"-NOREPLICAS") || piece.starts_with(b"-LOADING"))
                && let Some(Expect::Backend {
                    retry: Some(wire), ..
                }) = self.pending.front()
            {
                // Not run: held and sent again for a moment (a new primary waiting
                // for its replicas to come back), then the refusal goes out.
                self.hold = Some((wire.clone(), Bytes::copy_from_slice(piece)));
                continue;
            }
            if !end.push && piece.starts_with(b"-READONLY") {
                // The primary turned replica: discovery looks again at once.
                self.shared.offers.verify_now();
                if let Some(Expect::Backend {
                    retry: Some(wire),
                    remaining: 1,
                    forward: true,
                    ..
                }) = self.pending.front()
                    && alone
                    && self.resend.is_none()
                    && !self.sticky
                {
                    // The only reply due, none of it forwarded yet: sent again instead.
                    if !(piece.as_ptr() == chunk.as_ptr() && self.mid_reply) {
                        self.resend = Some((wire.clone(), Bytes::copy_from_slice(piece)));
                        continue;
                    }
                }
            }
            let forward = match self.pending.front_mut() {
                Some(Expect::Backend {
                    remaining,
                    forward,
                    sent,
                    ..
                }) if !end.push => {
                    let f = *forward;
                    *remaining -= 1;
                    if *remaining == 0 {
                        self.shared
                            .metrics
                            .latency
                            .observe(sent.elapsed().as_secs_f64());
                        self.pending.pop_front();
                        self.held_since = None;
                    }
                    f
                }
                // A push, or a message in subscribed mode: nobody asked, it goes out.
                _ => true,
            };
            if forward {
                self.out.extend_from_slice(piece);
            }
            while let Some(Expect::Local(_)) = self.pending.front() {
                if let Some(Expect::Local(reply)) = self.pending.pop_front() {
                    self.out.extend_from_slice(&reply);
                }
            }
        }
        // The start of a reply still arriving belongs to whoever is due.
        let tail = &chunk[start..];
        self.mid_reply = !tail.is_empty();
        if !tail.is_empty() {
            let forward = !matches!(
                self.pending.front(),
                Some(Expect::Backend { forward: false, .. })
            );
            if forward {
                self.out.extend_from_slice(tail);
            }
        }
        Ok(())
    }

    /// One request: answered here, refused, or forwarded.
    async fn handle(&mut self, request: Request) -> Result<(), End> {
        let name = request.name();
        let metrics = self.shared.metrics.clone();
        let shared = self.shared.clone();
        let policy: &Policy = &shared.policy;
        match name.as_str() {
            "AUTH" => {
                let args: Vec<&[u8]> = request.args[1..].iter().map(|a| &a[..]).collect();
                match policy.auth(&args) {
                    Auth::Ok(user) => {
                        if user == User::Admin {
                            self.shared
                                .audit
                                .record(self.peer, Some(user), "auth", Outcome::Admin);
                        }
                        self.user = Some(user);
                        metrics.command("auth_ok");
                        self.local(&b"+OK\r\n"[..]);
                    }
                    Auth::WrongPass => {
                        self.shared
                            .audit
                            .record(self.peer, self.user, "auth", Outcome::WrongPass);
                        metrics.command("auth_failed");
                        self.local(
                            &b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
                                [..],
                        );
                    }
                    Auth::Syntax => {
                        metrics.command("local");
                        self.local(&b"-ERR wrong number of arguments for 'auth' command\r\n"[..]);
                    }
                }
                return Ok(());
            }
            "HELLO" => return self.hello(request).await,
            "QUIT" => {
                metrics.command("local");
                self.local(&b"+OK\r\n"[..]);
                self.quit = true;
                return Ok(());
            }
            _ => {}
        }
        let Some(user) = self.user else {
            match name.as_str() {
                "PING" => {
                    metrics.command("local");
                    self.local(&b"+PONG\r\n"[..]);
                }
                _ => {
                    metrics.command("noauth");
                    self.local(&b"-NOAUTH Authentication required.\r\n"[..]);
                }
            }
            return Ok(());
        };
        if policy.denied(user, &name) {
            self.shared
                .audit
                .record(self.peer, Some(user), &name, Outcome::Denied);
            metrics.command("denied");
            if self.in_multi {
                self.multi_dirty = true;
            }
            self.local(deny_error(&name).into_bytes());
            return Ok(());
        }
        if policy.listed(&name) {
            self.shared
                .audit
                .record(self.peer, Some(user), &name, Outcome::Allowed);
        }
        // Sent again after a -READONLY only while the connection holds nothing of the
        // client's, and never an EXEC or DISCARD (the MULTI was the old primary's).
        let retryable = self.movable() && !matches!(name.as_str(), "EXEC" | "DISCARD");
        if sticky_command(&name) {
            self.sticky = true;
        }
        match name.as_str() {
            "MULTI" => {
                self.in_multi = true;
                self.multi_dirty = false;
            }
            "EXEC" if self.multi_dirty => {
                // As Redis does after an error while queueing: the transaction is
                // discarded, and EXEC says so.
                self.in_multi = false;
                self.multi_dirty = false;
                self.forward_swallowed(Request::from_args(vec![Bytes::from_static(b"DISCARD")]))
                    .await?;
                metrics.command("local");
                self.local(
                    &b"-EXECABORT Transaction discarded because of previous errors.\r\n"[..],
                );
                return Ok(());
            }
            "EXEC" | "DISCARD" | "RESET" => {
                self.in_multi = false;
                self.multi_dirty = false;
            }
            _ => {}
        }
        let replies = match name.as_str() {
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
            | "SUNSUBSCRIBE" => request.args.len().saturating_sub(1).max(1),
            _ => 1,
        };
        if retryable
            && replies == 1
            && self.shared.reads == Reads::Replicas
            && self.pending.is_empty()
            && self.to_backend.is_empty()
            && READ_ONLY.contains(&name.as_str())
            && self.read_from_replica(&request).await
        {
            return Ok(());
        }
        if retryable && replies == 1 {
            return self.forward_retryable(request).await;
        }
        self.forward(request, replies).await
    }

    /// `HELLO [protover [AUTH username password] [SETNAME name]]`: the proxy checks
    /// the credentials and forwards the rest (the backend never sees them).
    async fn hello(&mut self, request: Request) -> Result<(), End> {
        let shared = self.shared.clone();
        // The protocol version (and a name) live on the backend connection.
        self.sticky = true;
        let mut args = request.args;
        let auth = args
            .iter()
            .skip(2)
            .position(|a| a.eq_ignore_ascii_case(b"AUTH"))
            .map(|i| i + 2);
        if let Some(i) = auth {
            if args.len() < i + 3 {
                shared.metrics.command("local");
                self.local(&b"-ERR Syntax error in HELLO option 'auth'\r\n"[..]);
                return Ok(());
            }
            match shared.policy.auth(&[&args[i + 1][..], &args[i + 2][..]]) {
                Auth::Ok(user) => {
                    if user == User::Admin {
                        shared
                            .audit
                            .record(self.peer, Some(user), "hello", Outcome::Admin);
                    }
                    self.user = Some(user);
                    shared.metrics.command("auth_ok");
                    args.drain(i..i + 3);
                }
                _ => {
                    shared
                        .audit
                        .record(self.peer, self.user, "hello", Outcome::WrongPass);
                    shared.metrics.command("auth_failed");
                    self.local(
                        &b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"[..],
                    );
                    return Ok(());
                }
            }
        }
        if self.user.is_none() {
            shared.metrics.command("noauth");
            self.local(&b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"[..]);
            return Ok(());
        }
        self.forward(Request::from_args(args), 1).await
    }

    async fn forward(&mut self, request: Request, replies: usize) -> Result<(), End> {
        self.forward_keeping(request, replies, false).await
    }

    /// [`Session::forward`] of a one-reply request that may be sent again after a
    /// `-READONLY` (or held after a `-NOREPLICAS`).
    async fn forward_retryable(&mut self, request: Request) -> Result<(), End> {
        self.forward_keeping(request, 1, true).await
    }

    async fn forward_keeping(
        &mut self,
        request: Request,
        replies: usize,
        keep: bool,
    ) -> Result<(), End> {
        if !self.connect().await? {
            return Ok(());
        }
        self.shared.metrics.command("forwarded");
        self.to_backend.extend_from_slice(&request.wire);
        self.unsent += 1;
        self.pending.push_back(Expect::Backend {
            remaining: replies,
            forward: true,
            sent: tokio::time::Instant::now(),
            retry: keep.then_some(request.wire),
        });
        Ok(())
    }

    async fn forward_swallowed(&mut self, request: Request) -> Result<(), End> {
        if !self.connect().await? {
            return Ok(());
        }
        self.to_backend.extend_from_slice(&request.wire);
        self.unsent += 1;
        self.pending.push_back(Expect::Backend {
            remaining: 1,
            forward: false,
            sent: tokio::time::Instant::now(),
            retry: None,
        });
        Ok(())
    }

    /// Connects to the verified primary if not yet connected (waiting a little for
    /// one); `false` (and an error reply queued) when there is none.
    async fn connect(&mut self) -> Result<bool, End> {
        if self.backend.is_some() {
            return Ok(true);
        }
        let wait = self.shared.wait_for_primary;
        let found = tokio::time::timeout(wait, self.primary.wait_for(|p| p.addr.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().map(|p| p.clone()));
        let current = match found {
            Some(p) => p,
            None => {
                self.shared.metrics.command("no_primary");
                let msg = format!(
                    "-ERR flotilla proxy: no primary verified for {} yet, retry\r\n",
                    self.shared.set
                );
                self.local(msg.into_bytes());
                return Ok(false);
            }
        };
        let Some(addr) = current.addr else {
            return Ok(false);
        };
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                if let Some(auth) = &self.shared.backend_auth {
                    // The proxy's own credentials go first; their +OK is not the
                    // client's (a refusal is: its commands then fail with NOAUTH).
                    self.to_backend.splice(0..0, auth.command());
                    self.unsent += 1;
                    self.pending.push_front(Expect::Backend {
                        remaining: 1,
                        forward: false,
                        sent: tokio::time::Instant::now(),
                        retry: None,
                    });
                }
                tracing::debug!(peer = %self.peer, backend = %addr, "connected to the primary");
                self.backend = Some(Backend {
                    read,
                    write,
                    generation: current.generation,
                    addr,
                    scanner: ReplyScanner::default(),
                });
                Ok(true)
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                Err(End::Failed(format!(
                    "connecting to the primary {addr}: {why}"
                )))
            }
        }
    }
}

/// Commands that leave state on the backend connection: a session that sent one
/// cannot move to a new primary without the client knowing.
fn sticky_command(name: &str) -> bool {
    matches!(
        name,
        "SELECT"
            | "WATCH"
            | "SUBSCRIBE"
            | "PSUBSCRIBE"
            | "SSUBSCRIBE"
            | "CLIENT"
            | "HELLO"
            | "READONLY"
            | "READWRITE"
            | "MONITOR"
            | "SWAPDB"
    )
}

/// Writes one request and reads its whole reply.
async fn exchange_one(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    let mut scanner = ReplyScanner::default();
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let ends = scanner
            .feed(&buf[..n])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if let Some(end) = ends.iter().find(|e| !e.push) {
            reply.extend_from_slice(&buf[..end.end]);
            return Ok(reply);
        }
        reply.extend_from_slice(&buf[..n]);
    }
}

/// Commands that only read, which `--reads replicas` may send to a replica.
pub const READ_ONLY: &[&str] = &[
    "GET",
    "MGET",
    "STRLEN",
    "GETRANGE",
    "SUBSTR",
    "EXISTS",
    "TYPE",
    "TTL",
    "PTTL",
    "EXPIRETIME",
    "PEXPIRETIME",
    "HGET",
    "HMGET",
    "HGETALL",
    "HKEYS",
    "HVALS",
    "HLEN",
    "HEXISTS",
    "HSTRLEN",
    "HRANDFIELD",
    "LRANGE",
    "LLEN",
    "LINDEX",
    "LPOS",
    "SMEMBERS",
    "SISMEMBER",
    "SMISMEMBER",
    "SCARD",
    "SRANDMEMBER",
    "SINTER",
    "SUNION",
    "SDIFF",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZRANGEBYLEX",
    "ZREVRANGE",
    "ZREVRANGEBYSCORE",
    "ZREVRANGEBYLEX",
    "ZSCORE",
    "ZMSCORE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZRANK",
    "ZREVRANK",
    "ZRANDMEMBER",
    "SCAN",
    "HSCAN",
    "SSCAN",
    "ZSCAN",
    "DBSIZE",
    "BITCOUNT",
    "BITPOS",
    "GETBIT",
    "XRANGE",
    "XREVRANGE",
    "XLEN",
    "DUMP",
    "RANDOMKEY",
];

/// How long a read from a replica may take before the primary answers instead.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(1);

async fn read_backend(backend: &mut Option<Backend>, buf: &mut [u8]) -> std::io::Result<usize> {
    match backend {
        Some(b) => b.read.read(buf).await,
        None => std::future::pending().await,
    }
}
