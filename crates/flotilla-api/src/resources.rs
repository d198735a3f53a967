//! What one instance asks of a node: the effective requests of its pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::error::Errors;
use crate::quantity::{self, Amount};

/// Per-resource requests of one instance, e.g. `cpu → 1`, `memory → 4Gi`.
pub type Requests = BTreeMap<String, Amount>;

/// The resource every instance consumes one of, whatever it requests.
pub const PODS: &str = "pods";

/// Effective requests of a pod, as the Kubernetes scheduler computes them: the sum of
/// the containers' (and restartable init containers') requests, at least the largest
/// plain init container's, plus overhead. A container that sets a limit but no request
/// requests its limit. Bad quantities are reported under `path`.
pub(crate) fn pod_requests_checked(spec: &PodSpec, path: &str, errors: &mut Errors) -> Requests {
    let mut sum = Requests::new();
    let mut init_max = Requests::new();
    for (i, c) in spec.containers.iter().enumerate() {
        add(
            &mut sum,
            &container_requests(c, &format!("{path}.containers[{i}]"), errors),
        );
    }
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let r = container_requests(c, &format!("{path}.initContainers[{i}]"), errors);
        if c.restart_policy.as_deref() == Some("Always") {
            add(&mut sum, &r);
        } else {
            for (k, v) in r {
                let e = init_max.entry(k).or_default();
                *e = (*e).max(v);
            }
        }
    }
    for (k, v) in init_max {
        let e = sum.entry(k).or_default();
        *e = (*e).max(v);
    }
    if let Some(overhead) = &spec.overhead {
        add(
            &mut sum,
            &parse_list(overhead, &format!("{path}.overhead"), errors),
        );
    }
    sum.retain(|k, v| k != PODS && !v.is_zero());
    sum
}

/// Effective requests of a pod; `Err` lists the quantities that do not parse.
pub fn pod_requests(spec: &PodSpec) -> Result<Requests, crate::Invalid> {
    let mut errors = Errors::default();
    let r = pod_requests_checked(spec, "spec.template.spec", &mut errors);
    errors.into_result().map(|()| r)
}

fn container_requests(c: &Container, path: &str, errors: &mut Errors) -> Requests {
    let Some(res) = &c.resources else {
        return Requests::new();
    };
    let limits = res
        .limits
        .as_ref()
        .map(|l| parse_list(l, &format!("{path}.resources.limits"), errors));
    let mut requests = res
        .requests
        .as_ref()
        .map(|r| parse_list(r, &format!("{path}.resources.requests"), errors))
        .unwrap_or_default();
    if let Some(limits) = limits {
        for (k, limit) in limits {
            match requests.get(&k) {
                Some(&req) if req > limit => errors.push(
                    format!("{path}.resources.requests.{k}"),
                    format!("request {req} is greater than limit {limit}"),
                ),
                Some(_) => {}
                None => {
                    requests.insert(k, limit);
                }
            }
        }
    }
    requests
}

/// Parses a resource list, reporting every bad quantity at `path.<name>`.
pub(crate) fn parse_list(
    list: &BTreeMap<String, Quantity>,
    path: &str,
    errors: &mut Errors,
) -> Requests {
    let mut out = Requests::new();
    for (name, q) in list {
        match quantity::parse(&q.0) {
            Ok(a) => {
                out.insert(name.clone(), a);
            }
            Err(e) => errors.push(format!("{path}.{name}"), e.to_string()),
        }
    }
    out
}

fn add(sum: &mut Requests, more: &Requests) {
    for (k, v) in more {
        let e = sum.entry(k.clone()).or_default();
        *e = e.saturating_add(*v);
    }
}

/// Parses a node group's free resources (validated clusters never fail here; a
/// quantity that does not parse counts as nothing free).
pub fn free_resources(list: &BTreeMap<String, Quantity>) -> Requests {
    list.iter()
        .map(|(k, q)| (k.clone(), quantity::parse(&q.0).unwrap_or_default()))
        .collect()
}
