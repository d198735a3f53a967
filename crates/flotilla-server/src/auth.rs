//! Tokens and who may do what: agents' per-cluster tokens, the admin token, and user
//! tokens with a scope; and [`decide`], the one place that says whether a principal may
//! make a call.
//!
//! ```text
//!  bearer token ─▶ Tokens::user   ─▶ Principal {name, scope, namespaces} ─▶ decide(verb, kind, ns)
//!               └▶ Tokens::agent  ─▶ the cluster it belongs to (or why not)
//! ```
//!
//! Tokens are 32 random bytes, hex-encoded with a `flt_` prefix. The server keeps only
//! the SHA-256 of a token (agent and user tokens alike), and compares digests in
//! constant time. A known token used where it does not belong (an agent token on the
//! user API, a user token on an agent session, cluster A's token for cluster B) is
//! `PermissionDenied`; a token the server does not know (never issued, revoked, past its
//! rotation grace) is `Unauthenticated`.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_api::validate;
use flotilla_store::{KeyValue, Store};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::{keys, store_status};

/// A new random token.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    Ok(format!("flt_{}", hex(&bytes)))
}

/// The hex SHA-256 of a token, as stored.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the inputs differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The bearer token of a call, or why there is none.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get(flotilla_proto::AUTHORIZATION)
        .ok_or_else(|| Status::unauthenticated("no token: send `authorization: Bearer <token>`"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))
}

/// What a user token may do. See `proto/flotilla/v1/federation.proto` for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reads (get, list, watch, plan) in its namespaces; clusters anywhere.
    View,
    /// What `view` may, and apply and delete of sets, in its namespaces.
    Edit,
    /// Everything.
    Admin,
}

impl Scope {
    /// `admin`, `edit` or `view`; anything else is an error naming the field.
    pub fn parse(s: &str) -> Result<Scope, Status> {
        match s {
            "admin" => Ok(Scope::Admin),
            "edit" => Ok(Scope::Edit),
            "view" => Ok(Scope::View),
            other => Err(Status::invalid_argument(format!(
                "scope: unknown scope {other:?}; use admin, edit or view"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Edit => "edit",
            Scope::View => "view",
        }
    }
}

/// A user token as stored at `/flotilla/user-tokens/<name>` (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserToken {
    /// Hex SHA-256 of the token.
    pub digest: String,
    pub scope: Scope,
    /// Where an edit or view token applies; empty for admin.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// RFC 3339.
    pub created: String,
}

/// A cluster's agent token as stored at `/flotilla/tokens/<cluster>`: JSON, or (as
/// written before rotation existed) the bare hex digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterToken {
    /// Hex SHA-256 of the current token.
    pub digest: String,
    /// The token it replaced, while its grace lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

/// A replaced agent token and until when it is still accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub digest: String,
    /// RFC 3339; accepted while now is before it.
    pub until: String,
}

/// How a digest compares with a cluster's token record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Match {
    /// The current token, or the previous one within its grace.
    Accepted,
    /// The previous token, past its grace.
    Expired,
    /// Neither.
    No,
}

impl ClusterToken {
    pub fn new(digest: String) -> ClusterToken {
        ClusterToken {
            digest,
            previous: None,
        }
    }

    /// Reads a stored record (either layout).
    pub fn parse(bytes: &[u8]) -> ClusterToken {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| ClusterToken::new(String::from_utf8_lossy(bytes).into_owned()))
    }

    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Whether `digest` is this cluster's token at `now`.
    pub fn check(&self, digest: &str, now: Timestamp) -> Match {
        if same(digest.as_bytes(), self.digest.as_bytes()) {
            return Match::Accepted;
        }
        match &self.previous {
            Some(p) if same(digest.as_bytes(), p.digest.as_bytes()) => {
                match p.until.parse::<Timestamp>() {
                    Ok(until) if now < until => Match::Accepted,
                    _ => Match::Expired,
                }
            }
            _ => Match::No,
        }
    }
}

/// Who is calling the user API: a token's name, scope and namespaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub scope: Scope,
    /// Where an edit or view token applies.
    pub namespaces: Vec<String>,
}

impl Principal {
    /// The admin token's principal.
    pub fn admin() -> Principal {
        Principal {
            name: "admin".into(),
            scope: Scope::Admin,
            namespaces: Vec::new(),
        }
    }

    /// Whether it may read namespaced objects in `namespace`.
    pub fn sees(&self, namespace: &str) -> bool {
        self.scope == Scope::Admin || self.namespaces.iter().any(|n| n == namespace)
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token {:?} ({}", self.name, self.scope.as_str())?;
        if !self.namespaces.is_empty() {
            write!(f, ", namespaces {}", self.namespaces.join(","))?;
        }
        f.write_str(")")
    }
}

/// What a call does, as [`decide`] judges it and refusals name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Plan,
    Apply,
    Delete,
    Add,
    Create,
    Revoke,
    RotateToken,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Plan => "plan",
            Verb::Apply => "apply",
            Verb::Delete => "delete",
            Verb::Add => "add",
            Verb::Create => "create",
            Verb::Revoke => "revoke",
            Verb::RotateToken => "rotate-token",
        }
    }

    fn reads(self) -> bool {
        matches!(self, Verb::Get | Verb::List | Verb::Watch | Verb::Plan)
    }
}

/// The kinds whose objects live in namespaces.
fn namespaced(kind: &str) -> bool {
    matches!(kind, "federatedinstancesets" | "instancesets")
}

/// Whether `who` may `verb` objects of `kind` (the API's plural, or `tokens`, `audit`)
/// in `namespace` (`None`: cluster-scoped, or every namespace for a list or watch, which
/// the caller then filters with [`Principal::sees`]). The one place that decides.
pub fn decide(
    who: &Principal,
    verb: Verb,
    kind: &str,
    namespace: Option<&str>,
) -> Result<(), Status> {
    let need = if namespaced(kind) {
        if verb.reads() {
            Scope::View
        } else {
            Scope::Edit
        }
    } else if kind == "clusters" && verb.reads() {
        Scope::View
    } else {
        Scope::Admin
    };
    let refuse = |why: &str| {
        let place = match namespace {
            Some(ns) if namespaced(kind) => format!(" in namespace {ns}"),
            _ => String::new(),
        };
        Err(Status::permission_denied(format!(
            "{who} may not {} {kind}{place}: {why}",
            verb.as_str()
        )))
    };
    if who.scope == Scope::Admin {
        return Ok(());
    }
    if need == Scope::Admin {
        return refuse("only an admin token may");
    }
    if who.scope < need {
        return refuse("a view token may only read (get, list, watch, plan)");
    }
    match namespace {
        Some(ns) if namespaced(kind) && !who.sees(ns) => {
            refuse("the token is not for that namespace")
        }
        _ => Ok(()),
    }
}

/// The user tokens of a listing of `/flotilla/user-tokens/`, by name; an unreadable
/// record is skipped (and logged).
pub fn user_tokens(items: &[KeyValue]) -> impl Iterator<Item = (&str, UserToken)> {
    items.iter().filter_map(|kv| {
        let name = kv.key.strip_prefix(keys::USER_TOKENS)?;
        match serde_json::from_slice::<UserToken>(&kv.value) {
            Ok(t) => Some((name, t)),
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "unreadable user token record; ignored");
                None
            }
        }
    })
}

/// Resolves bearer tokens against the admin token and the store.
pub struct Tokens {
    store: Arc<dyn Store>,
    admin_digest: String,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>, admin_token: &str) -> Tokens {
        Tokens {
            store,
            admin_digest: digest(admin_token),
        }
    }

    /// The user token with this digest, if any.
    async fn user_by_digest(&self, d: &str) -> Result<Option<Principal>, Status> {
        if same(d.as_bytes(), self.admin_digest.as_bytes()) {
            return Ok(Some(Principal::admin()));
        }
        let users = self
            .store
            .list(keys::USER_TOKENS)
            .await
            .map_err(store_status)?;
        for (name, t) in user_tokens(&users.items) {
            if same(d.as_bytes(), t.digest.as_bytes()) {
                return Ok(Some(Principal {
                    name: name.to_string(),
                    scope: t.scope,
                    namespaces: t.namespaces,
                }));
            }
        }
        Ok(None)
    }

    /// The cluster whose agent token (current, or previous within its grace) this is.
    async fn cluster_by_digest(&self, d: &str) -> Result<Option<String>, Status> {
        let now = Timestamp::now();
        let clusters = self.store.list(keys::TOKENS).await.map_err(store_status)?;
        Ok(clusters.items.iter().find_map(|kv| {
            let name = kv.key.strip_prefix(keys::TOKENS)?;
            (ClusterToken::parse(&kv.value).check(d, now) == Match::Accepted)
                .then(|| name.to_string())
        }))
    }

    /// Who a user API call is from.
    pub async fn user(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let d = digest(bearer(metadata)?);
        if let Some(p) = self.user_by_digest(&d).await? {
            return Ok(p);
        }
        if let Some(cluster) = self.cluster_by_digest(&d).await? {
            return Err(Status::permission_denied(format!(
                "the agent token of cluster {cluster:?} may not call the user API: it opens \
                 that cluster's agent session only; use a user token (flotilla token create)"
            )));
        }
        Err(Status::unauthenticated(
            "the token was refused: it is not known (never issued, or revoked)",
        ))
    }

    /// Checks that `token` is `cluster`'s agent token.
    pub async fn agent(&self, cluster: &str, token: &str) -> Result<(), Status> {
        let d = digest(token);
        let refused =
            || Status::unauthenticated(format!("the token was refused for cluster {cluster:?}"));
        let stored = if validate::dns_label(cluster).is_ok() {
            self.store
                .get(&keys::token(cluster))
                .await
                .map_err(store_status)?
        } else {
            None
        };
        if let Some(kv) = &stored {
            let record = ClusterToken::parse(&kv.value);
            match record.check(&d, Timestamp::now()) {
                Match::Accepted => return Ok(()),
                Match::Expired => {
                    let until = record.previous.map(|p| p.until).unwrap_or_default();
                    return Err(Status::unauthenticated(format!(
                        "the token of cluster {cluster:?} was replaced (flotilla cluster \
                 rotate-token) and its grace ended at {until}; use the new token"
                    )));
                }
                Match::No => {}
            }
        }
        if let Some(p) = self.user_by_digest(&d).await? {
            return Err(Status::permission_denied(format!(
                "{p} is a user token and may not open an agent session; agents use their \
                 cluster's token (flotilla cluster add, flotilla cluster rotate-token)"
            )));
        }
        if let Some(other) = self.cluster_by_digest(&d).await? {
            return Err(Status::permission_denied(format!(
                "the agent token of cluster {other:?} may not open a session for cluster \
                 {cluster:?}: an agent token is for its own cluster only"
            )));
        }
        match stored {
            Some(_) => Err(refused()),
            None => Err(Status::unauthenticated(format!(
                "cluster {cluster:?} is not registered (flotilla cluster add {cluster})"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_bearer_needs_the_prefix() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("flt_") && a.len() == 4 + 64);
        let mut md = MetadataMap::new();
        assert_eq!(
            bearer(&md).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        md.insert("authorization", format!("Bearer {a}").parse().unwrap());
        assert_eq!(bearer(&md).unwrap(), a);
        md.insert("authorization", a.parse().unwrap());
        assert!(bearer(&md).is_err(), "a token without `Bearer ` is refused");
        assert!(!same(b"ab", b"abc"));
        assert!(same(digest(&a).as_bytes(), digest(&a).as_bytes()));
    }

    #[test]
    fn a_rotated_cluster_token_keeps_the_previous_one_until_its_grace_ends() {
        let now: Timestamp = "2025-01-01T00:00:00Z".parse().unwrap();
        let legacy = ClusterToken::parse(digest("old").as_bytes());
        assert_eq!(legacy.check(&digest("old"), now), Match::Accepted);
        assert_eq!(legacy.check(&digest("new"), now), Match::No);
        let rotated = ClusterToken {
            digest: digest("new"),
            previous: Some(Previous {
                digest: digest("old"),
                until: "2025-01-01T00:10:00Z".into(),
            }),
        };
        let rotated = ClusterToken::parse(&rotated.to_bytes());
        assert_eq!(rotated.check(&digest("new"), now), Match::Accepted);
        assert_eq!(rotated.check(&digest("old"), now), Match::Accepted);
        let later: Timestamp = "2025-01-01T00:10:00Z".parse().unwrap();
        assert_eq!(rotated.check(&digest("old"), later), Match::Expired);
        assert_eq!(rotated.check(&digest("new"), later), Match::Accepted);
        assert_eq!(rotated.check(&digest("other"), now), Match::No);
    }

    fn token(scope: Scope, namespaces: &[&str]) -> Principal {
        Principal {
            name: "ci".into(),
            scope,
            namespaces: namespaces.iter().map(ToString::to_string).collect(),
        }
    }

    /// `decide` over every verb and kind for each scope: `ok` or the refusal's reason.
    #[test]
    fn decide_allows_what_each_scope_may_and_names_the_reason_otherwise() {
        use Verb::*;
        let fis = "federatedinstancesets";
        let cases: &[(Verb, &str, Option<&str>, [&str; 3])] = &[
            // verb, kind, namespace, [admin, edit team-a, view team-a]
            (Get, fis, Some("team-a"), ["ok", "ok", "ok"]),
            (Get, fis, Some("team-b"), ["ok", "namespace", "namespace"]),
            (List, fis, None, ["ok", "ok", "ok"]),
            (
                Watch,
                "instancesets",
                Some("team-b"),
                ["ok", "namespace", "namespace"],
            ),
            (Plan, fis, Some("team-a"), ["ok", "ok", "ok"]),
            (Apply, fis, Some("team-a"), ["ok", "ok", "read"]),
            (Apply, fis, Some("team-b"), ["ok", "namespace", "read"]),
            (Delete, fis, Some("team-a"), ["ok", "ok", "read"]),
            (Get, "clusters", None, ["ok", "ok", "ok"]),
            (Apply, "clusters", None, ["ok", "admin", "admin"]),
            (Delete, "clusters", None, ["ok", "admin", "admin"]),
            (Add, "clusters", None, ["ok", "admin", "admin"]),
            (RotateToken, "clusters", None, ["ok", "admin", "admin"]),
            (Create, "tokens", None, ["ok", "admin", "admin"]),
            (List, "tokens", None, ["ok", "admin", "admin"]),
            (Revoke, "tokens", None, ["ok", "admin", "admin"]),
            (List, "audit", None, ["ok", "admin", "admin"]),
        ];
        let who = [
            Principal::admin(),
            token(Scope::Edit, &["team-a"]),
            token(Scope::View, &["team-a"]),
        ];
        for (verb, kind, ns, expect) in cases {
            for (p, want) in who.iter().zip(expect) {
                let got = match decide(p, *verb, kind, *ns) {
                    Ok(()) => "ok",
                    Err(s) => {
                        assert_eq!(s.code(), tonic::Code::PermissionDenied);
                        let m = s.message();
                        assert!(
                            m.starts_with(&format!("{p} may not {} {kind}", verb.as_str())),
                            "{m}"
                        );
                        if m.contains("only an admin") {
                            "admin"
                        } else if m.contains("may only read") {
                            "read"
                        } else if m.contains("not for that namespace") {
                            "namespace"
                        } else {
                            panic!("unexpected reason: {m}")
                        }
                    }
                };
                assert_eq!(got, *want, "{p} {verb:?} {kind} {ns:?}");
            }
        }
        let e = decide(&token(Scope::View, &["team-a"]), Apply, fis, Some("team-b")).unwrap_err();
        assert_eq!(
            e.message(),
            "token \"ci\" (view, namespaces team-a) may not apply federatedinstancesets in \
             namespace team-b: a view token may only read (get, list, watch, plan)"
        );
    }
}
