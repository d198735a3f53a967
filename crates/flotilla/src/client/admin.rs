//! The admin's commands: `token create|list|revoke`, `cluster rotate-token`, `audit`.
//! The server refuses them (`PermissionDenied`, exit 1) unless the token is an admin's.

use flotilla_proto::v1::{
    CreateTokenRequest, ListAuditRequest, ListTokensRequest, RevokeTokenRequest,
    RotateClusterTokenRequest,
};
use serde_json::{Value, json};

use super::{Io, connect, now, object_ref, parse_object, print_object, render};
use crate::cli::{
    AuditArgs, Output, RotateTokenArgs, Scope, TokenCreateArgs, TokenListArgs, TokenRevokeArgs,
};
use crate::input::CliError;

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Admin => "admin",
        Scope::Edit => "edit",
        Scope::View => "view",
    }
}

/// Prints `items` as a table, or as a `List` in JSON or YAML.
fn print_list(
    io: &mut Io<'_>,
    output: Output,
    items: Vec<Value>,
    table: impl FnOnce(&[Value]) -> render::Table,
) -> Result<(), CliError> {
    match output {
        Output::Table | Output::Wide => io.print(&table(&items).render()),
        output => print_object(
            io,
            output,
            &json!({"apiVersion": "v1", "kind": "List", "items": items}),
        ),
    }
}

pub async fn token_create_to(args: &TokenCreateArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let mut conn = connect(&args.client).await?;
    let request = CreateTokenRequest {
        name: args.name.clone(),
        scope: scope_name(args.scope).into(),
        namespaces: args.namespaces.clone(),
    };
    let created = match conn.client.create_token(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, None)),
    };
    let info = created.info.unwrap_or_default();
    let place = if info.namespaces.is_empty() {
        String::new()
    } else {
        format!(", namespaces {}", info.namespaces.join(","))
    };
    io.line(&format!(
        "{} created ({}{place})",
        object_ref("token", &args.name),
        info.scope
    ))?;
    io.line("the token (shown once; pass it with --token or FLOTILLA_TOKEN):")?;
    io.line(&created.token)
}

pub async fn token_list_to(args: &TokenListArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let mut conn = connect(&args.client).await?;
    let listed = match conn.client.list_tokens(ListTokensRequest {}).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, None)),
    };
    let items = listed
        .tokens
        .iter()
        .map(|t| {
            json!({"name": t.name, "scope": t.scope, "namespaces": t.namespaces,
                   "created": t.created})
        })
        .collect();
    print_list(&mut io, args.output, items, |items| {
        render::token_table(items, now())
    })
}

pub async fn token_revoke_to(args: &TokenRevokeArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let mut conn = connect(&args.client).await?;
    let request = RevokeTokenRequest {
        name: args.name.clone(),
    };
    if let Err(status) = conn.client.revoke_token(request).await {
        return Err(conn.error(&status, None));
    }
    io.line(&format!("{} revoked", object_ref("token", &args.name)))
}

pub async fn rotate_token_to(args: &RotateTokenArgs, mut io: Io<'_>) -> Result<(), CliError> {
    if args.grace > std::time::Duration::from_secs(7 * 24 * 3600) {
        return Err(CliError::Usage(format!(
            "--grace: {:?} is longer than the 7 days a replaced token may keep working",
            args.grace
        )));
    }
    let grace_seconds = i64::try_from(args.grace.as_secs())
        .map_err(|_| CliError::Usage(format!("--grace: {:?} is too long", args.grace)))?;
    let mut conn = connect(&args.client).await?;
    let request = RotateClusterTokenRequest {
        cluster: args.name.clone(),
        grace_seconds,
    };
    let rotated = match conn.client.rotate_cluster_token(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, None)),
    };
    io.line(&format!(
        "{} token rotated; the previous token works until {}",
        object_ref("cluster", &args.name),
        rotated.previous_valid_until
    ))?;
    io.line(&format!(
        "the agent's new token (shown once; restart `flotilla agent --server {} --cluster {} --token TOKEN` with it):",
        conn.server, args.name
    ))?;
    io.line(&rotated.token)
}

pub async fn audit_to(args: &AuditArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let since_seconds = match args.since {
        Some(d) if d.is_zero() => {
            return Err(CliError::Usage("--since: must be more than 0s".into()));
        }
        Some(d) => i64::try_from(d.as_secs())
            .map_err(|_| CliError::Usage(format!("--since: {d:?} is too long")))?,
        None => 0,
    };
    let mut conn = connect(&args.client).await?;
    let request = ListAuditRequest {
        since_seconds,
        object: args.object.clone().unwrap_or_default(),
    };
    let listed = match conn.client.list_audit(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, None)),
    };
    let items = listed
        .records
        .iter()
        .map(|r| parse_object(r))
        .collect::<Result<Vec<_>, _>>()?;
    print_list(&mut io, args.output, items, render::audit_table)
}
