//! Field errors: every problem with a document, each naming its field and the reason.

use std::fmt;

/// One problem with one field, e.g. `spec.placement.perCluster.a.min: 9 is greater
/// than max 8`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Which document of a multi-document file, when there is more than one
    /// (e.g. `document 2 (Cluster b)`).
    pub document: Option<String>,
    /// Dotted path of the field (`spec.replicas`, `spec.roles[1].name`).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            document: None,
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(doc) = &self.document {
            write!(f, "{doc}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Every problem found in a document (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

impl Invalid {
    /// A single problem.
    pub fn one(path: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid(vec![FieldError::new(path, reason)])
    }

    /// The same problems, attributed to a document of a multi-document file.
    pub fn in_document(mut self, document: &str) -> Invalid {
        for e in &mut self.0 {
            e.document.get_or_insert_with(|| document.to_string());
        }
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects field errors while validating; see [`crate::validate`].
#[derive(Debug, Default)]
pub(crate) struct Errors(pub(crate) Vec<FieldError>);

impl Errors {
    pub(crate) fn push(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError::new(path, reason));
    }

    pub(crate) fn into_result(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}
