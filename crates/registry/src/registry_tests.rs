//! Unit tests of `registry.rs`.

use std::time::Duration;

use super::*;

#[test]
fn capabilities_beyond_the_labels_are_counted_as_other() {
    let entry = |agent: &str, capabilities: &[&str]| {
        Entry::new(agent, "http://h:1", Duration::from_secs(1))
            .with_capabilities(capabilities.iter().copied())
    };
    let mut labelled = BTreeSet::new();
    let live = [
        entry("a", &["x", "y", "z"]),
        entry("b", &["y", "w"]),
        entry("c", &["v"]),
    ];
    let counts = by_label(&live, &mut labelled, 2);
    let labels: Vec<&str> = labelled.iter().map(String::as_str).collect();
    assert_eq!(labels, ["v", "y"], "y is the most listed, then by name");
    let expected = [("other", 2), ("v", 1), ("y", 2)];
    let expected: BTreeMap<String, usize> =
        expected.iter().map(|(c, n)| (c.to_string(), *n)).collect();
    assert_eq!(counts, expected, "a once under other for x and z");

    // Labels stay given: a newcomer is other even once v is gone.
    let counts = by_label(&[entry("d", &["u"])], &mut labelled, 2);
    assert_eq!(labelled.len(), 2);
    assert_eq!(counts.get("other"), Some(&1));
}

#[test]
fn agents_are_counted_once_per_capability_they_list() {
    let entry = |agent: &str, capabilities: &[&str]| {
        Entry::new(agent, "http://h:1", Duration::from_secs(1))
            .with_capabilities(capabilities.iter().copied())
    };
    type Counts<'a> = &'a [(&'a str, usize)];
    let table: [(&[Entry], Counts<'_>); 3] = [
        (&[], &[]),
        (&[entry("a", &["x", "x"])], &[("x", 1)]),
        (
            &[entry("a", &["x", "y"]), entry("b", &["y"]), entry("c", &[])],
            &[("x", 1), ("y", 2)],
        ),
    ];
    for (live, expected) in table {
        let counts = by_capability(live);
        let expected: BTreeMap<String, usize> =
            expected.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        assert_eq!(counts, expected, "{live:?}");
    }
}
