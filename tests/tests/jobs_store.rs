//! The Redis job store against a real `redis-server`: a job whose runner
//! stops renewing its claim is taken over after the lease and run again,
//! and the runner that lost it can no longer write; a cancellation on one
//! replica reaches the runner on another; the store's bound holds.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_core::RedisState;
use corral_e2e::{within, Redis};
use corral_jobs::{Head, JobRequest, Jobs, JobsConfig, JobsRefused, Outcome, Renewal, Status};

fn request() -> JobRequest {
    JobRequest {
        method: "POST".into(),
        path: "/api/generate".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: "{\"model\":\"llama3\"}".into(),
        agent: "planner".into(),
        authenticated: true,
        callback_url: None,
        client: Some("10.0.0.7".into()),
        idempotency_key: None,
    }
}

fn store(
    redis: &Redis,
    prefix: &str,
    replica: &str,
    config: &JobsConfig,
) -> (Jobs, corral_jobs::Claims) {
    let state = RedisState::new(&redis.url, prefix, replica, Duration::from_millis(500)).unwrap();
    Jobs::redis(state, config.clone())
}

fn config() -> JobsConfig {
    JobsConfig {
        lease: Duration::from_millis(300),
        poll_interval: Duration::from_millis(50),
        ..JobsConfig::default()
    }
}

fn prefix(test: &str) -> String {
    format!("corral-jobs-{}-{test}:", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_runner_stops_renewing_is_taken_over_and_the_old_runner_is_fenced_off() {
    let redis = Redis::start().await;
    let keys = prefix("takeover");
    // a runs one job at most: it cannot take its own back.
    let one = JobsConfig {
        max_running: 1,
        ..config()
    };
    let (a, mut a_claims) = store(&redis, &keys, "a", &one);
    let job = a.submit(request()).await.unwrap().state;
    let first = within(a_claims.recv()).await.unwrap();
    assert_eq!((first.id.clone(), first.attempt), (job.id.clone(), 1));
    assert_eq!(
        first.request.body,
        request().body,
        "the body comes back as sent"
    );
    assert_eq!(first.request.client, request().client);
    assert!(a.started(&first, "a").await);
    assert!(a.dispatched(&first).await);
    assert!(a.append(&first, vec!["partial".into()]).await);
    // While it renews, nobody takes it.
    let (b, mut b_claims) = store(&redis, &keys, "b", &config());
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(a.renew(&first).await, Renewal::Kept, "still a's");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(10), b_claims.recv())
            .await
            .is_err()
    );
    // a stops renewing (it stalled, or died): b takes it over, from the start.
    let second = within(b_claims.recv()).await.unwrap();
    assert_eq!((second.id.clone(), second.attempt), (job.id.clone(), 2));
    assert!(b.started(&second, "b").await);
    assert!(
        b.chunks(&job.id, 0)
            .await
            .unwrap()
            .unwrap()
            .chunks
            .is_empty(),
        "the first run's chunks are gone"
    );
    // a can write nothing more.
    assert_eq!(a.renew(&first).await, Renewal::Lost);
    assert!(!a.append(&first, vec!["late".into()]).await);
    assert!(a.finish(&first, &Outcome::Done).await.is_none());
    // b ends it.
    assert!(
        b.head(
            &second,
            Head {
                status: 200,
                headers: vec![]
            }
        )
        .await
    );
    assert!(
        b.append(
            &second,
            vec![
                bytes::Bytes::from_static(b"whole \xF0\x9F"),
                bytes::Bytes::from_static(b"\x90\x82 answer")
            ]
        )
        .await
    );
    let ended = b.finish(&second, &Outcome::Done).await.unwrap();
    assert_eq!(ended.status, Status::Done);
    assert_eq!(ended.attempts, 2);
    let read = a.state(&job.id).await.unwrap().unwrap();
    assert_eq!(read.status, Status::Done, "every replica reads it");
    assert_eq!(
        a.chunks(&job.id, 0).await.unwrap().unwrap().chunks.concat(),
        "whole 🐂 answer".as_bytes()
    );
    // Ended jobs leave the stream: nobody claims it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), a_claims.recv())
            .await
            .is_err()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(10), b_claims.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_on_one_replica_reaches_the_runner_on_another() {
    let redis = Redis::start().await;
    let keys = prefix("cancel");
    let (a, mut a_claims) = store(&redis, &keys, "a", &config());
    let job = a.submit(request()).await.unwrap().state;
    let claim = within(a_claims.recv()).await.unwrap();
    assert!(a.started(&claim, "a").await);
    let (b, _b_claims) = store(&redis, &keys, "b", &config());
    // The message reaches a only once a listens: wait until both do.
    let probe = RedisState::new(&redis.url, &keys, "probe", Duration::from_millis(500)).unwrap();
    corral_e2e::eventually_async("both replicas listen for cancellations", || async {
        let reply: Vec<corral_core::redis::Value> = probe
            .query(
                corral_core::redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(probe.key("jobs:cancel")),
            )
            .await
            .unwrap_or_default();
        reply
            .get(1)
            .and_then(|n| corral_core::redis::from_redis_value::<i64>(n.clone()).ok())
            .is_some_and(|n| n >= 2)
    })
    .await;
    let state = b.cancel(&job.id).await.unwrap().unwrap();
    assert_eq!(state.status, Status::Queued, "its runner ends it");
    let mut told = claim.cancelled.clone();
    within(told.wait_for(|c| *c)).await.unwrap();
    let ended = a.finish(&claim, &Outcome::Cancelled).await.unwrap();
    assert_eq!(ended.status, Status::Cancelled);

    // One no runner took yet ends at once.
    let (c, _c_claims) = store(
        &redis,
        &prefix("cancel-queued"),
        "c",
        &JobsConfig {
            max_running: 1,
            ..config()
        },
    );
    let _busy = c.submit(request()).await.unwrap().state;
    // The first is claimed (older in the stream), the second never is.
    let waiting = c.submit(request()).await.unwrap().state;
    assert_eq!(
        c.cancel(&waiting.id).await.unwrap().unwrap().status,
        Status::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_refuses_past_max_jobs() {
    let redis = Redis::start().await;
    let (jobs, _claims) = store(
        &redis,
        &prefix("full"),
        "a",
        &JobsConfig {
            max_jobs: 2,
            ..config()
        },
    );
    jobs.submit(request()).await.unwrap();
    jobs.submit(request()).await.unwrap();
    assert!(matches!(
        jobs.submit(request()).await,
        Err(JobsRefused::Full { held: 2 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_its_runner_was_gone_ends_cancelled_on_the_replica_that_takes_it() {
    let redis = Redis::start().await;
    let keys = prefix("cancel-gone");
    let one = JobsConfig {
        max_running: 1,
        ..config()
    };
    let (a, mut a_claims) = store(&redis, &keys, "a", &one);
    let job = a.submit(request()).await.unwrap().state;
    let first = within(a_claims.recv()).await.unwrap();
    assert!(a.started(&first, "a").await);
    // a stops (it never renews again); its owner cancels meanwhile, and
    // the message reaches nobody who runs it.
    let (b, mut b_claims) = store(&redis, &keys, "b", &config());
    let state = b.cancel(&job.id).await.unwrap().unwrap();
    assert_ne!(
        state.status,
        Status::Cancelled,
        "a runner had it: its runner ends it"
    );
    let second = within(b_claims.recv()).await.unwrap();
    assert!(*second.cancelled.borrow(), "the claim comes cancelled");
    assert!(b.started(&second, "b").await);
    let ended = b.finish(&second, &Outcome::Cancelled).await.unwrap();
    assert_eq!(ended.status, Status::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_tells_a_runner_its_job_was_cancelled_when_the_message_was_missed() {
    let redis = Redis::start().await;
    let keys = prefix("cancel-flag");
    let (a, mut a_claims) = store(&redis, &keys, "a", &config());
    let job = a.submit(request()).await.unwrap().state;
    let claim = within(a_claims.recv()).await.unwrap();
    assert!(a.started(&claim, "a").await);
    // The flag set behind every replica's back, as if the message was lost.
    let state = RedisState::new(&redis.url, &keys, "x", Duration::from_millis(500)).unwrap();
    let _: i64 = state
        .query(
            corral_core::redis::cmd("HSET")
                .arg(state.key(&format!("job:{}", job.id)))
                .arg("cancel")
                .arg("1"),
        )
        .await
        .unwrap();
    assert_eq!(a.renew(&claim).await, Renewal::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_on_two_replicas_gets_one_job() {
    let redis = Redis::start().await;
    let keys = prefix("idempotent");
    let (a, _a_claims) = store(&redis, &keys, "a", &config());
    let (b, _b_claims) = store(&redis, &keys, "b", &config());
    let keyed = || JobRequest {
        idempotency_key: Some("saga-1:0:action".into()),
        ..request()
    };
    let first = a.submit(keyed()).await.unwrap();
    let again = b.submit(keyed()).await.unwrap();
    assert!(!first.repeated && again.repeated);
    assert_eq!(first.state.id, again.state.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_agents_jobs_are_bounded_across_replicas_and_an_ended_one_makes_room() {
    let redis = Redis::start().await;
    let keys = prefix("per-agent");
    let bounded = JobsConfig {
        max_jobs_per_agent: 2,
        ..config()
    };
    let (a, mut a_claims) = store(&redis, &keys, "a", &bounded);
    let (b, mut b_claims) = store(&redis, &keys, "b", &bounded);
    a.submit(request()).await.unwrap();
    let second = b.submit(request()).await.unwrap().state;
    assert!(matches!(
        a.submit(request()).await,
        Err(JobsRefused::AgentFull { held: 2 })
    ));
    // The second ends, on whichever replica claimed it: room for one.
    within(async {
        loop {
            let (runner, claim) = tokio::select! {
                Some(claim) = a_claims.recv() => (&a, claim),
                Some(claim) = b_claims.recv() => (&b, claim),
            };
            if claim.id == second.id {
                assert!(runner.started(&claim, "r").await);
                runner.finish(&claim, &Outcome::Done).await.unwrap();
                return;
            }
        }
    })
    .await;
    assert!(a.submit(request()).await.is_ok());
}
