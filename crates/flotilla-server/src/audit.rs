//! The audit trail: one record per write through the user API, allowed or refused.
//!
//! ```text
//!  write RPC ─▶ Trail (who, from where, verb) ─▶ the handler names each object it
//!               touches (target) and each it wrote (done) ─▶ Trail::records(result)
//!            ─▶ /flotilla-audit/<nanos>-<rand> (JSON)  and  tracing target "audit"
//!  prune: every retention/10 (1 s – 10 min), records older than the retention go
//! ```
//!
//! A record holds time, token name, source address, verb, object (kind, namespace,
//! name), result (`ok`, or the error's code and message: see [`failure`]), what changed
//! and the generation before and after. Never a token, a digest or a document: refusal
//! messages name objects and scopes only, an invalid document is recorded by the fields
//! at fault (a field error may quote a value), and a known token of the wrong kind (an
//! agent's) is recorded as `(an agent token)`. A dry-run apply is not a write and leaves no
//! record. Calls without a known token (`Unauthenticated`) are not recorded either: no
//! one to name, and no way for strangers to fill the store.
//!
//! The record is written after the write it describes; if the store fails in between,
//! the write stands and the `audit` log line (always emitted) is what remains.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_store::{Condition, Store};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::auth::{Principal, Verb};
use crate::keys;

/// One audit record, as stored and as `ListAudit` returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// RFC 3339, to the millisecond.
    pub time: String,
    /// The token's name (`admin` for the admin token).
    pub token: String,
    /// The peer address of the call.
    pub source: String,
    pub verb: String,
    /// The API's plural (`federatedinstancesets`, `clusters`, `tokens`); empty when the
    /// call failed before naming an object.
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// `ok`, or `<code>: <message>` (for an invalid document only the fields at
    /// fault; for unexpected failures only the code).
    pub result: String,
    /// `created`, `configured`, `unchanged`, `deleted`, ... (successes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_after: Option<i64>,
}

/// The object a record is about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Target {
    kind: String,
    namespace: String,
    name: String,
}

/// A write done, for its record.
#[derive(Clone, Debug)]
struct Done {
    target: Target,
    change: &'static str,
    before: Option<i64>,
    after: Option<i64>,
}

/// What one write call did, collected while it runs.
#[derive(Debug)]
pub struct Trail {
    /// Nothing is recorded (a dry run).
    off: bool,
    token: String,
    source: String,
    verb: Verb,
    /// What a failure is attributed to: the object being handled.
    target: Target,
    done: Vec<Done>,
}

impl Trail {
    pub fn new(who: &Principal, source: String, verb: Verb) -> Trail {
        Trail {
            off: false,
            token: who.name.clone(),
            source,
            verb,
            target: Target::default(),
            done: Vec::new(),
        }
    }

    /// Records nothing from here on.
    pub fn off(&mut self) {
        self.off = true;
    }

    /// The object handled from here on (a failure is recorded against it).
    pub fn target(&mut self, kind: &str, namespace: &str, name: &str) {
        self.target = Target {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
    }

    /// Forgets the target: a failure is about the call, not one object.
    pub fn untarget(&mut self) {
        self.target = Target::default();
    }

    /// The target was written.
    pub fn done(&mut self, change: &'static str, before: Option<i64>, after: Option<i64>) {
        self.done.push(Done {
            target: self.target.clone(),
            change,
            before,
            after,
        });
    }

    /// The records of the call: one per object written, and one for the failure.
    pub fn records<T>(self, result: &Result<T, Status>, now: Timestamp) -> Vec<Record> {
        if self.off {
            return Vec::new();
        }
        let time = now
            .round(jiff::Unit::Millisecond)
            .unwrap_or(now)
            .to_string();
        let record = |t: &Target, result: String| Record {
            time: time.clone(),
            token: self.token.clone(),
            source: self.source.clone(),
            verb: self.verb.as_str().to_string(),
            kind: t.kind.clone(),
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            result,
            ..Record::default()
        };
        let mut out: Vec<Record> = self
            .done
            .iter()
            .map(|d| Record {
                change: Some(d.change.to_string()),
                generation_before: d.before,
                generation_after: d.after,
                ..record(&d.target, "ok".into())
            })
            .collect();
        if let Err(status) = result {
            out.push(record(&self.target, failure(status)));
        }
        out
    }
}

/// A failure as recorded: refusals and conflicts with their message (it names objects,
/// scopes and tokens' names, never values); invalid documents by the fields at fault
/// only, since a field error may quote the value (a template's, a secret's); anything
/// else by its code.
fn failure(status: &Status) -> String {
    use tonic::Code;
    let code = status.code();
    match code {
        Code::InvalidArgument => {
            let fields: Vec<&str> = status
                .message()
                .lines()
                .filter_map(|l| l.split_once(": ").map(|(path, _)| path.trim()))
                .filter(|p| !p.is_empty() && !p.contains(' '))
                .collect();
            if fields.is_empty() {
                "InvalidArgument: the document is invalid".into()
            } else {
                format!("InvalidArgument: invalid {}", fields.join(", "))
            }
        }
        Code::PermissionDenied
        | Code::Unauthenticated
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Aborted => format!("{code:?}: {}", status.message()),
        _ => format!("{code:?}"),
    }
}

/// Stores the records and logs each on target `audit`.
pub async fn write(store: &dyn Store, records: Vec<Record>, now: Timestamp) {
    for r in records {
        tracing::info!(
            target: "audit",
            time = %r.time,
            token = %r.token,
            source = %r.source,
            verb = %r.verb,
            kind = %r.kind,
            namespace = %r.namespace,
            name = %r.name,
            result = %r.result,
            change = r.change.as_deref().unwrap_or(""),
            generation_before = r.generation_before,
            generation_after = r.generation_after,
            "audit"
        );
        let mut suffix = [0u8; 4];
        let _ = getrandom::fill(&mut suffix);
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let key = keys::audit(now.as_nanosecond(), &suffix);
        let value = match serde_json::to_vec(&r) {
            Ok(v) => Bytes::from(v),
            Err(e) => {
                tracing::error!(error = %e, "an audit record could not be encoded");
                continue;
            }
        };
        if let Err(e) = store.put(&key, value, Condition::Absent, None).await {
            tracing::error!(key, error = %e, "an audit record could not be stored");
        }
    }
}

/// Which records a `ListAudit` wants.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Only records at or after this time (nanoseconds since the epoch).
    pub since: Option<i128>,
    /// Only records of this kind ...
    pub kind: Option<String>,
    /// ... namespace (any when `None`) ...
    pub namespace: Option<String>,
    /// ... and name.
    pub name: Option<String>,
}

impl Query {
    fn wants(&self, r: &Record) -> bool {
        self.kind.as_ref().is_none_or(|k| *k == r.kind)
            && self.namespace.as_ref().is_none_or(|n| *n == r.namespace)
            && self.name.as_ref().is_none_or(|n| *n == r.name)
    }
}

/// The records `query` wants, oldest first.
pub async fn list(store: &dyn Store, query: &Query) -> Result<Vec<Record>, Status> {
    let listing = store.list(keys::AUDIT).await.map_err(crate::store_status)?;
    Ok(listing
        .items
        .iter()
        .filter(|kv| match (query.since, keys::audit_time(&kv.key)) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        })
        .filter_map(|kv| serde_json::from_slice::<Record>(&kv.value).ok())
        .filter(|r| query.wants(r))
        .collect())
}

/// Deletes records older than `retention` (before `now - retention`); how many.
pub async fn prune_once(
    store: &dyn Store,
    retention: Duration,
    now: Timestamp,
) -> flotilla_store::Result<usize> {
    let cutoff = now.as_nanosecond() - i128::try_from(retention.as_nanos()).unwrap_or(i128::MAX);
    let listing = store.list(keys::AUDIT).await?;
    let mut pruned = 0;
    for kv in &listing.items {
        match keys::audit_time(&kv.key) {
            // Keys sort by time: the first one young enough ends the sweep.
            Some(t) if t >= cutoff => break,
            _ => {
                if store.delete(&kv.key, None).await?.is_some() {
                    pruned += 1;
                }
            }
        }
    }
    Ok(pruned)
}

/// Prunes the trail every `retention / 10` (between 1 s and 10 min), forever.
pub async fn prune(store: Arc<dyn Store>, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match prune_once(&*store, retention, Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(pruned = n, "audit records past the retention removed"),
            Err(e) => tracing::warn!(error = %e, "pruning the audit trail failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trail_records_each_write_and_the_failure_with_its_target() {
        let now: Timestamp = "2025-01-01T00:00:00.123456Z".parse().unwrap();
        let mut t = Trail::new(&Principal::admin(), "127.0.0.1:5".into(), Verb::Apply);
        t.target("federatedinstancesets", "a", "cache");
        t.done("configured", Some(1), Some(2));
        t.target("federatedinstancesets", "b", "db");
        let records = t.records::<()>(&Err(Status::permission_denied("no")), now);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].time, "2025-01-01T00:00:00.123Z");
        assert_eq!(
            (records[0].result.as_str(), records[0].namespace.as_str()),
            ("ok", "a")
        );
        assert_eq!(
            (records[0].generation_before, records[0].generation_after),
            (Some(1), Some(2))
        );
        assert_eq!(records[1].result, "PermissionDenied: no");
        assert_eq!(
            (records[1].namespace.as_str(), records[1].name.as_str()),
            ("b", "db")
        );
        assert_eq!(records[1].change, None);

        let mut off = Trail::new(&Principal::admin(), String::new(), Verb::Apply);
        off.done("created", None, Some(1));
        off.off();
        assert!(off.records::<()>(&Ok(()), now).is_empty());
    }
}
