//! The etcd backend: the [`Store`] contract mapped onto etcd's v3 API, which it mirrors
//! (revisions, mod revisions, watches from a revision, leases).
//!
//! ```text
//!   create          txn if create_revision(key) == 0 then put          else get → AlreadyExists
//!   update          txn if mod_revision(key) == m    then put          else get → Conflict
//!   delete (CAS)    txn if mod_revision(key) == m    then delete       else get → Conflict
//!   list            range pages of `page_size`, every page pinned to the first page's revision
//!   watch           probe range @from (refused if compacted) → watch from `from`
//!   txn             txn if every compare then the ops else get each compared key
//!                   → the first compare that failed, evaluated on that read
//! ```
//!
//! Every request is bounded by [`EtcdOptions::request_timeout`] (a list: each page), so a
//! stuck etcd fails its callers with [`Error::Timeout`] instead of hanging them; a watch
//! is bounded while it is being created, and afterwards HTTP/2 keepalive pings
//! ([`EtcdOptions::keep_alive_interval`]) end it with an error when etcd stops answering.
//!
//! Compare-and-swap happens inside etcd's transaction, never as a read then a write here,
//! so two writers racing on one key cannot both win. Lists are read in pages (a fleet's
//! objects can exceed a gRPC message) but as one snapshot: later pages read at the first
//! page's revision.
//!
//! No response is too large to read because of what it carries: etcd bounds a request
//! (1.5 MiB by default), not a response, and a range of `page_size` keys or a watch
//! response catching up (etcd batches up to a thousand revisions in one) may hold many
//! large records. Responses are read up to [`EtcdOptions::max_response_bytes`] (by
//! default what etcd's own Go client allows, 2 GiB), not gRPC's 4 MiB; and a page
//! still too large is read again in halves, down to one key a page.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, GetOptions, KvClient,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchClient, WatchOptions,
    WatchStream as EtcdWatchStream,
};

use crate::txn::{Committed, KeyState};
use crate::{
    Condition, DEFAULT_REQUEST_TIMEOUT, Error, Event, KeyValue, Lease, LeaseId, Listing, Result,
    Revision, Store, WatchStream, check_key, check_start, check_ttl, check_txn,
};

/// How an [`EtcdStore`] talks to etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Keys per page when listing (etcd returns at most this many per request).
    pub page_size: i64,
    /// How long to wait for a connection to an endpoint.
    pub connect_timeout: Duration,
    /// How long one request may take before it fails with [`Error::Timeout`] (a list:
    /// each page; a watch: until it is created).
    pub request_timeout: Duration,
    /// How often the connection is pinged (HTTP/2 keepalive, also while idle), so that
    /// an open watch on an etcd that stopped answering ends with an error.
    pub keep_alive_interval: Duration,
    /// How long a ping may go unanswered before the connection is dropped.
    pub keep_alive_timeout: Duration,
    /// The largest response read from etcd (a list page, a watch response), in bytes.
    /// A list page larger than this is read again in smaller pages; a larger watch
    /// response ends the watch with an error.
    pub max_response_bytes: usize,
}

/// The least [`EtcdOptions::max_response_bytes`] may be: a page of one key must fit
/// (etcd's default request limit, 1.5 MiB, and its headers).
pub const MIN_RESPONSE_BYTES: usize = 2 << 20;

/// What etcd's Go client reads at most in one response (`math.MaxInt32`).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

impl Default for EtcdOptions {
    /// Pages of 500 keys; 5 s to connect; [`DEFAULT_REQUEST_TIMEOUT`] per request; a
    /// ping every 10 s, answered within 5 s; responses of up to
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    fn default() -> EtcdOptions {
        EtcdOptions {
            page_size: 500,
            connect_timeout: Duration::from_secs(5),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// The [`Store`] over an etcd cluster. Cheap to clone (one shared connection).
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// The KV and watch clients, reading responses up to `options.max_response_bytes`.
    kv: KvClient,
    watch: WatchClient,
    options: EtcdOptions,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port`). Connections
    /// are made lazily and re-made after failures; an unreachable cluster shows up as
    /// [`Error::Etcd`] from the first operation.
    pub async fn connect(endpoints: &[impl AsRef<str>], options: EtcdOptions) -> Result<EtcdStore> {
        if options.page_size < 1 {
            return Err(Error::InvalidArgument(format!(
                "the etcd list page size must be at least 1, not {}",
                options.page_size
            )));
        }
        if options.request_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "the etcd request timeout must not be zero".into(),
            ));
        }
        if options.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "the largest etcd response must be at least {MIN_RESPONSE_BYTES} bytes (a record etcd accepts), not {}",
                options.max_response_bytes
            )));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            .with_keep_alive_while_idle(true);
        let client = Client::connect(endpoints, Some(connect))
            .await
            .map_err(etcd("connect"))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(options.max_response_bytes);
        let watch = client
            .watch_client()
            .max_decoding_message_size(options.max_response_bytes);
        Ok(EtcdStore {
            client,
            kv,
            watch,
            options,
        })
    }

    /// Runs one request, failing with [`Error::Timeout`] when it takes longer than
    /// [`EtcdOptions::request_timeout`].
    async fn timed<T>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.options.request_timeout;
        tokio::time::timeout(after, request)
            .await
            .map_err(|_| Error::Timeout { op, after })?
    }

    /// [`Store::txn`] without its timeout.
    async fn txn_now(&self, txn: crate::Txn) -> Result<Committed> {
        check_txn(&txn)?;
        let compares: Vec<Compare> = txn
            .compares
            .iter()
            .map(|c| {
                let key = c.key.as_str();
                match c.expect {
                    crate::Expect::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
                    crate::Expect::Exists => Compare::create_revision(key, CompareOp::Greater, 0),
                    crate::Expect::ModRevision(r) => {
                        Compare::mod_revision(key, CompareOp::Equal, r)
                    }
                    crate::Expect::CreateRevision(r) => {
                        Compare::create_revision(key, CompareOp::Equal, r)
                    }
                    crate::Expect::Lease(l) => Compare::lease(key, CompareOp::Equal, l),
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                crate::TxnOp::Put { key, value, lease } => TxnOp::put(
                    key.as_str(),
                    value.to_vec(),
                    Some(PutOptions::new().with_lease(lease.unwrap_or(0))),
                ),
                crate::TxnOp::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        // On failure, read every compared key in the same transaction, to say which
        // compare failed on exactly the state etcd evaluated.
        let mut compared: Vec<&str> = txn.compares.iter().map(|c| c.key.as_str()).collect();
        compared.sort_unstable();
        compared.dedup();
        let reads: Vec<TxnOp> = compared
            .iter()
            .map(|k| TxnOp::get(*k, Some(GetOptions::new().with_keys_only())))
            .collect();
        let request = Txn::new().when(compares).and_then(ops).or_else(reads);
        let response = match self.kv.clone().txn(request).await {
            Ok(response) => response,
            Err(e) if is_lease_not_found(&e) => {
                let lease = txn.ops.iter().find_map(|op| match op {
                    crate::TxnOp::Put { lease, .. } => *lease,
                    crate::TxnOp::Delete { .. } => None,
                });
                return Err(match lease {
                    Some(lease) => Error::LeaseNotFound { lease },
                    None => Error::Etcd {
                        op: "txn",
                        source: e,
                    },
                });
            }
            Err(e) => {
                return Err(Error::Etcd {
                    op: "txn",
                    source: e,
                });
            }
        };
        if response.succeeded() {
            let changed: Vec<bool> = response
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Delete(d) => d.deleted() > 0,
                    _ => true,
                })
                .collect();
            let revision = changed
                .iter()
                .any(|c| *c)
                .then(|| header_revision(response.header()));
            return Ok(Committed { revision, changed });
        }
        let mut state: BTreeMap<String, KeyState> = BTreeMap::new();
        for r in response.op_responses() {
            if let TxnOpResponse::Get(get) = r {
                for kv in get.kvs() {
                    state.insert(
                        utf8_key(kv.key())?,
                        KeyState {
                            create_revision: kv.create_revision(),
                            mod_revision: kv.mod_revision(),
                            lease: (kv.lease() != 0).then(|| kv.lease()),
                        },
                    );
                }
            }
        }
        match txn.first_failed(|k| state.get(k).copied()) {
            Some((i, c, actual)) => Err(crate::Txn::refused(i, c, actual)),
            None => Err(Error::Corrupt(
                "etcd refused a transaction whose every compare holds on its own read".into(),
            )),
        }
    }

    /// Runs a compare-and-swap transaction: `then` if `compare` holds, else a read of the
    /// key. Returns the response and, when the compare failed, the key's mod revision.
    async fn cas(
        &self,
        op: &'static str,
        key: &str,
        compare: Compare,
        then: TxnOp,
    ) -> Result<(TxnResponse, Option<Option<Revision>>)> {
        let txn = Txn::new()
            .when([compare])
            .and_then([then])
            .or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let response = self.kv.clone().txn(txn).await.map_err(etcd(op))?;
        if response.succeeded() {
            return Ok((response, None));
        }
        let actual = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        let actual = actual.ok_or_else(|| {
            Error::Corrupt(format!(
                "etcd {op}: the failed transaction returned no read"
            ))
        })?;
        Ok((response, Some(actual)))
    }
}

/// The requests, without their timeouts (which [`Store`] adds).
impl EtcdStore {
    async fn get_now(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        let response = self.kv.clone().get(key, None).await.map_err(etcd("get"))?;
        response.kvs().first().map(key_value).transpose()
    }

    async fn list_now(&self, prefix: &str) -> Result<Listing> {
        let (start, end) = prefix_range(prefix);
        let mut kv = self.kv.clone();
        let mut items = Vec::new();
        let mut from = start;
        let mut revision = None;
        let mut limit = self.options.page_size;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if let Some(r) = revision {
                options = options.with_revision(r);
            }
            let page = async {
                kv.get(from.clone(), Some(options))
                    .await
                    .map_err(|e| match revision {
                        Some(r) if is_compacted(&e) => Error::Compacted { requested: r },
                        _ => Error::Etcd {
                            op: "list",
                            source: e,
                        },
                    })
            };
            let response = match self.timed("list", page).await {
                // More than a response holds: the same page again, in halves (at the
                // same revision, so the listing stays one snapshot).
                Err(Error::Etcd { source, .. }) if is_too_large(&source) && limit > 1 => {
                    limit /= 2;
                    tracing::debug!(
                        prefix,
                        limit,
                        error = %source,
                        "an etcd list page exceeds the largest response; reading smaller pages"
                    );
                    continue;
                }
                other => other?,
            };
            let page_revision = revision.unwrap_or_else(|| header_revision(response.header()));
            revision = Some(page_revision);
            for kv in response.kvs() {
                items.push(key_value(kv)?);
            }
            match (response.more(), response.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => {
                    return Ok(Listing {
                        revision: page_revision,
                        items,
                    });
                }
            }
        }
    }

    async fn put_now(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        check_key(key)?;
        let options = PutOptions::new().with_lease(lease.unwrap_or(0));
        let lease_error = |e: etcd_client::Error| match lease {
            Some(id) if is_lease_not_found(&e) => Error::LeaseNotFound { lease: id },
            _ => Error::Etcd {
                op: "put",
                source: e,
            },
        };
        let compare = match condition {
            Condition::Any => {
                let response = self
                    .kv
                    .clone()
                    .put(key, value.to_vec(), Some(options))
                    .await
                    .map_err(lease_error)?;
                return Ok(header_revision(response.header()));
            }
            Condition::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
            Condition::ModRevision(m) => Compare::mod_revision(key, CompareOp::Equal, m),
        };
        let then = TxnOp::put(key, value.to_vec(), Some(options));
        let (response, failed) = match self.cas("put", key, compare, then).await {
            Err(Error::Etcd { source, .. }) => return Err(lease_error(source)),
            other => other?,
        };
        match (failed, condition) {
            (None, _) => Ok(header_revision(response.header())),
            (Some(Some(mod_revision)), Condition::Absent) => Err(Error::AlreadyExists {
                key: key.to_string(),
                mod_revision,
            }),
            (Some(actual), Condition::ModRevision(expected)) => Err(Error::Conflict {
                key: key.to_string(),
                expected,
                actual,
            }),
            (Some(actual), _) => Err(Error::Corrupt(format!(
                "etcd put: the condition on {key:?} failed with the key at {actual:?}"
            ))),
        }
    }

    async fn delete_now(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        check_key(key)?;
        let Some(expected) = expected else {
            let response = self
                .kv
                .clone()
                .delete(key, None)
                .await
                .map_err(etcd("delete"))?;
            return Ok((response.deleted() > 0).then(|| header_revision(response.header())));
        };
        let compare = Compare::mod_revision(key, CompareOp::Equal, expected);
        let (response, failed) = self
            .cas("delete", key, compare, TxnOp::delete(key, None))
            .await?;
        match failed {
            None => Ok(Some(header_revision(response.header()))),
            Some(actual) => Err(Error::Conflict {
                key: key.to_string(),
                expected,
                actual,
            }),
        }
    }

    async fn watch_now(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        check_start(from)?;
        let (start, end) = prefix_range(prefix);
        // etcd refuses a compacted start only asynchronously, by cancelling the watch
        // after creating it; a read at `from` fails at once, so the caller gets the
        // error from this call. (A compaction racing this call still arrives as the
        // stream's first item.)
        let probe = GetOptions::new()
            .with_revision(from)
            .with_limit(1)
            .with_keys_only();
        if let Err(e) = self.kv.clone().get(start.clone(), Some(probe)).await {
            if is_compacted(&e) {
                return Err(Error::Compacted { requested: from });
            }
            if !is_future_revision(&e) {
                return Err(Error::Etcd {
                    op: "watch",
                    source: e,
                });
            }
        }
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(from);
        let mut stream = self
            .watch
            .clone()
            .watch(start, Some(options))
            .await
            .map_err(etcd("watch"))?;
        // The first response confirms the watch exists (or says why it does not).
        let created = stream.message().await.map_err(etcd("watch"))?;
        let mut watcher = Watcher {
            stream,
            next: from,
            ready: VecDeque::new(),
            done: false,
        };
        match created {
            None => return Err(Error::WatchClosed),
            Some(response) => {
                if let Some(error) = watcher.absorb(&response) {
                    return Err(error);
                }
            }
        }
        Ok(Box::pin(futures::stream::unfold(watcher, Watcher::next)))
    }

    async fn compact_now(&self, revision: Revision) -> Result<()> {
        let options = CompactionOptions::new().with_physical();
        match self.kv.clone().compact(revision, Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future_revision(&e) => Err(Error::FutureRevision {
                requested: revision,
            }),
            Err(e) => Err(Error::Etcd {
                op: "compact",
                source: e,
            }),
        }
    }

    async fn grant_lease_now(&self, ttl: Duration) -> Result<Lease> {
        check_ttl(ttl)?;
        // etcd counts whole seconds: round up, so a lease never ends earlier than asked.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        let response = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(etcd("grant lease"))?;
        Ok(Lease {
            id: response.id(),
            ttl: Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0)),
        })
    }

    async fn keep_alive_now(&self, lease: LeaseId) -> Result<Duration> {
        let not_found = |e: etcd_client::Error| match e {
            etcd_client::Error::LeaseKeepAliveError(ref m) if m.contains("not found") => {
                Error::LeaseNotFound { lease }
            }
            e => Error::Etcd {
                op: "renew lease",
                source: e,
            },
        };
        // etcd-client renews once to open the stream, without returning the TTL; a
        // second renewal on the same stream reports it.
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(not_found)?;
        keeper.keep_alive().await.map_err(etcd("renew lease"))?;
        let response = responses.message().await.map_err(etcd("renew lease"))?;
        match response.map(|r| r.ttl()) {
            Some(ttl) if ttl > 0 => Ok(Duration::from_secs(u64::try_from(ttl).unwrap_or(0))),
            _ => Err(Error::LeaseNotFound { lease }),
        }
    }

    async fn revoke_lease_now(&self, lease: LeaseId) -> Result<()> {
        match self.client.lease_client().revoke(lease).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(Error::LeaseNotFound { lease }),
            Err(e) => Err(Error::Etcd {
                op: "revoke lease",
                source: e,
            }),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.timed("get", self.get_now(key)).await
    }

    /// Each page is a request of its own, timed on its own.
    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.list_now(prefix).await
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        condition: Condition,
        lease: Option<LeaseId>,
    ) -> Result<Revision> {
        self.timed("put", self.put_now(key, value, condition, lease))
            .await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<Option<Revision>> {
        self.timed("delete", self.delete_now(key, expected)).await
    }

    /// Timed until the watch is created; then keepalive pings find an etcd that stopped
    /// answering.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        self.timed("watch", self.watch_now(prefix, from)).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.timed("compact", self.compact_now(revision)).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.timed("grant lease", self.grant_lease_now(ttl)).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.timed("renew lease", self.keep_alive_now(lease)).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.timed("revoke lease", self.revoke_lease_now(lease))
            .await
    }

    async fn txn(&self, txn: crate::Txn) -> Result<Committed> {
        self.timed("txn", self.txn_now(txn)).await
    }
}

/// One etcd watch, turned into a stream of [`Event`]s.
struct Watcher {
    stream: EtcdWatchStream,
    /// The first revision not seen yet (where a compaction error says to resume).
    next: Revision,
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
            let error = match self.stream.message().await {
                Ok(Some(response)) => self.absorb(&response),
                Ok(None) => Some(Error::WatchClosed),
                Err(e) => Some(Error::Etcd {
                    op: "watch",
                    source: e,
                }),
            };
            if let Some(error) = error {
                self.done = true;
                return Some((Err(error), self));
            }
        }
    }

    /// Queues a response's events; returns the error that ends the watch, if any.
    fn absorb(&mut self, response: &etcd_client::WatchResponse) -> Option<Error> {
        if response.canceled() {
            return Some(if response.compact_revision() > 0 {
                Error::Compacted {
                    requested: self.next,
                }
            } else {
                Error::WatchCancelled {
                    reason: response.cancel_reason().to_string(),
                }
            });
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let converted = match event.event_type() {
                etcd_client::EventType::Put => key_value(kv).map(Event::Put),
                etcd_client::EventType::Delete => utf8_key(kv.key()).map(|key| Event::Delete {
                    key,
                    revision: kv.mod_revision(),
                }),
            };
            match converted {
                Ok(event) => {
                    self.next = event.revision() + 1;
                    self.ready.push_back(event);
                }
                Err(error) => return Some(error),
            }
        }
        None
    }
}

fn key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: utf8_key(kv.key())?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then(|| kv.lease()),
    })
}

fn utf8_key(key: &[u8]) -> Result<String> {
    String::from_utf8(key.to_vec())
        .map_err(|_| Error::Corrupt(format!("etcd holds a key that is not UTF-8: {key:?}")))
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| h.revision())
}

/// The key range `[start, end)` of every key starting with `prefix`, as etcd spells it
/// (`"\0".."\0"` is every key).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.as_bytes().to_vec();
    let mut end = start.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, end);
        }
    }
    (if start.is_empty() { vec![0] } else { start }, vec![0])
}

fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
    move |source| Error::Etcd { op, source }
}

fn status_says(e: &etcd_client::Error, words: &str) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains(words))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    status_says(e, "required revision has been compacted")
}

fn is_future_revision(e: &etcd_client::Error) -> bool {
    status_says(e, "required revision is a future revision")
}

/// The response was larger than the client reads (`max_response_bytes`): tonic's
/// `OutOfRange` "decoded message length too large" (etcd's own `OutOfRange` errors say
/// "future revision" instead).
fn is_too_large(e: &etcd_client::Error) -> bool {
    status_says(e, "message length too large")
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    status_says(e, "requested lease not found")
}

#[cfg(test)]
mod tests {
    use super::prefix_range;

    #[test]
    fn prefix_ranges_cover_exactly_the_prefix() {
        assert_eq!(
            prefix_range("sets/"),
            (b"sets/".to_vec(), b"sets0".to_vec())
        );
        assert_eq!(prefix_range(""), (vec![0], vec![0]));
        let max = String::from_utf8(vec![b'a', 0x7f]).unwrap();
        assert_eq!(prefix_range(&max), (vec![b'a', 0x7f], vec![b'a', 0x80]));
    }
}
