//! The embedded store: the whole [`Store`] contract in one durable file (redb).
//!
//! ```text
//!   put/delete/txn/lease ──▶ writer thread: every waiting write in one redb txn
//!                        (each its own revision: kv + log; a txn's ops share one), one fsync ──▶ Ok to each
//!                                     │ after commit
//!                                     ▼
//!   watch(prefix, from) ◀── reads log[next..=latest] ◀── latest revision (tokio watch channel)
//!   get/list ◀── redb read txn (a snapshot; never blocks on the writer)
//!   lease reaper (every `lease_check_interval`) ──▶ expire due leases (Delete events)
//! ```
//!
//! One writer thread owns all writes: redb runs one write transaction at a time
//! anyway, and a writer that takes every request waiting lets concurrent writers share
//! one fsync (group commit) instead of paying one each. Nothing is acknowledged, and no
//! watcher learns of a revision, before its batch is on disk.
//!
//! Watchers read the history (`log`) from the file rather than being fed by writers, so
//! a watcher can never miss or reorder an event: the log is the order, and a watcher
//! that falls behind just reads further. The only thing passed in memory is "the latest
//! revision is now R", which may be coalesced freely. History is bounded
//! ([`EmbeddedOptions::history`]); a watcher that needs revisions older than that gets
//! [`Error::Compacted`] and re-lists, as with etcd.
//!
//! Leases are kept in the file with their deadline on [`EmbeddedOptions::clock`], so they
//! survive restarts. A lease ends when a sweep finds its deadline passed: the background
//! reaper sweeps periodically, and [`EmbeddedStore::expire_leases`] sweeps on demand
//! (tests move a [`ManualClock`] and sweep, instead of sleeping).
//!
//! The file is held open (and locked against a second opener) until the store, every
//! watch stream and any in-flight operation are dropped.

mod clock;
mod codec;
mod db;

use std::collections::VecDeque;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Weak, mpsc};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use clock::{Clock, ManualClock, SystemClock};

use self::db::{Db, Done, Op};
use crate::txn::{Committed, Txn};
use crate::{
    Condition, DEFAULT_REQUEST_TIMEOUT, Error, Event, KeyValue, Lease, LeaseId, Listing, Result,
    Revision, Store, WatchStream, check_key, check_start, check_ttl, check_txn,
};

/// Revisions a watcher reads from the file at a time.
const WATCH_BATCH: u64 = 512;

/// Writes the writer thread commits together at most.
const MAX_BATCH: usize = 256;

/// How an [`EmbeddedStore`] keeps history and time.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// How many revisions of history are kept for watches (at least 1). Older ones are
    /// dropped as new ones are written; a watch from before them gets
    /// [`Error::Compacted`]. Each kept revision holds its value, so this bounds the file.
    pub history: u64,
    /// The clock lease deadlines are measured on.
    pub clock: Arc<dyn Clock>,
    /// How often the background reaper ends leases whose deadline passed; `None` for no
    /// reaper (then only [`EmbeddedStore::expire_leases`] ends them).
    pub lease_check_interval: Option<Duration>,
    /// How long a request may wait for the file (a read for its snapshot, a write for
    /// its commit) before it fails with [`Error::Timeout`]; a timed-out write may still
    /// commit.
    pub request_timeout: Duration,
}

impl Default for EmbeddedOptions {
    /// 10,000 revisions of history, the system clock, a lease check every 500 ms
    /// (etcd's own interval), and [`DEFAULT_REQUEST_TIMEOUT`] per request.
    fn default() -> EmbeddedOptions {
        EmbeddedOptions {
            history: 10_000,
            clock: Arc::new(SystemClock),
            lease_check_interval: Some(Duration::from_millis(500)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// The [`Store`] in one local file. See the module documentation.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    reaper: Option<JoinHandle<()>>,
}

/// What the store, its watch streams and its reaper share.
#[derive(Debug)]
struct Shared {
    db: Arc<Db>,
    /// Writes for the writer thread; `None` only while dropping.
    writes: Option<mpsc::Sender<Request>>,
    /// The writer thread, joined on drop so the file is closed when the store is.
    writer: Option<std::thread::JoinHandle<()>>,
    /// The latest committed revision, sent by the writer; watchers wait on it.
    latest: watch::Receiver<u64>,
    /// [`EmbeddedOptions::request_timeout`].
    timeout: Duration,
}

/// A write on its way to the writer thread, and where its outcome goes.
struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Done>>,
}

impl Shared {
    /// Hands `op` to the writer thread and waits until it is committed (or refused).
    /// Gives up after the request timeout (the write may still commit).
    async fn write(&self, op: Op) -> Result<Done> {
        let (reply, outcome) = oneshot::channel();
        let name = op.name();
        let writes = self.writes.as_ref().ok_or(Error::WriterStopped)?;
        writes
            .send(Request { op, reply })
            .map_err(|_| Error::WriterStopped)?;
        tokio::time::timeout(self.timeout, outcome)
            .await
            .map_err(|_| Error::Timeout {
                op: name,
                after: self.timeout,
            })?
            .map_err(|_| Error::WriterStopped)?
    }

    /// Runs `f` on a blocking thread; gives up waiting after the request timeout.
    async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Db) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::time::timeout(self.timeout, tokio::task::spawn_blocking(move || f(&db)))
            .await
            .map_err(|_| Error::Timeout {
                op,
                after: self.timeout,
            })?
            .map_err(Error::Worker)?
    }

    async fn expire_leases(&self) -> Result<usize> {
        let mut ended = 0;
        for id in self.read("expire leases", Db::due_leases).await? {
            if let Done::Expired(true) = self.write(Op::Expire(id)).await? {
                ended += 1;
            }
        }
        Ok(ended)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop; it has no request left to serve,
        // since every request holds the store.
        self.writes = None;
        if let Some(writer) = self.writer.take() {
            // A panic in the writer was already reported to the writes it failed.
            let _ = writer.join();
        }
    }
}

/// The writer thread: takes every write waiting (up to [`MAX_BATCH`]), applies them in
/// one transaction with one fsync, tells watchers the new revision, then answers each.
/// Concurrent writers thereby share fsyncs (group commit); a lone writer pays one.
fn write_loop(db: Arc<Db>, requests: mpsc::Receiver<Request>, latest: watch::Sender<u64>) {
    while let Ok(first) = requests.recv() {
        let batch: Vec<Request> = std::iter::once(first)
            .chain(requests.try_iter().take(MAX_BATCH - 1))
            .collect();
        let (ops, replies): (Vec<Op>, Vec<_>) = batch.into_iter().map(|r| (r.op, r.reply)).unzip();
        let (outcomes, written) = db.apply(&ops);
        if let Some(revision) = written {
            latest.send_if_modified(|latest| {
                let newer = revision > *latest;
                *latest = (*latest).max(revision);
                newer
            });
        }
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            // The caller may have stopped waiting; the write stands regardless.
            let _ = reply.send(outcome);
        }
    }
}

impl EmbeddedStore {
    /// Opens the store in `path`, creating the file if it does not exist. Must be called
    /// within a tokio runtime (the lease reaper runs on it).
    pub async fn open(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        if options.history == 0 {
            return Err(Error::InvalidArgument(
                "the embedded store must keep at least 1 revision of history".into(),
            ));
        }
        let path = path.as_ref().to_path_buf();
        let EmbeddedOptions {
            history,
            clock,
            lease_check_interval,
            request_timeout,
        } = options;
        if request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the embedded store's request timeout must not be zero".into(),
            ));
        }
        let opening = path.clone();
        let db = tokio::task::spawn_blocking(move || Db::open(&opening, history, clock))
            .await
            .map_err(Error::Worker)??;
        let db = Arc::new(db);
        let (latest_tx, latest) = watch::channel(db.revision()?);
        let (writes, requests) = mpsc::channel();
        let writer_db = db.clone();
        let writer = std::thread::Builder::new()
            .name("flotilla-store-writer".into())
            .spawn(move || write_loop(writer_db, requests, latest_tx))
            .map_err(|e| Error::Open {
                path,
                source: redb::Error::Io(e),
            })?;
        let shared = Arc::new(Shared {
            db,
            writes: Some(writes),
            writer: Some(writer),
            latest,
            timeout: request_timeout,
        });
        let reaper =
            lease_check_interval.map(|every| tokio::spawn(reap(Arc::downgrade(&shared), every)));
        Ok(EmbeddedStore { shared, reaper })
    }

    /// Ends every lease whose deadline has passed on the store's clock, deleting its
    /// keys; returns how many ended. The reaper calls this periodically.
    pub async fn expire_leases(&self) -> Result<usize> {
        self.shared.expire_leases().await
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        self.shared.db.path()
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path())
            .field("revision", &*self.shared.latest.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        if let Some(reaper) = &self.reaper {
            reaper.abort();
        }
    }
}

/// Ends due leases every `every` until the store is dropped. Holds the store only while
/// sweeping, so that dropping the store closes the file.
async fn reap(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if let Err(error) = strong.expire_leases().await {
            tracing::warn!(%error, "embedded store: ending expired leases failed");
        }
    }
}

/// The writer's answer to an op, which always has the op's kind.
fn mismatched(done: Done) -> ! {
    unreachable!("the writer answered with {done:?}, which is for another kind of op")
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    /// redb locks the file: no other process has it open while this one does.
    fn shared(&self) -> bool {
        false
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let key = key.to_string();
        self.shared.read("get", move |db| db.get(&key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_string();
        let (revision, items) = self.shared.read("list", move |db| db.list(&prefix)).await?;
        Ok(Listing {
            revision: Revision::try_from(revision).unwrap_or(Revision::MAX),
            items,
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        let op = Op::Put {
            key: key.to_string(),
            value,
            condition,
            lease,
        };
        match self.shared.write(op).await? {
            Done::Revision(revision) => Ok(revision),
            other => mismatched(other),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        check_key(key)?;
        let op = Op::Delete {
            key: key.to_string(),
            expected,
        };
        match self.shared.write(op).await? {
            Done::Deleted(revision) => Ok(revision),
            other => mismatched(other),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        check_start(from)?;
        let from = u64::try_from(from).expect("checked positive");
        self.shared
            .read("watch", move |db| db.check_watch_start(from))
            .await?;
        let watcher = Watcher {
            shared: self.shared.clone(),
            prefix: prefix.to_string(),
            next: from,
            latest: self.shared.latest.clone(),
            ready: VecDeque::new(),
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(watcher, Watcher::next)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        match self.shared.write(Op::Compact(revision)).await? {
            Done::Nothing => Ok(()),
            other => mismatched(other),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        check_ttl(ttl)?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.shared.write(Op::Grant { ttl_ms }).await? {
            Done::Lease(id) => Ok(Lease {
                id,
                ttl: Duration::from_millis(ttl_ms),
            }),
            other => mismatched(other),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        match self.shared.write(Op::KeepAlive(lease)).await? {
            Done::Ttl(ms) => Ok(Duration::from_millis(ms)),
            other => mismatched(other),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        match self.shared.write(Op::Revoke(lease)).await? {
            Done::Nothing => Ok(()),
            other => mismatched(other),
        }
    }

    /// One op of the writer's batch: its compares, lease checks and writes happen
    /// inside that one redb transaction, at one revision.
    async fn txn(&self, txn: Txn) -> Result<Committed> {
        check_txn(&txn)?;
        match self.shared.write(Op::Txn(txn)).await? {
            Done::Txn(committed) => Ok(committed),
            other => mismatched(other),
        }
    }
}

/// One watch: reads the log from `next` on, in batches, as the latest revision moves.
struct Watcher {
    shared: Arc<Shared>,
    prefix: String,
    /// The first revision not read yet.
    next: u64,
    latest: watch::Receiver<u64>,
    /// Events read but not yet yielded.
    ready: VecDeque<Event>,
    /// Set after yielding an error: the stream ends.
    done: bool,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<Event>, Watcher)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            let latest = *self.latest.borrow_and_update();
            if self.next > latest {
                // Wait for a commit. The sender lives in `shared`, which this holds, so
                // the channel cannot close.
                self.latest.changed().await.ok()?;
                continue;
            }
            let (from, to) = (self.next, latest.min(self.next + WATCH_BATCH - 1));
            let prefix = self.prefix.clone();
            let read = self
                .shared
                .read("watch", move |db| db.changes(&prefix, from, to))
                .await;
            match read {
                Ok(events) => {
                    self.ready.extend(events);
                    self.next = to + 1;
                }
                Err(error) => {
                    self.done = true;
                    return Some((Err(error), self));
                }
            }
        }
    }
}
