//! `/corral/sagas` across replicas: the done-when of issue 17 (a
//! replica killed with SIGKILL between step 2 and 3 of 4, step 3 failing
//! after the restart, has steps 2 and 1 compensated exactly once, by
//! another replica resuming from the Redis log), and a replica running
//! `max_running` sagas turning more away.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use corral_e2e::{eventually_async, metric_sum, mock, Redis};
use http::StatusCode;
use support::replica::{prefix, Replica};
use support::steps::{effects_of, submit, until_status, Steps, LOOPBACK_STEPS};

fn replica_config(upstream: &str, redis: &str, keys: &str) -> String {
    format!(
        "[upstream]\nurl = \"{upstream}\"\n\n[state]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nkey_prefix = \"{keys}\"\n\n[sagas]\nallow_private_targets = true\nlease_ttl = \"1s\"\nresume_interval = \"200ms\"\ncompensation_backoff = \"100ms\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_between_step_two_and_three_has_steps_two_and_one_compensated_once_by_another(
) {
    let redis = Redis::start().await;
    let upstream = mock(corral_e2e::fast()).await;
    let config = replica_config(&upstream.url(), &redis.url, &prefix("sagas"));
    let steps = Steps::start(3).await;

    let mut first = Replica::start("saga-first", &config).await;
    let submitted = submit(&first.url, "planner", steps.saga(4)).await;
    assert_eq!(
        submitted.status,
        StatusCode::ACCEPTED,
        "{}",
        submitted.text()
    );
    let id = submitted.json()["id"].as_str().unwrap().to_string();

    // Step 3's server holds the call: steps 1 and 2 are done.
    eventually_async("step 3 is called", || async {
        steps.calls_to("/3/action") == 1
    })
    .await;
    assert_eq!(effects_of(&steps, &id), ["/1/action", "/2/action"]);
    first.kill();
    steps.open_gate();

    let second = Replica::start("saga-second", &config).await;
    let over = until_status(&second.url, "planner", &id, "compensated").await;

    assert_eq!(
        effects_of(&steps, &id),
        ["/1/action", "/2/action", "/2/compensate", "/1/compensate"],
        "steps 2 then 1 compensated, each once"
    );
    assert_eq!(steps.calls_to("/2/compensate"), 1);
    assert_eq!(steps.calls_to("/1/compensate"), 1);
    assert_eq!(
        steps.calls_to("/3/action"),
        2,
        "re-run after the restart, with its key"
    );
    assert_eq!(steps.calls_to("/4/action"), 0, "step 4 never ran");
    assert_eq!(
        steps.calls_to("/3/compensate"),
        0,
        "a failed step is not compensated"
    );
    assert_eq!(over["steps"][2]["state"], "failed");
    assert_eq!(over["steps"][3]["state"], "pending");
    assert_eq!(
        metric_sum(&second.url, "corral_sagas_compensated_total").await,
        1.0
    );
    assert_eq!(
        metric_sum(&second.url, "corral_coordination_failures_total").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_running_max_running_sagas_answers_503_with_retry_after() {
    let upstream = mock(corral_e2e::fast()).await;
    let config = format!("{LOOPBACK_STEPS}max_running = 1\n");
    let corral = corral_e2e::proxy_toml(&upstream.url(), &config).await;
    let url = corral.url();
    let steps = Steps::start(1).await;
    let first = submit(&url, "planner", steps.saga(1)).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    eventually_async("step 1 runs", || async { steps.calls_to("/1/action") == 1 }).await;
    let full = submit(&url, "planner", steps.saga(1)).await;
    assert_eq!(
        full.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        full.text()
    );
    assert_eq!(full.header("retry-after"), Some("1"));
    steps.open_gate();
    let id = first.json()["id"].as_str().unwrap().to_string();
    until_status(&url, "planner", &id, "compensated").await;
    let again = submit(&url, "planner", steps.saga(1)).await;
    assert_eq!(
        again.status,
        StatusCode::ACCEPTED,
        "room again: {}",
        again.text()
    );
}
