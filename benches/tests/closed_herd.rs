//! The closed herd on a small fleet: every variant finishes its work,
//! the upstream's busy slots are read, and the report has its sections.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_benches::herd::closed::{self, report::Rounds, Setup, Variant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_closed_herd_runs_every_variant_to_its_end() {
    let setup = Setup {
        agents: vec![(1, 2), (5, 6), (9, 4)],
        requests: 2,
        ..Setup::default()
    };
    let options = closed::options(&setup);
    let mut results = Vec::new();
    for variant in [
        Variant::Shipped,
        Variant::Strict,
        Variant::NoReserve,
        Variant::Direct,
    ] {
        let run = closed::run(&options, variant).await.unwrap();
        assert_eq!(run.records.len(), 24, "{}", variant.as_str());
        assert!(
            run.records.iter().all(|r| r.outcome.is_answer()),
            "{}: {:?}",
            variant.as_str(),
            run.records
                .iter()
                .map(|r| r.outcome.clone())
                .collect::<Vec<_>>()
        );
        assert!(run.wall >= setup.ideal(), "no faster than the ideal");
        assert!(!run.busy.is_empty(), "the busy slots were read");
        let upstream = run.upstream.as_ref().unwrap();
        assert!(upstream.peak_in_flight as usize <= setup.capacity);
        if variant != Variant::Direct {
            assert!(run.corral.is_some(), "Corral's counters were read");
        }
        results.push(Rounds {
            variant,
            runs: vec![run],
        });
    }
    // The strict reserve never lends.
    let strict = &results[1].runs[0];
    assert_eq!(strict.corral.as_ref().unwrap().reserve_lent, 0.0);

    let text = closed::report::markdown(&setup, Some("reserve = {}"), &results);
    for section in [
        "### Wall time",
        "### Latency by priority",
        "### The upstream's busy slots",
        "### The issue's targets",
    ] {
        assert!(text.contains(section), "{section} in:\n{text}");
    }
    assert!(results[0].mean_busy() > 0.0);
    assert!(results[0].wall() > Duration::ZERO);
}
