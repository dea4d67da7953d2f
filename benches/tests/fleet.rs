//! The fleet scenario on fast servers (10 ms to the first token, 100 ms
//! a load, two requests per agent): through Corral over two servers
//! that each hold one model, work is grouped by model (far fewer loads
//! than round robin) and nothing waits inside either server. Counts
//! only, no wall-clock bound.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_benches::fleet::{self, report, Setup, Variant};

fn fast() -> Setup {
    Setup {
        // The whole herd, on fast servers: 131 agents per model share
        // make the queues (a herd a fifth this size groups worse: agents
        // of a model all between two requests leave it idle, and it is
        // evicted).
        requests: 2,
        parallel: 2,
        load_time: Duration::from_millis(100),
        ttft: Duration::from_millis(10),
        tokens_per_sec: 200.0,
        tokens: 3,
        deadline: Duration::from_secs(30),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corral_over_two_servers_loads_models_far_less_than_round_robin_and_queues_nothing_inside()
{
    let setup = fast();
    let corral = fleet::run(&setup, Variant::Corral).await.unwrap();
    let naive = fleet::run(&setup, Variant::RoundRobin).await.unwrap();
    for run in [&corral, &naive] {
        assert_eq!(run.records.len(), setup.total_requests());
        assert_eq!(
            run.errors(),
            0,
            "{}: {:?}",
            run.variant.as_str(),
            run.records
        );
        assert_eq!(run.servers.len(), 2);
    }
    assert_eq!(
        corral.peak_queued(),
        [0, 0],
        "nothing waited inside a server: {:?}",
        corral.servers
    );
    // Corral never runs more at once on a server than its parallelism.
    for server in &corral.servers {
        assert!(
            server.peak_in_flight as usize <= setup.parallel,
            "{server:?}"
        );
    }
    let ratio = report::loads_ratio(&corral, &naive);
    assert!(
        ratio >= report::LOADS_RATIO,
        "{} loads through Corral against {} round robin",
        corral.loads(),
        naive.loads()
    );
    let text = report::markdown(&setup, &[corral, naive]);
    for section in [
        "### Runs",
        "### Latency by priority",
        "### The issue's targets",
    ] {
        assert!(text.contains(section), "{section} in:\n{text}");
    }
}
