//! How the client shows what the server returns: kubectl-like tables, the `describe`
//! view, `apply --wait` progress lines, and the small helpers behind them (ordinal
//! ranges, ages, RFC 3339 times).
//!
//! Objects arrive as JSON strings. They are read leniently into a [`View`]: metadata
//! and status are decoded with the flotilla-api status types, the spec stays a JSON
//! value, and a part that does not decode is treated as absent. A table never fails
//! because the server sent something this client does not know; `-o json` prints the
//! object exactly as stored.
//!
//! Everything here is pure (the current time is a parameter), so it is tested with
//! plain `#[test]`s on sample JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use flotilla_api::ordinals::runs;
use flotilla_api::status::ClusterPlacementStatus;
use flotilla_api::{ClusterStatus, Condition, FederatedInstanceSetStatus, InstanceSetStatus};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The label that names the member cluster of an InstanceSet slice.
pub const CLUSTER_LABEL: &str = "flotilla.io/cluster";

/// The metadata fields the client shows.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (absent for clusters).
    pub namespace: Option<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.generation`: bumped by every spec change.
    pub generation: Option<i64>,
    /// `metadata.resourceVersion`: the store revision of the last write.
    pub resource_version: Option<String>,
    /// `metadata.creationTimestamp` (RFC 3339).
    pub creation_timestamp: Option<String>,
}

/// One object as the client reads it: typed metadata and status, the spec as JSON
/// (`-o json|yaml` print the object as the server sent it, not this).
#[derive(Debug, Clone)]
pub struct View<T> {
    /// Its metadata (defaults when it does not decode).
    pub meta: Meta,
    /// Its spec, as JSON (`null` when absent).
    pub spec: Value,
    /// Its status, when present and readable.
    pub status: Option<T>,
}

impl<T: DeserializeOwned> View<T> {
    /// Reads an object the server sent.
    pub fn of(raw: &Value) -> View<T> {
        let part = |key: &str| raw.get(key).cloned().unwrap_or(Value::Null);
        View {
            meta: serde_json::from_value(part("metadata")).unwrap_or_default(),
            spec: part("spec"),
            status: raw
                .get("status")
                .filter(|s| !s.is_null())
                .and_then(|s| serde_json::from_value(s.clone()).ok()),
        }
    }
}

/// A FederatedInstanceSet as the client reads it.
pub type SetView = View<FederatedInstanceSetStatus>;
/// A Cluster as the client reads it.
pub type ClusterView = View<ClusterStatus>;
/// An InstanceSet slice as the client reads it.
pub type SliceView = View<InstanceSetStatus>;

impl SetView {
    /// `spec.replicas` (0 when absent).
    pub fn replicas(&self) -> u64 {
        self.spec["replicas"].as_u64().unwrap_or(0)
    }

    /// The status condition of this type, if reported.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()
            .and_then(|s| find(&s.conditions, type_))
    }

    /// Whether `apply --wait` is done with this set: the server has seen the current
    /// generation, every desired instance is ready and nothing is still rolling out.
    pub fn is_ready(&self) -> bool {
        let Some(status) = &self.status else {
            return false;
        };
        let generation = self.meta.generation.unwrap_or(0);
        status.observed_generation.unwrap_or(0) >= generation
            && u64::from(status.ready_replicas) == self.replicas()
            && !self.condition("Progressing").is_some_and(is_true)
    }

    /// One summary word: Pending, Degraded, Unschedulable, Ready or Progressing.
    pub fn phase(&self) -> &'static str {
        let Some(status) = &self.status else {
            return "Pending";
        };
        if self.condition("Degraded").is_some_and(is_true) {
            "Degraded"
        } else if status.unschedulable > 0
            || self
                .condition("Scheduled")
                .is_some_and(|c| c.status == "False")
        {
            "Unschedulable"
        } else if self.is_ready() {
            "Ready"
        } else {
            "Progressing"
        }
    }

    /// A progress line for `apply --wait`:
    /// `redis-shard: 4/6 ready (a: 2/3, b: 2/3); 2 unschedulable: <why>`.
    pub fn progress(&self) -> String {
        let name = &self.meta.name;
        let Some(status) = &self.status else {
            return format!("{name}: 0/{} ready (not scheduled yet)", self.replicas());
        };
        let mut line = format!(
            "{name}: {}/{} ready",
            status.ready_replicas,
            self.replicas()
        );
        let per = |c: &&ClusterPlacementStatus| {
            format!("{}: {}/{}", c.cluster, c.ready_replicas, c.ordinals.len())
        };
        if status.clusters.len() > CLUSTERS_SHOWN {
            // Many clusters: the count, and the first of those not all ready.
            let behind: Vec<&ClusterPlacementStatus> = status
                .clusters
                .iter()
                .filter(|c| (c.ready_replicas as usize) < c.ordinals.len())
                .collect();
            let all = status.clusters.len();
            let _ = write!(line, " ({}/{all} clusters ready", all - behind.len());
            if !behind.is_empty() {
                let first: Vec<String> = behind.iter().take(CLUSTERS_SHOWN).map(per).collect();
                let more = behind.len().saturating_sub(CLUSTERS_SHOWN);
                let _ = write!(line, "; {}", first.join(", "));
                if more > 0 {
                    let _ = write!(line, ", {more} more");
                }
            }
            line.push(')');
        } else if !status.clusters.is_empty() {
            let per: Vec<String> = status.clusters.iter().map(|c| per(&c)).collect();
            let _ = write!(line, " ({})", per.join(", "));
        }
        if status.observed_generation.unwrap_or(0) < self.meta.generation.unwrap_or(0) {
            let _ = write!(
                line,
                "; generation {} not yet observed",
                self.meta.generation.unwrap_or(0)
            );
        }
        let scheduled = self.condition("Scheduled").filter(|c| c.status == "False");
        if status.unschedulable > 0 || scheduled.is_some() {
            let _ = write!(line, "; {} unschedulable", status.unschedulable);
            if let Some(c) = self
                .condition("Scheduled")
                .filter(|c| !c.message.is_empty())
            {
                let _ = write!(line, ": {}", c.message);
            }
        }
        if let Some(c) = self.condition("Degraded").filter(|c| is_true(c)) {
            let _ = write!(line, "; degraded: {}", reason_or_message(c));
        }
        // All ready on the old template is not done: say what the rollout waits for.
        if u64::from(status.ready_replicas) >= self.replicas()
            && let Some(c) = self
                .condition("Progressing")
                .filter(|c| is_true(c) && !c.message.is_empty())
        {
            let _ = write!(line, "; {}", c.message);
        }
        line
    }

    /// Why the set is not ready, for the `apply --wait` timeout: its progress, then
    /// its Degraded, Scheduled and Progressing messages.
    pub fn not_ready_report(&self) -> String {
        let mut out = self.progress();
        for type_ in ["Degraded", "Scheduled", "Progressing"] {
            if let Some(c) = self.condition(type_).filter(|c| !c.message.is_empty()) {
                let _ = write!(out, "\n    {type_}={}: {}", c.status, c.message);
            }
        }
        out
    }
}

fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn is_true(c: &Condition) -> bool {
    c.status == "True"
}

fn reason_or_message(c: &Condition) -> &str {
    if c.message.is_empty() {
        &c.reason
    } else {
        &c.message
    }
}

/// An aligned table: columns separated by three spaces, as kubectl prints them.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles and no rows.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(ToString::to_string).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (one cell per column).
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The width of every column: its widest cell or title.
    pub fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        widths
    }

    /// The title line and every row, aligned.
    pub fn render(&self) -> String {
        let widths = self.widths();
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            out.push_str(&line(row, &widths));
            out.push('\n');
        }
        out
    }

    /// The rows only (no title), aligned to at least `widths`: how `--watch` prints
    /// later changes under the first table.
    pub fn render_rows(&self, widths: &[usize]) -> String {
        let mut out = String::new();
        for row in &self.rows {
            out.push_str(&line(row, widths));
            out.push('\n');
        }
        out
    }
}

/// One table line: every cell but the last padded to its column's width.
fn line(row: &[String], widths: &[usize]) -> String {
    let mut out = String::new();
    for (i, cell) in row.iter().enumerate() {
        out.push_str(cell);
        if i + 1 < row.len() {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            out.extend(std::iter::repeat_n(' ', pad));
        }
    }
    out.trim_end().to_string()
}

/// `0-3,7,9-10`: ordinals as compact ranges (`-` for none).
pub fn compact_ordinals(ordinals: &[u32]) -> String {
    let mut sorted = ordinals.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    ranges_text(&runs(&sorted))
}

fn ranges_text(ranges: &[(u32, u32)]) -> String {
    if ranges.is_empty() {
        return "-".into();
    }
    ranges
        .iter()
        .map(|&(s, e)| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}-{e}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A slice's `spec.ordinals` as compact ranges, and how many there are.
fn slice_ordinals(spec: &Value) -> (String, u64) {
    let ordinals: flotilla_api::Ordinals =
        serde_json::from_value(spec["ordinals"].clone()).unwrap_or_default();
    let ranges = ordinals.sorted_ranges();
    let count = ranges.iter().map(|&(s, e)| u64::from(e - s) + 1).sum();
    (ranges_text(&ranges), count)
}

/// Seconds since the Unix epoch of an RFC 3339 time (`2024-05-01T12:00:00.5+02:00`).
pub fn parse_time(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || time.len() < 8 {
        return None;
    }
    let (hms, zone) = time.split_at(8);
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let s: i64 = t.next()?.parse().ok()?;
    let zone = zone.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match zone {
        "Z" | "z" => 0,
        _ => {
            let sign = match zone.chars().next()? {
                '+' => 1,
                '-' => -1,
                _ => return None,
            };
            let (oh, om) = zone[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from civil (H. Hinnant): proleptic Gregorian, March-based years.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + s - offset)
}

/// `45s`, `7m`, `5h`, `3d`: a duration as kubectl shows ages.
pub fn short_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// How long ago an RFC 3339 time was (`-` when absent or unreadable).
fn ago(time: Option<&str>, now: i64) -> String {
    time.and_then(parse_time)
        .map_or_else(|| "-".into(), |t| short_duration(now - t))
}

/// The table of FederatedInstanceSets.
pub fn set_table(items: &[Value], show_namespace: bool, wide: bool, now: i64) -> Table {
    let mut header = vec![
        "NAME",
        "REPLICAS",
        "READY",
        "UNSCHEDULABLE",
        "CLUSTERS",
        "STATUS",
        "AGE",
    ];
    if show_namespace {
        header.insert(0, "NAMESPACE");
    }
    let mut table = Table::new(&header);
    for item in items {
        let v = SetView::of(item);
        let status = v.status.clone().unwrap_or_default();
        let mut row = vec![
            v.meta.name.clone(),
            v.replicas().to_string(),
            format!("{}/{}", status.ready_replicas, v.replicas()),
            status.unschedulable.to_string(),
            placement_summary(&status.clusters, wide),
            v.phase().to_string(),
            ago(v.meta.creation_timestamp.as_deref(), now),
        ];
        if show_namespace {
            row.insert(0, v.meta.namespace.clone().unwrap_or_default());
        }
        table.push(row);
    }
    table
}

/// The most clusters the CLUSTERS column names (`-o wide`: all of them).
const CLUSTERS_SHOWN: usize = 4;

/// `a:3,b:3`: how many instances each cluster holds (`-` for none); past
/// [`CLUSTERS_SHOWN`] clusters (unless `wide`), the first ones and how many more.
fn placement_summary(clusters: &[ClusterPlacementStatus], wide: bool) -> String {
    let parts: Vec<String> = clusters
        .iter()
        .filter(|c| !c.ordinals.is_empty())
        .map(|c| format!("{}:{}", c.cluster, c.ordinals.len()))
        .collect();
    match parts.len() {
        0 => "-".into(),
        n if wide || n <= CLUSTERS_SHOWN => parts.join(","),
        n => format!("{},… ({n} clusters)", parts[..CLUSTERS_SHOWN - 1].join(",")),
    }
}

/// How many instances of all `sets` each cluster holds.
pub fn instances_per_cluster(sets: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for set in sets {
        if let Some(status) = SetView::of(set).status {
            for c in status.clusters {
                *out.entry(c.cluster).or_default() += c.ordinals.len();
            }
        }
    }
    out
}

/// `True`, `Unknown` or `False`: the cluster's Ready condition, else its `ready` flag.
fn cluster_ready(v: &ClusterView) -> String {
    let Some(status) = &v.status else {
        return "False".into();
    };
    match find(&status.conditions, "Ready") {
        Some(c) => c.status.clone(),
        None if status.ready => "True".into(),
        None => "False".into(),
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn node_count(v: &ClusterView) -> Option<u64> {
    let capacity = v.status.as_ref()?.capacity.as_ref()?;
    Some(
        capacity
            .node_groups
            .iter()
            .map(|g| u64::from(g.count))
            .sum(),
    )
}

/// The table of user tokens (as `token list` gets them: name, scope, namespaces,
/// created).
pub fn token_table(items: &[Value], now: i64) -> Table {
    let mut table = Table::new(&["NAME", "SCOPE", "NAMESPACES", "AGE"]);
    for t in items {
        let namespaces: Vec<&str> = t["namespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        table.push(vec![
            dash(t["name"].as_str().unwrap_or_default()),
            dash(t["scope"].as_str().unwrap_or_default()),
            if namespaces.is_empty() {
                "*".into()
            } else {
                namespaces.join(",")
            },
            ago(t["created"].as_str(), now),
        ]);
    }
    table
}

/// The table of audit records: one a line, oldest first.
pub fn audit_table(records: &[Value]) -> Table {
    let mut table = Table::new(&[
        "TIME",
        "TOKEN",
        "SOURCE",
        "VERB",
        "OBJECT",
        "GENERATION",
        "RESULT",
    ]);
    for r in records {
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let object = [text("kind"), text("namespace"), text("name")]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("/");
        let generation = |k: &str| r[k].as_i64().map_or_else(|| "-".into(), |g| g.to_string());
        let generation = match (
            r["generationBefore"].is_null(),
            r["generationAfter"].is_null(),
        ) {
            (true, true) => "-".to_string(),
            _ => format!(
                "{}->{}",
                generation("generationBefore"),
                generation("generationAfter")
            ),
        };
        let result = match r["change"].as_str() {
            Some(change) => format!("{} ({change})", text("result")),
            None => text("result"),
        };
        table.push(vec![
            text("time"),
            dash(&text("token")),
            dash(&text("source")),
            text("verb"),
            dash(&object),
            generation,
            result,
        ]);
    }
    table
}

/// The table of clusters; `instances` from [`instances_per_cluster`] (None: unknown).
pub fn cluster_table(
    items: &[Value],
    instances: Option<&BTreeMap<String, usize>>,
    now: i64,
) -> Table {
    let mut table = Table::new(&[
        "NAME",
        "READY",
        "LABELS",
        "INSTANCES",
        "CAPACITY",
        "LAST-HEARTBEAT",
    ]);
    for item in items {
        let v = ClusterView::of(item);
        let heartbeat = v
            .status
            .as_ref()
            .and_then(|s| s.last_heartbeat_time.as_deref());
        table.push(vec![
            v.meta.name.clone(),
            cluster_ready(&v),
            labels_text(&v.meta.labels),
            instances.map_or_else(
                || "-".into(),
                |m| m.get(&v.meta.name).copied().unwrap_or(0).to_string(),
            ),
            node_count(&v).map_or_else(|| "unknown".into(), |n| format!("{n} nodes")),
            heartbeat.map_or_else(|| "never".into(), |t| format!("{} ago", ago(Some(t), now))),
        ]);
    }
    table
}

/// The table of InstanceSet slices.
pub fn slice_table(items: &[Value], show_namespace: bool, now: i64) -> Table {
    let mut header = vec!["NAME", "CLUSTER", "ORDINALS", "READY", "AGE"];
    if show_namespace {
        header.insert(0, "NAMESPACE");
    }
    let mut table = Table::new(&header);
    for item in items {
        let v = SliceView::of(item);
        let (ordinals, count) = slice_ordinals(&v.spec);
        let ready = v.status.as_ref().map_or(0, |s| s.ready_replicas);
        let mut row = vec![
            v.meta.name.clone(),
            slice_cluster(&v.meta),
            ordinals,
            format!("{ready}/{count}"),
            ago(v.meta.creation_timestamp.as_deref(), now),
        ];
        if show_namespace {
            row.insert(0, v.meta.namespace.clone().unwrap_or_default());
        }
        table.push(row);
    }
    table
}

/// The member cluster of a slice (its `flotilla.io/cluster` label).
pub fn slice_cluster(meta: &Meta) -> String {
    meta.labels
        .get(CLUSTER_LABEL)
        .cloned()
        .unwrap_or_else(|| "-".into())
}

/// `Name:` style lines: a label column then the value.
fn field(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
}

/// Indents every line of `text` by `by` spaces.
fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn common_metadata(out: &mut String, meta: &Meta, now: i64) {
    field(out, "Name", &meta.name);
    if let Some(ns) = &meta.namespace {
        field(out, "Namespace", ns);
    }
    field(out, "Labels", labels_text(&meta.labels));
    if let Some(created) = &meta.creation_timestamp {
        field(
            out,
            "Created",
            format!("{created} ({} ago)", ago(Some(created), now)),
        );
    }
}

fn conditions_section(out: &mut String, conditions: &[Condition]) {
    out.push_str("Conditions:\n");
    if conditions.is_empty() {
        out.push_str("  <none>\n");
        return;
    }
    let mut table = Table::new(&["TYPE", "STATUS", "REASON", "MESSAGE"]);
    for c in conditions {
        table.push(vec![
            c.type_.clone(),
            c.status.clone(),
            dash(&c.reason),
            dash(&c.message),
        ]);
    }
    out.push_str(&indent(&table.render(), 2));
}

fn instances_section(out: &mut String, instances: &[flotilla_api::InstanceStatus]) {
    out.push_str("Instances:\n");
    if instances.is_empty() {
        out.push_str("  <none>\n");
        return;
    }
    let mut table = Table::new(&[
        "ORDINAL", "CLUSTER", "ROLE", "READY", "PHASE", "NODE", "REVISION",
    ]);
    let mut sorted: Vec<_> = instances.iter().collect();
    sorted.sort_by_key(|i| i.ordinal);
    for i in sorted {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        table.push(vec![
            i.ordinal.to_string(),
            opt(&i.cluster),
            opt(&i.role),
            i.ready.to_string(),
            opt(&i.phase),
            opt(&i.node),
            opt(&i.revision),
        ]);
    }
    out.push_str(&indent(&table.render(), 2));
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// `describe federatedinstanceset NAME`.
pub fn describe_set(v: &SetView, now: i64) -> String {
    let mut out = String::new();
    common_metadata(&mut out, &v.meta, now);
    let status = v.status.clone().unwrap_or_default();
    field(
        &mut out,
        "Generation",
        format!(
            "{} (observed: {})",
            v.meta.generation.unwrap_or(0),
            status
                .observed_generation
                .map_or_else(|| "none".into(), |g| g.to_string())
        ),
    );
    field(&mut out, "Status", v.phase());
    field(
        &mut out,
        "Replicas",
        format!(
            "{} desired, {} placed, {} ready, {} unschedulable",
            v.replicas(),
            status.replicas,
            status.ready_replicas,
            status.unschedulable
        ),
    );
    let roles: Vec<String> = v.spec["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let name = r["name"].as_str()?;
            Some(if r["exclusive"].as_bool() == Some(true) {
                format!("{name} (exclusive)")
            } else {
                name.to_string()
            })
        })
        .collect();
    if !roles.is_empty() {
        field(&mut out, "Roles", roles.join(", "));
    }
    if let Some(image) = v.spec["template"]["spec"]["containers"][0]["image"].as_str() {
        field(&mut out, "Image", image);
    }
    if let Some(p) = &status.primary {
        field(
            &mut out,
            "Primary",
            format!(
                "{} in {} at {}",
                p.ordinal,
                p.cluster.as_deref().unwrap_or("?"),
                p.endpoint
            ),
        );
    }
    out.push_str("Placement policy:\n");
    match v.spec.get("placement").filter(|p| !is_empty_json(p)) {
        Some(p) => out.push_str(&indent(&serde_yaml::to_string(p).unwrap_or_default(), 2)),
        None => out.push_str("  <default: every cluster, equal weights>\n"),
    }
    out.push_str("Placement:\n");
    if status.clusters.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut table = Table::new(&["CLUSTER", "INSTANCES", "ORDINALS", "READY"]);
        for c in &status.clusters {
            table.push(vec![
                c.cluster.clone(),
                c.ordinals.len().to_string(),
                compact_ordinals(&c.ordinals),
                format!("{}/{}", c.ready_replicas, c.ordinals.len()),
            ]);
        }
        out.push_str(&indent(&table.render(), 2));
    }
    instances_section(&mut out, &status.instances);
    conditions_section(&mut out, &status.conditions);
    out
}

fn is_empty_json(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `describe cluster NAME`; `instances` per set name (from the sets' status).
pub fn describe_cluster(v: &ClusterView, instances: &[(String, Vec<u32>)], now: i64) -> String {
    let mut out = String::new();
    common_metadata(&mut out, &v.meta, now);
    let status = v.status.clone().unwrap_or_default();
    let ready = cluster_ready(v);
    match &status.reason {
        Some(reason) => field(&mut out, "Ready", format!("{ready} ({reason})")),
        None => field(&mut out, "Ready", ready),
    }
    field(
        &mut out,
        "Heartbeat",
        status.last_heartbeat_time.as_deref().map_or_else(
            || "never".into(),
            |t| format!("{t} ({} ago)", ago(Some(t), now)),
        ),
    );
    if let Some(version) = &status.kubernetes_version {
        field(&mut out, "Kubernetes", version);
    }
    out.push_str("Taints:\n");
    let taints = v.spec["taints"].as_array().cloned().unwrap_or_default();
    if taints.is_empty() {
        out.push_str("  <none>\n");
    }
    for t in taints {
        let key = t["key"].as_str().unwrap_or_default();
        let effect = t["effect"].as_str().unwrap_or_default();
        match t["value"].as_str() {
            Some(value) => {
                let _ = writeln!(out, "  {key}={value}:{effect}");
            }
            None => {
                let _ = writeln!(out, "  {key}:{effect}");
            }
        }
    }
    out.push_str("Capacity:\n");
    match &status.capacity {
        None => out.push_str("  unknown (treated as unlimited)\n"),
        Some(model) => {
            let mut table = Table::new(&["NODES", "FREE PER NODE"]);
            for g in &model.node_groups {
                let free: Vec<String> =
                    g.free.iter().map(|(r, q)| format!("{r}={}", q.0)).collect();
                table.push(vec![g.count.to_string(), free.join(", ")]);
            }
            out.push_str(&indent(&table.render(), 2));
        }
    }
    out.push_str("Instances:\n");
    if instances.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut table = Table::new(&["SET", "INSTANCES", "ORDINALS"]);
        for (set, ordinals) in instances {
            table.push(vec![
                set.clone(),
                ordinals.len().to_string(),
                compact_ordinals(ordinals),
            ]);
        }
        out.push_str(&indent(&table.render(), 2));
    }
    conditions_section(&mut out, &status.conditions);
    out
}

/// The instances each set holds in `cluster`: `(namespace/name, ordinals)`.
pub fn sets_in_cluster(sets: &[Value], cluster: &str) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    for set in sets {
        let v = SetView::of(set);
        let Some(status) = &v.status else { continue };
        for c in &status.clusters {
            if c.cluster == cluster && !c.ordinals.is_empty() {
                let ns = v.meta.namespace.as_deref().unwrap_or("default");
                out.push((format!("{ns}/{}", v.meta.name), c.ordinals.clone()));
            }
        }
    }
    out
}

/// `describe instanceset [CLUSTER/]NAME`: one slice.
pub fn describe_slice(v: &SliceView, now: i64) -> String {
    let mut out = String::new();
    common_metadata(&mut out, &v.meta, now);
    field(&mut out, "Cluster", slice_cluster(&v.meta));
    let (ordinals, count) = slice_ordinals(&v.spec);
    field(&mut out, "Ordinals", format!("{ordinals} ({count})"));
    let status = v.status.clone().unwrap_or_default();
    field(
        &mut out,
        "Replicas",
        format!(
            "{} exist, {} ready, {} updated",
            status.replicas, status.ready_replicas, status.updated_replicas
        ),
    );
    if let Some(rev) = &status.update_revision {
        field(&mut out, "Revision", rev);
    }
    instances_section(&mut out, &status.instances);
    conditions_section(&mut out, &status.conditions);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_set_over_many_clusters_is_summarised_unless_wide() {
        let clusters: Vec<ClusterPlacementStatus> = (0..100)
            .map(|i| ClusterPlacementStatus {
                cluster: format!("m{i:02}"),
                ordinals: vec![i; 3],
                ready_replicas: if i % 10 == 0 { 1 } else { 3 },
            })
            .collect();
        assert_eq!(
            placement_summary(&clusters, false),
            "m00:3,m01:3,m02:3,… (100 clusters)"
        );
        assert_eq!(placement_summary(&clusters, true).split(',').count(), 100);
        let mut v = set_value_for_progress(&clusters);
        v.meta.name = "big".into();
        assert_eq!(
            v.progress(),
            "big: 280/300 ready (90/100 clusters ready; m00: 1/3, m10: 1/3, m20: 1/3, m30: 1/3, 6 more)"
        );
    }

    fn set_value_for_progress(clusters: &[ClusterPlacementStatus]) -> SetView {
        SetView::of(&json!({
            "metadata": {"name": "big", "generation": 1},
            "spec": {"replicas": 300},
            "status": {"observedGeneration": 1, "replicas": 300, "readyReplicas": 280,
                       "clusters": clusters},
        }))
    }

    const NOW: i64 = 1_714_564_800; // 2024-05-01T12:00:00Z

    fn set(status: Value) -> Value {
        json!({
            "apiVersion": "flotilla.io/v1alpha1",
            "kind": "FederatedInstanceSet",
            "metadata": {"name": "redis-shard", "namespace": "default", "generation": 2,
                         "creationTimestamp": "2024-05-01T11:55:00Z"},
            "spec": {"replicas": 6, "template": {},
                     "roles": [{"name": "primary", "exclusive": true}, {"name": "secondary"}]},
            "status": status,
        })
    }

    fn converging() -> Value {
        json!({
            "observedGeneration": 2, "replicas": 6, "readyReplicas": 4, "unschedulable": 0,
            "clusters": [
                {"cluster": "a", "ordinals": [0, 1, 2], "readyReplicas": 2},
                {"cluster": "b", "ordinals": [3, 4, 5], "readyReplicas": 2}
            ],
            "conditions": [{"type": "Progressing", "status": "True", "reason": "RollingOut", "message": ""}]
        })
    }

    fn converged() -> Value {
        let mut s = converging();
        s["readyReplicas"] = json!(6);
        s["clusters"][0]["readyReplicas"] = json!(3);
        s["clusters"][1]["readyReplicas"] = json!(3);
        s["conditions"] = json!([
            {"type": "Available", "status": "True"},
            {"type": "Progressing", "status": "False"}
        ]);
        s
    }

    #[test]
    fn ordinals_compact_into_ranges() {
        assert_eq!(compact_ordinals(&[]), "-");
        assert_eq!(compact_ordinals(&[7, 0, 1, 2, 3]), "0-3,7");
        assert_eq!(compact_ordinals(&[5, 9, 10, 9]), "5,9-10");
        assert_eq!(
            slice_ordinals(
                &json!({"ordinals": {"ranges": [{"start": 10, "end": 12}], "discrete": [3]}})
            ),
            ("3,10-12".to_string(), 4)
        );
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["NAME", "READY", "X"]);
        t.push(vec!["a-long-name".into(), "1/1".into(), "z".into()]);
        t.push(vec!["b".into(), "10/12".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME          READY   X\na-long-name   1/1     z\nb             10/12\n"
        );
        let mut later = Table::new(&["NAME", "READY", "X"]);
        later.push(vec!["c".into(), "0/1".into(), "y".into()]);
        assert_eq!(later.render_rows(&t.widths()), "c             0/1     y\n");
    }

    #[test]
    fn times_parse_and_ages_are_short() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2000-03-01T00:00:00Z"), Some(951_868_800));
        assert_eq!(parse_time("2024-05-01T14:00:00.123+02:00"), Some(NOW));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(short_duration(59), "59s");
        assert_eq!(short_duration(300), "5m");
        assert_eq!(short_duration(3 * 3600), "3h");
        assert_eq!(short_duration(5 * 86_400), "5d");
    }

    #[test]
    fn set_table_shows_counts_placement_and_status() {
        let t = set_table(&[set(converging()), set(Value::Null)], true, false, NOW);
        assert_eq!(
            t.render(),
            "NAMESPACE   NAME          REPLICAS   READY   UNSCHEDULABLE   CLUSTERS   STATUS        AGE\n\
             default     redis-shard   6          4/6     0               a:3,b:3    Progressing   5m\n\
             default     redis-shard   6          0/6     0               -          Pending       5m\n"
        );
    }

    #[test]
    fn wait_needs_observed_generation_all_ready_and_no_rollout() {
        assert!(!SetView::of(&set(Value::Null)).is_ready());
        assert!(!SetView::of(&set(converging())).is_ready());
        assert!(SetView::of(&set(converged())).is_ready());
        let mut stale = converged();
        stale["observedGeneration"] = json!(1);
        assert!(!SetView::of(&set(stale)).is_ready());
        let mut rolling = converged();
        rolling["conditions"][1]["status"] = json!("True");
        assert!(!SetView::of(&set(rolling)).is_ready());
        assert_eq!(SetView::of(&set(converged())).phase(), "Ready");
    }

    #[test]
    fn progress_says_what_a_rollout_on_ready_instances_waits_for() {
        let mut rolling = converged();
        rolling["conditions"][1] = json!({"type": "Progressing", "status": "True",
            "reason": "RollingOut", "message": "waiting for a to roll out their slices"});
        assert_eq!(
            SetView::of(&set(rolling)).progress(),
            "redis-shard: 6/6 ready (a: 3/3, b: 3/3); waiting for a to roll out their slices"
        );
        assert_eq!(
            SetView::of(&set(converged())).progress(),
            "redis-shard: 6/6 ready (a: 3/3, b: 3/3)"
        );
    }

    #[test]
    fn progress_names_clusters_and_what_does_not_fit() {
        assert_eq!(
            SetView::of(&set(converging())).progress(),
            "redis-shard: 4/6 ready (a: 2/3, b: 2/3)"
        );
        let mut short = converging();
        short["unschedulable"] = json!(2);
        short["conditions"] = json!([{"type": "Scheduled", "status": "False",
            "reason": "Unschedulable", "message": "cluster b has room for 1 of the 3 instances asked"}]);
        let v = SetView::of(&set(short));
        assert_eq!(
            v.progress(),
            "redis-shard: 4/6 ready (a: 2/3, b: 2/3); 2 unschedulable: cluster b has room for 1 of the 3 instances asked"
        );
        assert_eq!(v.phase(), "Unschedulable");
        assert!(
            v.not_ready_report()
                .contains("\n    Scheduled=False: cluster b has room")
        );
    }

    #[test]
    fn cluster_table_reads_ready_condition_capacity_and_heartbeat() {
        let clusters = [
            json!({"kind": "Cluster", "metadata": {"name": "a", "labels": {"region": "eu"}},
                   "status": {"ready": true, "lastHeartbeatTime": "2024-05-01T11:59:57Z",
                              "capacity": {"nodeGroups": [{"count": 3, "free": {}}, {"count": 2, "free": {}}]},
                              "conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"kind": "Cluster", "metadata": {"name": "b"},
                   "status": {"ready": false, "conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        ];
        let sets = [set(converging())];
        let t = cluster_table(&clusters, Some(&instances_per_cluster(&sets)), NOW);
        assert_eq!(
            t.render(),
            "NAME   READY     LABELS      INSTANCES   CAPACITY   LAST-HEARTBEAT\n\
             a      True      region=eu   3           5 nodes    3s ago\n\
             b      Unknown   -           3           unknown    never\n"
        );
    }

    #[test]
    fn slice_table_shows_the_member_and_its_ordinals() {
        let slice = json!({"kind": "InstanceSet",
            "metadata": {"name": "redis-shard", "namespace": "default", "labels": {"flotilla.io/cluster": "a"}},
            "spec": {"ordinals": {"ranges": [{"start": 0, "end": 3}], "discrete": [7]}},
            "status": {"readyReplicas": 4}});
        assert_eq!(
            slice_table(&[slice], false, NOW).render(),
            "NAME          CLUSTER   ORDINALS   READY   AGE\nredis-shard   a         0-3,7      4/5     -\n"
        );
    }

    #[test]
    fn describe_set_has_every_section() {
        let mut status = converging();
        status["primary"] = json!({"ordinal": 0, "cluster": "a", "endpoint": "10.0.0.5:6379"});
        status["instances"] = json!([
            {"ordinal": 1, "cluster": "a", "role": "secondary", "ready": true, "node": "n1", "revision": "r1"},
            {"ordinal": 0, "cluster": "a", "role": "primary", "ready": true, "node": "n1", "revision": "r1"}
        ]);
        let text = describe_set(&SetView::of(&set(status)), NOW);
        for needle in [
            "Name:         redis-shard",
            "Generation:   2 (observed: 2)",
            "Replicas:     6 desired, 6 placed, 4 ready, 0 unschedulable",
            "Roles:        primary (exclusive), secondary",
            "Primary:      0 in a at 10.0.0.5:6379",
            "Placement:\n  CLUSTER   INSTANCES   ORDINALS   READY\n  a         3           0-2        2/3",
            "Instances:\n  ORDINAL   CLUSTER   ROLE        READY   PHASE   NODE   REVISION\n  0         a         primary",
            "Conditions:\n  TYPE          STATUS   REASON       MESSAGE\n  Progressing   True     RollingOut   -",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}
