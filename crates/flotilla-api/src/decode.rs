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
/// more than one. Only a file that is not YAML at all fails as a whole.
pub fn decode_each(text: &str) -> Result<Vec<Document>, Invalid> {
    let values = split(text)?;
    let many = values.len() > 1;
    let tag = |e: Invalid, label: &str| if many { e.in_document(label) } else { e };
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

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let err = split("a: [1, 2\n").unwrap_err();
        assert!(err.to_string().contains("not valid YAML"), "{err}");
    }
}
