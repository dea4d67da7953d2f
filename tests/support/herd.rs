//! What the herd tests share, whether one proxy or three replicas face
//! it: the agents' classes, the upstream they meet, and the check that
//! priority 1 went first.

use std::collections::BTreeMap;
use std::time::Duration;

use corral_mock_ollama::{MockConfig, Stats};

/// The herd's classes: name, priority and how many agents (131 in all).
pub const CLASSES: [(&str, u8, usize); 4] = [
    ("system", 1, 10),
    ("opus", 3, 20),
    ("sonnet", 5, 60),
    ("batch", 9, 41),
];

/// How many agents the herd has.
pub fn agents() -> usize {
    CLASSES.iter().map(|c| c.2).sum()
}

/// The upstream a herd meets: Ollama with `--parallel 4` and room for 4
/// more in its queue, quick to answer.
pub fn upstream() -> MockConfig {
    MockConfig {
        parallel: 4,
        max_queue: 4,
        ttft: Duration::from_millis(5),
        tokens_per_sec: 1000.0,
        tokens: 5,
        ..MockConfig::default()
    }
}

/// The herd's `[[classes]]` and `[[agents]]`, as TOML: each class at the
/// priority `priority(name, its usual priority)` gives it, held there
/// (`priorities = [p, p]`) when `pinned`.
pub fn classes_toml(priority: impl Fn(&str, u8) -> u8, pinned: bool) -> String {
    let mut text = String::new();
    for (name, usual, count) in CLASSES {
        let p = priority(name, usual);
        text.push_str(&format!(
            "\n[[classes]]\nname = \"{name}\"\npriority = {p}\n"
        ));
        if pinned {
            text.push_str(&format!("priorities = [{p}, {p}]\n"));
        }
        for i in 0..count {
            text.push_str(&format!(
                "[[agents]]\nid = \"{name}-{i}\"\nclass = \"{name}\"\n"
            ));
        }
    }
    text
}

/// Agent `i` of `class`'s `n`-th request to `url` (`/api/generate`), at
/// `priority`.
pub fn ask(
    url: &str,
    class: &str,
    i: usize,
    n: usize,
    priority: u8,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    crate::request_with(
        "POST",
        url,
        format!(r#"{{"model":"llama3","prompt":"{class} {i} asks {n}","stream":false}}"#),
        &[
            ("x-agent-id", &format!("{class}-{i}")),
            ("x-priority", &priority.to_string()),
        ],
    )
}

/// The median of `values`.
pub fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Asserts that priority 9 waited and priority 1's median wait was at
/// most a fifth of it, in `waits` by priority (`what` names the run).
pub fn assert_priority_one_went_first(mut waits: BTreeMap<u8, Vec<u64>>, what: &str) {
    let p1 = median(waits.get_mut(&1).expect("priority 1 asked"));
    let p9 = median(waits.get_mut(&9).expect("priority 9 asked"));
    eprintln!("median wait {what} (ms): priority 1 {p1}, priority 9 {p9}");
    assert!(p9 > 0, "priority 9 waited");
    assert!(
        p1 * 5 <= p9,
        "priority 1 median wait {p1} ms is a small fraction of priority 9's {p9} ms"
    );
}

/// Asserts the upstream never ran more than its 4 at once nor answered
/// 503 (`what` names the run).
pub fn assert_the_upstream_kept_up(stats: &Stats, what: &str) {
    assert!(
        stats.peak_in_flight <= 4,
        "the upstream saw {} at once {what}",
        stats.peak_in_flight
    );
    assert_eq!(stats.busy_rejections, 0, "no upstream 503 {what}");
}
