//! `flotilla server`: the federation server on etcd (`--etcd-endpoints`) or the
//! embedded store (`--data-dir`), until Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_store::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};

use crate::cli::ServerArgs;
use crate::input::CliError;
use crate::process::{self, failed};

pub fn run(args: &ServerArgs) -> Result<(), CliError> {
    if args.cluster_ttl_seconds == 0 {
        return Err(CliError::Usage(
            "--cluster-ttl-seconds: must be at least 1".into(),
        ));
    }
    if args.leader_ttl_seconds < 2 {
        return Err(CliError::Usage(
            "--leader-ttl-seconds: must be at least 2 (etcd's shortest lease)".into(),
        ));
    }
    if args.audit_retention < Duration::from_secs(60) {
        return Err(CliError::Usage(format!(
            "--audit-retention: {:?} is less than a minute; records would be gone before anyone reads them",
            args.audit_retention
        )));
    }
    let tls = flotilla_tls::ServerFiles::from_flags(
        args.tls_cert.clone(),
        args.tls_key.clone(),
        args.client_ca.clone(),
    )
    .map_err(|e| CliError::Usage(e.to_string()))?
    .map(flotilla_tls::ServerTls::load)
    .transpose()
    .map_err(|e| CliError::Usage(e.to_string()))?;
    process::logging(args.log.json());
    process::runtime()?.block_on(async {
        let store: Arc<dyn Store> = if args.etcd_endpoints.is_empty() {
            let dir = args.data_dir.clone().unwrap_or_else(|| "flotilla-data".into());
            open_embedded(&dir).await.map_err(failed)?
        } else {
            let store = EtcdStore::connect(&args.etcd_endpoints, EtcdOptions::default())
                .await
                .with_context(|| format!("connecting to etcd at {}", args.etcd_endpoints.join(",")))
                .map_err(failed)?;
            tracing::info!(endpoints = %args.etcd_endpoints.join(","), "using etcd");
            Arc::new(store)
        };
        let config = flotilla_server::Config {
            listen: args.listen,
            http: args.http,
            admin_token: args.admin_token.clone(),
            cluster_ttl: Duration::from_secs(args.cluster_ttl_seconds),
            heartbeat: heartbeat_for(Duration::from_secs(args.cluster_ttl_seconds)),
            leader_ttl: Duration::from_secs(args.leader_ttl_seconds),
            tls,
            audit_retention: args.audit_retention,
            ..flotilla_server::Config::default()
        };
        let generated = config.admin_token.is_none();
        let running = flotilla_server::start(store, config).await.map_err(failed)?;
        if generated {
            tracing::warn!(
                token = %running.admin_token,
                "no --admin-token given: using the server's generated admin token (kept in the store)"
            );
        }
        let scheme = if running.tls { "https" } else { "http" };
        println!(
            "flotilla server: gRPC on {}, HTTP on {scheme}://{}",
            running.url(),
            running.http
        );
        process::stop_signal().await;
        tracing::info!("stopping");
        running.stop().await;
        Ok(())
    })
}

/// The embedded store in `dir` (created if missing).
pub async fn open_embedded(dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("flotilla.redb");
    let store = EmbeddedStore::open(&file, EmbeddedOptions::default())
        .await
        .with_context(|| format!("opening the embedded store {}", file.display()))?;
    tracing::info!(file = %file.display(), "using the embedded store");
    Ok(Arc::new(store))
}

/// Agents heartbeat a few times per lease, so one lost heartbeat never expires it.
pub fn heartbeat_for(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
}
