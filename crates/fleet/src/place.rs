//! Where the next request for a model goes: a pure decision over what
//! each upstream can take now.

use std::time::Duration;

use tokio::time::Instant;

/// How urgent a waiting request is: its effective priority level (0 is
/// priority 1, raised one step per aging period waited), then how long it
/// has waited. Smaller is more urgent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Urgency {
    /// The effective level, 0 (priority 1) to 9.
    pub level: usize,
    /// When it started waiting.
    pub since: Instant,
}

impl Urgency {
    /// Whether `self` should displace work of urgency `other` even though
    /// serving `self` costs a model load of `margin`: a better level, or
    /// the same level and waiting longer by more than `margin`.
    pub(crate) fn beats(self, other: Option<Urgency>, margin: Duration) -> bool {
        match other {
            None => true,
            Some(other) => {
                self.level < other.level
                    || (self.level == other.level && self.since + margin < other.since)
            }
        }
    }
}

/// What the request asking for a permit brings to the decision.
#[derive(Debug, Clone, Copy)]
pub struct Want {
    /// How urgent it is.
    pub urgency: Urgency,
    /// How many requests for its model wait, itself included.
    pub waiting: usize,
    /// Its conversation (`X-Session-Id`), hashed: it goes back to the
    /// upstream the conversation last ran on while that one has a permit
    /// free, so the server's prompt cache is reused.
    pub session: Option<u64>,
    /// How long a permit for its model is held on average, once measured:
    /// what waiting for one where the model is loaded would cost.
    pub hold: Option<Duration>,
}

/// One upstream as the decision sees it, for the model asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct View {
    /// Up, and not drained.
    pub(crate) healthy: bool,
    /// It may serve the model.
    pub(crate) serves: bool,
    /// Requests the model runs at once here.
    pub(crate) capacity: usize,
    /// Requests of the model running here.
    pub(crate) in_flight: usize,
    /// The model is loaded here.
    pub(crate) loaded: bool,
    /// Requests of every model running here.
    pub(crate) busy: usize,
    /// Another model may be loaded here without evicting one.
    pub(crate) room: bool,
    /// An idle model that may be evicted for this one.
    pub(crate) evictable: Option<std::sync::Arc<str>>,
    /// The model this upstream is being drained for, if any.
    pub(crate) switching: Option<std::sync::Arc<str>>,
    /// The most urgent request waiting for a model loaded here (none
    /// waiting: `None`).
    pub(crate) resident_urgency: Option<Urgency>,
    /// The operator's weight: a heavier upstream takes more.
    pub(crate) weight: f64,
    /// The request's conversation last ran here.
    pub(crate) sticky: bool,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Choice {
    /// Run it on `upstream` now; `load` when the model must be loaded
    /// there first, evicting `evict` if named.
    Place {
        upstream: usize,
        load: bool,
        evict: Option<std::sync::Arc<str>>,
    },
    /// Nothing can take it now, but `upstream` should stop taking work for
    /// its models so this one can be loaded once they finish.
    Switch(usize),
    /// Wait for a permit to come back.
    Wait,
}

/// Where a request for `model` goes, in this order:
///
/// 1. an upstream with the model loaded and a free permit (the one its
///    conversation ran on, else the least busy for its weight);
/// 2. if the model is loaded somewhere and its permits there come back
///    sooner than a load would take (`margin`; the average hold times
///    the rounds of waiting requests), wait for one of them;
/// 3. an upstream where loading it costs least: room for another model
///    first, else one whose evicted model is idle and wanted by nobody;
/// 4. none, and the model is loaded nowhere: the busy upstream whose
///    work is least urgent is drained for it if it is more urgent than
///    that work by more than `margin` (the cost of a load), else it
///    waits.
///
/// A busy model is never evicted: an upstream is drained first.
pub(crate) fn choose(model: &str, want: &Want, views: &[View], margin: Duration) -> Choice {
    let open_to = |v: &View| v.switching.as_deref().is_none_or(|s| s == model);
    let ratio = |v: &View| (v.in_flight as f64 + 1.0) / (v.capacity.max(1) as f64 * v.weight);
    // 1. Loaded with a free permit.
    let loaded_free = views.iter().enumerate().filter(|(_, v)| {
        v.healthy && v.serves && v.loaded && v.in_flight < v.capacity && open_to(v)
    });
    let best = loaded_free.min_by(|(_, va), (_, vb)| {
        (!va.sticky, ratio(va), va.busy)
            .partial_cmp(&(!vb.sticky, ratio(vb), vb.busy))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some((upstream, _)) = best {
        return Choice::Place {
            upstream,
            load: false,
            evict: None,
        };
    }
    // 2. Loaded, busy: wait if that is shorter than a load.
    let loaded_capacity: usize = views
        .iter()
        .filter(|v| v.healthy && v.serves && v.loaded && open_to(v))
        .map(|v| v.capacity)
        .sum();
    if loaded_capacity > 0 {
        if let Some(hold) = want.hold {
            let rounds = want.waiting.div_ceil(loaded_capacity).max(1);
            if hold.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX)) < margin {
                return Choice::Wait;
            }
        }
    }
    // 3. Load it where that costs least.
    let loadable = views.iter().enumerate().filter(|(_, v)| {
        v.healthy && v.serves && !v.loaded && open_to(v) && (v.room || v.evictable.is_some())
    });
    let best = loadable.min_by(|(_, a), (_, b)| {
        (!a.room, a.busy as f64 / a.weight)
            .partial_cmp(&(!b.room, b.busy as f64 / b.weight))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if let Some((upstream, view)) = best {
        return Choice::Place {
            upstream,
            load: true,
            evict: if view.room {
                None
            } else {
                view.evictable.clone()
            },
        };
    }
    // 4. Drain the upstream whose work matters least, if this matters
    //    more by more than a load costs; not for a second copy of a
    //    model loaded already (its permits come back), nor twice.
    if loaded_capacity > 0
        || views
            .iter()
            .any(|v| v.healthy && v.switching.as_deref() == Some(model))
    {
        return Choice::Wait;
    }
    let drainable = views.iter().enumerate().filter(|(_, v)| {
        v.healthy
            && v.serves
            && !v.loaded
            && v.switching.is_none()
            && want.urgency.beats(v.resident_urgency, margin)
    });
    // Nobody waiting for its models first, then the least urgent work.
    let best = drainable.max_by_key(|(_, v)| {
        (
            v.resident_urgency.is_none(),
            v.resident_urgency,
            std::cmp::Reverse(v.busy),
        )
    });
    match best {
        Some((upstream, _)) => Choice::Switch(upstream),
        None => Choice::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn view() -> View {
        View {
            healthy: true,
            serves: true,
            capacity: 2,
            weight: 1.0,
            ..View::default()
        }
    }

    fn loaded(in_flight: usize) -> View {
        View {
            loaded: true,
            in_flight,
            busy: in_flight,
            ..view()
        }
    }

    fn want(level: usize, waited_s: u64, waiting: usize) -> Want {
        let now = Instant::now() + Duration::from_secs(3600);
        Want {
            urgency: Urgency {
                level,
                since: now - Duration::from_secs(waited_s),
            },
            waiting,
            session: None,
            hold: Some(Duration::from_millis(500)),
        }
    }

    fn urgency(level: usize, waited_s: u64) -> Option<Urgency> {
        Some(want(level, waited_s, 1).urgency)
    }

    const MARGIN: Duration = Duration::from_secs(3);

    fn place(upstream: usize, load: bool, evict: Option<&str>) -> Choice {
        Choice::Place {
            upstream,
            load,
            evict: evict.map(Arc::from),
        }
    }

    #[test]
    fn the_table() {
        let full_with = |_resident_model: &str, resident: Option<Urgency>| View {
            busy: 2,
            evictable: None,
            room: false,
            resident_urgency: resident,
            switching: None,
            ..view()
        };
        let cases: Vec<(&str, Vec<View>, Want, Choice)> = vec![
            (
                "loaded with a free permit, the least busy",
                vec![loaded(1), loaded(0)],
                want(4, 0, 1),
                place(1, false, None),
            ),
            (
                "loaded and full, permits back sooner than a load: wait",
                vec![
                    loaded(2),
                    View {
                        room: true,
                        ..view()
                    },
                ],
                want(4, 0, 2),
                Choice::Wait,
            ),
            (
                "so many waiting that a load is sooner: load elsewhere",
                vec![
                    loaded(2),
                    View {
                        room: true,
                        ..view()
                    },
                ],
                want(4, 0, 13),
                place(1, true, None),
            ),
            (
                "long holds: load elsewhere at once",
                vec![
                    loaded(2),
                    View {
                        room: true,
                        ..view()
                    },
                ],
                Want {
                    hold: Some(Duration::from_secs(30)),
                    ..want(4, 0, 1)
                },
                place(1, true, None),
            ),
            (
                "nothing measured yet: load elsewhere",
                vec![
                    loaded(2),
                    View {
                        room: true,
                        ..view()
                    },
                ],
                Want {
                    hold: None,
                    ..want(4, 0, 1)
                },
                place(1, true, None),
            ),
            (
                "room beats evicting",
                vec![
                    View {
                        evictable: Some(Arc::from("b:latest")),
                        ..view()
                    },
                    View {
                        room: true,
                        busy: 1,
                        ..view()
                    },
                ],
                want(4, 0, 1),
                place(1, true, None),
            ),
            (
                "evict an idle model nobody waits for",
                vec![View {
                    evictable: Some(Arc::from("b:latest")),
                    ..view()
                }],
                want(4, 0, 1),
                place(0, true, Some("b:latest")),
            ),
            (
                "down upstreams take nothing",
                vec![
                    View {
                        healthy: false,
                        ..loaded(0)
                    },
                    View {
                        room: true,
                        ..view()
                    },
                ],
                want(4, 0, 1),
                place(1, true, None),
            ),
            (
                "an upstream that may not serve the model takes nothing",
                vec![View {
                    serves: false,
                    ..loaded(0)
                }],
                want(4, 0, 1),
                Choice::Wait,
            ),
            (
                "an upstream drained for another model takes no more of this one",
                vec![View {
                    switching: Some(Arc::from("c:latest")),
                    ..loaded(1)
                }],
                want(4, 0, 5),
                Choice::Wait,
            ),
            (
                "busy with less urgent work: drain it",
                vec![full_with("a", urgency(4, 0))],
                want(0, 0, 1),
                Choice::Switch(0),
            ),
            (
                "same level, waited longer than a load costs: drain",
                vec![full_with("a", urgency(4, 0))],
                want(4, 10, 1),
                Choice::Switch(0),
            ),
            (
                "same level, not by more than a load costs: wait",
                vec![full_with("a", urgency(4, 0))],
                want(4, 2, 1),
                Choice::Wait,
            ),
            (
                "busy with more urgent work: wait",
                vec![full_with("a", urgency(1, 0))],
                want(4, 60, 1),
                Choice::Wait,
            ),
            (
                "busy with work nobody waits for: drain that one first",
                vec![full_with("a", urgency(6, 0)), full_with("b", None)],
                want(4, 0, 1),
                Choice::Switch(1),
            ),
            (
                "drain the one whose work matters least",
                vec![full_with("a", urgency(2, 0)), full_with("b", urgency(6, 0))],
                want(1, 0, 1),
                Choice::Switch(1),
            ),
            (
                "already draining for it: wait",
                vec![
                    full_with("a", urgency(6, 0)),
                    View {
                        switching: Some(Arc::from("m:latest")),
                        ..full_with("b", urgency(6, 0))
                    },
                ],
                want(1, 0, 1),
                Choice::Wait,
            ),
            (
                "loaded elsewhere and busy: no drain for a second copy",
                vec![loaded(2), full_with("b", None)],
                Want {
                    hold: Some(Duration::from_secs(30)),
                    ..want(0, 0, 1)
                },
                Choice::Wait,
            ),
            (
                "the conversation's upstream, when it has a free permit",
                vec![
                    loaded(0),
                    View {
                        sticky: true,
                        ..loaded(1)
                    },
                ],
                want(4, 0, 1),
                place(1, false, None),
            ),
            (
                "weight: the heavier upstream takes more",
                vec![
                    loaded(1),
                    View {
                        weight: 3.0,
                        capacity: 4,
                        ..loaded(2)
                    },
                ],
                want(4, 0, 1),
                place(1, false, None),
            ),
        ];
        for (name, views, want, expected) in cases {
            assert_eq!(
                choose("m:latest", &want, &views, MARGIN),
                expected,
                "{name}"
            );
        }
    }
}
