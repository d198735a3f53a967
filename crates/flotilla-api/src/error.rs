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
    /// A problem at `path`. A reason longer than [`MAX_REASON`] bytes (one that quotes
    /// a long value) keeps its start and its end (`…, expected a sequence`).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> FieldError {
        FieldError {
            document: None,
            path: path.into(),
            reason: shorten(reason.into(), MAX_REASON),
        }
    }
}

/// The longest reason a [`FieldError`] keeps whole, in bytes.
pub const MAX_REASON: usize = 512;

/// `s` cut to about `max` bytes: its first two thirds and its last sixth, with `…` and
/// the number of bytes left out between them.
fn shorten(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut head = max * 2 / 3;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - max / 6;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}…({} bytes)…{}", &s[..head], tail - head, &s[tail..])
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

impl Invalid {
    /// Every problem, a line each, as long as they fit in `max` bytes; then how many
    /// more there are. A gRPC status carries its message in a header, which HTTP/2
    /// peers bound (16 KiB by default).
    pub fn to_bounded_string(&self, max: usize) -> String {
        let mut out = String::new();
        for (i, e) in self.0.iter().enumerate() {
            let line = e.to_string();
            if i > 0 && out.len() + 1 + line.len() > max {
                let left = self.0.len() - i;
                out.push_str(&format!(
                    "\n… and {left} more problem{}",
                    if left == 1 { "" } else { "s" }
                ));
                return out;
            }
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&line);
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_keep_their_start_and_end() {
        let reason = format!(
            "invalid type: string \"{}\", expected a sequence",
            "z".repeat(40_000)
        );
        let e = FieldError::new("spec.x", reason.clone());
        assert!(e.reason.len() < MAX_REASON + 40, "{}", e.reason.len());
        assert!(e.reason.starts_with("invalid type: string \"zzz"));
        assert!(
            e.reason.ends_with("zzz\", expected a sequence"),
            "{}",
            e.reason
        );
        assert!(e.reason.contains("…("), "{}", e.reason);
        // Multi-byte characters are never cut.
        let e = FieldError::new("spec.x", "é".repeat(1000));
        assert!(e.reason.len() < MAX_REASON + 40);
        assert_eq!(FieldError::new("a", "short").reason, "short");
    }

    #[test]
    fn a_bounded_message_says_how_many_problems_it_left_out() {
        let all = Invalid(
            (0..1000)
                .map(|i| FieldError::new(format!("spec.f{i}"), "is wrong"))
                .collect(),
        );
        let text = all.to_bounded_string(4096);
        assert!(text.len() <= 4096 + 40, "{}", text.len());
        assert!(text.starts_with("spec.f0: is wrong\nspec.f1: is wrong"));
        let last = text.lines().last().unwrap();
        let shown = text.lines().count() - 1;
        assert_eq!(last, format!("… and {} more problems", 1000 - shown));
        assert_eq!(Invalid::one("a", "b").to_bounded_string(10), "a: b");
    }
}
