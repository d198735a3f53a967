//! `spec.redis` judged on its own: what it implies and what it refuses, each problem
//! naming its field.

use flotilla_api::decode;
use flotilla_api::validate;
use flotilla_api::{FederatedInstanceSet, Invalid};

fn judge(redis: &str, extra: &str) -> Result<FederatedInstanceSet, Invalid> {
    judge_named("cache", redis, extra)
}

fn judge_named(name: &str, redis: &str, extra: &str) -> Result<FederatedInstanceSet, Invalid> {
    let text = format!(
        "apiVersion: flotilla.io/v1alpha1\nkind: FederatedInstanceSet\nmetadata: {{name: {name:?}, namespace: default}}\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers: [{{name: redis, image: redis:7, ports: [{{containerPort: 7000, name: redis}}]}}]\n{extra}  redis:\n{redis}\n"
    );
    let doc = decode::split(&text).unwrap().remove(0);
    let set = decode::decode::<FederatedInstanceSet>(doc).unwrap().object;
    validate::federated_instance_set(set).map(|v| v.into_inner())
}

#[test]
fn a_redis_set_implies_its_roles_and_their_probe() {
    let set = judge("    config: {maxmemory: 1gb}", "").unwrap();
    let exclusive: Vec<&str> = set.spec.exclusive_roles().collect();
    assert_eq!(exclusive, ["primary"]);
    let probe = set.spec.role_probe.unwrap().redis.unwrap();
    assert_eq!(probe.port, 7000, "the container port named redis");
    assert_eq!(probe.role_map["master"], "primary");
    assert_eq!(probe.role_map["slave"], "secondary");
}

#[test]
fn hostname_announce_needs_a_set_name_that_can_name_a_service() {
    let set = judge("    announce: Hostname", "").unwrap();
    assert_eq!(
        set.spec.redis.unwrap().announce,
        flotilla_api::redis::Announce::Hostname
    );
    let e = judge_named("7cache", "    announce: Hostname", "")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.redis.announce: Hostname needs a set name starting with a letter"),
        "{e}"
    );
    judge_named("7cache", "    config: {}", "").expect("a pod IP needs no Service");
}

#[test]
fn bad_redis_specs_are_refused_naming_every_field() {
    let e = judge(
        "    config: {maxmemroy: 1gb, port: \"7001\", maxmemory: \"\", maxmemory-policy: lru, io-threads: many}\n    minReplicasToWrite: 3\n    sentinel: {replicas: 3, quorum: 4}",
        "",
    )
    .unwrap_err()
    .to_string();
    for want in [
        "spec.redis.config.maxmemroy: unknown Redis parameter",
        "spec.redis.config.port: set by Flotilla",
        "spec.redis.config.maxmemory: needs a value",
        "spec.redis.config.maxmemory-policy: \"lru\" is not one of volatile-lru",
        "spec.redis.config.io-threads: \"many\" is not a whole number",
        "spec.redis.minReplicasToWrite: 3 is more than the 2 replica(s)",
        "spec.redis.sentinel.quorum: must be between 1 and replicas (3)",
    ] {
        assert!(e.contains(want), "{want:?} in {e}");
    }
    let e = judge(
        "    config: {}",
        "  roles: [{name: leader, exclusive: true}]\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("spec.roleProbe.redis.roleMap.master: must name the exclusive role \"leader\""),
        "{e}"
    );
}

#[test]
fn a_parameter_given_by_two_names_or_an_old_replication_name_is_refused() {
    let e = judge(
        "    config: {hash-max-ziplist-entries: \"128\", hash-max-listpack-entries: \"256\", slave-priority: \"10\"}",
        "",
    )
    .unwrap_err()
    .to_string();
    for want in [
        "spec.redis.config.hash-max-ziplist-entries: the same parameter as hash-max-listpack-entries, which is set too",
        "spec.redis.config.slave-priority: an old name of replica-priority",
    ] {
        assert!(e.contains(want), "{want:?} in {e}");
    }
    judge("    config: {hash-max-ziplist-entries: \"128\"}", "")
        .expect("an old name alone is Redis's own alias");
}
