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
