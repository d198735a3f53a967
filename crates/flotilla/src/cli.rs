//! Command-line syntax.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use flotilla_member::CommitOptions;

/// Flotilla: a federation control plane for stateful, role-aware workloads.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Every help page starts with the binary's name and version.
const HELP: &str =
    "flotilla {version}\n{about-with-newline}\n{usage-heading} {usage}\n\n{all-args}{after-help}";

/// Parses the command line (exits on bad usage, `--help` and `--version`).
pub fn parse() -> Cli {
    use clap::FromArgMatches as _;
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The command line's syntax, every help page naming the version.
fn command() -> clap::Command {
    fn with_help(c: clap::Command) -> clap::Command {
        c.help_template(HELP).mut_subcommands(with_help)
    }
    with_help(<Cli as clap::CommandFactory>::command())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server, the embedded store and three simulated members in one process.
    ///
    /// The quickest way to try Flotilla: prints how to point the CLI at it.
    Dev(DevArgs),
    /// Run the federation server (user API and agent protocol over gRPC, health and
    /// metrics over HTTP).
    Server(ServerArgs),
    /// Run the member agent: joined to a federation server (`--server`), or alone in
    /// one Kubernetes cluster (`--standalone`).
    ///
    /// Exit codes: 0 stopped on request, 1 failed, 2 bad usage.
    Agent(AgentArgs),
    /// A primary-aware Redis proxy for one set: clients connect here and always reach
    /// the set's current primary (learnt from the federation and the set's sentinels,
    /// verified with ROLE); client passwords, a deny list and an audit log.
    ///
    /// Exit codes: 0 stopped on request (after draining), 1 failed, 2 bad usage.
    Proxy(ProxyArgs),
    /// Register member clusters and rotate their agent tokens.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// User tokens with a scope (admin, edit, view) and namespaces: create, list,
    /// revoke. Needs an admin token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit trail: every write through the API, who made it, from where, and how
    /// it ended. Needs an admin token.
    Audit(AuditArgs),
    /// Create or update the objects in a file (FederatedInstanceSets, Clusters).
    Apply(ApplyArgs),
    /// Show objects: a table, or `-o json|yaml` with their status.
    Get(GetArgs),
    /// Show one object in detail: placement, instances, conditions.
    Describe(DescribeArgs),
    /// Delete an object.
    Delete(DeleteArgs),
    /// What-if: where a FederatedInstanceSet would run, and what would not fit.
    ///
    /// Against the live clusters of a server, or offline with `--clusters FILE` (a
    /// multi-document file of Cluster objects).
    /// Exit codes: 0 planned (even if some instances do not fit), 2 invalid input.
    Plan(PlanArgs),
    /// The member clusters: readiness, capacity, instances.
    Clusters(ClustersArgs),
    /// Print this binary's version.
    Version,
}

/// Where the federation server is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's gRPC URL.
    #[arg(long, env = "FLOTILLA_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// The token: the admin token (`flotilla server --admin-token`, or printed by
    /// `flotilla dev`) or a user token (`flotilla token create`).
    #[arg(
        long,
        env = "FLOTILLA_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// How a client (the CLI, an agent) dials an `https://` server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// The CA certificate (PEM) that signed the server's certificate. Default: the
    /// system's roots.
    #[arg(long, env = "FLOTILLA_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that verifies clients
    /// (`--client-ca`); read again at every connection.
    #[arg(long, env = "FLOTILLA_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long, env = "FLOTILLA_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl ClientTlsArgs {
    pub fn files(&self) -> flotilla_tls::ClientTls {
        flotilla_tls::ClientTls {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Where `flotilla server` listens for gRPC by default, and where clients look.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7443";

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// gRPC address (user API and agents).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    pub listen: std::net::SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7080")]
    pub http: std::net::SocketAddr,
    /// etcd endpoints, comma-separated (production, HA).
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        conflicts_with = "data_dir"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Directory of the embedded store (single node). Default when neither is given:
    /// `./flotilla-data`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The token users present to the user API. Without it the server uses the one it
    /// generated on its first start (kept in the store) and logs it.
    #[arg(
        long,
        env = "FLOTILLA_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub admin_token: Option<String>,
    /// A cluster whose agent has not sent a heartbeat for this long goes Unknown.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub cluster_ttl_seconds: u64,
    /// Servers sharing one etcd elect the one that runs the federation controller; a
    /// leader that dies without stepping down is replaced after this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub leader_ttl_seconds: u64,
    /// Serve gRPC and HTTP over TLS with this certificate chain (PEM, leaf first).
    /// The files are re-read when they change: rotate them in place.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: agents must present a certificate signed by this CA (PEM) that
    /// names their cluster (a DNS subject alternative name); other clients may
    /// present one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// How long audit records are kept (e.g. `720h`, `30d`); older ones are pruned.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = parse_duration)]
    pub audit_retention: std::time::Duration,
    #[command(flatten)]
    pub log: LogArgs,
}

/// A duration as `90s`, `10m`, `1h30m`, `720h` or `30d` (units s, m, h, d).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 90s, 10m, 1h30m or 30d");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(total))
}

/// How a long-running command logs (to stderr; the filter is RUST_LOG, default
/// `info`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LogArgs {
    /// `text` (coloured only on a terminal) or `json` (one object a line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The same as `--log-format json` (kept for older manifests).
    #[arg(long, hide = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// Whether to log JSON lines.
    pub fn json(&self) -> bool {
        self.log_json || self.log_format == LogFormat::Json
    }
}

/// A log format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Also apply the Redis example from deploy/examples/.
    #[arg(long)]
    pub example: bool,
    /// gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7443")]
    pub listen: std::net::SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7080")]
    pub http: std::net::SocketAddr,
    /// Keep the embedded store here (default: a temporary directory, removed on exit).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Simulated members even when redis-server and redis-sentinel are on PATH.
    #[arg(long)]
    pub simulated: bool,
    /// With `--example` on process members: where `flotilla proxy` for the example's
    /// shard listens (clients reach its primary there, wherever it moves).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6380")]
    pub proxy: std::net::SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a member cluster; prints its agent token as the last line.
    Add(ClusterAddArgs),
    /// Issue a new agent token for a cluster (printed as the last line). The old one
    /// keeps working for `--grace`, then is refused.
    RotateToken(RotateTokenArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateTokenArgs {
    /// The cluster's name.
    pub name: String,
    /// How long the old token keeps working (`0s`: it stops now; at most 7d).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub grace: std::time::Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a user token; prints it (once) as the last line.
    Create(TokenCreateArgs),
    /// The user tokens: name, scope, namespaces, created (never the tokens).
    List(TokenListArgs),
    /// Revoke a user token: from now on it is refused.
    Revoke(TokenRevokeArgs),
}

/// What a user token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// Everything.
    Admin,
    /// Apply and delete sets, and read, in the token's namespaces.
    Edit,
    /// Read (get, list, watch, plan) in the token's namespaces; clusters anywhere.
    View,
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The token's name (a DNS label), as the audit trail shows it.
    pub name: String,
    #[arg(long, value_enum)]
    pub scope: Scope,
    /// A namespace the token applies to (edit and view need at least one); repeat for
    /// more.
    #[arg(short = 'n', long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct TokenListArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct TokenRevokeArgs {
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only records of the last DURATION (e.g. `1h`, `7d`); default: all kept.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// Only records of one object: `KIND/NAME` or `KIND/NAMESPACE/NAME` (e.g.
    /// `fis/cache`, `cluster/eu-1`, `token/ci`).
    #[arg(long, value_name = "KIND/NAME")]
    pub object: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct ClusterAddArgs {
    /// The cluster's name (a DNS label).
    pub name: String,
    /// A label for placement (`region=eu`); repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Run without a federation: reconcile the cluster's InstanceSets directly.
    #[arg(long, conflicts_with_all = ["server", "cluster", "token", "sim_config", "process_config"])]
    pub standalone: bool,
    /// The federation server's gRPC URL.
    #[arg(long, value_name = "URL", requires_all = ["cluster", "token"])]
    pub server: Option<String>,
    /// This member's cluster name, as registered with `flotilla cluster add`.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// This cluster's agent token, as printed by `flotilla cluster add`.
    #[arg(
        long,
        env = "FLOTILLA_AGENT_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Run a simulated member described by this file instead of a Kubernetes cluster.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kubeconfig", "process_config"])]
    pub sim_config: Option<PathBuf>,
    /// Run the member's instances as processes on this host, as this file describes
    /// (nodes, data directory, programs), instead of on a Kubernetes cluster. They keep
    /// running when the agent stops; the next agent adopts them.
    #[arg(long, value_name = "FILE", conflicts_with = "kubeconfig")]
    pub process_config: Option<PathBuf>,
    /// The kubeconfig to use (default: in-cluster config, then KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Only InstanceSets (and their pods) in this namespace (default: all namespaces).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Reconcile a converged set at least this often.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// Writes (creates, patches, deletes, status) in flight at once, across every set
    /// of the member; 1 sends a plan's actions one after another.
    #[arg(long, value_name = "N", default_value_t = CommitOptions::default().max_concurrent)]
    pub max_concurrent_writes: usize,
    /// Writes a second once the burst is spent (client-side rate limit, as
    /// kube-controller-manager's --kube-api-qps); 0 for no limit.
    #[arg(long, value_name = "QPS", default_value_t = CommitOptions::default().qps)]
    pub write_qps: f64,
    /// Writes that may go out at once before --write-qps applies.
    #[arg(long, value_name = "N", default_value_t = CommitOptions::default().burst)]
    pub write_burst: u32,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl AgentArgs {
    /// How the member's commit phase sends its writes; a usage error (exit 2) naming
    /// the flag when one is out of range.
    pub fn commit(&self) -> Result<CommitOptions, crate::input::CliError> {
        let options = CommitOptions {
            max_concurrent: self.max_concurrent_writes,
            qps: self.write_qps,
            burst: self.write_burst,
        };
        options.check().map_err(crate::input::CliError::Usage)?;
        Ok(options)
    }
}

#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The set to proxy, as `NAMESPACE/NAME` (e.g. `default/cache`).
    #[arg(long, value_name = "NS/NAME")]
    pub set: String,
    /// Where clients connect (RESP).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:6380")]
    pub listen: std::net::SocketAddr,
    /// Serve /metrics (Prometheus), /healthz and /readyz (ready once a primary is
    /// verified) on this address.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// Clients must `AUTH` with the password in this file (trailing newline ignored).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// `AUTH` with the password in this file makes a client admin: the deny list does
    /// not apply to it.
    #[arg(long, value_name = "FILE")]
    pub admin_password_file: Option<PathBuf>,
    /// Commands refused to non-admin clients, comma-separated; replaces the default
    /// list (FLUSHALL FLUSHDB CONFIG DEBUG SHUTDOWN REPLICAOF SLAVEOF FAILOVER MONITOR
    /// CLUSTER SCRIPT KEYS). `--deny ''` denies nothing.
    #[arg(long, value_name = "CMD,...", value_delimiter = ',')]
    pub deny: Option<Vec<String>>,
    /// Append one JSON line per denied command, per deny-listed command an admin runs
    /// and per failed or admin AUTH (time, client, user, command; never arguments).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The proxy's own password to Redis, sent (`AUTH`) on every connection it opens
    /// to an instance; never the clients' password.
    #[arg(long, value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// Where read-only commands go: `primary`, or `replicas` (a caught-up replica of
    /// the primary answers reads from connections with nothing else in flight and no
    /// connection state; a replica lags, so a client may not read its latest writes).
    #[arg(long, value_name = "primary|replicas", default_value = "primary", value_parser = ["primary", "replicas"])]
    pub reads: String,
    /// The ACL user for --redis-password-file (default: Redis's default user).
    #[arg(long, value_name = "USER", requires = "redis_password_file")]
    pub redis_user: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The objects (YAML or JSON, several documents allowed; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Show progress until every instance of the applied sets is ready.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 1).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub timeout_seconds: u64,
    /// Validate and report what would change; store nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// `federatedinstancesets` (`fis`), `clusters` or `instancesets`.
    pub kind: String,
    /// One object; every object of the kind when absent.
    pub name: Option<String>,
    /// Namespace of namespaced kinds (default: `default` for one object, all for a list).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Keep printing changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct DescribeArgs {
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Clusters: delete at once, without draining (its instances are placed elsewhere
    /// without its member's word, and keep running in it until its agent is stopped).
    #[arg(long)]
    pub force: bool,
    /// Clusters: how long to wait for the member to remove its instances before the
    /// delete gives up (the cluster then stays, draining).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout_seconds: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct ClustersArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Keep printing changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The FederatedInstanceSet to plan (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Cluster objects to plan against (multi-document YAML).
    #[arg(long, value_name = "FILE")]
    pub clusters: Option<PathBuf>,
    /// A previous plan's JSON output: instances already placed stay where they are.
    #[arg(long, value_name = "FILE")]
    pub previous: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Used when planning against a live server (no `--clusters`).
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// The table with every column in full (a set's CLUSTERS lists every cluster).
    Wide,
    /// JSON, as `--previous` reads it.
    Json,
    /// The same document as YAML.
    Yaml,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_help_page_names_the_version() {
        let version = format!("flotilla {}", env!("CARGO_PKG_VERSION"));
        let mut root = command();
        assert!(root.render_help().to_string().starts_with(&version));
        for path in [&["agent"][..], &["server"], &["cluster", "add"], &["get"]] {
            let mut c = command();
            c.build();
            let mut sub = &mut c;
            for name in path {
                sub = sub.find_subcommand_mut(name).expect("a subcommand");
            }
            let help = sub.render_help().to_string();
            assert!(help.starts_with(&version), "{path:?}: {help}");
        }
    }

    #[test]
    fn durations_are_numbers_with_units() {
        let secs = |t: &str| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("10m"), Ok(600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("720h"), Ok(30 * 86_400));
        assert_eq!(secs("30d"), Ok(30 * 86_400));
        for bad in ["", "10", "m", "1w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_format_json_or_the_old_flag() {
        use clap::FromArgMatches as _;
        let parse = |args: &[&str]| {
            let m = command().try_get_matches_from(args).unwrap();
            match Cli::from_arg_matches(&m).unwrap().command {
                Command::Server(a) => a.log,
                _ => unreachable!(),
            }
        };
        assert!(!parse(&["flotilla", "server"]).json());
        assert!(parse(&["flotilla", "server", "--log-format", "json"]).json());
        assert!(parse(&["flotilla", "server", "--log-json"]).json());
        assert!(
            command()
                .try_get_matches_from(["flotilla", "server", "--log-format", "xml"])
                .is_err()
        );
    }
}
