//! The user CLI's commands against a federation server: `cluster add`, `apply`, `get`,
//! `describe`, `delete`, `clusters`, the RPC behind `plan` without `--clusters`, and
//! (in `admin`) `token create|list|revoke`, `cluster rotate-token` and `audit`.
//!
//! ```text
//!  args ─▶ resolve the kind, parse labels, check the token     (usage errors: exit 2)
//!       ─▶ connect (every call carries `authorization: Bearer <token>`)
//!       ─▶ Federation RPC ─▶ objects as JSON ─▶ render: table | JSON | YAML | describe
//!                        └▶ gRPC status ─▶ status_error ─▶ message and exit code
//! ```
//!
//! Exit codes: 0 done; 2 bad usage or input the server refused (INVALID_ARGUMENT,
//! every field error on its own line, like the offline `plan`); 1 anything else (not
//! found, conflicts, a refused token, an unreachable server, `apply --wait` timing
//! out).
//!
//! Every command is an `async fn` writing to an [`Io`] (stdout and stderr in the
//! binary, buffers in tests); the public functions run it on a one-thread runtime.
//! How things look lives in [`render`].

mod admin;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::watch_event::Type as EventType;
use flotilla_proto::v1::{
    AddClusterRequest, ApplyRequest, DeleteRequest, GetRequest, ListRequest, PlanRequest,
    WatchEvent, WatchRequest,
};
use serde_json::{Value, json};
use tokio_stream::{StreamExt as _, StreamMap};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::cli::{
    ApplyArgs, AuditArgs, ClientArgs, ClusterAddArgs, ClustersArgs, DeleteArgs, DescribeArgs,
    GetArgs, Output, PlanArgs, RotateTokenArgs, TokenCreateArgs, TokenListArgs, TokenRevokeArgs,
};
use crate::input::{self, CliError};
use render::{SetView, SliceView, Table};

/// The kinds the server serves, resolved from what users type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `federatedinstancesets`, `federatedinstanceset`, `fis`.
    FederatedInstanceSets,
    /// `clusters`, `cluster`.
    Clusters,
    /// `instancesets`, `instanceset`, `is`: the per-member slices.
    InstanceSets,
}

/// What an unknown kind's error lists.
const VALID_KINDS: &str =
    "federatedinstancesets (fis), clusters (cluster), instancesets (instanceset, is)";

impl Kind {
    /// Resolves a kind as typed: plural, singular, short name or `Kind` (any case; a
    /// `.flotilla.io` suffix is allowed). Unknown kinds are a usage error.
    pub fn resolve(typed: &str) -> Result<Kind, CliError> {
        let lower = typed.to_ascii_lowercase();
        let name = lower.strip_suffix(".flotilla.io").unwrap_or(&lower);
        match name {
            "federatedinstancesets" | "federatedinstanceset" | "fis" => {
                Ok(Kind::FederatedInstanceSets)
            }
            "clusters" | "cluster" => Ok(Kind::Clusters),
            "instancesets" | "instanceset" | "is" => Ok(Kind::InstanceSets),
            _ => Err(CliError::Usage(format!(
                "unknown kind {typed:?}; valid kinds: {VALID_KINDS}"
            ))),
        }
    }

    /// The plural the server speaks.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::FederatedInstanceSets => "federatedinstancesets",
            Kind::Clusters => "clusters",
            Kind::InstanceSets => "instancesets",
        }
    }

    /// The singular in `federatedinstanceset.flotilla.io/NAME created`.
    fn singular(self) -> &'static str {
        match self {
            Kind::FederatedInstanceSets => "federatedinstanceset",
            Kind::Clusters => "cluster",
            Kind::InstanceSets => "instanceset",
        }
    }

    fn namespaced(self) -> bool {
        self != Kind::Clusters
    }

    /// The name to send for one object: a slice `CLUSTER/SET` with `-n NS` becomes
    /// `CLUSTER/NS/SET`, as the server names slices outside `default`.
    fn name_of_one(self, name: &str, namespace: Option<&str>) -> String {
        match (self, namespace, name.split_once('/')) {
            (Kind::InstanceSets, Some(ns), Some((cluster, set))) if !set.contains('/') => {
                format!("{cluster}/{ns}/{set}")
            }
            _ => name.to_string(),
        }
    }

    /// The namespace to send for one object: `-n`, else `default` (empty for clusters).
    fn namespace_of_one(self, namespace: Option<&str>) -> String {
        if self.namespaced() {
            namespace.unwrap_or("default").to_string()
        } else {
            String::new()
        }
    }
}

/// `kind.flotilla.io/name`, as kubectl names objects in its messages.
fn object_ref(kind: &str, name: &str) -> String {
    let singular = match Kind::resolve(kind) {
        Ok(k) => k.singular().to_string(),
        Err(_) => kind.to_ascii_lowercase(),
    };
    format!("{singular}.flotilla.io/{name}")
}

/// Parses `--label KEY=VALUE` flags. A malformed or repeated label is a usage error.
pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for label in labels {
        let Some((key, value)) = label.split_once('=') else {
            return Err(CliError::Usage(format!(
                "--label {label:?} is not KEY=VALUE (e.g. --label region=eu)"
            )));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(CliError::Usage(format!(
                "--label {label:?}: the key must be non-empty, without spaces"
            )));
        }
        if out
            .insert(key.to_string(), value.trim().to_string())
            .is_some()
        {
            return Err(CliError::Usage(format!("--label {key} is given twice")));
        }
    }
    Ok(out)
}

/// Where a command writes: stdout and stderr in the binary, buffers in tests.
pub struct Io<'a> {
    /// Results and progress.
    pub out: &'a mut dyn Write,
    /// Warnings.
    pub err: &'a mut dyn Write,
}

impl std::fmt::Debug for Io<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Io")
    }
}

impl Io<'_> {
    /// Writes `text` to the output as it is.
    fn print(&mut self, text: &str) -> Result<(), CliError> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(|e| CliError::Failed(anyhow::Error::new(e).context("writing the output")))
    }

    /// Writes one line to the output.
    fn line(&mut self, text: &str) -> Result<(), CliError> {
        self.print(&format!("{text}\n"))
    }

    /// Writes `warning: {text}` to stderr.
    fn warn(&mut self, text: &str) {
        let _ = writeln!(self.err, "warning: {text}");
    }
}

/// Runs one command's future on a one-thread runtime.
fn block_on(command: impl Future<Output = Result<(), CliError>>) -> Result<(), CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(anyhow::Error::new(e).context("starting the runtime")))?
        .block_on(command)
}

/// Runs `$command(args, io)` writing to stdout and stderr.
macro_rules! run_main {
    ($command:ident($args:expr)) => {{
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr();
        block_on($command(
            $args,
            Io {
                out: &mut out,
                err: &mut err,
            },
        ))
    }};
}

/// `flotilla cluster add NAME [--label k=v]...`
pub fn cluster_add(args: &ClusterAddArgs) -> Result<(), CliError> {
    run_main!(cluster_add_to(args))
}

/// `flotilla apply -f FILE [--wait] [--dry-run]`
pub fn apply(args: &ApplyArgs) -> Result<(), CliError> {
    run_main!(apply_to(args))
}

/// `flotilla get KIND [NAME] [-o json|yaml] [-w]`
pub fn get(args: &GetArgs) -> Result<(), CliError> {
    run_main!(get_to(args))
}

/// `flotilla describe KIND NAME`
pub fn describe(args: &DescribeArgs) -> Result<(), CliError> {
    run_main!(describe_to(args))
}

/// `flotilla delete KIND NAME`
pub fn delete(args: &DeleteArgs) -> Result<(), CliError> {
    run_main!(delete_to(args))
}

/// `flotilla clusters [-o json|yaml] [-w]`: `get clusters`.
pub fn clusters(args: &ClustersArgs) -> Result<(), CliError> {
    run_main!(clusters_to(args))
}

/// `flotilla plan -f FILE` against a server: the server's plan, rendered as offline.
pub fn plan(args: &PlanArgs) -> Result<(), CliError> {
    run_main!(plan_to(args))
}

/// `flotilla cluster rotate-token NAME [--grace 10m]`
pub fn cluster_rotate_token(args: &RotateTokenArgs) -> Result<(), CliError> {
    use admin::rotate_token_to;
    run_main!(rotate_token_to(args))
}

/// `flotilla token create NAME --scope S [--namespace NS]...`
pub fn token_create(args: &TokenCreateArgs) -> Result<(), CliError> {
    use admin::token_create_to;
    run_main!(token_create_to(args))
}

/// `flotilla token list [-o json|yaml]`
pub fn token_list(args: &TokenListArgs) -> Result<(), CliError> {
    use admin::token_list_to;
    run_main!(token_list_to(args))
}

/// `flotilla token revoke NAME`
pub fn token_revoke(args: &TokenRevokeArgs) -> Result<(), CliError> {
    use admin::token_revoke_to;
    run_main!(token_revoke_to(args))
}

/// `flotilla audit [--since 1h] [--object KIND/NAME] [-o json|yaml]`
pub fn audit(args: &AuditArgs) -> Result<(), CliError> {
    use admin::audit_to;
    run_main!(audit_to(args))
}

/// Puts the bearer token on every call.
#[derive(Clone, Debug)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(flotilla_proto::AUTHORIZATION, self.0.clone());
        Ok(request)
    }
}

/// A connection to the federation server.
#[derive(Debug)]
pub(crate) struct Conn {
    client: FederationClient<InterceptedService<Channel, Bearer>>,
    /// The URL, for messages.
    server: String,
}

impl Conn {
    /// Maps a failed call's status to the CLI's error.
    fn error(&self, status: &Status, file: Option<&Path>) -> CliError {
        status_error(status, &self.server, file)
    }

    async fn get_object(
        &mut self,
        kind: Kind,
        name: &str,
        namespace: &str,
    ) -> Result<Value, CliError> {
        let request = GetRequest {
            kind: kind.plural().into(),
            name: name.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        let object = match self.client.get(request.clone()).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.error(&status, None)),
        };
        let mut value = parse_object(&object.json)?;
        // A set too big for one answer sends its instances in pages: fetch the rest.
        let total = object.instances_total as usize;
        if total > 0 {
            let mut instances = value["status"]["instances"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            while instances.len() < total {
                let page = GetRequest {
                    instances_offset: instances.len() as u32,
                    ..request.clone()
                };
                let object = match self.client.get(page).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => return Err(self.error(&status, None)),
                };
                let more = parse_object(&object.json)?["status"]["instances"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if more.is_empty() {
                    // The set shrank while paging: what there is.
                    break;
                }
                instances.extend(more);
            }
            value["status"]["instances"] = Value::Array(instances);
        }
        Ok(value)
    }

    async fn list(&mut self, kind: Kind, namespace: &str) -> Result<Vec<Value>, CliError> {
        let request = ListRequest {
            kind: kind.plural().into(),
            namespace: namespace.into(),
        };
        let list = match self.client.list(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(self.error(&status, None)),
        };
        list.items.iter().map(|o| parse_object(&o.json)).collect()
    }

    pub(crate) async fn watch(
        &mut self,
        kind: Kind,
        name: &str,
        namespace: &str,
    ) -> Result<tonic::Streaming<WatchEvent>, CliError> {
        let request = WatchRequest {
            kind: kind.plural().into(),
            name: name.into(),
            namespace: namespace.into(),
        };
        match self.client.watch(request).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(self.error(&status, None)),
        }
    }
}

/// Connects to `--server` with `--token`. Without a token nothing is attempted.
pub(crate) async fn connect(args: &ClientArgs) -> Result<Conn, CliError> {
    let token = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            CliError::Usage(
                "no token: pass --token TOKEN or set FLOTILLA_TOKEN (the server's admin token; `flotilla dev` prints one)".into(),
            )
        })?;
    let bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        CliError::Usage("the token holds characters that cannot be sent in a header".into())
    })?;
    let server = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut endpoint = Endpoint::from_shared(server.clone())
        .map_err(|e| CliError::Usage(format!("--server {:?} is not a URL: {e}", args.server)))?
        .connect_timeout(Duration::from_secs(10))
        // `get -w`, `apply --wait` and the proxy's watch hold a stream open for long:
        // a connection that silently died is found within 20 s.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if let Some(tls) = args
        .tls
        .files()
        .for_url(&server)
        .map_err(|e| CliError::Usage(e.to_string()))?
    {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| CliError::Usage(format!("--server {server}: {}", error_chain(&e))))?;
    }
    if let Some(warning) = flotilla_tls::plaintext_warning(&server) {
        eprintln!("{warning}");
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = error_chain(&e);
        let advice = match flotilla_tls::explain(&server, &chain) {
            Some(hint) => hint.to_string(),
            None => "start one with `flotilla dev` (or `flotilla server`), or point --server / FLOTILLA_SERVER at it".into(),
        };
        CliError::Failed(anyhow::anyhow!(
            "cannot reach the federation server at {server}: {chain}\n{advice}"
        ))
    })?;
    Ok(Conn {
        client: FederationClient::with_interceptor(channel, Bearer(bearer)),
        server,
    })
}

use flotilla_agent::error::chain_of as error_chain;

/// What a failed call means for the user, with its exit code. INVALID_ARGUMENT is
/// input (exit 2), attributed to `file` when the request carried one; the rest exit 1.
pub fn status_error(status: &Status, server: &str, file: Option<&Path>) -> CliError {
    let message = status.message().trim();
    let failed = |text: String| CliError::Failed(anyhow::anyhow!(text));
    // A transport failure that is TLS on one side only (channels connect lazily, so
    // it shows up here, as a call's status).
    if matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::Unavailable
    ) {
        let cause = std::error::Error::source(status)
            .map(|e| format!(": {}", error_chain(e)))
            .unwrap_or_default();
        if let Some(hint) = flotilla_tls::explain(server, &format!("{message}{cause}")) {
            return failed(format!(
                "cannot talk to the federation server at {server}: {message}{cause}\n{hint}"
            ));
        }
    }
    match status.code() {
        Code::InvalidArgument => CliError::Input {
            file: file.map_or_else(|| "the request".into(), |f| f.display().to_string()),
            problems: message
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
        },
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition => {
            failed(message.to_string())
        }
        Code::Aborted => failed(format!(
            "{message} (another write won; run the command again)"
        )),
        Code::Unauthenticated => failed(format!(
            "the server refused the token ({message}); pass a token with --token or FLOTILLA_TOKEN"
        )),
        Code::PermissionDenied => failed(format!("permission denied: {message}")),
        Code::Unavailable => failed(format!(
            "the federation server at {server} is unavailable: {message}\n\
             is it running? start one with `flotilla dev` (or `flotilla server`)"
        )),
        Code::DeadlineExceeded => failed(format!(
            "the federation server at {server} did not answer in time: {message}"
        )),
        code => failed(format!("the server failed ({code:?}): {message}")),
    }
}

fn parse_object(json: &str) -> Result<Value, CliError> {
    serde_json::from_str(json).map_err(|e| {
        CliError::Failed(anyhow::anyhow!(
            "the server sent an object that is not JSON: {e}"
        ))
    })
}

fn not_found(kind: Kind, name: &str) -> CliError {
    CliError::Failed(anyhow::anyhow!("{} {name:?} not found", kind.plural()))
}

/// Seconds since the Unix epoch, for ages.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_yaml(value: &Value) -> Result<String, CliError> {
    serde_yaml::to_string(value).map_err(|e| CliError::Failed(e.into()))
}

fn to_json(value: &Value) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map(|s| s + "\n")
        .map_err(|e| CliError::Failed(e.into()))
}

async fn cluster_add_to(args: &ClusterAddArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let labels = parse_labels(&args.labels)?;
    let mut conn = connect(&args.client).await?;
    let request = AddClusterRequest {
        name: args.name.clone(),
        labels: labels.into_iter().collect(),
    };
    let added = match conn.client.add_cluster(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, None)),
    };
    io.line(&format!("{} created", object_ref("cluster", &args.name)))?;
    io.line(&format!(
        "the agent's token (shown once; run `flotilla agent --server {} --cluster {} --token TOKEN`):",
        conn.server, args.name
    ))?;
    io.line(&added.token)
}

async fn apply_to(args: &ApplyArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let text = input::read(&args.file)?;
    let mut conn = connect(&args.client).await?;
    let request = ApplyRequest {
        document: text,
        dry_run: args.dry_run,
    };
    let response = match conn.client.apply(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, Some(&args.file))),
    };
    for w in &response.warnings {
        io.warn(&format!("{}: {w}", args.file.display()));
    }
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let mut sets = Vec::new();
    for a in &response.applied {
        io.line(&format!(
            "{} {}{suffix}",
            object_ref(&a.kind, &a.name),
            a.result
        ))?;
        if matches!(Kind::resolve(&a.kind), Ok(Kind::FederatedInstanceSets)) {
            let namespace = if a.namespace.is_empty() {
                "default".to_string()
            } else {
                a.namespace.clone()
            };
            sets.push(((namespace, a.name.clone()), a.generation));
        }
    }
    if args.wait && !args.dry_run && !sets.is_empty() {
        let timeout = Duration::from_secs(args.timeout_seconds);
        wait_ready(&mut conn, sets, timeout, &mut io).await?;
    }
    Ok(())
}

/// `apply --wait`: watches every applied set, printing a progress line whenever one
/// changes, until all are ready ([`SetView::is_ready`]) or `timeout` passes.
async fn wait_ready(
    conn: &mut Conn,
    sets: Vec<((String, String), i64)>,
    timeout: Duration,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut streams = StreamMap::new();
    let mut applied_generation = HashMap::new();
    for ((namespace, name), generation) in sets {
        let stream = conn
            .watch(Kind::FederatedInstanceSets, &name, &namespace)
            .await?;
        applied_generation.insert((namespace.clone(), name.clone()), generation);
        streams.insert((namespace, name), stream);
    }
    let mut latest: BTreeMap<(String, String), SetView> = BTreeMap::new();
    let mut shown: HashMap<(String, String), String> = HashMap::new();
    loop {
        let all_ready = latest.len() == applied_generation.len()
            && latest.iter().all(|(key, v)| {
                v.is_ready()
                    && v.status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0)
                        >= applied_generation[key]
            });
        if all_ready {
            for v in latest.values() {
                io.line(&format!(
                    "{}: all {} instances ready",
                    v.meta.name,
                    v.replicas()
                ))?;
            }
            return Ok(());
        }
        let event = tokio::select! {
            () = &mut deadline => {
                let mut report = format!(
                    "timed out after {}s waiting for the applied sets to be ready; not ready:",
                    timeout.as_secs()
                );
                for (namespace, name) in applied_generation.keys() {
                    let key = (namespace.clone(), name.clone());
                    match latest.get(&key) {
                        Some(v) if v.is_ready() => {}
                        Some(v) => report.push_str(&format!("\n  {}", v.not_ready_report())),
                        None => report.push_str(&format!("\n  {name}: no status seen yet")),
                    }
                }
                return Err(CliError::Failed(anyhow::anyhow!(report)));
            }
            next = streams.next() => next,
        };
        let Some((key, event)) = event else {
            return Err(CliError::Failed(anyhow::anyhow!(
                "the server ended the watch before the applied sets were ready"
            )));
        };
        let event = event.map_err(|status| conn.error(&status, None))?;
        if event.r#type() == EventType::Deleted {
            return Err(CliError::Failed(anyhow::anyhow!(
                "{} was deleted while waiting for it",
                object_ref("FederatedInstanceSet", &key.1)
            )));
        }
        let Some(object) = event.object else { continue };
        let view = SetView::of(&parse_object(&object.json)?);
        let line = view.progress();
        if shown.get(&key) != Some(&line) {
            io.line(&line)?;
            shown.insert(key.clone(), line);
        }
        latest.insert(key, view);
    }
}

/// What `get` and `clusters` show.
#[derive(Debug)]
struct Query<'a> {
    kind: Kind,
    name: Option<&'a str>,
    namespace: Option<&'a str>,
    output: Output,
    watch: bool,
}

impl Query<'_> {
    /// `get instancesets SET` (no `CLUSTER/`) lists the set's slices in every cluster.
    fn slices_of_set(&self) -> bool {
        self.kind == Kind::InstanceSets && self.name.is_some_and(|n| !n.contains('/'))
    }

    /// Whether an object belongs in the answer (the client-side filter of a list).
    fn selects(&self, object: &Value) -> bool {
        match self.name {
            Some(name) if self.slices_of_set() => object["metadata"]["name"] == name,
            _ => true,
        }
    }

    fn show_namespace(&self) -> bool {
        self.kind.namespaced() && self.namespace.is_none() && self.name.is_none()
    }
}

async fn get_to(args: &GetArgs, io: Io<'_>) -> Result<(), CliError> {
    let query = Query {
        kind: Kind::resolve(&args.kind)?,
        name: args.name.as_deref(),
        namespace: args.namespace.as_deref(),
        output: args.output,
        watch: args.watch,
    };
    let conn = connect(&args.client).await?;
    show(conn, &query, io).await
}

async fn clusters_to(args: &ClustersArgs, io: Io<'_>) -> Result<(), CliError> {
    let query = Query {
        kind: Kind::Clusters,
        name: None,
        namespace: None,
        output: args.output,
        watch: args.watch,
    };
    let conn = connect(&args.client).await?;
    show(conn, &query, io).await
}

/// The table of `kind` for `items`; the clusters table also counts the instances each
/// cluster holds (from the sets' status; `-` when the sets cannot be listed).
async fn table(
    conn: &mut Conn,
    kind: Kind,
    items: &[Value],
    show_namespace: bool,
    wide: bool,
) -> Table {
    match kind {
        Kind::FederatedInstanceSets => render::set_table(items, show_namespace, wide, now()),
        Kind::InstanceSets => render::slice_table(items, show_namespace, now()),
        Kind::Clusters => {
            let sets = conn.list(Kind::FederatedInstanceSets, "").await.ok();
            let instances = sets.as_deref().map(render::instances_per_cluster);
            render::cluster_table(items, instances.as_ref(), now())
        }
    }
}

/// `get`: one object or a list, then (with `--watch`) every change.
async fn show(mut conn: Conn, query: &Query<'_>, mut io: Io<'_>) -> Result<(), CliError> {
    let kind = query.kind;
    let (items, single) = match query.name {
        Some(name) if !query.slices_of_set() => {
            let namespace = kind.namespace_of_one(query.namespace);
            let name = kind.name_of_one(name, query.namespace);
            (vec![conn.get_object(kind, &name, &namespace).await?], true)
        }
        _ => {
            let namespace = query.namespace.unwrap_or_default();
            let items: Vec<Value> = conn
                .list(kind, namespace)
                .await?
                .into_iter()
                .filter(|o| query.selects(o))
                .collect();
            if items.is_empty()
                && !query.watch
                && let Some(name) = query.name
            {
                return Err(not_found(kind, name));
            }
            (items, false)
        }
    };
    let mut widths = Vec::new();
    match query.output {
        Output::Table | Output::Wide => {
            let wide = query.output == Output::Wide;
            let table = table(&mut conn, kind, &items, query.show_namespace(), wide).await;
            if items.is_empty() {
                let place = query
                    .namespace
                    .map_or_else(String::new, |ns| format!(" in namespace {ns}"));
                let _ = writeln!(io.err, "no {}{place}", kind.plural());
            }
            if !items.is_empty() || query.watch {
                io.print(&table.render())?;
            }
            widths = table.widths();
        }
        _ if query.watch => {
            for item in &items {
                print_object(&mut io, query.output, item)?;
            }
        }
        _ if single => print_object(&mut io, query.output, &items[0])?,
        output => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
            print_object(&mut io, output, &list)?;
        }
    }
    if !query.watch {
        return Ok(());
    }
    let mut seen: HashMap<String, Value> = items
        .iter()
        .map(|o| (identity(o), o["metadata"]["resourceVersion"].clone()))
        .collect();
    let name = match query.name {
        Some(name) if !query.slices_of_set() => kind.name_of_one(name, query.namespace),
        _ => String::new(),
    };
    let namespace = match (query.namespace, name.is_empty()) {
        (ns, false) => kind.namespace_of_one(ns),
        (ns, true) => ns.unwrap_or_default().to_string(),
    };
    let mut stream = conn.watch(kind, &name, &namespace).await?;
    loop {
        let event = match stream.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return Ok(()),
            Err(status) => return Err(conn.error(&status, None)),
        };
        let kind_of_event = event.r#type();
        let Some(object) = event.object else { continue };
        let object = parse_object(&object.json)?;
        if !query.selects(&object) {
            continue;
        }
        let id = identity(&object);
        let version = object["metadata"]["resourceVersion"].clone();
        // The watch starts with every current object: skip those already printed.
        if kind_of_event == EventType::Added && seen.get(&id) == Some(&version) {
            continue;
        }
        if kind_of_event == EventType::Deleted {
            seen.remove(&id);
        } else {
            seen.insert(id, version);
        }
        match query.output {
            Output::Table | Output::Wide => {
                let wide = query.output == Output::Wide;
                let table = table(&mut conn, kind, &[object], query.show_namespace(), wide).await;
                let mut rows = table.render_rows(&widths);
                if kind_of_event == EventType::Deleted {
                    rows = rows.trim_end().to_string() + "   (deleted)\n";
                }
                io.print(&rows)?;
            }
            output => print_object(&mut io, output, &object)?,
        }
    }
}

/// What tells one object from another across watch events.
fn identity(object: &Value) -> String {
    let meta = &object["metadata"];
    format!(
        "{}/{}/{}",
        meta["namespace"].as_str().unwrap_or_default(),
        meta["labels"][render::CLUSTER_LABEL]
            .as_str()
            .unwrap_or_default(),
        meta["name"].as_str().unwrap_or_default()
    )
}

fn print_object(io: &mut Io<'_>, output: Output, object: &Value) -> Result<(), CliError> {
    match output {
        Output::Json | Output::Table | Output::Wide => io.print(&to_json(object)?),
        Output::Yaml => io.print(&format!("---\n{}", to_yaml(object)?)),
    }
}

async fn describe_to(args: &DescribeArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let kind = Kind::resolve(&args.kind)?;
    let mut conn = connect(&args.client).await?;
    let namespace = kind.namespace_of_one(args.namespace.as_deref());
    let text = match kind {
        Kind::FederatedInstanceSets => {
            let set = conn.get_object(kind, &args.name, &namespace).await?;
            render::describe_set(&SetView::of(&set), now())
        }
        Kind::Clusters => {
            let cluster = conn.get_object(kind, &args.name, "").await?;
            let sets = conn
                .list(Kind::FederatedInstanceSets, "")
                .await
                .unwrap_or_default();
            let instances = render::sets_in_cluster(&sets, &args.name);
            render::describe_cluster(&render::ClusterView::of(&cluster), &instances, now())
        }
        Kind::InstanceSets if args.name.contains('/') => {
            let name = kind.name_of_one(&args.name, args.namespace.as_deref());
            let slice = conn.get_object(kind, &name, &namespace).await?;
            render::describe_slice(&SliceView::of(&slice), now())
        }
        Kind::InstanceSets => {
            let slices: Vec<Value> = conn
                .list(kind, &namespace)
                .await?
                .into_iter()
                .filter(|o| o["metadata"]["name"] == args.name.as_str())
                .collect();
            if slices.is_empty() {
                return Err(not_found(kind, &args.name));
            }
            slices
                .iter()
                .map(|s| render::describe_slice(&SliceView::of(s), now()))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    io.print(&text)
}

async fn delete_to(args: &DeleteArgs, mut io: Io<'_>) -> Result<(), CliError> {
    let kind = Kind::resolve(&args.kind)?;
    let cluster = kind.plural() == "clusters";
    if !cluster && args.force {
        return Err(CliError::Usage(
            "--force: only a cluster's delete can be forced (it skips the drain)".into(),
        ));
    }
    if args.timeout_seconds == 0 {
        return Err(CliError::Usage(
            "--timeout-seconds: must be at least 1".into(),
        ));
    }
    let mut conn = connect(&args.client).await?;
    let request = DeleteRequest {
        kind: kind.plural().into(),
        name: kind.name_of_one(&args.name, args.namespace.as_deref()),
        namespace: kind.namespace_of_one(args.namespace.as_deref()),
        force: args.force,
        timeout_seconds: args.timeout_seconds,
    };
    if cluster && !args.force {
        let _ = writeln!(
            io.err,
            "draining cluster {}: its member removes its instances first (up to {}s)",
            args.name, args.timeout_seconds
        );
    }
    let deleted = match conn.client.delete(request).await {
        Ok(response) => response.into_inner().deleted,
        Err(status) => return Err(conn.error(&status, None)),
    };
    if !deleted {
        return Err(not_found(kind, &args.name));
    }
    io.line(&format!(
        "{} deleted",
        object_ref(kind.singular(), &args.name)
    ))
}

async fn plan_to(args: &PlanArgs, mut io: Io<'_>) -> Result<(), CliError> {
    if args.previous.is_some() {
        return Err(CliError::Usage(
            "--previous only goes with --clusters (an offline plan); a live plan sticks to the placement the server stored".into(),
        ));
    }
    let text = input::read(&args.file)?;
    let mut conn = connect(&args.client).await?;
    let response = match conn.client.plan(PlanRequest { document: text }).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(conn.error(&status, Some(&args.file))),
    };
    for w in &response.warnings {
        io.warn(&format!("{}: {w}", args.file.display()));
    }
    let plan: flotilla_scheduler::Plan = serde_json::from_str(&response.json)
        .map_err(|e| CliError::Failed(anyhow::anyhow!("the server's plan is not readable: {e}")))?;
    io.print(&crate::plan::render(&plan, args.output)?)
}
