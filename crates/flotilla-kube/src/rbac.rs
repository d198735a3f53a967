//! The Kubernetes permissions the agent needs, in one table: the source of the agent's
//! ClusterRole in `deploy/agent/rbac.yaml`.
//!
//! ```text
//!   REQUIRED_PERMISSIONS ◀── tests/mock_api.rs, tests/federated.rs: every request any mock
//!          │                 scenario makes is granted by the table (request_attributes),
//!          │                 and one test drives every code path and finds every row used
//!          ▼
//!   deploy/agent/rbac.yaml ◀── tests/manifests.rs: the ClusterRole grants exactly the table
//! ```
//!
//! What that proves, and what it does not: the requests are the ones this crate's code
//! makes against a *mock* API server, mapped to RBAC attributes by
//! [`request_attributes`] (a transcription of the API server's request-info rules, not
//! the API server itself). Rows marked [`Checked::Implied`] are checked by the API
//! server on top of another request, so no request shows them: `pods/exec create` and
//! `pods/portforward create` (the websocket upgrade is a GET), `instancesets create` (a server-side apply is a PATCH,
//! which the API server also authorizes as create when the object is new) and
//! `instancesets/finalizers update` (the OwnerReferencesPermissionEnforcement admission
//! plugin, on a create whose owner reference sets `blockOwnerDeletion`); the test that
//! finds every row used checks that the request each one rides on was made. Whether a
//! real API server authorizes exactly these is only checked by running against one.

/// Which part of the agent makes a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum User {
    /// [`crate::KubeBackend`]: observe, apply, status, probes, capacity.
    Backend,
    /// [`crate::standalone`]: kube-runtime's watches of InstanceSets and their pods.
    Standalone,
    /// [`crate::federated`] (the federated agent's `KubeMember` in `flotilla-agent`):
    /// applies the slices the server sends as InstanceSet objects (server-side apply,
    /// which needs `create` as well as `patch` when the object is new), lists them (the
    /// Standalone rows cover that) and deletes the ones it no longer has; it also reads
    /// `GET /version`, a non-resource URL every authenticated user may read
    /// (`system:public-info-viewer`).
    FederatedAgent,
}

/// How the API server comes to check a permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// It authorizes one of the agent's requests with it: the mock tests see that
    /// request.
    Request,
    /// It checks it on top of another request of the agent's (an admission plugin, or
    /// a second authorization of the same request), named here; no client-side mock
    /// can see that.
    Implied(&'static str),
}

/// One permission: a verb on a resource (`resource/subresource`) of an API group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// The API group (`""` for the core group).
    pub api_group: &'static str,
    /// The resource, with its subresource if any (`pods/exec`).
    pub resource: &'static str,
    /// The RBAC verb.
    pub verb: &'static str,
    /// Who needs it.
    pub user: User,
    /// What for.
    pub why: &'static str,
    /// Whether a request of the agent's shows it.
    pub checked: Checked,
}

const fn p(
    api_group: &'static str,
    resource: &'static str,
    verb: &'static str,
    user: User,
    why: &'static str,
) -> Permission {
    Permission {
        api_group,
        resource,
        verb,
        user,
        why,
        checked: Checked::Request,
    }
}

/// A row the API server checks on top of the request `on`.
const fn implied(
    api_group: &'static str,
    resource: &'static str,
    verb: &'static str,
    user: User,
    why: &'static str,
    on: &'static str,
) -> Permission {
    Permission {
        checked: Checked::Implied(on),
        ..p(api_group, resource, verb, user, why)
    }
}

/// Everything the agent (standalone or federated) may do, cluster-wide. Nothing else.
pub const REQUIRED_PERMISSIONS: &[Permission] = &[
    p(
        "",
        "pods",
        "list",
        User::Backend,
        "observe a set's pods by label; switchover; capacity (all namespaces)",
    ),
    p(
        "",
        "pods",
        "get",
        User::Backend,
        "read a pod before an in-place or role patch; a Redis probe's pod IP",
    ),
    p(
        "",
        "pods",
        "create",
        User::Backend,
        "create an ordinal's pod",
    ),
    p(
        "",
        "pods",
        "patch",
        User::Backend,
        "in-place image/label updates; role labels",
    ),
    p(
        "",
        "pods",
        "delete",
        User::Backend,
        "recreate or remove an instance (forced for a node-lost rebuild)",
    ),
    p(
        "",
        "pods/exec",
        "get",
        User::Backend,
        "exec role probes: the websocket upgrade is a GET, authorized as get",
    ),
    implied(
        "",
        "pods/exec",
        "create",
        User::Backend,
        "exec role probes: API servers with AuthorizePodWebsocketUpgradeCreatePermission (1.35+) also ask for create",
        "the exec websocket upgrade (GET pods/<pod>/exec)",
    ),
    p(
        "",
        "pods/portforward",
        "get",
        User::Backend,
        "Redis probes and switchovers with PodAccess::PortForward (the default from a kubeconfig): the websocket upgrade is a GET, authorized as get",
    ),
    implied(
        "",
        "pods/portforward",
        "create",
        User::Backend,
        "Redis through port-forward: API servers with AuthorizePodWebsocketUpgradeCreatePermission (1.35+) also ask for create",
        "the port-forward websocket upgrade (GET pods/<pod>/portforward)",
    ),
    p(
        "",
        "persistentvolumeclaims",
        "list",
        User::Backend,
        "observe a set's volumes by label",
    ),
    p(
        "",
        "persistentvolumeclaims",
        "create",
        User::Backend,
        "create an ordinal's volumes",
    ),
    p(
        "",
        "persistentvolumeclaims",
        "delete",
        User::Backend,
        "retention policy Delete; node-lost rebuild",
    ),
    p(
        "",
        "services",
        "create",
        User::Backend,
        "the headless Service `<set>` of a Redis set with spec.redis.announce: Hostname, before its first pod",
    ),
    p(
        "",
        "services",
        "get",
        User::Backend,
        "a Service `<set>` already there: is it the set's (owned by it)?",
    ),
    p(
        "",
        "nodes",
        "list",
        User::Backend,
        "capacity; lost nodes (only when a pod of the set is not ready)",
    ),
    p(
        "",
        "persistentvolumes",
        "get",
        User::Backend,
        "node-local volumes: the PV bound to a claim of a pod on a lost node or not scheduled",
    ),
    p(
        "flotilla.io",
        "instancesets/status",
        "patch",
        User::Backend,
        "status by server-side apply",
    ),
    implied(
        "flotilla.io",
        "instancesets/finalizers",
        "update",
        User::Backend,
        "pods (and PVCs owned by the set) name the set as owner with blockOwnerDeletion: true; the OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift and many hardened clusters) refuses that without update on the owner's finalizers",
        "creating a pod or PVC (POST) whose owner reference sets blockOwnerDeletion",
    ),
    p(
        "flotilla.io",
        "instancesets",
        "list",
        User::Standalone,
        "the controller's watch of InstanceSets (initial list)",
    ),
    p(
        "flotilla.io",
        "instancesets",
        "watch",
        User::Standalone,
        "the controller's watch of InstanceSets",
    ),
    p(
        "",
        "pods",
        "watch",
        User::Standalone,
        "the controller's watch of the sets' pods (flotilla.io/set label)",
    ),
    implied(
        "flotilla.io",
        "instancesets",
        "create",
        User::FederatedAgent,
        "server-side apply of a new slice",
        "the server-side apply (PATCH) of an InstanceSet that does not exist yet",
    ),
    p(
        "flotilla.io",
        "instancesets",
        "patch",
        User::FederatedAgent,
        "server-side apply of a slice",
    ),
    p(
        "flotilla.io",
        "instancesets",
        "delete",
        User::FederatedAgent,
        "delete a slice the server no longer sends",
    ),
];

/// A request's RBAC attributes `(api group, resource[/subresource], verb)`, as the API
/// server derives them from its method, path and query (the request-info rules of
/// `k8s.io/apiserver`); `None` for a path that is not a resource request.
pub fn request_attributes(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<(String, String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        // `namespaces/<ns>` followed by more is a namespaced request; alone it is the
        // namespace object itself.
        ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
        other => other,
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub] => (*resource, Some(*name), Some(*sub)),
        _ => return None,
    };
    let watch = query
        .unwrap_or_default()
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", None) => "deletecollection",
        ("DELETE", Some(_)) => "delete",
        _ => return None,
    };
    let resource = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    Some((group.to_string(), resource, verb.to_string()))
}

/// Whether the table grants `(api group, resource, verb)`.
pub fn granted(api_group: &str, resource: &str, verb: &str) -> bool {
    REQUIRED_PERMISSIONS
        .iter()
        .any(|p| p.api_group == api_group && p.resource == resource && p.verb == verb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_rbac_attributes_as_the_api_server_maps_them() {
        let check =
            |method: &str, path: &str, query: Option<&str>, expect: Option<(&str, &str, &str)>| {
                let got = request_attributes(method, path, query);
                let expect = expect.map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()));
                assert_eq!(got, expect, "{method} {path}?{query:?}");
            };
        check(
            "GET",
            "/api/v1/namespaces/cache/pods",
            Some("&labelSelector=a"),
            Some(("", "pods", "list")),
        );
        check(
            "GET",
            "/api/v1/pods",
            Some("&watch=true&labelSelector=a"),
            Some(("", "pods", "watch")),
        );
        check(
            "GET",
            "/api/v1/namespaces/cache/pods/redis-0",
            None,
            Some(("", "pods", "get")),
        );
        check(
            "GET",
            "/api/v1/namespaces/cache/pods/redis-0/exec",
            Some("command=x"),
            Some(("", "pods/exec", "get")),
        );
        check(
            "GET",
            "/api/v1/namespaces/cache/pods/redis-0/portforward",
            Some("&ports=6379"),
            Some(("", "pods/portforward", "get")),
        );
        check(
            "POST",
            "/api/v1/namespaces/cache/persistentvolumeclaims",
            None,
            Some(("", "persistentvolumeclaims", "create")),
        );
        check(
            "DELETE",
            "/api/v1/namespaces/cache/pods/redis-0",
            None,
            Some(("", "pods", "delete")),
        );
        check(
            "DELETE",
            "/api/v1/namespaces/cache/pods",
            None,
            Some(("", "pods", "deletecollection")),
        );
        check("GET", "/api/v1/nodes", None, Some(("", "nodes", "list")));
        check(
            "GET",
            "/api/v1/persistentvolumes/pv-0",
            None,
            Some(("", "persistentvolumes", "get")),
        );
        check(
            "PATCH",
            "/apis/flotilla.io/v1alpha1/namespaces/cache/instancesets/redis/status",
            Some("force=true"),
            Some(("flotilla.io", "instancesets/status", "patch")),
        );
        check(
            "GET",
            "/apis/flotilla.io/v1alpha1/instancesets",
            Some("limit=500"),
            Some(("flotilla.io", "instancesets", "list")),
        );
        check(
            "GET",
            "/api/v1/namespaces/cache",
            None,
            Some(("", "namespaces", "get")),
        );
        check("GET", "/version", None, None);
    }

    #[test]
    fn the_table_has_no_duplicates() {
        for (i, a) in REQUIRED_PERMISSIONS.iter().enumerate() {
            for b in &REQUIRED_PERMISSIONS[i + 1..] {
                assert!(
                    (a.api_group, a.resource, a.verb) != (b.api_group, b.resource, b.verb),
                    "{a:?} twice"
                );
            }
        }
    }
}
