//! What an instance runs: the one place that turns a set and an instance into a
//! program, its arguments, its environment and the files it needs.
//!
//! ```text
//!   spec.redis set ─▶ redis-server <dir>/redis.conf
//!                       redis.conf = flotilla_redis::server_config(bind own address,
//!                       dir = first claim's volume (else <dir>/data), startup())
//!   any other     ─▶ containers[0].command + args, $(VAR) expanded over POD_IP,
//!                     HOSTNAME and the container's env (which the process also gets)
//! ```
//!
//! The image is ignored: the program runs from this host. A companion set (Redis
//! sentinels) is decided here too, through the same [`launch`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use flotilla_api::InstanceSet;
use flotilla_api::redis::port_of;
use flotilla_redis::Bind;
use k8s_openapi::api::core::v1::Container;

use crate::config::{REDIS_SENTINEL, REDIS_SERVER, on_path};
use crate::{Error, Result};

/// Everything needed to start one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// The program (a path, or a name looked up on `PATH`).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Files written (whole) before it starts.
    pub files: Vec<(PathBuf, String)>,
    /// When it counts as ready.
    pub readiness: Readiness,
}

/// When a running instance counts as ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Readiness {
    /// Redis answers `PING` with `PONG` (not `-LOADING`).
    Ping,
    /// Its endpoint accepts a TCP connection.
    Connect,
    /// It has no port: running is ready.
    #[default]
    Running,
}

/// Where one instance runs and what it has.
#[derive(Clone, Copy, Debug)]
pub struct Instance<'a> {
    /// Its set.
    pub set: &'a InstanceSet,
    /// Its ordinal.
    pub ordinal: u32,
    /// Its own loopback address.
    pub address: Ipv4Addr,
    /// Its own directory (its files; its data when the set has no claims).
    pub dir: &'a Path,
    /// Its volumes' directories, in the order of the set's claim templates.
    pub volumes: &'a [PathBuf],
}

/// The programs configured in `binaries:`, else found on `PATH`.
#[derive(Clone, Debug, Default)]
pub struct Binaries(pub BTreeMap<String, PathBuf>);

impl Binaries {
    /// The path of `program`.
    pub fn find(&self, program: &str) -> Result<PathBuf> {
        if let Some(path) = self.0.get(program) {
            return Ok(path.clone());
        }
        on_path(program).ok_or_else(|| Error::NoBinary(program.to_string()))
    }
}

/// The port of a set's endpoint: for a `spec.redis` set its Redis port; else the
/// container port named `redis`, else the first container port, else none.
pub fn port(set: &InstanceSet) -> Option<u16> {
    if set.spec.redis.is_some() {
        return Some(port_of(&set.spec.template));
    }
    flotilla_api::redis::endpoint_port(&set.spec.template)
}

/// What instance `i` runs (see the module documentation).
pub fn launch(i: &Instance<'_>, binaries: &Binaries) -> Result<Launch> {
    if i.set.spec.sentinel_for.is_some() {
        return sentinel(i, binaries);
    }
    if i.set.spec.redis.is_some() {
        redis_server(i, binaries)
    } else {
        template(i)
    }
}

/// A `spec.redis` instance: `redis-server` with a rendered `redis.conf`.
fn redis_server(i: &Instance<'_>, binaries: &Binaries) -> Result<Launch> {
    let set = i.set;
    let port = port_of(&set.spec.template);
    let own = format!("{}:{port}", i.address);
    let data = i
        .volumes
        .first()
        .cloned()
        .unwrap_or_else(|| i.dir.join("data"));
    let config = &set.spec.redis.as_ref().map(|r| &r.config);
    let named = |param: &str, default: &str| {
        config
            .and_then(|c| c.get(param))
            .map_or(default.to_string(), |v| v.trim_matches('"').to_string())
    };
    let has_data = data.join(named("dbfilename", "dump.rdb")).exists()
        || data.join(named("appenddirname", "appendonlydir")).exists();
    let start = flotilla_redis::startup(set, i.ordinal, &own, has_data);
    let address = i.address.to_string();
    let lines = flotilla_redis::server_config(
        set,
        port,
        Bind::Own(&address),
        &data.to_string_lossy(),
        &start,
    );
    let conf = i.dir.join("redis.conf");
    Ok(Launch {
        program: binaries.find(REDIS_SERVER)?,
        args: vec![conf.to_string_lossy().into_owned()],
        env: Vec::new(),
        files: vec![(conf, flotilla_redis::config_file(&lines))],
        readiness: Readiness::Ping,
    })
}

/// A companion sentinel: `redis-sentinel` with a rendered `sentinel.conf` in its own
/// directory (Sentinel rewrites it as it learns; the member's engine registers the
/// shard once it runs).
fn sentinel(i: &Instance<'_>, binaries: &Binaries) -> Result<Launch> {
    let port = port(i.set).unwrap_or(flotilla_api::redis::SENTINEL_PORT);
    let address = i.address.to_string();
    let lines = flotilla_redis::sentinel::sentinel_config(&address, port, &i.dir.to_string_lossy());
    let conf = i.dir.join("sentinel.conf");
    Ok(Launch {
        program: binaries.find(REDIS_SENTINEL)?,
        args: vec![conf.to_string_lossy().into_owned()],
        env: Vec::new(),
        files: vec![(conf, flotilla_redis::config_file(&lines))],
        readiness: Readiness::Ping,
    })
}

/// Any other template: its first container's command and arguments.
fn template(i: &Instance<'_>) -> Result<Launch> {
    let field = "spec.template.spec.containers[0]";
    let container: &Container = i
        .set
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .ok_or_else(|| Error::Template {
            field: "spec.template.spec.containers".into(),
            reason: "a process member runs the first container's command: there is none".into(),
        })?;
    let command = container.command.as_deref().unwrap_or_default();
    if command.is_empty() {
        return Err(Error::Template {
            field: format!("{field}.command"),
            reason: "required on a process member (it runs the command, not the image)".into(),
        });
    }
    let hostname = format!("{}-{}", i.set.name(), i.ordinal);
    let mut vars: Vec<(String, String)> = vec![
        ("POD_IP".into(), i.address.to_string()),
        ("HOSTNAME".into(), hostname.clone()),
    ];
    for e in container.env.iter().flatten() {
        // As Kubernetes does: a value may refer to the variables defined before it.
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &vars),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("status.podIP") => i.address.to_string(),
                Some("metadata.name") => hostname.clone(),
                Some("metadata.namespace") => i.set.namespace().unwrap_or("default").to_string(),
                // Secrets, config maps and resource fields do not exist here.
                _ => continue,
            },
            (None, None) => String::new(),
        };
        vars.retain(|(k, _)| *k != e.name);
        vars.push((e.name.clone(), value));
    }
    let mut words = command
        .iter()
        .chain(container.args.iter().flatten())
        .map(|w| expand(w, &vars));
    let program = PathBuf::from(words.next().unwrap_or_default());
    let readiness = if port(i.set).is_some() {
        Readiness::Connect
    } else {
        Readiness::Running
    };
    Ok(Launch {
        program,
        args: words.collect(),
        env: vars,
        files: Vec::new(),
        readiness,
    })
}

/// Kubernetes' `$(VAR)` expansion: `$(NAME)` becomes the variable's value, or stays as
/// written when there is no such variable; `$$` is a literal `$`; any other `$` stays.
pub fn expand(text: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(reference) = after.strip_prefix('(')
            && let Some(end) = reference.find(')')
        {
            let name = &reference[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &reference[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use flotilla_api::redis::{PRIMARY_ANNOTATION, RedisSpec};
    use flotilla_api::{InstanceSetSpec, Object};
    use k8s_openapi::api::core::v1::{
        ContainerPort, EnvVar, EnvVarSource, ObjectFieldSelector, PodSpec, PodTemplateSpec,
    };

    use super::*;

    fn vars() -> Vec<(String, String)> {
        vec![
            ("POD_IP".into(), "127.5.0.1".into()),
            ("A".into(), "x".into()),
        ]
    }

    #[test]
    fn expansion_follows_kubernetes() {
        for (text, want) in [
            ("--bind=$(POD_IP)", "--bind=127.5.0.1"),
            ("$(A)$(A)", "xx"),
            ("$(NOPE)", "$(NOPE)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$x"),
            ("cost $5", "cost $5"),
            ("$(A", "$(A"),
            ("end$", "end$"),
            ("", ""),
        ] {
            assert_eq!(expand(text, &vars()), want, "{text:?}");
        }
    }

    fn set(container: Container, redis: bool) -> InstanceSet {
        Object::new(
            "web",
            InstanceSetSpec {
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        containers: vec![container],
                        ..PodSpec::default()
                    }),
                },
                redis: redis.then(RedisSpec::default),
                ..InstanceSetSpec::default()
            },
        )
    }

    #[test]
    fn a_template_runs_its_command_with_the_instance_variables() {
        let c = Container {
            name: "web".into(),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec![
                "exec serve --listen $(POD_IP):$(PORT) --me $(ME)".into(),
            ]),
            env: Some(vec![
                EnvVar {
                    name: "PORT".into(),
                    value: Some("8080".into()),
                    value_from: None,
                },
                EnvVar {
                    name: "ME".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..EnvVarSource::default()
                    }),
                },
            ]),
            ports: Some(vec![ContainerPort {
                container_port: 8080,
                ..ContainerPort::default()
            }]),
            ..Container::default()
        };
        let s = set(c, false);
        let dir = PathBuf::from("/d/instances/default/web-3");
        let i = Instance {
            set: &s,
            ordinal: 3,
            address: Ipv4Addr::new(127, 5, 0, 4),
            dir: &dir,
            volumes: &[],
        };
        let l = launch(&i, &Binaries::default()).unwrap();
        assert_eq!(l.program, PathBuf::from("sh"));
        assert_eq!(
            l.args,
            ["-c", "exec serve --listen 127.5.0.4:8080 --me web-3"]
        );
        assert!(l.env.contains(&("POD_IP".into(), "127.5.0.4".into())));
        assert!(l.env.contains(&("HOSTNAME".into(), "web-3".into())));
        assert_eq!(l.readiness, Readiness::Connect);
        assert_eq!(port(&s), Some(8080));

        let s = set(
            Container {
                name: "web".into(),
                image: Some("nginx".into()),
                ..Container::default()
            },
            false,
        );
        let i = Instance { set: &s, ..i };
        assert_eq!(
            launch(&i, &Binaries::default()).unwrap_err().to_string(),
            "spec.template.spec.containers[0].command: required on a process member (it runs the command, not the image)"
        );
    }

    #[test]
    fn a_redis_instance_gets_a_rendered_config_on_its_own_address() {
        let mut s = set(
            Container {
                name: "redis".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("redis".into()),
                    container_port: 7000,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            },
            true,
        );
        s.metadata.annotations = Some(BTreeMap::from([(
            PRIMARY_ANNOTATION.to_string(),
            "0=127.5.0.1:7000".to_string(),
        )]));
        let dir = PathBuf::from("/d/instances/default/web-1");
        let volumes = [PathBuf::from("/d/volumes/default/data-web-1")];
        let binaries = Binaries(BTreeMap::from([(
            REDIS_SERVER.to_string(),
            PathBuf::from("/opt/redis-server"),
        )]));
        let l = launch(
            &Instance {
                set: &s,
                ordinal: 1,
                address: Ipv4Addr::new(127, 5, 0, 2),
                dir: &dir,
                volumes: &volumes,
            },
            &binaries,
        )
        .unwrap();
        assert_eq!(l.program, PathBuf::from("/opt/redis-server"));
        assert_eq!(l.args, ["/d/instances/default/web-1/redis.conf"]);
        assert_eq!(l.readiness, Readiness::Ping);
        let (path, conf) = &l.files[0];
        assert_eq!(path, &dir.join("redis.conf"));
        for want in [
            "port 7000\n",
            "bind 127.5.0.2\n",
            "dir \"/d/volumes/default/data-web-1\"\n",
            "replicaof 127.5.0.1 7000\n",
        ] {
            assert!(conf.contains(want), "{want:?} in\n{conf}");
        }
    }
}
