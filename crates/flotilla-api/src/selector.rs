//! Label selectors and taints/tolerations, matched as Kubernetes matches them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// True when `labels` match `selector` (every `matchLabels` pair and every expression).
/// Validated selectors only: an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    pairs
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The label selector operators.
pub const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// Taint effects.
pub const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// True when some toleration tolerates `taint`.
pub fn tolerated(taint: &Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            _ => {
                t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
            }
        };
        // An empty key with Exists tolerates everything; an empty key with Equal nothing.
        let empty_key_ok = !t.key.as_deref().unwrap_or_default().is_empty()
            || t.operator.as_deref() == Some("Exists");
        effect_ok && key_ok && value_ok && empty_key_ok
    })
}

/// `key=value:Effect`, as kubectl prints taints.
pub fn display_taint(taint: &Taint) -> String {
    match taint.value.as_deref() {
        Some(v) if !v.is_empty() => format!("{}={}:{}", taint.key, v, taint.effect),
        _ => format!("{}:{}", taint.key, taint.effect),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_matches_labels_and_expressions() {
        let l = labels(&[("env", "prod"), ("region", "eu")]);
        let sel = |pairs: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: Some(exprs),
        };
        assert!(matches(&sel(&[("env", "prod")], vec![]), &l));
        assert!(!matches(&sel(&[("env", "dev")], vec![]), &l));
        assert!(matches(
            &sel(&[], vec![expr("region", "In", &["eu", "us"])]),
            &l
        ));
        assert!(!matches(
            &sel(&[], vec![expr("region", "NotIn", &["eu"])]),
            &l
        ));
        assert!(matches(&sel(&[], vec![expr("zone", "NotIn", &["a"])]), &l));
        assert!(matches(&sel(&[], vec![expr("env", "Exists", &[])]), &l));
        assert!(!matches(
            &sel(&[], vec![expr("env", "DoesNotExist", &[])]),
            &l
        ));
        assert!(matches(&LabelSelector::default(), &l));
    }

    #[test]
    fn tolerations_follow_kubernetes_rules() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("infra".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let tol = |key: Option<&str>,
                   op: Option<&str>,
                   value: Option<&str>,
                   effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: op.map(Into::into),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        };
        assert!(tolerated(
            &taint,
            &[tol(Some("dedicated"), None, Some("infra"), None)]
        ));
        assert!(!tolerated(
            &taint,
            &[tol(Some("dedicated"), None, Some("db"), None)]
        ));
        assert!(tolerated(
            &taint,
            &[tol(
                Some("dedicated"),
                Some("Exists"),
                None,
                Some("NoSchedule")
            )]
        ));
        assert!(!tolerated(
            &taint,
            &[tol(
                Some("dedicated"),
                Some("Exists"),
                None,
                Some("NoExecute")
            )]
        ));
        assert!(tolerated(&taint, &[tol(None, Some("Exists"), None, None)]));
        assert!(!tolerated(&taint, &[]));
        assert_eq!(display_taint(&taint), "dedicated=infra:NoSchedule");
    }
}
