//! The admin's RPCs: user tokens (create, list, revoke), a cluster's agent token
//! rotation, and reading the audit trail. All need an admin token.

use std::time::Duration;

use flotilla_api::{FieldError, Invalid, validate};
use flotilla_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, ListAuditRequest, ListAuditResponse,
    ListTokensResponse, RevokeTokenRequest, RevokeTokenResponse, RotateClusterTokenRequest,
    RotateClusterTokenResponse, TokenInfo,
};
use flotilla_store::{Condition, Error as StoreError};
use jiff::Timestamp;
use tonic::Status;

use super::{Api, ApiKind, RETRIES, invalid, to_json};
use crate::audit::{self, Trail};
use crate::auth::{self, ClusterToken, Previous, Principal, Scope, UserToken, Verb, decide};
use crate::keys;
use crate::store_status;

/// The longest grace a rotation gives the previous agent token.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

const TOKENS: &str = "tokens";

fn info(name: &str, t: &UserToken) -> TokenInfo {
    TokenInfo {
        name: name.to_string(),
        scope: t.scope.as_str().to_string(),
        namespaces: t.namespaces.clone(),
        created: t.created.clone(),
    }
}

/// The stored record of a token to create, or every problem with the request.
fn new_token(req: &CreateTokenRequest, digest: String) -> Result<UserToken, Invalid> {
    let mut problems = Vec::new();
    if let Err(e) = validate::dns_label(&req.name) {
        problems.push(FieldError::new("name", e));
    } else if req.name == "admin" {
        problems.push(FieldError::new(
            "name",
            "\"admin\" is the admin token's name (the server's --admin-token)",
        ));
    }
    let scope = match Scope::parse(&req.scope) {
        Ok(s) => Some(s),
        Err(e) => {
            problems.push(FieldError::new(
                "scope",
                e.message().trim_start_matches("scope: "),
            ));
            None
        }
    };
    let mut namespaces = req.namespaces.clone();
    namespaces.sort();
    namespaces.dedup();
    for (i, ns) in req.namespaces.iter().enumerate() {
        if let Err(e) = validate::dns_label(ns) {
            problems.push(FieldError::new(format!("namespaces[{i}]"), e));
        }
    }
    match scope {
        Some(Scope::Admin) if !namespaces.is_empty() => problems.push(FieldError::new(
            "namespaces",
            "an admin token applies to every namespace; give no --namespace",
        )),
        Some(Scope::Edit | Scope::View) if namespaces.is_empty() => {
            problems.push(FieldError::new(
                "namespaces",
                "an edit or view token needs at least one namespace (--namespace NS)",
            ));
        }
        _ => {}
    }
    match scope {
        Some(scope) if problems.is_empty() => Ok(UserToken {
            digest,
            scope,
            namespaces,
            created: Timestamp::now()
                .round(jiff::Unit::Second)
                .unwrap_or_else(|_| Timestamp::now())
                .to_string(),
        }),
        _ => Err(Invalid(problems)),
    }
}

/// `<kind>/<name>` or `<kind>/<namespace>/<name>` as an audit query.
fn object_query(object: &str) -> Result<audit::Query, Status> {
    let mut q = audit::Query::default();
    if object.is_empty() {
        return Ok(q);
    }
    let parts: Vec<&str> = object.split('/').collect();
    let (kind, namespace, name) = match parts.as_slice() {
        [kind, name] => (*kind, None, *name),
        [kind, ns, name] => (*kind, Some(*ns), *name),
        _ => {
            return Err(Status::invalid_argument(format!(
                "object: {object:?} is not <kind>/<name> or <kind>/<namespace>/<name>"
            )));
        }
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "tokens" | "token" => TOKENS.to_string(),
        other => ApiKind::parse(other)
            .map_err(|e| Status::invalid_argument(format!("object: {}", e.message())))?
            .plural()
            .to_string(),
    };
    q.kind = Some(kind);
    q.namespace = namespace.map(String::from);
    q.name = Some(name.to_string());
    Ok(q)
}

impl Api {
    pub(super) async fn create_token_inner(
        &self,
        who: &Principal,
        req: CreateTokenRequest,
        trail: &mut Trail,
    ) -> Result<CreateTokenResponse, Status> {
        trail.target(TOKENS, "", &req.name);
        decide(who, Verb::Create, TOKENS, None)?;
        let token = auth::generate().map_err(|e| Status::internal(e.to_string()))?;
        let record = new_token(&req, auth::digest(&token)).map_err(invalid)?;
        let bytes = bytes::Bytes::from(to_json(&record)?);
        match self
            .store
            .put(&keys::user_token(&req.name), bytes, Condition::Absent, None)
            .await
        {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(Status::already_exists(format!(
                    "name: a token named {:?} already exists; `flotilla token revoke {}` first",
                    req.name, req.name
                )));
            }
            Err(e) => return Err(store_status(e)),
        }
        trail.done("created", None, None);
        tracing::info!(token = %req.name, scope = record.scope.as_str(), "user token created");
        Ok(CreateTokenResponse {
            info: Some(info(&req.name, &record)),
            token,
        })
    }

    pub(super) async fn list_tokens_inner(
        &self,
        who: &Principal,
    ) -> Result<ListTokensResponse, Status> {
        decide(who, Verb::List, TOKENS, None)?;
        let listing = self
            .store
            .list(keys::USER_TOKENS)
            .await
            .map_err(store_status)?;
        let tokens = auth::user_tokens(&listing.items)
            .map(|(name, t)| info(name, &t))
            .collect();
        Ok(ListTokensResponse { tokens })
    }

    pub(super) async fn revoke_token_inner(
        &self,
        who: &Principal,
        req: RevokeTokenRequest,
        trail: &mut Trail,
    ) -> Result<RevokeTokenResponse, Status> {
        trail.target(TOKENS, "", &req.name);
        decide(who, Verb::Revoke, TOKENS, None)?;
        if req.name == "admin" {
            return Err(Status::failed_precondition(
                "the admin token is the server's (--admin-token, or generated and kept in the \
                 store); replace it there",
            ));
        }
        match self
            .store
            .delete(&keys::user_token(&req.name), None)
            .await
            .map_err(store_status)?
        {
            Some(_) => {
                trail.done("revoked", None, None);
                tracing::info!(token = %req.name, "user token revoked");
                Ok(RevokeTokenResponse {})
            }
            None => Err(Status::not_found(format!(
                "tokens {:?} not found (flotilla token list)",
                req.name
            ))),
        }
    }

    pub(super) async fn rotate_inner(
        &self,
        who: &Principal,
        req: RotateClusterTokenRequest,
        trail: &mut Trail,
    ) -> Result<RotateClusterTokenResponse, Status> {
        let clusters = ApiKind::Clusters.plural();
        trail.target(clusters, "", &req.cluster);
        decide(who, Verb::RotateToken, clusters, None)?;
        let grace = u64::try_from(req.grace_seconds)
            .ok()
            .map(Duration::from_secs)
            .filter(|g| *g <= MAX_GRACE)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "grace_seconds: {} is not between 0 and {} (7 days)",
                    req.grace_seconds,
                    MAX_GRACE.as_secs()
                ))
            })?;
        let token = auth::generate().map_err(|e| Status::internal(e.to_string()))?;
        let key = keys::token(&req.cluster);
        for _ in 0..RETRIES {
            let kv = self
                .store
                .get(&key)
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Status::not_found(format!("clusters {:?} not found", req.cluster))
                })?;
            let old = ClusterToken::parse(&kv.value);
            let until = Timestamp::now()
                .checked_add(jiff::SignedDuration::try_from(grace).unwrap_or_default())
                .map_err(|e| Status::internal(e.to_string()))?;
            let until = until.to_string();
            let record = ClusterToken {
                digest: auth::digest(&token),
                // Only the token in use until now keeps a grace: one rotated away
                // earlier stops now.
                previous: (!grace.is_zero()).then(|| Previous {
                    digest: old.digest,
                    until: until.clone(),
                }),
            };
            match self
                .store
                .put(
                    &key,
                    record.to_bytes(),
                    Condition::ModRevision(kv.mod_revision),
                    None,
                )
                .await
            {
                Ok(_) => {
                    trail.done("rotated", None, None);
                    tracing::info!(cluster = %req.cluster, %until, "agent token rotated");
                    return Ok(RotateClusterTokenResponse {
                        token,
                        previous_valid_until: until,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "the token of cluster {:?} kept changing under this rotation; try again",
            req.cluster
        )))
    }

    pub(super) async fn list_audit_inner(
        &self,
        who: &Principal,
        req: ListAuditRequest,
    ) -> Result<ListAuditResponse, Status> {
        decide(who, Verb::List, "audit", None)?;
        let mut query = object_query(&req.object)?;
        if req.since_seconds < 0 {
            return Err(Status::invalid_argument(format!(
                "since_seconds: {} is negative",
                req.since_seconds
            )));
        }
        if req.since_seconds > 0 {
            query.since = Some(
                Timestamp::now().as_nanosecond() - i128::from(req.since_seconds) * 1_000_000_000,
            );
        }
        let records = audit::list(&*self.store, &query)
            .await?
            .iter()
            .map(to_json)
            .collect::<Result<_, _>>()?;
        Ok(ListAuditResponse { records })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(name: &str, scope: &str, namespaces: &[&str]) -> CreateTokenRequest {
        CreateTokenRequest {
            name: name.into(),
            scope: scope.into(),
            namespaces: namespaces.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_token_request_is_judged_whole_and_each_problem_names_its_field() {
        let t = new_token(&req("ci", "view", &["b", "a", "a"]), "d".into()).unwrap();
        assert_eq!(
            (t.scope, t.namespaces),
            (Scope::View, vec!["a".into(), "b".into()])
        );
        let problems = |r| new_token(&r, "d".into()).unwrap_err().to_string();
        let e = problems(req("CI", "owner", &[]));
        assert!(
            e.contains("name:") && e.contains("scope:") && e.contains("\"owner\""),
            "{e}"
        );
        let e = problems(req("ci", "edit", &[]));
        assert!(
            e.contains("namespaces:") && e.contains("--namespace"),
            "{e}"
        );
        let e = problems(req("ci", "admin", &["a"]));
        assert!(e.contains("namespaces:"), "{e}");
        let e = problems(req("admin", "admin", &[]));
        assert!(e.contains("name:"), "{e}");
        let e = problems(req("ci", "view", &["Not_A_Label"]));
        assert!(e.contains("namespaces[0]:"), "{e}");
    }

    #[test]
    fn audit_objects_are_kind_and_name_with_an_optional_namespace() {
        let q = object_query("fis/cache").unwrap();
        assert_eq!(q.kind.as_deref(), Some("federatedinstancesets"));
        assert_eq!((q.namespace, q.name.as_deref()), (None, Some("cache")));
        let q = object_query("token/ci").unwrap();
        assert_eq!(q.kind.as_deref(), Some("tokens"));
        let q = object_query("federatedinstancesets/team-a/cache").unwrap();
        assert_eq!(q.namespace.as_deref(), Some("team-a"));
        assert!(object_query("cache").is_err());
        assert!(object_query("pods/x").is_err());
    }
}
