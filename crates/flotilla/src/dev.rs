//! `flotilla dev`: the federation server on the embedded store plus three member
//! clusters of different sizes and regions, in one process, each member's agent joined
//! over real gRPC exactly like a remote one. When `redis-server` and `redis-sentinel`
//! are on PATH the members are process members (real Redis on loopback addresses,
//! stopped when dev stops); otherwise simulated, and it says why. With `--example` it
//! applies the Redis example from deploy/examples/ and prints how to reach its
//! primary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use flotilla_api::NodeGroup;
use flotilla_member::sim::SimConfig;
use flotilla_process::ProcessConfig;
use flotilla_proto::v1::federation_client::FederationClient;
use flotilla_proto::v1::{AddClusterRequest, ApplyRequest, DeleteRequest, GetRequest};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use tokio::sync::watch;
use tonic::Request;
use tonic::transport::Channel;

use crate::cli::DevArgs;
use crate::input::CliError;
use crate::process::{self, failed};

/// The Redis example `--example` applies.
const EXAMPLE: &str = include_str!("../../../deploy/examples/redis-shard.yaml");

/// A simulated member: name, labels, nodes (count, cpu, memory).
struct DevMember {
    name: &'static str,
    region: &'static str,
    nodes: u32,
    cpu: &'static str,
    memory: &'static str,
}

const MEMBERS: [DevMember; 3] = [
    DevMember {
        name: "eu-west",
        region: "eu",
        nodes: 6,
        cpu: "16",
        memory: "64Gi",
    },
    DevMember {
        name: "us-east",
        region: "us",
        nodes: 10,
        cpu: "16",
        memory: "64Gi",
    },
    DevMember {
        name: "ap-south",
        region: "ap",
        nodes: 3,
        cpu: "8",
        memory: "32Gi",
    },
];

impl DevMember {
    fn config(&self) -> SimConfig {
        let free = [
            ("cpu", self.cpu),
            ("memory", self.memory),
            ("pods", "110"),
            ("flotilla.io/network-mbps", "10000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect();
        SimConfig {
            node_groups: vec![NodeGroup {
                count: self.nodes,
                free,
            }],
            start_delay: Duration::from_millis(1500),
            ready_delay: Duration::from_millis(500),
            local_volumes: false,
            request_latency: Duration::ZERO,
        }
    }

    /// The same nodes, as a process member keeping its data under `dir`.
    fn process_config(&self, dir: &Path) -> ProcessConfig {
        ProcessConfig {
            node_groups: self.config().node_groups,
            data_dir: dir.join(format!("member-{}", self.name)),
            ..ProcessConfig::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("region".to_string(), self.region.to_string()),
            ("env".to_string(), "prod".to_string()),
        ])
    }
}

pub fn run(args: &DevArgs) -> Result<(), CliError> {
    dev_logging();
    process::runtime()?.block_on(async {
        let temp;
        let dir: PathBuf = match &args.data_dir {
            Some(d) => d.clone(),
            None => {
                temp = tempfile::tempdir()
                    .context("creating a temporary directory")
                    .map_err(failed)?;
                temp.path().to_path_buf()
            }
        };
        let store = crate::server::open_embedded(&dir).await.map_err(failed)?;
        let ttl = Duration::from_secs(6);
        let server = flotilla_server::start(
            store,
            flotilla_server::Config {
                listen: args.listen,
                http: args.http,
                admin_token: None,
                cluster_ttl: ttl,
                heartbeat: crate::server::heartbeat_for(ttl),
                ..flotilla_server::Config::default()
            },
        )
        .await
        .map_err(failed)?;
        let url = server.url();
        let mut api = client(&url, &server.admin_token).await.map_err(failed)?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut agents = Vec::new();
        let missing = missing_programs(args.simulated);
        let mut processes = Vec::new();
        for m in &MEMBERS {
            let token = member_token(&mut api, &dir, m).await.map_err(failed)?;
            let options = flotilla_agent::Options::new(url.clone(), m.name, token);
            let mut stop = stop_rx.clone();
            let stop = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if missing.is_none() {
                let member =
                    flotilla_agent::ProcessMember::new(&m.process_config(&dir)).map_err(failed)?;
                processes.push(member.processes().clone());
                agents.push(tokio::spawn(async move {
                    if let Err(e) = flotilla_agent::run(options, member, stop).await {
                        tracing::error!(error = %e, "process member's agent stopped");
                    }
                }));
            } else {
                let member = flotilla_agent::SimMember::new(&m.config());
                agents.push(tokio::spawn(async move {
                    if let Err(e) = flotilla_agent::run(options, member, stop).await {
                        tracing::error!(error = %e, "simulated member's agent stopped");
                    }
                }));
            }
        }

        if args.example {
            let r = api
                .apply(Request::new(ApplyRequest {
                    document: EXAMPLE.to_string(),
                    dry_run: false,
                }))
                .await
                .context("applying the Redis example")
                .map_err(failed)?
                .into_inner();
            for a in r.applied {
                println!(
                    "applied {} {}/{}: {}",
                    a.kind, a.namespace, a.name, a.result
                );
            }
        }
        print_welcome(&server, &dir, args.data_dir.is_some(), missing.as_deref());
        let mut proxy = None;
        if args.example && missing.is_none() {
            proxy = Some(start_proxy(args.proxy, &url, &server.admin_token).await?);
            tokio::spawn(print_primary(url.clone(), server.admin_token.clone()));
        }
        process::stop_signal().await;
        println!("stopping");
        if let Some((running, follow)) = proxy {
            follow.abort();
            running.stop().await;
        }
        stop_tx.send_replace(true);
        for a in agents {
            let _ = a.await;
        }
        // Agents leave their instances running (the data plane outlives them); dev's
        // members are throwaway, so their processes go with it.
        for p in processes {
            if let Err(e) = p.stop_everything().await {
                tracing::warn!(error = %e, "stopping a process member's instances");
            }
        }
        server.stop().await;
        Ok(())
    })
}

/// Warnings only, unless RUST_LOG says otherwise: `flotilla dev` talks on stdout.
fn dev_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Why dev's members are simulated: `--simulated`, or the Redis programs it would run
/// that are not on PATH; `None` when they are process members.
fn missing_programs(simulated: bool) -> Option<String> {
    if simulated {
        return Some("--simulated".to_string());
    }
    let missing: Vec<&str> = ["redis-server", "redis-sentinel"]
        .into_iter()
        .filter(|p| flotilla_process::config::on_path(p).is_none())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not on PATH (apt-get install redis-server redis-sentinel)",
            missing.join(" and ")
        )
    })
}

/// `flotilla proxy` for the example's shard, in this process: it follows the set
/// through the server as the standalone proxy does. No passwords (loopback only).
async fn start_proxy(
    listen: std::net::SocketAddr,
    url: &str,
    token: &str,
) -> Result<(flotilla_proxy::Running, tokio::task::JoinHandle<()>), CliError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--proxy {listen}: the example's proxy cannot listen there"))
        .map_err(failed)?;
    let running = flotilla_proxy::start(listener, flotilla_proxy::Config::new("default/redis-a"))
        .context("starting the example's proxy")
        .map_err(failed)?;
    let args = crate::cli::ClientArgs {
        server: url.to_string(),
        token: Some(token.to_string()),
        tls: Default::default(),
    };
    let conn = crate::client::connect(&args).await?;
    let follow = tokio::spawn(crate::proxy::follow_set(
        conn,
        "default".into(),
        "redis-a".into(),
        running.offers.clone(),
    ));
    println!(
        "The example's proxy (always its primary): redis-cli -h {} -p {}",
        running.addr.ip(),
        running.addr.port()
    );
    Ok((running, follow))
}

/// Waits for the example's primary and prints how to reach it.
async fn print_primary(url: String, token: String) {
    let Ok(mut api) = client(&url, &token).await else {
        return;
    };
    for _ in 0..240 {
        let got = api
            .get(Request::new(GetRequest {
                kind: "fis".into(),
                name: "redis-a".into(),
                namespace: "default".into(),
                ..Default::default()
            }))
            .await;
        let primary = got.ok().and_then(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.into_inner().json).ok()?;
            let p = &v["status"]["primary"];
            Some((p["ordinal"].as_u64()?, p["endpoint"].as_str()?.to_string()))
        });
        if let Some((ordinal, endpoint)) = primary
            && let Some((host, port)) = endpoint.rsplit_once(':')
        {
            println!();
            println!("The example's primary is redis-a-{ordinal}: redis-cli -h {host} -p {port}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_welcome(
    server: &flotilla_server::Running,
    dir: &Path,
    kept: bool,
    simulated: Option<&str>,
) {
    match simulated {
        None => println!(
            "Flotilla is running: server + embedded store + 3 process members (real Redis on loopback addresses)."
        ),
        Some(why) => {
            println!("Flotilla is running: server + embedded store + 3 simulated members.");
            println!("(simulated, not process members: {why})");
        }
    }
    println!();
    for m in &MEMBERS {
        println!(
            "  member {:<9} region={:<3} {} nodes × {} cpu, {} memory",
            m.name, m.region, m.nodes, m.cpu, m.memory
        );
    }
    println!();
    println!("  gRPC     {}", server.url());
    println!(
        "  metrics  http://{}/metrics   (health: /healthz, /readyz)",
        server.http
    );
    println!(
        "  store    {}{}",
        dir.display(),
        if kept {
            ""
        } else {
            " (temporary: removed on exit)"
        }
    );
    println!();
    println!("In another shell:");
    println!("  export FLOTILLA_SERVER={}", server.url());
    println!("  export FLOTILLA_TOKEN={}", server.admin_token);
    println!("  flotilla clusters");
    println!("  flotilla apply -f deploy/examples/redis-shard.yaml --wait");
    println!("  flotilla get fis");
    println!("  flotilla describe fis redis-a");
    println!();
    println!("Ctrl-C stops everything.");
}

async fn client(
    url: &str,
    token: &str,
) -> anyhow::Result<
    FederationClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            impl tonic::service::Interceptor + use<>,
        >,
    >,
> {
    let channel = Channel::from_shared(url.to_string())?
        .connect()
        .await
        .context("connecting to the server")?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;
    Ok(FederationClient::with_interceptor(
        channel,
        move |mut req: Request<()>| {
            req.metadata_mut()
                .insert(flotilla_proto::AUTHORIZATION, auth.clone());
            Ok(req)
        },
    ))
}

/// The member's agent token: registers it, or (with a kept data dir) reuses the token
/// saved there; a member registered without a saved token is registered again.
async fn member_token<T>(
    api: &mut FederationClient<T>,
    dir: &Path,
    m: &DevMember,
) -> anyhow::Result<String>
where
    T: tonic::client::GrpcService<tonic::body::Body> + Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let saved = dir.join(format!("dev-{}.token", m.name));
    let add = AddClusterRequest {
        name: m.name.to_string(),
        labels: m.labels().into_iter().collect(),
    };
    match api.add_cluster(Request::new(add.clone())).await {
        Ok(r) => {
            let token = r.into_inner().token;
            std::fs::write(&saved, &token)
                .with_context(|| format!("saving {}", saved.display()))?;
            Ok(token)
        }
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            if let Ok(token) = std::fs::read_to_string(&saved) {
                return Ok(token.trim().to_string());
            }
            // Its own simulated member, registered again: no drain to wait for.
            api.delete(Request::new(DeleteRequest {
                kind: "clusters".into(),
                name: m.name.into(),
                namespace: String::new(),
                force: true,
                timeout_seconds: 0,
            }))
            .await?;
            let token = api.add_cluster(Request::new(add)).await?.into_inner().token;
            std::fs::write(&saved, &token)
                .with_context(|| format!("saving {}", saved.display()))?;
            Ok(token)
        }
        Err(s) => Err(anyhow::anyhow!("registering {}: {}", m.name, s.message())),
    }
}
