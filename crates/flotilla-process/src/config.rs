//! The process member's configuration (`--process-config`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_api::decode;
use flotilla_api::{FieldError, Invalid, NodeGroup};
use flotilla_member::nodes::check_groups;
use serde::Deserialize;

/// The programs a process member runs itself (for `spec.redis` sets), by the name
/// `binaries:` knows them.
pub const PROGRAMS: &[&str] = &[REDIS_SERVER, REDIS_SENTINEL];

/// `redis-server`.
pub const REDIS_SERVER: &str = "redis-server";
/// `redis-sentinel`.
pub const REDIS_SENTINEL: &str = "redis-sentinel";

/// How a process member looks: its (logical) nodes, where it keeps its instances'
/// data, which programs it runs, and which loopback addresses it hands out.
///
/// As a file (`--process-config`), YAML or JSON:
///
/// ```yaml
/// nodeGroups:                       # as in the Cluster capacity model
/// - {count: 3, free: {cpu: "4", memory: 8Gi, pods: 20}}
/// dataDir: /var/lib/flotilla/member-a   # volumes, state and logs
/// binaries: {redis-server: /usr/bin/redis-server}   # default: found on PATH
/// addressBlock: "127.5"             # default: derived from dataDir
/// requestLatencyMs: 0               # every request waits this long (an API server's)
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessConfig {
    /// Its nodes: `count` nodes each with `free` allocatable resources. Processes are
    /// placed on them as pods would be; the nodes are a budget, not machines.
    pub node_groups: Vec<NodeGroup>,
    /// Where volumes, instance state and logs live (absolute, or relative to the
    /// working directory).
    pub data_dir: PathBuf,
    /// Programs by name (`redis-server`, `redis-sentinel`); one not listed is looked
    /// up on `PATH` when it is first needed.
    pub binaries: BTreeMap<String, PathBuf>,
    /// The second octet of the member's loopback addresses (`127.<block>.x.y`); by
    /// default derived from the data directory, so members on one host differ.
    pub address_block: Option<u8>,
    /// Every request (observe, apply, status, role probe) first waits this long, as
    /// on a loaded API server: for measuring the commit phase.
    pub request_latency: std::time::Duration,
}

/// The file form of [`ProcessConfig`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfigFile {
    node_groups: Vec<NodeGroup>,
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    binaries: BTreeMap<String, String>,
    /// A string `"127.N"` or the octet `N`: a YAML number `127.10` would read as
    /// 127.1, so numbers with a fraction are refused.
    #[serde(default)]
    address_block: Option<serde_json::Value>,
    #[serde(default)]
    request_latency_ms: u64,
}

impl ProcessConfig {
    /// Reads a process member's configuration (YAML or JSON, one document); every
    /// problem names its field. Unknown fields are refused (a typo would silently
    /// change where data lives or which program runs), and so is a configured program
    /// that does not exist.
    pub fn from_text(text: &str) -> Result<ProcessConfig, Invalid> {
        let mut docs = decode::split(text)?;
        if docs.len() != 1 {
            return Err(Invalid::one(
                "",
                format!("expected one document, found {}", docs.len()),
            ));
        }
        let decoded = decode::decode::<ProcessConfigFile>(docs.remove(0))?;
        if let Some(w) = decoded.warnings.first() {
            return Err(Invalid::one(w.path.clone(), "unknown field"));
        }
        let file = decoded.object;
        let mut problems = check_groups(&file.node_groups, "nodeGroups");
        let data_dir = match file.data_dir.as_deref() {
            None | Some("") => {
                problems.push(FieldError::new(
                    "dataDir",
                    "required: where volumes, state and logs live",
                ));
                PathBuf::new()
            }
            Some(dir) => PathBuf::from(dir),
        };
        let mut binaries = BTreeMap::new();
        for (name, path) in file.binaries {
            let field = format!("binaries.{name}");
            if !PROGRAMS.contains(&name.as_str()) {
                problems.push(FieldError::new(
                    field,
                    format!("unknown program (known: {})", PROGRAMS.join(", ")),
                ));
            } else if let Err(why) = executable(Path::new(&path)) {
                problems.push(FieldError::new(field, format!("{path}: {why}")));
            } else {
                binaries.insert(name, PathBuf::from(path));
            }
        }
        let address_block = match &file.address_block {
            None => None,
            Some(v) => match block(v) {
                Ok(b) => Some(b),
                Err(why) => {
                    problems.push(FieldError::new("addressBlock", why));
                    None
                }
            },
        };
        if !problems.is_empty() {
            return Err(Invalid(problems));
        }
        Ok(ProcessConfig {
            node_groups: file.node_groups,
            data_dir,
            binaries,
            address_block,
            request_latency: std::time::Duration::from_millis(file.request_latency_ms),
        })
    }
}

/// `"127.N"` or `N`, with N from 1 to 255 (`127.0` holds 127.0.0.1, which everything
/// else on the host uses).
fn block(v: &serde_json::Value) -> Result<u8, String> {
    let why = || {
        format!(
            "{v} is not a loopback block: write \"127.N\" (quoted) or the octet N, N from 1 to 255"
        )
    };
    let n = match v {
        serde_json::Value::String(s) => s
            .strip_prefix("127.")
            .and_then(|n| n.parse::<u8>().ok())
            .ok_or_else(why)?,
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(n) => u8::try_from(n).map_err(|_| why())?,
            None => {
                return Err(format!(
                    "{v}: quote it (\"127.N\"): as a YAML number, 127.10 and 127.1 are the same"
                ));
            }
        },
        _ => return Err(why()),
    };
    if n == 0 {
        return Err(why());
    }
    Ok(n)
}

/// Whether `path` is a file this process could run.
fn executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Err(e.to_string()),
        Ok(m) if !m.is_file() => Err("not a file".into()),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err("not executable".into()),
        Ok(_) => Ok(()),
    }
}

/// Finds `program` in the directories of `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> String {
        ProcessConfig::from_text(text).unwrap_err().to_string()
    }

    #[test]
    fn config_files_read_with_field_errors() {
        let c = ProcessConfig::from_text(
            "nodeGroups: [{count: 2, free: {cpu: '4', pods: 10}}]\ndataDir: ./member-a\nbinaries: {redis-server: /bin/sh}\naddressBlock: '127.5'\n",
        )
        .unwrap();
        assert_eq!(c.node_groups[0].count, 2);
        assert_eq!(c.data_dir, PathBuf::from("./member-a"));
        assert_eq!(c.binaries["redis-server"], PathBuf::from("/bin/sh"));
        assert_eq!(c.address_block, Some(5));
        let c = ProcessConfig::from_text(
            r#"{"nodeGroups": [{"count": 1}], "dataDir": "/tmp/x", "addressBlock": 9}"#,
        )
        .unwrap();
        assert_eq!(c.address_block, Some(9));
        assert!(c.binaries.is_empty());

        assert_eq!(
            problems("nodeGroups: [{count: 1}]\n"),
            "dataDir: required: where volumes, state and logs live"
        );
        assert_eq!(
            problems("nodeGroups: [{count: 1}]\ndataDir: /x\ndatadir: /y\n"),
            "datadir: unknown field"
        );
        let text = problems(
            "nodeGroups: [{count: 1, free: {cpu: lots}}]\ndataDir: /x\nbinaries: {redis-server: /nonexistent/redis-server, redis-sever: /bin/sh}\naddressBlock: 127.10\n",
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("nodeGroups[0].free.cpu: "), "{text}");
        assert_eq!(
            lines[1],
            "binaries.redis-server: /nonexistent/redis-server: No such file or directory (os error 2)"
        );
        assert_eq!(
            lines[2],
            "binaries.redis-sever: unknown program (known: redis-server, redis-sentinel)"
        );
        assert!(
            lines[3].starts_with("addressBlock: 127.1: quote it"),
            "{text}"
        );
        assert!(
            problems("nodeGroups: [{count: 1}]\ndataDir: /x\naddressBlock: '10.0'\n")
                .starts_with("addressBlock: \"10.0\" is not a loopback block"),
        );
        assert_eq!(
            problems("nodeGroups: [{count: 0}]\ndataDir: /x\n"),
            "nodeGroups: needs at least one node"
        );
        assert!(
            problems("nodeGroups: []\ndataDir: /x\n---\nnodeGroups: []\n").contains("one document")
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let c =
            ProcessConfig::from_text(include_str!("../../../deploy/examples/process-member.yaml"))
                .unwrap();
        assert_eq!(c.node_groups.iter().map(|g| g.count).sum::<u32>(), 3);
        assert!(c.data_dir.is_relative());
    }
}
