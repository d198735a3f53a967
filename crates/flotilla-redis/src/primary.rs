//! The federation's side of the Redis engine: which instance is the shard's primary,
//! from every member's report.
//!
//! ```text
//!   none yet ─▶ the lowest ordinal of the home member, once it runs
//!   P master, staying ─▶ P (its address as reported)
//!   P master, leaving (scale-in, moved away) ─▶ its caught-up replica with the highest
//!        offset (P's member then hands over with FAILOVER TO)
//!   P empty while another instance holds data ─▶ the holder with the highest offset
//!   P replica linked to M (a switchover, Sentinel) ─▶ M
//!   P replica, unlinked (restarted and held back) ─▶ without Sentinel, the instance with
//!        the highest offset, with a promotion for that very process; with Sentinel, wait
//!   P replica of the lost primary (named to take over, not promoted yet) ─▶ P, promoted
//!   P down (not reported, still placed) ─▶ with Sentinel, the master its replicas
//!        follow; without, P (PrimaryLost)
//!   P's ordinal no longer placed ─▶ the instance with the most data
//! ```
//!
//! Before any "most data" choice, a replica whose last report still shows it linked to
//! the lost primary is waited for (its offset is not known yet), and an instance still
//! loading its dataset is not reported at all.

use flotilla_api::status::{PrimaryStatus, RedisInstanceStatus};

/// One instance as the federation sees it.
#[derive(Clone, Copy, Debug)]
pub struct Seen<'a> {
    /// Its ordinal.
    pub ordinal: u32,
    /// The member it runs in.
    pub cluster: &'a str,
    /// Its address.
    pub endpoint: Option<&'a str>,
    /// Ready, by its member's word.
    pub ready: bool,
    /// Its ordinal stays in the set's placement (not being removed).
    pub staying: bool,
    /// It runs its slice's current revision, by a report of the current slice.
    pub current: bool,
    /// It runs an older revision, by a report of the current slice (a stale report
    /// says neither).
    pub outdated: bool,
    /// What Redis says, if its member could ask.
    pub redis: Option<&'a RedisInstanceStatus>,
}

/// What the federation decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The primary.
    pub primary: Option<PrimaryStatus>,
    /// Promote this process (`(ordinal, run_id)`): the primary is an unlinked replica
    /// that must take over.
    pub promote: Option<(u32, String)>,
    /// Why the shard has no working primary, for the Degraded condition.
    pub problem: Option<String>,
    /// Why this primary, for the log when it changes.
    pub why: &'static str,
    /// Other instances that run as masters holding data (after a split, or a master
    /// started by hand). Never demoted automatically: its replicas' resync, or its own,
    /// would drop what only it holds. Shown as a condition for a person to settle.
    pub also_masters: Vec<u32>,
}

fn status(s: &Seen<'_>) -> Option<PrimaryStatus> {
    Some(PrimaryStatus {
        ordinal: s.ordinal,
        cluster: Some(s.cluster.to_string()),
        endpoint: s.endpoint?.to_string(),
    })
}

/// Chooses the primary (see the module documentation). `first` is the ordinal a new
/// shard starts with (the lowest of the home member); `placed`: whether an ordinal is
/// in the set's placement (one no report shows may still be, restarting);
/// `sentinel`: Sentinel decides failovers.
pub fn choose(
    previous: Option<&PrimaryStatus>,
    seen: &[Seen<'_>],
    first: Option<u32>,
    placed: &dyn Fn(u32) -> bool,
    sentinel: bool,
) -> Decision {
    let mut d = primary_of(previous, seen, first, placed, sentinel);
    let primary = d.primary.as_ref().map(|p| p.ordinal);
    // The master the named primary still replicates from is handing over to it.
    let handing_over = primary
        .and_then(|o| seen.iter().find(|s| s.ordinal == o))
        .and_then(|s| redis(s))
        .filter(|r| r.role == "slave")
        .and_then(|r| r.master.as_deref());
    d.also_masters = seen
        .iter()
        .filter(|s| Some(s.ordinal) != primary && s.endpoint != handing_over)
        .filter(|s| redis(s).is_some_and(|r| r.role == "master" && !r.empty))
        .map(|s| s.ordinal)
        .collect();
    d
}

fn primary_of(
    previous: Option<&PrimaryStatus>,
    seen: &[Seen<'_>],
    first: Option<u32>,
    placed: &dyn Fn(u32) -> bool,
    sentinel: bool,
) -> Decision {
    let by_ordinal = |o: u32| seen.iter().find(|s| s.ordinal == o);
    let by_endpoint = |e: &str| seen.iter().find(|s| s.endpoint == Some(e));
    let someone_has_data = |but: u32| {
        seen.iter()
            .any(|s| s.ordinal != but && redis(s).is_some_and(|r| !r.empty))
    };
    let followed = || followed(seen);
    let keep = |p: &PrimaryStatus, problem: Option<String>| Decision {
        primary: Some(p.clone()),
        promote: None,
        problem,
        why: "the primary stays",
        also_masters: Vec::new(),
    };

    // Before a takeover by "the most data": a replica whose last report still shows it
    // linked to the old primary `at` reported before that primary was lost, so its
    // offset is not known yet; it may hold writes the others lack (acknowledged by
    // `WAIT` on it alone). Wait for its next report rather than resync it away.
    let unreported = |at: &str| {
        seen.iter()
            .filter(|o| o.staying)
            .filter_map(|o| Some((o, redis(o)?)))
            .find(|(_, r)| r.role == "slave" && r.link_up && r.master.as_deref() == Some(at))
            .map(|(o, _)| o.ordinal)
    };
    let waiting = |p: &PrimaryStatus, o: u32| {
        keep(
            p,
            Some(format!(
                "primary {} is lost; waiting for a report of instance {o}, still shown linked to it, before choosing the instance with the most data",
                p.ordinal
            )),
        )
    };

    let Some(p) = previous else {
        // A shard already running (the federation's record of it lost): its master.
        if let Some(m) = followed_by_replicas(seen) {
            return take_over(m, "the master its replicas follow");
        }
        // Data already there (volumes kept from an earlier set): the instance with the
        // most of it, never an empty one over it.
        let holders = seen.iter().filter(|s| redis(s).is_some_and(|r| !r.empty));
        if let Some(b) = best(holders) {
            return take_over(b, "a shard with data starts with the instance holding most");
        }
        let start = first.and_then(by_ordinal).filter(|s| redis(s).is_some());
        return match start {
            Some(s) => take_over(
                *s,
                "a new shard starts with the first ordinal of its home member",
            ),
            None => Decision::default(),
        };
    };
    let Some(s) = by_ordinal(p.ordinal).filter(|s| redis(s).is_some()) else {
        // Down, not reported, or no longer placed.
        if sentinel && let Some(m) = followed() {
            return take_over(m, "Sentinel's master: the one the replicas follow");
        }
        // Not reported but still placed: down or restarting, not gone.
        let gone = by_ordinal(p.ordinal).is_none() && !placed(p.ordinal);
        if gone && let Some(o) = unreported(&p.endpoint) {
            return waiting(p, o);
        }
        if gone && let Some(b) = best(seen.iter()) {
            return take_over(
                b,
                "the primary's ordinal is gone: the instance with the most data",
            );
        }
        return keep(
            p,
            Some(format!(
                "primary {} ({}) is not running{}",
                p.ordinal,
                p.cluster.as_deref().unwrap_or("?"),
                if sentinel {
                    "; waiting for Sentinel to fail over"
                } else {
                    ": there is no automatic failover without spec.redis.sentinel; bring it back or switch over"
                }
            )),
        );
    };
    let r = redis(s).expect("filtered above");
    let moved = |s: &Seen<'_>| PrimaryStatus {
        ordinal: p.ordinal,
        cluster: Some(s.cluster.to_string()),
        endpoint: s.endpoint.unwrap_or(&p.endpoint).to_string(),
    };
    if r.role == "master" {
        // An empty primary that feeds no replica while others hold data (it came back
        // empty without being held back). A primary with linked replicas is never
        // judged empty: its report may predate the writes its replicas already show.
        // With Sentinel an unplanned change is Sentinel's alone.
        if !sentinel && r.empty && r.replicas.is_empty() && someone_has_data(s.ordinal) {
            if let Some(o) = s.endpoint.and_then(unreported) {
                return waiting(p, o);
            }
            let holders = seen
                .iter()
                .filter(|o| o.ordinal != s.ordinal && redis(o).is_some_and(|r| !r.empty));
            if let Some(b) = best(holders) {
                return take_over(b, "the primary is empty while another instance holds data");
            }
        }
        // Outdated, with no up-to-date instance in its own member to switch over to
        // (the member does that itself): once every other instance is up to date and
        // ready (replicas first, the primary last), hand over to an up-to-date linked
        // replica in another member, so the rolling update can restart it.
        let local_successor = seen.iter().any(|o| {
            o.ordinal != s.ordinal
                && o.cluster == s.cluster
                && o.current
                && o.staying
                && redis(o).is_some()
        });
        let others_done = seen
            .iter()
            .filter(|o| o.ordinal != s.ordinal && o.staying)
            .all(|o| o.current && redis(o).is_some());
        if s.outdated && !local_successor && others_done {
            let linked = seen.iter().filter(|o| {
                o.current
                    && redis(o).is_some_and(|r| {
                        r.role == "slave" && r.link_up && r.master.as_deref() == s.endpoint
                    })
            });
            if let Some(b) = best(linked) {
                return take_over(
                    b,
                    "the outdated primary hands over last, to an up-to-date replica",
                );
            }
        }
        if !s.staying {
            let linked = seen.iter().filter(|o| {
                redis(o).is_some_and(|r| {
                    r.role == "slave" && r.link_up && r.master.as_deref() == s.endpoint
                })
            });
            if let Some(b) = best(linked) {
                return take_over(
                    b,
                    "the primary is leaving: its caught-up replica with the most data",
                );
            }
        }
        return keep(&moved(s), None);
    }
    // P is a replica. Linked to a master M: a switchover happened, unless P was just
    // named to take over from M (a handover still pending): follow M only when M, as
    // the primary, would stay.
    if r.link_up
        && let Some(m) = r.master.as_deref().and_then(by_endpoint)
        && redis(m).is_some_and(|r| r.role == "master")
    {
        let as_m = PrimaryStatus {
            ordinal: m.ordinal,
            cluster: Some(m.cluster.to_string()),
            endpoint: m.endpoint.unwrap_or_default().to_string(),
        };
        let stays = primary_of(Some(&as_m), seen, first, placed, sentinel)
            .primary
            .is_some_and(|q| q.ordinal == m.ordinal);
        if stays {
            return take_over(
                *m,
                "the primary follows its own master (a switchover happened)",
            );
        }
        return keep(&moved(s), None);
    }
    if sentinel {
        if let Some(m) = followed() {
            return take_over(m, "Sentinel's master: the one the replicas follow");
        }
        return keep(
            &moved(s),
            Some(format!(
                "primary {} is a replica without a primary; waiting for Sentinel",
                p.ordinal
            )),
        );
    }
    // Named to take over and not promoted yet (a replica of the old primary, not of
    // itself): it stays named until its member promotes it. Choosing afresh on every
    // report could name another replica before this one's promotion lands, and both
    // would be promoted.
    let master_alive = r
        .master
        .as_deref()
        .and_then(by_endpoint)
        .is_some_and(|m| redis(m).is_some_and(|r| r.role == "master" && !r.empty));
    if r.master.is_some() && r.master.as_deref() != s.endpoint && s.staying && !master_alive {
        return take_over(*s, "the instance named to take over, until it is promoted");
    }
    if let Some(o) = s.endpoint.and_then(unreported) {
        return waiting(&moved(s), o);
    }
    match best(seen.iter()) {
        Some(b) => take_over(
            b,
            "the primary restarted held back: the instance with the most data",
        ),
        None => keep(&moved(s), None),
    }
}

/// What Redis says of `s`, when it is ready and has an address.
fn redis<'a>(s: &Seen<'a>) -> Option<&'a RedisInstanceStatus> {
    s.redis.filter(|_| s.ready && s.endpoint.is_some())
}

/// The instance with the most data among `candidates` that stay: highest offset (of the
/// unlinked: linked ones report none, and a `FAILOVER TO` waits for its target to catch
/// up), then not empty, then the lowest ordinal.
fn best<'a, 'b>(candidates: impl Iterator<Item = &'b Seen<'a>>) -> Option<Seen<'a>>
where
    'a: 'b,
{
    candidates
        .filter(|s| s.staying)
        .filter_map(|s| Some((s, redis(s)?)))
        .max_by(|(a, ra), (b, rb)| {
            ra.offset
                .cmp(&rb.offset)
                .then(rb.empty.cmp(&ra.empty))
                .then(b.ordinal.cmp(&a.ordinal))
        })
        .map(|(s, _)| *s)
}

/// `s` becomes the primary; promoted when it is a replica without a link.
fn take_over(s: Seen<'_>, why: &'static str) -> Decision {
    let promote = redis(&s)
        .filter(|r| r.role == "slave" && !r.link_up)
        .map(|r| (s.ordinal, r.run_id.clone()));
    Decision {
        primary: status(&s),
        promote,
        problem: None,
        why,
        also_masters: Vec::new(),
    }
}

/// With Sentinel: the master that linked replicas follow is the one it elected (the one
/// most replicas follow, then the lowest ordinal).
fn followed<'a>(seen: &[Seen<'a>]) -> Option<Seen<'a>> {
    followed_by_replicas(seen).or_else(|| {
        // A shard of two: the master Sentinel promoted has no one to follow it yet.
        let mut masters = seen
            .iter()
            .filter(|s| redis(s).is_some_and(|r| r.role == "master"));
        match (masters.next(), masters.next()) {
            (Some(m), None) => Some(*m),
            _ => None,
        }
    })
}

/// The master most linked replicas follow (then the lowest ordinal), if any.
fn followed_by_replicas<'a>(seen: &[Seen<'a>]) -> Option<Seen<'a>> {
    seen.iter()
        .filter(|s| redis(s).is_some_and(|r| r.role == "master"))
        .map(|m| {
            let followers = seen
                .iter()
                .filter_map(redis)
                .filter(|r| r.role == "slave" && r.link_up && r.master.as_deref() == m.endpoint)
                .count();
            (followers, m)
        })
        .filter(|(n, _)| *n > 0)
        .min_by_key(|(n, m)| (std::cmp::Reverse(*n), m.ordinal))
        .map(|(_, m)| *m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `"0@a master keys=3 offset=10 replicas=1"`, `"1@b slave of=0 up offset=9"`,
    /// flags: `down` (not ready), `leaving`.
    fn parse(spec: &str) -> (Seen<'static>, RedisInstanceStatus) {
        let mut words = spec.split_whitespace();
        let head = words.next().unwrap();
        let (o, c) = head.split_once('@').unwrap();
        let ordinal: u32 = o.parse().unwrap();
        let mut r = RedisInstanceStatus {
            run_id: format!("run{ordinal}"),
            empty: true,
            ..RedisInstanceStatus::default()
        };
        let mut ready = true;
        let mut staying = true;
        let mut current = true;
        for w in words {
            match w.split_once('=') {
                Some(("keys", n)) => r.empty = n == "0",
                Some(("offset", n)) => r.offset = n.parse().unwrap(),
                Some(("of", n)) => r.master = Some(format!("10.0.0.{n}:6379")),
                _ => match w {
                    "master" | "slave" => r.role = w.to_string(),
                    "up" => r.link_up = true,
                    "down" => ready = false,
                    "leaving" => staying = false,
                    "old" => current = false,
                    "feeds" => r.replicas = vec!["10.0.0.9:6379".into()],
                    other => panic!("{other}"),
                },
            }
        }
        let endpoint: &'static str = Box::leak(format!("10.0.0.{ordinal}:6379").into_boxed_str());
        let cluster: &'static str = Box::leak(c.to_string().into_boxed_str());
        (
            Seen {
                ordinal,
                cluster,
                endpoint: Some(endpoint),
                ready,
                staying,
                current,
                outdated: !current,
                redis: None,
            },
            r,
        )
    }

    /// Runs `choose` and renders `"primary 1 promote 1"` or `"none"`, plus the problem.
    fn check(previous: Option<u32>, instances: &[&str], sentinel: bool, expect: &str) {
        let parsed: Vec<(Seen<'static>, RedisInstanceStatus)> =
            instances.iter().map(|s| parse(s)).collect();
        let seen: Vec<Seen<'_>> = parsed
            .iter()
            .map(|(s, r)| Seen {
                redis: Some(r),
                ..*s
            })
            .collect();
        let prev = previous.map(|o| PrimaryStatus {
            ordinal: o,
            cluster: Some("a".into()),
            endpoint: format!("10.0.0.{o}:6379"),
        });
        let placed = |o: u32| seen.iter().any(|s| s.ordinal == o);
        let d = choose(prev.as_ref(), &seen, Some(0), &placed, sentinel);
        let mut got = match &d.primary {
            Some(p) => format!("primary {}", p.ordinal),
            None => "none".into(),
        };
        if let Some((o, run)) = &d.promote {
            assert_eq!(*run, format!("run{o}"));
            got.push_str(&format!(" promote {o}"));
        }
        if d.problem.is_some() {
            got.push_str(" problem");
        }
        for o in &d.also_masters {
            got.push_str(&format!(" also {o}"));
        }
        assert_eq!(got, expect, "{instances:?}");
    }

    #[test]
    fn a_new_shard_starts_with_the_first_ordinal_once_it_runs() {
        check(None, &["0@a master", "1@b master"], false, "primary 0");
        check(None, &["0@a master down", "1@b master"], false, "none");
        check(
            None,
            &["0@a master", "1@b master keys=4", "2@c master"],
            false,
            "primary 1",
        );
    }

    #[test]
    fn a_second_master_holding_data_is_named_never_chosen_over_the_primary() {
        let shard = [
            "0@a master keys=5 offset=10",
            "1@b slave of=0 up offset=9",
            "2@c master keys=3 offset=7",
        ];
        check(Some(0), &shard, false, "primary 0 also 2");
        check(Some(0), &shard, true, "primary 0 also 2");
        // An empty master (a new instance not wired yet) is no second primary.
        check(
            Some(0),
            &[shard[0], shard[1], "2@c master"],
            false,
            "primary 0",
        );
        // Nor is one that is down.
        check(
            Some(0),
            &[shard[0], shard[1], "2@c master keys=3 down"],
            false,
            "primary 0",
        );
    }

    #[test]
    fn a_running_primary_stays_and_a_leaving_one_hands_over_to_its_best_replica() {
        let shard = [
            "0@a master keys=5 offset=10",
            "1@b slave of=0 up offset=9",
            "2@b slave of=0 up offset=10",
        ];
        check(Some(0), &shard, false, "primary 0");
        check(
            Some(0),
            &["0@a master keys=5 offset=10 leaving", shard[1], shard[2]],
            false,
            "primary 2",
        );
    }

    #[test]
    fn an_outdated_primary_alone_in_its_member_hands_over_last_to_an_updated_replica() {
        check(
            Some(0),
            &[
                "0@a master keys=5 old",
                "1@b slave of=0 up old",
                "2@c slave of=0 up",
            ],
            false,
            "primary 0",
        );
        check(
            Some(0),
            &[
                "0@a master keys=5 old",
                "1@b slave of=0 up",
                "2@c slave of=0 up",
            ],
            false,
            "primary 1",
        );
        check(
            Some(0),
            &[
                "0@a master keys=5 old",
                "3@a slave of=0 up",
                "2@c slave of=0 up",
            ],
            false,
            "primary 0",
        );
    }

    #[test]
    fn an_empty_primary_never_stays_while_another_instance_holds_data() {
        check(
            Some(0),
            &[
                "0@a master keys=0 offset=0",
                "1@b slave of=0 offset=50 keys=9",
                "2@b slave of=0 offset=40 keys=9",
            ],
            false,
            "primary 1 promote 1",
        );
        check(
            Some(0),
            &["0@a master keys=0 feeds", "1@b slave of=0 up keys=9"],
            false,
            "primary 0",
        );
        check(
            Some(0),
            &["0@a master keys=0", "1@b slave of=0 keys=9"],
            true,
            "primary 0",
        );
    }

    #[test]
    fn a_held_back_primary_gives_way_to_the_instance_with_the_most_data() {
        let held = "0@a slave of=0 offset=30 keys=9";
        check(
            Some(0),
            &[
                held,
                "1@b slave of=0 offset=50 keys=9",
                "2@c slave of=0 offset=45 keys=9",
            ],
            false,
            "primary 1 promote 1",
        );
        check(
            Some(0),
            &[
                "0@a slave of=0 offset=60 keys=9",
                "1@b slave of=0 offset=50 keys=9",
            ],
            false,
            "primary 0 promote 0",
        );
        check(
            Some(0),
            &[held, "1@b slave of=0 offset=50 keys=9"],
            true,
            "primary 0 problem",
        );
    }

    #[test]
    fn an_instance_named_to_take_over_stays_named_until_it_is_promoted() {
        // 1 was named (a replica of the lost 0, not yet promoted); 2 now reports more:
        // 1 stays, its promotion asked again, so that 2 is never promoted too.
        check(
            Some(1),
            &[
                "1@b slave of=0 offset=50 keys=9",
                "2@c slave of=0 offset=60 keys=9",
            ],
            false,
            "primary 1 promote 1",
        );
        // Its old primary came back empty, as a master: still not a master to follow.
        check(
            Some(1),
            &[
                "0@a master keys=0",
                "1@b slave of=0 offset=50 keys=9",
                "2@c slave of=0 offset=60 keys=9",
            ],
            false,
            "primary 1 promote 1",
        );
        // A primary that restarted is held back (a replica of itself): chosen afresh.
        check(
            Some(1),
            &[
                "1@b slave of=1 offset=50 keys=9",
                "2@c slave of=1 offset=60 keys=9",
            ],
            false,
            "primary 2 promote 2",
        );
    }

    #[test]
    fn a_primary_that_no_report_shows_but_is_still_placed_is_down_not_gone() {
        let seen = [
            "1@b slave of=0 offset=50 keys=9",
            "2@c slave of=0 offset=60 keys=9",
        ];
        let parsed: Vec<(Seen<'static>, RedisInstanceStatus)> =
            seen.iter().map(|s| parse(s)).collect();
        let seen: Vec<Seen<'_>> = parsed
            .iter()
            .map(|(s, r)| Seen {
                redis: Some(r),
                ..*s
            })
            .collect();
        let prev = PrimaryStatus {
            ordinal: 0,
            cluster: Some("a".into()),
            endpoint: "10.0.0.0:6379".into(),
        };
        let placed = |o: u32| o <= 2;
        let d = choose(Some(&prev), &seen, Some(0), &placed, false);
        assert_eq!(d.primary.map(|p| p.ordinal), Some(0));
        assert!(d.promote.is_none());
        assert!(d.problem.unwrap().contains("is not running"));
    }

    #[test]
    fn a_replica_not_heard_from_since_the_primary_was_lost_is_waited_for() {
        // Instance 2's report predates the loss: it may hold the most data.
        let stale = "2@c slave of=0 up keys=9";
        check(
            Some(0),
            &[
                "0@a slave of=0 offset=30 keys=9",
                "1@b slave of=0 offset=50 keys=9",
                stale,
            ],
            false,
            "primary 0 problem",
        );
        check(
            Some(0),
            &[
                "0@a master keys=0 offset=0",
                "1@b slave of=0 offset=50 keys=9",
                stale,
            ],
            false,
            "primary 0 problem",
        );
        check(
            Some(0),
            &["1@b slave of=0 offset=50 keys=9", stale],
            false,
            "primary 0 problem",
        );
        // Its next report: unlinked, with its offset; it wins.
        check(
            Some(0),
            &[
                "1@b slave of=0 offset=50 keys=9",
                "2@c slave of=0 offset=70 keys=9",
            ],
            false,
            "primary 2 promote 2",
        );
        // A member that is gone does not hold the shard up: its instances are not ready.
        check(
            Some(0),
            &[
                "0@a slave of=0 offset=30 keys=9",
                "1@b slave of=0 offset=50 keys=9",
                "2@c slave of=0 up keys=9 down",
            ],
            false,
            "primary 1 promote 1",
        );
    }

    #[test]
    fn the_federation_follows_a_switchover_and_sentinel() {
        check(
            Some(0),
            &[
                "0@a slave of=1 up",
                "1@b master keys=3",
                "2@c slave of=1 up",
            ],
            false,
            "primary 1",
        );
        check(
            Some(0),
            &["0@a master down", "1@b master keys=3", "2@c slave of=1 up"],
            true,
            "primary 1",
        );
        check(
            Some(0),
            &["0@a master down", "1@b slave of=0", "2@c slave of=0"],
            false,
            "primary 0 problem",
        );
    }
}
