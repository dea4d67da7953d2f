//! The predictable-waits scenario, short and fast: at 10× what the
//! server answers, requests whose deadline the queue cannot meet are
//! refused at arrival with a `Retry-After` and let in later; those
//! served carry their estimated wait. Loose bounds only.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_benches::waits::{self, report, Setup, Variant};

fn fast() -> Setup {
    Setup {
        ttft: Duration::from_millis(10),
        tokens_per_sec: 1000.0,
        tokens: (10, 200),
        deadline: Duration::from_millis(800),
        // Half a second at 10× is ~85 arrivals: a backlog of a few
        // seconds. Two seconds (~340) took half a minute to drain alone
        // and, beside the rest of the suite, could take one client past
        // its 120 s patience.
        duration: Duration::from_millis(500),
        probe: Duration::from_millis(50),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_arrival_with_a_retry_after_and_let_in_later() {
    let setup = fast();
    let run = waits::run(&setup, 10.0, Variant::Told).await.unwrap();
    assert!(!run.records.is_empty());
    assert!(run.refused() > 0, "some refused at arrival at 10×");
    let retried: Vec<_> = run.records.iter().filter_map(|r| r.retry).collect();
    assert!(
        retried.iter().all(|(_, admitted)| admitted.is_some()),
        "every refused client was let in later"
    );
    assert!(
        run.records.iter().any(|r| r.eta.is_some()),
        "answers carry their estimate"
    );
    assert!(run.goodput() > 0.0);
    // Loose bounds: what was told is not nothing, and not wild.
    assert!(
        retried.iter().all(|(told, _)| !told.is_zero()),
        "a Retry-After of 0"
    );
    let (eta_error, samples) = run.eta_error();
    if samples >= 5 {
        assert!(eta_error.unwrap() < 1.0, "estimates off by {eta_error:?}");
    }
    // Each client resends its X-Request-Id: it is let in about when
    // told. Loose, as the estimates above: beside the rest of the suite
    // the holds this proxy learns run longer than the quiet bench's
    // (median off by half, 0.8 s, seen there; alone 0-12 %, the bench's
    // measure in RESULTS.md). Off by more than the wait itself would be
    // a Retry-After that says nothing.
    let (retry_error, retried_n) = run.retry_error();
    if retried_n >= 5 {
        assert!(
            retry_error.unwrap() < 1.0,
            "Retry-After off by {retry_error:?}"
        );
    }
    let text = report::markdown(&setup, &[run]);
    assert!(text.contains("| 10× | lengths told |"), "{text}");
}
