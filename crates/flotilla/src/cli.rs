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
    /// Register member clusters.
    #[command(subcommand)]
    Cluster(ClusterCommand),
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
    /// The admin token (`flotilla server --admin-token`, or printed by `flotilla dev`).
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
    #[command(flatten)]
    pub log: LogArgs,
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
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Register a member cluster; prints its agent token as the last line.
    Add(ClusterAddArgs),
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
