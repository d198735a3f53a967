//! `flotilla agent`: the member agent.
//!
//! With `--standalone` it runs the InstanceSet controller for every InstanceSet in one
//! Kubernetes cluster, with no federation (`flotilla_kube::standalone`), until Ctrl-C
//! or SIGTERM; reconciles in flight finish first. Without it the agent would dial a
//! federation server, which does not exist yet, so it says so and exits 2.

use std::time::Duration;

use flotilla_kube::standalone;

use crate::cli::AgentArgs;
use crate::input::CliError;

/// Runs the agent; returns when it was asked to stop.
pub fn run(args: &AgentArgs) -> Result<(), CliError> {
    if !args.standalone {
        return Err(CliError::Usage(
            "`flotilla agent` without --standalone joins a federation server, which is not built yet; \
             use `flotilla agent --standalone [--kubeconfig PATH]` to run the InstanceSet controller \
             for one cluster"
                .into(),
        ));
    }
    logging(args.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CliError::Failed(anyhow::Error::new(e).context("starting the async runtime"))
        })?;
    runtime.block_on(async {
        let client = flotilla_kube::client(args.kubeconfig.as_deref())
            .await
            .map_err(failed)?;
        let options = standalone::Options {
            namespace: args.namespace.clone(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
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

fn failed(e: flotilla_kube::Error) -> CliError {
    CliError::Failed(anyhow::Error::new(e))
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends a pod it stops).
fn shutdown() -> impl Future<Output = ()> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("shutting down: letting reconciles in flight finish");
        let _ = tx.send(());
    });
    async move {
        let _ = rx.await;
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as JSON on request.
fn logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_standalone_the_agent_refuses_with_exit_code_2() {
        let args = AgentArgs {
            standalone: false,
            kubeconfig: None,
            namespace: None,
            resync_seconds: 60,
            log_json: false,
            server: None,
            cluster: None,
            token: None,
            sim_config: None,
        };
        let e = run(&args).unwrap_err();
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("federation server"), "{e}");
    }

    #[test]
    fn a_missing_kubeconfig_fails_with_exit_code_1_naming_the_file() {
        let args = AgentArgs {
            standalone: true,
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            namespace: None,
            resync_seconds: 60,
            log_json: false,
            server: None,
            cluster: None,
            token: None,
            sim_config: None,
        };
        let e = run(&args).unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(e.to_string().contains("/nonexistent/kubeconfig"), "{e}");
    }
}
