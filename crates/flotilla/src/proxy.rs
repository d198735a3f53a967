//! `flotilla proxy`: the flags read and checked (usage errors name the flag), the
//! proxy started, and the federation's watch of the set turned into primary
//! candidates and sentinel addresses for it, until Ctrl-C or SIGTERM (then it drains).
//!
//! ```text
//! Watch(federatedinstancesets, namespace) ─▶ NAME: status.primary.endpoint ─▶ offer
//!                                        └▶ NAME-sentinel: its endpoints ─▶ sentinels
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proxy::{Audit, BackendAuth, Config, Offers, Policy, Source};
use serde_json::Value;
use tokio_stream::StreamExt as _;

use crate::cli::ProxyArgs;
use crate::client::{self, Kind};
use crate::input::CliError;
use crate::process::{self, failed};

pub fn run(args: &ProxyArgs) -> Result<(), CliError> {
    let (namespace, name) = parse_set(&args.set)?;
    let password = read_secret(args.password_file.as_deref(), "--password-file")?;
    let admin = read_secret(args.admin_password_file.as_deref(), "--admin-password-file")?;
    if password.is_some() && password == admin {
        return Err(CliError::Usage(
            "--admin-password-file: must differ from --password-file".into(),
        ));
    }
    let mut policy = Policy::new(password, admin);
    if let Some(deny) = &args.deny {
        policy = policy.with_deny(deny);
    }
    let audit = match &args.audit_log {
        Some(path) => Audit::open(path)
            .map_err(|e| CliError::Usage(format!("--audit-log {}: {e}", path.display())))?,
        None => Audit::none(),
    };
    let mut config = Config::new(format!("{namespace}/{name}"));
    if args.reads == "replicas" {
        config.reads = flotilla_proxy::Reads::Replicas;
    }
    config.policy = policy;
    config.audit = audit;
    config.backend_auth =
        read_secret(args.redis_password_file.as_deref(), "--redis-password-file")?.map(
            |password| BackendAuth {
                user: args.redis_user.clone(),
                password,
            },
        );
    process::logging(args.log.json());
    process::runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("--listen {}", args.listen))
            .map_err(failed)?;
        let http = match args.http {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--http {addr}"))
                    .map_err(failed)?,
            ),
            None => None,
        };
        let conn = client::connect(&args.client).await?;
        let running = flotilla_proxy::start(listener, config)
            .context("starting the proxy")
            .map_err(failed)?;
        if let Some(listener) = http {
            tokio::spawn(flotilla_proxy::metrics::serve(
                listener,
                running.metrics.clone(),
            ));
        }
        let watch = tokio::spawn(follow_set(
            conn,
            namespace.clone(),
            name.clone(),
            running.offers.clone(),
        ));
        println!(
            "flotilla proxy: {namespace}/{name} on {}{}",
            running.addr,
            args.http
                .map(|h| format!(", HTTP on http://{h}"))
                .unwrap_or_default()
        );
        process::stop_signal().await;
        tracing::info!("stopping: draining client connections");
        watch.abort();
        running.stop().await;
        Ok(())
    })
}

/// `NS/NAME`, both DNS labels.
fn parse_set(text: &str) -> Result<(String, String), CliError> {
    let bad = |why: &str| CliError::Usage(format!("--set {text:?}: {why}"));
    let (ns, name) = text
        .split_once('/')
        .ok_or_else(|| bad("expected NAMESPACE/NAME, e.g. default/cache"))?;
    for part in [ns, name] {
        let label = !part.is_empty()
            && part.len() <= 63
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !label {
            return Err(bad(&format!(
                "{part:?} is not a DNS label (lower-case letters, digits, '-')"
            )));
        }
    }
    Ok((ns.to_string(), name.to_string()))
}

/// A password file's content without its trailing newline; never empty.
fn read_secret(path: Option<&Path>, flag: &str) -> Result<Option<String>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("{flag} {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.is_empty() {
        return Err(CliError::Usage(format!(
            "{flag} {}: the file is empty",
            path.display()
        )));
    }
    Ok(Some(secret))
}

/// Follows the namespace's sets, resuming after a failure: `name`'s primary endpoint
/// is offered, and `name-sentinel`'s endpoints are the sentinels to follow.
pub(crate) async fn follow_set(
    mut conn: client::Conn,
    namespace: String,
    name: String,
    offers: Offers,
) {
    let sentinel_set = format!("{name}-sentinel");
    loop {
        match conn
            .watch(Kind::FederatedInstanceSets, "", &namespace)
            .await
        {
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    let event = match event {
                        Ok(e) => e,
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "the watch of the set ended");
                            break;
                        }
                    };
                    let Some(object) = event.object else { continue };
                    let Ok(set) = serde_json::from_str::<Value>(&object.json) else {
                        continue;
                    };
                    let deleted =
                        event.r#type == flotilla_proto::v1::watch_event::Type::Deleted as i32;
                    match set["metadata"]["name"].as_str() {
                        Some(n) if n == name && !deleted => {
                            if let Some(e) = set["status"]["primary"]["endpoint"].as_str() {
                                offers.offer(Source::Federation, e);
                            }
                        }
                        Some(n) if n == sentinel_set => {
                            let endpoints = if deleted { Vec::new() } else { endpoints(&set) };
                            offers.sentinels(name.clone(), endpoints);
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch the set; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every instance endpoint in a set's status.
fn endpoints(set: &Value) -> Vec<String> {
    let mut out: Vec<String> = set["status"]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["endpoint"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_namespace_slash_name() {
        assert_eq!(
            parse_set("default/cache").unwrap(),
            ("default".into(), "cache".into())
        );
        for bad in [
            "cache",
            "/cache",
            "default/",
            "a/b/c",
            "Default/cache",
            "ns/-x",
        ] {
            let e = parse_set(bad).unwrap_err();
            assert!(e.to_string().contains("--set"), "{bad}: {e}");
            assert_eq!(e.code(), 2);
        }
    }

    #[test]
    fn password_files_are_read_without_their_newline_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let got = read_secret(Some(&file), "--password-file").unwrap();
        assert_eq!(got.as_deref(), Some("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        let e = read_secret(Some(&file), "--password-file").unwrap_err();
        assert!(
            e.to_string().contains("--password-file") && e.to_string().contains("empty"),
            "{e}"
        );
        let missing = dir.path().join("missing");
        let e = read_secret(Some(&missing), "--admin-password-file").unwrap_err();
        assert!(e.to_string().contains("--admin-password-file"), "{e}");
        assert_eq!(e.code(), 2);
        assert_eq!(read_secret(None, "--password-file").unwrap(), None);
    }
}
