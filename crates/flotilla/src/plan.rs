//! `flotilla plan`: the scheduler's answer, offline for local files (`--clusters`) or
//! from a federation server's live clusters (see [`crate::client::plan`]); both print
//! through one [`render`].

use std::fmt::Write as _;
use std::path::Path;

use flotilla_api::decode::{self, AnyObject};
use flotilla_api::ordinals::display_list;
use flotilla_api::{Cluster, FederatedInstanceSet, Valid, validate};
use flotilla_scheduler::{Plan, UNLIMITED};

use crate::cli::{Output, PlanArgs};
use crate::input::{self, CliError};

/// Runs `flotilla plan`: offline with `--clusters`, else against the server.
pub fn run(args: &PlanArgs) -> Result<(), CliError> {
    let Some(clusters_path) = &args.clusters else {
        return crate::client::plan(args);
    };
    let set = read_set(&args.file)?;
    let clusters = read_clusters(clusters_path)?;
    let previous = args.previous.as_deref().map(read_previous).transpose()?;
    let plan = flotilla_scheduler::plan(&set, &clusters, previous.as_ref()).map_err(|e| {
        CliError::invalid(
            args.previous.as_deref().unwrap_or(Path::new("--previous")),
            e,
        )
    })?;
    print!("{}", render(&plan, args.output)?);
    Ok(())
}

/// A plan as `-o` asks: the table, or the JSON `--previous` reads, or that as YAML.
pub fn render(plan: &Plan, output: Output) -> Result<String, CliError> {
    Ok(match output {
        Output::Json => {
            serde_json::to_string_pretty(plan).map_err(|e| CliError::Failed(e.into()))? + "\n"
        }
        Output::Yaml => serde_yaml::to_string(plan).map_err(|e| CliError::Failed(e.into()))?,
        Output::Table | Output::Wide => table(plan),
    })
}

/// Reads exactly one valid FederatedInstanceSet.
fn read_set(path: &Path) -> Result<Valid<FederatedInstanceSet>, CliError> {
    let mut sets = read_kind(path, "FederatedInstanceSets", |o| match o {
        AnyObject::FederatedInstanceSet(s) => Ok(*s),
        other => Err(other),
    })?;
    if sets.len() != 1 {
        let why = format!(
            "holds {} FederatedInstanceSets; plan takes exactly one",
            sets.len()
        );
        return Err(CliError::input(path, why));
    }
    validate::federated_instance_set(sets.remove(0)).map_err(|e| CliError::invalid(path, e))
}

/// Reads every Cluster of a multi-document file and validates them together.
fn read_clusters(path: &Path) -> Result<Vec<Valid<Cluster>>, CliError> {
    let clusters = read_kind(path, "Clusters", |o| match o {
        AnyObject::Cluster(c) => Ok(*c),
        other => Err(other),
    })?;
    validate::clusters(clusters).map_err(|e| CliError::invalid(path, e))
}

/// Decodes every document of `path`, printing ignored fields as warnings; each must be
/// of the kind `pick` accepts.
fn read_kind<T>(
    path: &Path,
    plural: &str,
    pick: impl Fn(AnyObject) -> Result<T, AnyObject>,
) -> Result<Vec<T>, CliError> {
    let docs = decode::decode_all(&input::read(path)?).map_err(|e| CliError::invalid(path, e))?;
    let mut out = Vec::new();
    for d in docs {
        input::warn(path, &d.warnings);
        match pick(d.object) {
            Ok(o) => out.push(o),
            Err(other) => {
                let why = format!(
                    "holds a {} ({}); expected only {plural}",
                    other.kind(),
                    other.name()
                );
                return Err(CliError::input(path, why));
            }
        }
    }
    Ok(out)
}

/// Reads a previous plan (the JSON `plan -o json` prints; YAML works too).
fn read_previous(path: &Path) -> Result<Plan, CliError> {
    let text = input::read(path)?;
    let value = serde_yaml::from_str(&text)
        .map_err(|e| CliError::input(path, format!("not valid JSON: {e}")))?;
    let decoded = decode::decode::<Plan>(value).map_err(|e| CliError::invalid(path, e))?;
    input::warn(path, &decoded.warnings);
    Ok(decoded.object)
}

fn table(plan: &Plan) -> String {
    let rows: Vec<[String; 4]> = plan
        .placement
        .iter()
        .map(|p| {
            let cap = if p.capacity == UNLIMITED {
                "unlimited".to_string()
            } else {
                p.capacity.to_string()
            };
            let ords = if p.ordinals.is_empty() {
                "-".to_string()
            } else {
                display_list(&p.ordinals)
            };
            [p.cluster.clone(), cap, p.ordinals.len().to_string(), ords]
        })
        .collect();
    let header = ["CLUSTER", "CAPACITY", "INSTANCES", "ORDINALS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:>w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "\nplaced {} of {}; unschedulable {}",
        plan.placed(),
        plan.placed() + plan.unschedulable,
        plan.unschedulable
    );
    for m in &plan.messages {
        let _ = writeln!(out, "- {m}");
    }
    out
}
