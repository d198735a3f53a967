//! What a process member keeps on disk, under its data directory.
//!
//! ```text
//!   <dataDir>/
//!     volumes/<ns>/<claim>-<set>-<ordinal>/        a volume claim (the instance's data)
//!     volumes/<ns>/<claim>-<set>-<ordinal>.json    which claim, set and ordinal it is
//!     instances/<ns>/<set>-<ordinal>.json          the instance's Record (pid, address…)
//!     instances/<ns>/<set>-<ordinal>.address       its address, kept across a recreate
//!     instances/<ns>/<set>-<ordinal>/              its own files (redis.conf; data
//!                                                  without a claim, like an emptyDir)
//!     logs/<ns>/<set>-<ordinal>.log                stdout and stderr, appended
//! ```
//!
//! The files are the truth: an agent started again over the same directory reads them
//! back and adopts the processes they name. Every file is written whole (temporary
//! file, then rename), so a crash leaves the old version or the new one, never half.
//! A volume exists while its `.json` exists (a directory name alone cannot say where
//! the claim ends and the set begins); deleting one removes the data first, so a crash
//! in between leaves a volume that is deleted again, never stale data under a new one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::launch::Readiness;
use crate::{Error, Result};

/// One instance, as its state file records it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The set's namespace.
    pub namespace: String,
    /// The set.
    pub set: String,
    /// The instance's ordinal.
    pub ordinal: u32,
    /// Its process; `None` while it is being started (written just before the start,
    /// so that a process started just before a crash can still be found).
    pub pid: Option<u32>,
    /// When that process started (`/proc/<pid>/stat` field 22): a pid reused by
    /// another process has another start time.
    pub start_time: Option<u64>,
    /// Its loopback address.
    pub address: String,
    /// The port of its endpoint (the container port named `redis`, else the first).
    pub port: Option<u16>,
    /// The template revision it runs.
    pub revision: String,
    /// The template shape it runs.
    pub shape: String,
    /// The (logical) node it is placed on.
    pub node: Option<String>,
    /// What it reserves on that node, as quantities (`cpu: "1"`).
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    /// Its role label.
    pub role: Option<String>,
    /// The probe-result version the role label was set from.
    pub role_version: u64,
    /// When it counts as ready.
    pub readiness: Readiness,
    /// The program and its arguments, as started.
    pub command: Vec<String>,
}

impl Record {
    /// `<set>-<ordinal>`.
    pub fn instance(&self) -> String {
        format!("{}-{}", self.set, self.ordinal)
    }

    /// `host:port` of its endpoint, when it has a port.
    pub fn endpoint(&self) -> Option<String> {
        self.port.map(|p| format!("{}:{p}", self.address))
    }
}

/// Which claim, set and ordinal a volume directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VolumeMeta {
    pub claim: String,
    pub set: String,
    pub ordinal: u32,
}

/// The paths of a process member's files (see the module documentation).
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Layout {
        Layout {
            root: data_dir.to_path_buf(),
        }
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `volumes/<ns>/<claim>-<set>-<ordinal>/`.
    pub fn volume(&self, ns: &str, claim: &str, set: &str, ordinal: u32) -> PathBuf {
        self.root
            .join("volumes")
            .join(ns)
            .join(flotilla_instanceset::volume_name(claim, set, ordinal))
    }

    pub(crate) fn volume_meta(&self, ns: &str, claim: &str, set: &str, ordinal: u32) -> PathBuf {
        with_suffix(self.volume(ns, claim, set, ordinal), ".json")
    }

    fn volumes_of(&self, ns: &str) -> PathBuf {
        self.root.join("volumes").join(ns)
    }

    /// `instances/<ns>/<set>-<ordinal>.json`.
    pub fn state(&self, ns: &str, set: &str, ordinal: u32) -> PathBuf {
        with_suffix(self.instance_dir(ns, set, ordinal), ".json")
    }

    /// `instances/<ns>/<set>-<ordinal>.address`.
    pub(crate) fn address(&self, ns: &str, set: &str, ordinal: u32) -> PathBuf {
        with_suffix(self.instance_dir(ns, set, ordinal), ".address")
    }

    /// `instances/<ns>/<set>-<ordinal>/`.
    pub fn instance_dir(&self, ns: &str, set: &str, ordinal: u32) -> PathBuf {
        self.root
            .join("instances")
            .join(ns)
            .join(format!("{set}-{ordinal}"))
    }

    /// `logs/<ns>/<set>-<ordinal>.log`.
    pub fn log(&self, ns: &str, set: &str, ordinal: u32) -> PathBuf {
        self.root
            .join("logs")
            .join(ns)
            .join(format!("{set}-{ordinal}.log"))
    }

    /// Every instance's record, in path order. A state file that does not decode is an
    /// error: guessing would risk two processes for one instance.
    pub fn records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for path in files_with(&self.root.join("instances"), "json")? {
            out.push(read_json(&path)?);
        }
        Ok(out)
    }

    /// Every address recorded for an instance (`.address` files), by path.
    pub(crate) fn addresses(&self) -> Result<BTreeMap<PathBuf, String>> {
        let mut out = BTreeMap::new();
        for path in files_with(&self.root.join("instances"), "address")? {
            let text = std::fs::read_to_string(&path).map_err(Error::io("reading", &path))?;
            out.insert(path, text.trim().to_string());
        }
        Ok(out)
    }

    /// The volumes of set `set` in `ns`.
    pub(crate) fn volumes(&self, ns: &str, set: &str) -> Result<Vec<VolumeMeta>> {
        let dir = self.volumes_of(ns);
        let mut out = Vec::new();
        for path in json_files(&dir)? {
            let meta: VolumeMeta = read_json(&path)?;
            if meta.set == set {
                out.push(meta);
            }
        }
        Ok(out)
    }
}

/// `path` with `suffix` appended to its file name (not `with_extension`: names may hold
/// dots).
fn with_suffix(path: PathBuf, suffix: &str) -> PathBuf {
    let mut name = path.into_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The `*.<ext>` files one level below `dir` (`dir/<ns>/<file>`).
fn files_with(dir: &Path, ext: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for ns in list(dir)? {
        if ns.is_dir() {
            out.extend(
                list(&ns)?
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == ext) && p.is_file()),
            );
        }
    }
    Ok(out)
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(list(dir)?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
        .collect())
}

/// The entries of `dir`, sorted; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut out: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    out.sort();
    Ok(out)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(Error::io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` as JSON to `path`, atomically.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|source| Error::State {
        path: path.to_path_buf(),
        source,
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` whole: into a temporary file beside it, flushed to disk,
/// then renamed over it (creating the parent directories).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io("writing", &tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("renaming into", path)(e)
    })
}

/// Removes a file; a missing one is fine. Returns whether it existed.
pub(crate) fn remove_file(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("removing", path)(e)),
    }
}

/// Removes a directory and everything in it; a missing one is fine. Returns whether
/// it existed.
pub(crate) fn remove_dir(path: &Path) -> Result<bool> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("removing", path)(e)),
    }
}

/// Creates a directory and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(Error::io("creating", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_writes_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert!(layout.records().unwrap().is_empty(), "nothing yet");
        let record = Record {
            namespace: "cache".into(),
            set: "redis".into(),
            ordinal: 2,
            pid: Some(42),
            address: "127.5.0.3".into(),
            port: Some(6379),
            command: vec!["redis-server".into(), "/x/redis.conf".into()],
            ..Record::default()
        };
        let path = layout.state("cache", "redis", 2);
        assert!(path.ends_with("instances/cache/redis-2.json"));
        write_json(&path, &record).unwrap();
        write_json(&path, &record).unwrap();
        assert_eq!(layout.records().unwrap(), std::slice::from_ref(&record));
        assert_eq!(record.endpoint().as_deref(), Some("127.5.0.3:6379"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left");
        assert!(
            layout
                .volume("cache", "data", "redis", 2)
                .ends_with("volumes/cache/data-redis-2")
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(layout.records(), Err(Error::State { .. })));
    }
}
