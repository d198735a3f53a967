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
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| Invalid::one("", format!("document {}: not valid YAML: {e}", i + 1)))?;
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
    let value = serde_json::to_value(value)
        .map_err(|e| Invalid::one("", format!("not a JSON-compatible document: {e}")))?;
    let mut warnings = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| {
        warnings.push(FieldError::new(path.to_string(), "unknown field, ignored"));
    };
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let result = serde_path_to_error::deserialize::<_, T>(de);
    match result {
        Ok(object) => Ok(Decoded { object, warnings }),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Err(Invalid::one(path, e.inner().to_string()))
        }
    }
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

/// Decodes every document of a file. Errors from every document are reported, each
/// naming its document when the file holds more than one.
pub fn decode_all(text: &str) -> Result<Vec<Decoded<AnyObject>>, Invalid> {
    let values = split(text)?;
    let many = values.len() > 1;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        let label = document_label(i, &value);
        match decode_any(value) {
            Ok(mut d) => {
                if many {
                    d.warnings = Invalid(d.warnings).in_document(&label).0;
                }
                out.push(d)
            }
            Err(e) => errors.extend(if many { e.in_document(&label).0 } else { e.0 }),
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
    fn yaml_syntax_errors_are_reported() {
        let err = split("a: [1, 2\n").unwrap_err();
        assert!(err.to_string().contains("not valid YAML"), "{err}");
    }
}
