//! The scenario runner itself, on a small fleet for a few seconds: both
//! runs complete, the report and the chart are written, and through
//! Corral the upstream never queues and nothing breaks.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_benches::herd::{self, design_fleet, Mode, Options, Outcome};

fn small() -> Options {
    let mut fleet = design_fleet();
    for class in &mut fleet {
        class.agents = class.agents.div_ceil(10);
        class.think = Duration::from_millis(200);
        class.tokens = 8;
    }
    Options {
        duration: Duration::from_secs(2),
        grace: Duration::from_secs(2),
        fleet,
        ttft: Duration::from_millis(20),
        tokens_per_sec: 200.0,
        load_time: Duration::ZERO,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_herd_runs_direct_and_through_corral() {
    let options = small();
    let baseline = herd::unloaded(&options).await.unwrap();
    assert!(baseline.p50 <= baseline.p99);
    let direct = herd::run(&options, Mode::Direct).await.unwrap();
    let corral = herd::run(&options, Mode::Corral).await.unwrap();

    for run in [&direct, &corral] {
        assert!(
            !run.records.is_empty(),
            "{} sent nothing",
            run.mode.as_str()
        );
        assert!(
            run.records.iter().any(|r| r.outcome.is_answer()),
            "{} got no answer",
            run.mode.as_str()
        );
        assert!(!run
            .records
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_))));
    }
    // Through Corral, the upstream holds no queue: Corral does.
    let upstream = corral.upstream.as_ref().unwrap();
    assert_eq!(upstream.peak_queued, 0);
    assert!(upstream
        .peak_in_flight_by_model
        .values()
        .all(|peak| *peak as usize <= options.capacity));
    // Corral's counters were read, and every answer it served was seen
    // by the upstream or its cache.
    let counters = corral.corral.as_ref().unwrap();
    assert!(counters.cache_hits + counters.cache_misses > 0.0);
    assert!(corral.records.iter().all(|r| r.queued.is_some()
        || !matches!(r.outcome, Outcome::Served)
        || r.kind == herd::Kind::Embed));

    let report = herd::report::markdown(&options, &baseline, &[direct.clone(), corral.clone()]);
    for class in &options.fleet {
        assert!(report.contains(&format!("| {} (p{}", class.name, class.priority)));
    }
    assert!(report.contains("| corral |") && report.contains("| direct |"));
    let svg = herd::svg(&options, &[direct, corral]).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("system (p1)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_herd_runs_through_three_replicas_sharing_redis() {
    let options = small();
    let replicas = herd::run(&options, Mode::Replicas).await.unwrap();
    assert!(replicas.records.iter().any(|r| r.outcome.is_answer()));
    assert!(!replicas
        .records
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed(_))));
    // Three replicas, one upstream: its capacity held across them.
    let upstream = replicas.upstream.as_ref().unwrap();
    assert_eq!(upstream.peak_queued, 0);
    assert!(upstream
        .peak_in_flight_by_model
        .values()
        .all(|peak| *peak as usize <= options.capacity));
    let counters = replicas.corral.as_ref().unwrap();
    assert!(
        counters.cache_hits + counters.cache_misses > 0.0,
        "every replica's counters read"
    );
    assert_eq!(replicas.mode.as_str(), "corral ×3, Redis");
}
