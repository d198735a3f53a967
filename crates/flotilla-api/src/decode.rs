//! Decoding YAML/JSON documents into typed objects, with errors that name the field.
//!
//! A document is first read as a YAML value (JSON is YAML), its `kind` picks the type,
//! and the value is then deserialized with its path tracked, so a type error reads
//! `spec.replicas: invalid type: string "x", expected u32`. Fields Flotilla does not
//! know are not an error (documents written for a newer Flotilla still load) but come
//! back as warnings naming each one.

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{FieldError, Invalid};
use crate::object::{API_VERSION, Kind};
use crate::{
    Cluster, ClusterSpec, FederatedInstanceSet, FederatedInstanceSetSpec, InstanceSet,
    InstanceSetSpec,
};

/// A decoded object and the fields it carried that Flotilla ignored.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded<T> {
    /// The object.
    pub object: T,
    /// One entry per ignored field (`reason` says it was ignored).
    pub warnings: Vec<FieldError>,
}

/// Any Flotilla document.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyObject {
    /// A `FederatedInstanceSet`.
    FederatedInstanceSet(Box<FederatedInstanceSet>),
    /// A `Cluster`.
    Cluster(Box<Cluster>),
    /// An `InstanceSet`.
    InstanceSet(Box<InstanceSet>),
}

impl AnyObject {
    /// The object's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyObject::FederatedInstanceSet(_) => FederatedInstanceSetSpec::KIND,
            AnyObject::Cluster(_) => ClusterSpec::KIND,
            AnyObject::InstanceSet(_) => InstanceSetSpec::KIND,
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        match self {
            AnyObject::FederatedInstanceSet(o) => o.name(),
            AnyObject::Cluster(o) => o.name(),
            AnyObject::InstanceSet(o) => o.name(),
        }
    }
}

/// Splits a multi-document YAML (or JSON) text into its non-empty documents.
pub fn split(text: &str) -> Result<Vec<Value>, Invalid> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(doc).map_err(|e| yaml_error(i, &e))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Deserializes one document as `T` (YAML or JSON data), tracking the path of any error and of every
/// ignored field.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<Decoded<T>, Invalid> {
    // Through JSON's data model: enums are `{variant: …}` maps there, as users write
    // them, whereas a YAML value would want `!variant` tags.
    let value = to_json(value)?;
    let mut warnings = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| {
        warnings.push(FieldError::new(
            ignored_path(&path),
            "unknown field, ignored",
        ));
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let result = serde_path_to_error::deserialize::<_, T>(de);
    match result {
        Ok(object) => Ok(Decoded { object, warnings }),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            // A misspelt field is the usual cause of a missing one: name both.
            let mut problems = vec![FieldError::new(path, e.inner().to_string())];
            problems.extend(
                warnings
                    .into_iter()
                    .map(|w| FieldError::new(w.path, "unknown field")),
            );
            Err(Invalid(problems))
        }
    }
}

/// How deep a document may nest. The deepest field Flotilla reads (a pod affinity
/// term's label selector values) is 14 levels down; YAML's own reader stops at 128.
pub const MAX_DEPTH: usize = 64;

/// A document as JSON's data model holds it, checked on the way: nothing nested more
/// than [`MAX_DEPTH`] levels, mapping keys that are strings (numbers and booleans are
/// written as strings, as Kubernetes' YAML reader does), no YAML tags, no number JSON
/// cannot hold. Every problem names its field.
fn to_json(value: Value) -> Result<serde_json::Value, Invalid> {
    let mut problems = Vec::new();
    let json = convert(value, &mut String::new(), 0, &mut problems);
    if problems.is_empty() {
        Ok(json)
    } else {
        Err(Invalid(problems))
    }
}

/// At most this many shape problems are listed for one document.
const MAX_SHAPE_PROBLEMS: usize = 20;

fn convert(
    value: Value,
    path: &mut String,
    depth: usize,
    problems: &mut Vec<FieldError>,
) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(b),
        Value::String(s) => J::String(s),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                J::from(u)
            } else if let Some(i) = n.as_i64() {
                J::from(i)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or_else(
                    || {
                        problem(problems, path, format!("{n} is not a number JSON can hold"));
                        J::Null
                    },
                    J::Number,
                )
            }
        }
        Value::Tagged(t) => {
            problem(
                problems,
                path,
                format!(
                    "YAML tags ({}) are not supported: write the value alone",
                    t.tag
                ),
            );
            J::Null
        }
        Value::Sequence(_) | Value::Mapping(_) if depth >= MAX_DEPTH => {
            problem(
                problems,
                path,
                format!("nested more than {MAX_DEPTH} levels"),
            );
            J::Null
        }
        Value::Sequence(items) => J::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    let v = convert(item, path, depth + 1, problems);
                    path.truncate(len);
                    v
                })
                .collect(),
        ),
        Value::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (key, item) in map {
                let key = match key {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        let what = match other {
                            Value::Null => "null",
                            Value::Sequence(_) => "a sequence",
                            Value::Mapping(_) => "a mapping",
                            _ => "a tagged value",
                        };
                        // The key is named as JSON would write it, so that a problem
                        // at the top of a document still names its place.
                        let written = serde_json::to_string(&other).unwrap_or_else(|_| "?".into());
                        let at = if path.is_empty() {
                            written
                        } else {
                            format!("{path}.{written}")
                        };
                        problem(
                            problems,
                            &at,
                            format!("mapping keys must be strings, this one is {what}"),
                        );
                        continue;
                    }
                };
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key);
                let v = convert(item, path, depth + 1, problems);
                if out.contains_key(&key) {
                    problem(problems, path, "the key is given twice".to_string());
                }
                path.truncate(len);
                out.insert(key, v);
            }
            J::Object(out)
        }
    }
}

fn problem(problems: &mut Vec<FieldError>, path: &str, reason: String) {
    if problems.len() < MAX_SHAPE_PROBLEMS {
        problems.push(FieldError::new(path, reason));
    }
}

/// `spec.template.spec.containers[0].foo`: an ignored field's path, written as
/// errors write paths (`serde_ignored`'s own display marks options with `?`).
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

/// A document YAML's reader refused. Where the reader names the field (a value out of
/// range, a duplicate key), the problem is put on that field.
fn yaml_error(index: usize, e: &serde_yaml::Error) -> Invalid {
    let text = e.to_string();
    let (path, reason) = match text.split_once(": ") {
        Some((path, reason)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            (path.to_string(), reason.to_string())
        }
        _ => (String::new(), text.clone()),
    };
    let at_line = |reason: &str| {
        reason
            .find(" at line")
            .map_or(String::new(), |i| reason[i..].to_string())
    };
    // `duplicate entry with key "a" at line …`: the field is the key itself, which
    // names a field also at the top of the document.
    if let Some(rest) = reason.strip_prefix("duplicate entry with key ") {
        let key = rest.split(" at line").next().unwrap_or(rest);
        let key = serde_json::from_str::<String>(key).unwrap_or_else(|_| key.to_string());
        let path = if path.is_empty() {
            key
        } else {
            format!("{path}.{key}")
        };
        return Invalid::one(
            path,
            format!("not valid YAML: the key is given twice{}", at_line(&reason)),
        )
        .in_document(&format!("document {}", index + 1));
    }
    let reason = if reason.starts_with("invalid type: integer") && reason.contains("128") {
        // serde_yaml holds 64-bit numbers; a larger one fails as "u128, expected any
        // YAML value".
        format!(
            "the number is too large (more than 64 bits){}",
            at_line(&reason)
        )
    } else if let Some(at) = reason.strip_prefix("recursion limit exceeded") {
        format!("nested more than 128 levels, too deep to read{at}")
    } else {
        reason
    };
    Invalid::one(path, format!("not valid YAML: {reason}"))
        .in_document(&format!("document {}", index + 1))
}

/// Decodes one document of a known kind, checking `apiVersion` and `kind` first.
pub fn decode_kind<S: Kind, T>(value: Value) -> Result<Decoded<crate::Object<S, T>>, Invalid>
where
    crate::Object<S, T>: DeserializeOwned,
{
    check_header(&value, Some(S::KIND))?;
    decode(value)
}

/// Decodes one document of any Flotilla kind.
pub fn decode_any(value: Value) -> Result<Decoded<AnyObject>, Invalid> {
    let kind = check_header(&value, None)?;
    Ok(match kind.as_str() {
        FederatedInstanceSetSpec::KIND => map(decode(value)?, |o| {
            AnyObject::FederatedInstanceSet(Box::new(o))
        }),
        ClusterSpec::KIND => map(decode(value)?, |o| AnyObject::Cluster(Box::new(o))),
        _ => map(decode(value)?, |o| AnyObject::InstanceSet(Box::new(o))),
    })
}

/// Decodes every document of a file on its own, so that a caller can go on judging the
/// documents that decoded when another did not. Each comes with its label
/// ([`document_label`]); problems and warnings name their document when the file holds
/// more than one, and a problem with a whole document always does. Only a file that is
/// not YAML at all fails as a whole.
pub fn decode_each(text: &str) -> Result<Vec<Document>, Invalid> {
    let values = split(text)?;
    let many = values.len() > 1;
    // A problem with the whole document (not a mapping, a tag on it) has no field to
    // name: it names its document, also when the file holds only that one.
    let tag = |e: Invalid, label: &str| {
        if many {
            e.in_document(label)
        } else {
            Invalid(
                e.0.into_iter()
                    .map(|p| {
                        if p.path.is_empty() {
                            Invalid(vec![p]).in_document(label).0.remove(0)
                        } else {
                            p
                        }
                    })
                    .collect(),
            )
        }
    };
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            let label = document_label(i, &value);
            let decoded = match decode_any(value) {
                Ok(mut d) => {
                    d.warnings = tag(Invalid(d.warnings), &label).0;
                    Ok(d)
                }
                Err(e) => Err(tag(e, &label)),
            };
            Document { label, decoded }
        })
        .collect())
}

/// One document of a file, as [`decode_each`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// `document 2 (Cluster b)`.
    pub label: String,
    /// The object, or every problem found decoding it.
    pub decoded: Result<Decoded<AnyObject>, Invalid>,
}

/// Decodes every document of a file. Errors from every document are reported, each
/// naming its document when the file holds more than one.
pub fn decode_all(text: &str) -> Result<Vec<Decoded<AnyObject>>, Invalid> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for doc in decode_each(text)? {
        match doc.decoded {
            Ok(d) => out.push(d),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Invalid(errors))
    }
}

/// `document 2 (Cluster b)`: how errors name a document of a multi-document file.
pub fn document_label(index: usize, value: &Value) -> String {
    let kind = value.get("kind").and_then(Value::as_str);
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    match (kind, name) {
        (Some(k), Some(n)) => format!("document {} ({k} {n})", index + 1),
        (Some(k), None) => format!("document {} ({k})", index + 1),
        _ => format!("document {}", index + 1),
    }
}

fn map<T, U>(d: Decoded<T>, f: impl FnOnce(T) -> U) -> Decoded<U> {
    Decoded {
        object: f(d.object),
        warnings: d.warnings,
    }
}

/// Checks `apiVersion` and `kind`; returns the kind.
fn check_header(value: &Value, want: Option<&str>) -> Result<String, Invalid> {
    let mut errors = Vec::new();
    if !value.is_mapping() {
        return Err(Invalid::one(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        ));
    }
    match value.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!("must be {API_VERSION}, not {other:?}"),
        )),
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("is required ({API_VERSION})"),
        )),
    }
    let known = [
        FederatedInstanceSetSpec::KIND,
        ClusterSpec::KIND,
        InstanceSetSpec::KIND,
    ];
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match want {
        Some(want) if kind != want => errors.push(FieldError::new(
            "kind",
            if kind.is_empty() {
                format!("is required ({want})")
            } else {
                format!("must be {want}, not {kind:?}")
            },
        )),
        None if !known.contains(&kind.as_str()) => errors.push(FieldError::new(
            "kind",
            if kind.is_empty() {
                format!("is required (one of {})", known.join(", "))
            } else {
                format!(
                    "{kind:?} is not a Flotilla kind (one of {})",
                    known.join(", ")
                )
            },
        )),
        _ => {}
    }
    if kind != ClusterSpec::KIND && known.contains(&kind.as_str()) && value.get("spec").is_none() {
        errors.push(FieldError::new("spec", "is required"));
    }
    if errors.is_empty() {
        Ok(kind)
    } else {
        Err(Invalid(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_name_the_field() {
        let text = "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: a}\nspec:\n  replicas: many\n  template: {spec: {containers: []}}\n";
        let err = decode_all(text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].path, "spec.replicas");
        assert!(
            err.0[0].reason.contains("invalid type"),
            "{}",
            err.0[0].reason
        );
    }

    #[test]
    fn unknown_fields_are_warnings() {
        let text = "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {taints: [], colour: red}\n";
        let docs = decode_all(text).unwrap();
        assert_eq!(
            docs[0].warnings,
            vec![FieldError::new("spec.colour", "unknown field, ignored")]
        );
    }

    #[test]
    fn bad_headers_are_reported_per_document() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {}\nstatus: {ready: maybe}\n";
        let err = decode_all(text).unwrap_err();
        let lines: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert!(
            lines[0].starts_with("document 1 (Pod p): apiVersion: must be flotilla.io/v1alpha1"),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("document 1 (Pod p): kind: \"Pod\" is not a Flotilla kind"))
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("document 2 (Cluster b): status.ready: invalid type")),
            "{lines:?}"
        );
    }

    #[test]
    fn a_type_error_also_names_the_unknown_fields_beside_it() {
        let text = "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: a}\nspec:\n  replica: 3\n  template: {spec: {containers: []}}\n";
        let lines: Vec<String> = decode_all(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "spec: missing field `replicas`",
                "spec.replica: unknown field"
            ]
        );
    }

    #[test]
    fn every_document_is_decoded_on_its_own() {
        let text = "apiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: a}\nspec: {taints: 3}\n---\napiVersion: flotilla.io/v1alpha1\nkind: Cluster\nmetadata: {name: b}\nspec: {colour: red}\n";
        let docs = decode_each(text).unwrap();
        assert_eq!(docs[0].label, "document 1 (Cluster a)");
        let err = docs[0].decoded.as_ref().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("document 1 (Cluster a): spec.taints: invalid type"),
            "{err}"
        );
        let b = docs[1].decoded.as_ref().unwrap();
        assert_eq!(b.object.name(), "b");
        assert_eq!(
            b.warnings[0].to_string(),
            "document 2 (Cluster b): spec.colour: unknown field, ignored"
        );
    }

    const SET: &str = "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {name: a}\nspec:\n  replicas: 3\n  template: {spec: {containers: [{name: c, image: i}]}}\n";

    fn problems(text: &str) -> Vec<(String, String)> {
        let err = match split(text) {
            Ok(mut values) => decode_any(values.remove(0)).unwrap_err(),
            Err(e) => e,
        };
        err.0.into_iter().map(|e| (e.path, e.reason)).collect()
    }

    #[test]
    fn deep_nesting_is_refused_with_the_path_down_to_the_limit() {
        let deep = format!("{}]{}", "[".repeat(100), "]".repeat(99));
        let text = SET.replace("replicas: 3", &format!("replicas: 3\n  extra: {deep}"));
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{got:?}");
        // `spec` and `extra` are two levels; the limit is met 62 sequences further in.
        assert_eq!(
            got[0].0,
            format!("spec.extra{}", "[0]".repeat(MAX_DEPTH - 2))
        );
        assert_eq!(got[0].1, format!("nested more than {MAX_DEPTH} levels"));
        // Past YAML's own reader limit there is no tree to walk: the place is a line
        // and column.
        let deeper = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let text = SET.replace("replicas: 3", &format!("replicas: 3\n  extra: {deeper}"));
        let err = split(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("document 1: not valid YAML: nested more than 128 levels, too deep to read at line 6"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_inside_optional_fields_have_plain_paths() {
        let text = SET.replace("image: i", "image: i, ports: [{containerPort: 1, zz: 1}]");
        let mut values = split(&text).unwrap();
        let d = decode_any(values.remove(0)).unwrap();
        let paths: Vec<&str> = d.warnings.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["spec.template.spec.containers[0].ports[0].zz"]);
    }

    #[test]
    fn keys_json_cannot_hold_name_their_mapping() {
        let text = SET.replace(
            "replicas: 3",
            "replicas: 3\n  placement: {clusterAffinity: {labelSelector: {matchLabels: {[1]: x, null: y}}}}",
        );
        let labels = "spec.placement.clusterAffinity.labelSelector.matchLabels";
        assert_eq!(
            problems(&text),
            [
                (
                    format!("{labels}.[1]"),
                    "mapping keys must be strings, this one is a sequence".to_string()
                ),
                (
                    format!("{labels}.null"),
                    "mapping keys must be strings, this one is null".to_string()
                ),
            ]
        );
        // At the top of the document too.
        let text = format!("{SET}{{k: 1}}: x\n");
        assert_eq!(
            problems(&text),
            [(
                r#"{"k":1}"#.to_string(),
                "mapping keys must be strings, this one is a mapping".to_string()
            )]
        );
        // Numbers and booleans as keys are written as strings, as Kubernetes does.
        let text = SET.replace(
            "replicas: 3",
            "replicas: 3\n  placement: {clusterAffinity: {labelSelector: {matchLabels: {1: x, true: y}}}}",
        );
        let mut values = split(&text).unwrap();
        let d = decode_any(values.remove(0)).unwrap();
        let AnyObject::FederatedInstanceSet(set) = d.object else {
            panic!()
        };
        let selector = set.spec.placement.cluster_affinity.unwrap().label_selector;
        let labels = selector.unwrap().match_labels.unwrap();
        assert_eq!(labels.get("1").map(String::as_str), Some("x"));
        assert_eq!(labels.get("true").map(String::as_str), Some("y"));
    }

    #[test]
    fn numbers_json_cannot_hold_and_tags_name_their_field() {
        let text = SET.replace("replicas: 3", "replicas: 99999999999999999999999");
        let got = problems(&text);
        assert_eq!(got[0].0, "spec.replicas", "{got:?}");
        assert!(got[0].1.contains("too large"), "{got:?}");
        let text = SET.replace("replicas: 3", "replicas: .nan");
        assert_eq!(
            problems(&text),
            [(
                "spec.replicas".to_string(),
                ".nan is not a number JSON can hold".to_string()
            )]
        );
        let text = SET.replace("replicas: 3", "replicas: !three 3");
        let got = problems(&text);
        assert_eq!(got[0].0, "spec.replicas");
        assert!(
            got[0].1.starts_with("YAML tags (!three) are not supported"),
            "{got:?}"
        );
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let err = split("a: [1, 2\n").unwrap_err();
        assert!(err.to_string().contains("not valid YAML"), "{err}");
    }
}
