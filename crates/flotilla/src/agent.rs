//! `flotilla agent`: the member agent.
//!
//! - `--server URL --cluster NAME --token TOKEN`: the federated agent
//!   (`flotilla_agent::run`). It dials the federation server, holds the slices the
//!   server gives this cluster and reports their status and the member's capacity,
//!   until Ctrl-C or SIGTERM. The member is simulated with `--sim-config FILE`
//!   (`SimMember`), runs its instances as local processes with `--process-config FILE`
//!   (`ProcessMember`; they outlive the agent, and the next agent adopts them), else
//!   is a Kubernetes cluster (`--kubeconfig PATH`, or the in-cluster / `KUBECONFIG`
//!   configuration; `KubeMember`, which also runs the local InstanceSet controller).
//!   Exit 1 when the server refuses the token on the first connection.
//! - `--standalone`: the InstanceSet controller for every InstanceSet in one
//!   Kubernetes cluster, with no federation (`flotilla_kube::standalone`), until Ctrl-C
//!   or SIGTERM; reconciles in flight finish first.

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::SessionMetrics;
use flotilla_agent::http::Telemetry;
use flotilla_agent::{
    KubeMember, KubeMemberOptions, LocalMemberOptions, Member, ProcessMember, SimMember,
};
use flotilla_kube::standalone;
use flotilla_member::MemberMetrics;
use flotilla_member::sim::SimConfig;
use flotilla_process::ProcessConfig;

use crate::cli::AgentArgs;
use crate::input::{self, CliError};
use crate::process;

/// Runs the agent; returns when it was asked to stop.
pub fn run(args: &AgentArgs) -> Result<(), CliError> {
    if !args.standalone {
        return federated(args);
    }
    process::logging(args.log.json());
    let runtime = process::runtime()?;
    let commit = args.commit()?;
    runtime.block_on(async {
        let client = flotilla_kube::client(args.kubeconfig.as_deref())
            .await
            .map_err(failed)?;
        let metrics = Arc::new(MemberMetrics::default());
        serve_http(args, &metrics, None).await?;
        let options = standalone::Options {
            namespace: args.namespace.clone(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            commit,
            metrics,
            ..standalone::Options::default()
        };
        tracing::info!(
            namespace = options.namespace.as_deref().unwrap_or("<all>"),
            "standalone agent started"
        );
        standalone::run(client, options, shutdown())
            .await
            .map_err(failed)?;
        tracing::info!("standalone agent stopped");
        Ok(())
    })
}

/// What the federated agent runs on.
enum MemberKind {
    /// A simulated member configured by this file's contents.
    Sim(SimConfig),
    /// Local processes, configured by this file's contents.
    Process(ProcessConfig),
    /// A Kubernetes cluster, through this kubeconfig (or the environment's).
    Kube(Option<std::path::PathBuf>),
}

/// Checks the federated agent's arguments: every problem is a usage error (exit 2)
/// before anything starts.
fn federated_options(args: &AgentArgs) -> Result<(flotilla_agent::Options, MemberKind), CliError> {
    let usage = |what: &str| {
        CliError::Usage(format!(
            "{what}; `flotilla agent` joins a federation server with \
             --server URL --cluster NAME --token TOKEN (--sim-config FILE | --process-config FILE | --kubeconfig PATH), \
             or runs without one with --standalone [--kubeconfig PATH]"
        ))
    };
    let missing: Vec<&str> = [
        ("--server", args.server.is_none()),
        ("--cluster", args.cluster.is_none()),
        ("--token (or FLOTILLA_AGENT_TOKEN)", args.token.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, absent)| absent.then_some(flag))
    .collect();
    if !missing.is_empty() {
        return Err(usage(&format!("missing {}", missing.join(", "))));
    }
    let kinds: Vec<&str> = [
        ("--sim-config", args.sim_config.is_some()),
        ("--process-config", args.process_config.is_some()),
        ("--kubeconfig", args.kubeconfig.is_some()),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if kinds.len() > 1 {
        return Err(usage(&format!(
            "{} exclude each other: the member is simulated, local processes or a Kubernetes cluster",
            kinds.join(" and ")
        )));
    }
    let cluster = args.cluster.clone().unwrap_or_default();
    if cluster.is_empty() {
        return Err(usage("--cluster is empty"));
    }
    let member = match (&args.sim_config, &args.process_config) {
        (Some(path), _) => {
            let text = input::read(path)?;
            MemberKind::Sim(SimConfig::from_text(&text).map_err(|e| CliError::invalid(path, e))?)
        }
        (None, Some(path)) => {
            let text = input::read(path)?;
            MemberKind::Process(
                ProcessConfig::from_text(&text).map_err(|e| CliError::invalid(path, e))?,
            )
        }
        (None, None) => MemberKind::Kube(args.kubeconfig.clone()),
    };
    let server = args.server.clone().unwrap_or_default();
    let tls = args.tls.files();
    tls.for_url(&server)
        .map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(warning) = flotilla_tls::plaintext_warning(&server) {
        eprintln!("{warning}");
    }
    let mut options =
        flotilla_agent::Options::new(server, cluster, args.token.clone().unwrap_or_default());
    options.tls = tls;
    Ok((options, member))
}

/// The federated agent, until Ctrl-C or SIGTERM.
fn federated(args: &AgentArgs) -> Result<(), CliError> {
    let (options, member) = federated_options(args)?;
    let commit = args.commit()?;
    let metrics = Arc::new(MemberMetrics::default());
    let local = LocalMemberOptions {
        commit,
        metrics: Arc::clone(&metrics),
        ..LocalMemberOptions::default()
    };
    process::logging(args.log.json());
    let runtime = process::runtime()?;
    runtime.block_on(async {
        serve_http(args, &metrics, Some(Arc::clone(&options.metrics))).await?;
        tracing::info!(
            server = %options.server,
            cluster = %options.cluster,
            member = match member {
                MemberKind::Sim(_) => "simulated",
                MemberKind::Process(_) => "processes",
                MemberKind::Kube(_) => "kubernetes",
            },
            "agent started"
        );
        match member {
            MemberKind::Sim(config) => {
                let member = SimMember::with_options(&config, local);
                serve(options, member).await
            }
            MemberKind::Process(config) => {
                let member = ProcessMember::with_options(&config, local)
                    .map_err(|e| CliError::Failed(anyhow::Error::new(e)))?;
                tracing::info!(
                    data_dir = %member.processes().data_dir().display(),
                    addresses = %member.processes().block(),
                    "process member"
                );
                // On shutdown the instances keep running: the data plane must not
                // depend on the agent. The next agent adopts them.
                serve(options, member).await
            }
            MemberKind::Kube(kubeconfig) => {
                let client = flotilla_kube::client(kubeconfig.as_deref())
                    .await
                    .map_err(failed)?;
                let member = KubeMember::start(
                    flotilla_kube::FederatedSets::new(client),
                    KubeMemberOptions {
                        controller: standalone::Options {
                            namespace: args.namespace.clone(),
                            resync: Duration::from_secs(args.resync_seconds.max(1)),
                            commit,
                            metrics: Arc::clone(&metrics),
                            ..standalone::Options::default()
                        },
                        ..KubeMemberOptions::default()
                    },
                );
                let served = serve(options, member.clone()).await;
                member.shutdown().await;
                served
            }
        }?;
        tracing::info!("agent stopped");
        Ok(())
    })
}

/// Serves the agent's HTTP port (`--http`) in the background, if asked for; a port
/// that cannot be bound fails the agent before it starts.
async fn serve_http(
    args: &AgentArgs,
    member: &MemberMetrics,
    session: Option<Arc<SessionMetrics>>,
) -> Result<(), CliError> {
    let Some(addr) = args.http else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CliError::Failed(anyhow::anyhow!("--http {addr}: {e}")))?;
    let telemetry = Arc::new(Telemetry::new(member, session));
    tracing::info!(http = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
    tokio::spawn(flotilla_agent::http::serve(listener, telemetry));
    Ok(())
}

/// Runs the session loop over `member` until shutdown.
async fn serve<M: Member>(
    options: flotilla_agent::Options,
    member: Arc<M>,
) -> Result<(), CliError> {
    flotilla_agent::run(options, member, shutdown())
        .await
        .map_err(|e| {
            let refused = e.is_refusal() && !e.is_tls();
            let certificate = e.chain().contains("client certificate");
            let e = anyhow::Error::new(e);
            CliError::Failed(if refused && certificate {
                e.context(
                    "the federation server refused this agent's client certificate: --cert/--key \
                     must be a certificate of the server's --client-ca, valid now, naming this --cluster",
                )
            } else if refused {
                e.context(
                    "the federation server refused this agent: --token must be the token \
                     `flotilla cluster add` printed for this --cluster",
                )
            } else {
                e
            })
        })
}

fn failed(e: flotilla_kube::Error) -> CliError {
    CliError::Failed(anyhow::Error::new(e))
}

/// Resolves on Ctrl-C or SIGTERM. The signal is awaited on its own task so that the
/// future handed to the controller is `Sync`.
fn shutdown() -> impl Future<Output = ()> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        process::stop_signal().await;
        tracing::info!("shutting down: letting reconciles in flight finish");
        let _ = tx.send(());
    });
    async move {
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arguments with nothing set.
    fn args() -> AgentArgs {
        AgentArgs {
            standalone: false,
            kubeconfig: None,
            namespace: None,
            resync_seconds: 60,
            max_concurrent_writes: 16,
            http: None,
            write_qps: 200.0,
            write_burst: 400,
            log: crate::cli::LogArgs::default(),
            tls: crate::cli::ClientTlsArgs::default(),
            server: None,
            cluster: None,
            token: None,
            sim_config: None,
            process_config: None,
        }
    }

    /// Arguments of a federated agent for cluster `a` on a simulated member.
    fn federated_args(sim_config: &std::path::Path, server: &str) -> AgentArgs {
        AgentArgs {
            server: Some(server.into()),
            cluster: Some("a".into()),
            token: Some("s3cret".into()),
            sim_config: Some(sim_config.into()),
            ..args()
        }
    }

    fn sim_config_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn without_server_cluster_and_token_the_agent_refuses_with_exit_code_2() {
        let e = run(&args()).unwrap_err();
        assert_eq!(e.code(), 2);
        let text = e.to_string();
        for flag in ["--server", "--cluster", "--token", "--standalone"] {
            assert!(text.contains(flag), "{text}");
        }
        let e = run(&AgentArgs {
            server: Some("http://127.0.0.1:7443".into()),
            ..args()
        })
        .unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("missing --cluster, --token"), "{e}");
    }

    #[test]
    fn a_simulated_member_and_a_kubeconfig_exclude_each_other_with_exit_code_2() {
        let config = sim_config_file("nodeGroups: [{count: 1, free: {cpu: '4'}}]\n");
        let e = run(&AgentArgs {
            kubeconfig: Some("/tmp/kubeconfig".into()),
            ..federated_args(config.path(), "http://127.0.0.1:7443")
        })
        .unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(
            e.to_string().contains("--sim-config and --kubeconfig"),
            "{e}"
        );
    }

    #[test]
    fn a_process_member_excludes_the_other_kinds_and_its_config_is_checked_by_field() {
        let config =
            sim_config_file("nodeGroups: [{count: 1}]\nbinaries: {redis-server: /nonexistent}\n");
        let e = run(&AgentArgs {
            sim_config: None,
            process_config: Some(config.path().into()),
            kubeconfig: Some("/tmp/kubeconfig".into()),
            ..federated_args(config.path(), "http://127.0.0.1:7443")
        })
        .unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(
            e.to_string()
                .contains("--process-config and --kubeconfig exclude each other"),
            "{e}"
        );
        let e = run(&AgentArgs {
            process_config: Some(config.path().into()),
            ..federated_args(config.path(), "http://127.0.0.1:7443")
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("--sim-config and --process-config"),
            "{e}"
        );
        let e = run(&AgentArgs {
            sim_config: None,
            process_config: Some(config.path().into()),
            ..federated_args(config.path(), "http://127.0.0.1:7443")
        })
        .unwrap_err();
        assert_eq!(e.code(), 2);
        let text = e.to_string();
        assert!(text.contains("dataDir: required"), "{text}");
        assert!(
            text.contains("binaries.redis-server: /nonexistent"),
            "{text}"
        );
    }

    #[test]
    fn an_invalid_sim_config_is_reported_by_field_with_exit_code_2() {
        let config = sim_config_file("nodeGroups: [{count: 1, free: {cpu: lots}}]\n");
        let e = run(&federated_args(config.path(), "http://127.0.0.1:7443")).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("nodeGroups[0].free.cpu"), "{e}");
    }

    #[test]
    fn a_token_refused_on_the_first_connection_exits_1_saying_so() {
        use flotilla_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
        use flotilla_proto::v1::{AgentMessage, ServerMessage};

        struct Refuse;
        #[tonic::async_trait]
        impl AgentService for Refuse {
            type SessionStream = tokio_stream::Empty<Result<ServerMessage, tonic::Status>>;
            async fn session(
                &self,
                _: tonic::Request<tonic::Streaming<AgentMessage>>,
            ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
                Err(tonic::Status::unauthenticated("unknown token"))
            }
        }

        // The refusing server runs on its own runtime: `run` builds one of its own.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let _ = tonic::transport::Server::builder()
                    .add_service(AgentServiceServer::new(Refuse))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            });
        });
        let addr = addr_rx.recv().unwrap();
        let config = sim_config_file("nodeGroups: [{count: 1, free: {cpu: '4'}}]\n");
        let e = run(&federated_args(config.path(), &format!("http://{addr}"))).unwrap_err();
        assert_eq!(e.code(), 1);
        let text = e.to_string();
        assert!(text.contains("refused this agent"), "{text}");
        assert!(text.contains("unknown token"), "{text}");
    }

    #[test]
    fn a_missing_kubeconfig_fails_with_exit_code_1_naming_the_file() {
        let args = AgentArgs {
            standalone: true,
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..args()
        };
        let e = run(&args).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    }

    #[test]
    fn a_federated_agent_on_a_missing_kubeconfig_fails_with_exit_code_1_naming_the_file() {
        let args = AgentArgs {
            server: Some("http://127.0.0.1:7443".into()),
            cluster: Some("a".into()),
            token: Some("t".into()),
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            ..args()
        };
        let e = run(&args).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    }

    #[test]
    fn out_of_range_write_limits_are_usage_errors_naming_the_flag() {
        let bad = |args: AgentArgs| match args.commit() {
            Err(CliError::Usage(why)) => why,
            other => panic!("expected a usage error, got {other:?}"),
        };
        let zero = AgentArgs {
            max_concurrent_writes: 0,
            ..args()
        };
        assert!(bad(zero).contains("--max-concurrent-writes"));
        let negative = AgentArgs {
            write_qps: -5.0,
            ..args()
        };
        assert!(bad(negative).contains("--write-qps"));
        assert_eq!(
            args().commit().unwrap(),
            flotilla_member::CommitOptions::default()
        );
    }
}
