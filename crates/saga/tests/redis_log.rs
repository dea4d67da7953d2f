//! `RedisLog` against a real `redis-server` (on a free port, or
//! `REDIS_URL`): durable appends, the unfinished set, leases and a
//! takeover by another runner.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::RedisState;
use corral_saga::{
    RedisLog, Runner, Saga, SagaConfig, SagaError, SagaLog, SagaStatus, StepContext, Transition,
};
use serde_json::json;

use corral_test_redis::Redis;

/// A log under a prefix of this test's own.
fn log(redis: &Redis, test: &str) -> RedisLog {
    let prefix = format!("corral-saga-test:{}:{test}:", std::process::id());
    let state = RedisState::new(&redis.url, &prefix, "test", Duration::from_secs(2)).unwrap();
    RedisLog::new(state, Duration::from_secs(60))
}

#[tokio::test]
async fn entries_are_read_back_in_order_and_finished_sagas_leave_the_unfinished_set() {
    let redis = Redis::start().await;
    let log = log(&redis, "entries");
    assert!(log.read("s").await.unwrap().is_empty());
    let entries = [
        Transition::Started {
            steps: vec!["a".into()],
            agent: Some("planner".into()),
            definition: json!({"steps": []}),
            authenticated: false,
        },
        Transition::StepStarted { step: 0 },
        Transition::StepDone {
            step: 0,
            output: json!({"status": 200}),
        },
    ];
    for entry in &entries {
        log.append("s", entry).await.unwrap();
    }
    assert_eq!(log.read("s").await.unwrap(), entries);
    assert_eq!(log.unfinished().await.unwrap(), ["s"]);
    log.append("s", &Transition::Completed).await.unwrap();
    assert!(log.unfinished().await.unwrap().is_empty());
    assert_eq!(log.read("s").await.unwrap().len(), 4);
}

#[tokio::test]
async fn a_lease_is_held_by_one_owner_until_released_or_lapsed() {
    let redis = Redis::start().await;
    let log = log(&redis, "lease");
    let ttl = Duration::from_millis(300);
    assert!(log.claim("s", "a", ttl).await.unwrap());
    assert!(!log.claim("s", "b", ttl).await.unwrap());
    assert!(!log.renew("s", "b", ttl).await.unwrap());
    assert!(log.renew("s", "a", ttl).await.unwrap());
    log.release("s", "b").await.unwrap();
    assert!(
        !log.claim("s", "b", ttl).await.unwrap(),
        "only its holder releases it"
    );
    log.release("s", "a").await.unwrap();
    assert!(log.claim("s", "b", ttl).await.unwrap());
    // Lapsing is Redis's clock: wait for it, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !log.claim("s", "c", ttl).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !log.renew("s", "b", ttl).await.unwrap(),
        "a lapsed holder cannot renew"
    );
}

#[tokio::test]
async fn a_saga_whose_runner_stopped_is_taken_over_from_the_redis_log() {
    let redis = Redis::start().await;
    let log: Arc<dyn SagaLog> = Arc::new(log(&redis, "takeover"));
    let config = SagaConfig {
        lease_ttl: Duration::from_millis(300),
        ..SagaConfig::default()
    };
    let compensations = Arc::new(AtomicUsize::new(0));
    let saga = |fail: bool| {
        let counted = compensations.clone();
        let undo = move |_: StepContext| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(json!(null)) }
        };
        Saga::new("s")
            .step("one", |_: StepContext| async { Ok(json!(1)) }, undo.clone())
            .step(
                "two",
                move |_: StepContext| async move {
                    if fail {
                        Err("refused".into())
                    } else {
                        std::future::pending().await
                    }
                },
                undo,
            )
    };
    let a = Runner::new(log.clone(), "a", config.clone());
    let first = saga(false);
    tokio::select! {
        _ = a.run(&first) => panic!("step two never ends for a"),
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
    let b = Runner::new(log.clone(), "b", config);
    assert_eq!(b.resume(&saga(true)).await, Err(SagaError::Held));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        match b.resume(&saga(true)).await {
            Err(SagaError::Held) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a's lease never lapsed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    assert_eq!(status, Ok(SagaStatus::Compensated));
    assert_eq!(compensations.load(Ordering::SeqCst), 1, "step one only");
    assert!(log.unfinished().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_runner_appends_only_while_it_holds_the_lease_and_a_cancellation_only_while_the_saga_runs(
) {
    let redis = Redis::start().await;
    let log = log(&redis, "held");
    let ttl = Duration::from_secs(5);
    let started = Transition::Started {
        steps: vec!["a".into()],
        agent: None,
        definition: json!({}),
        authenticated: false,
    };
    let cancel = Transition::Cancelled { reason: "x".into() };
    assert!(
        !log.append_open("s", &cancel).await.unwrap(),
        "no such saga"
    );
    assert!(log.read("s").await.unwrap().is_empty(), "nothing created");
    assert!(
        !log.append_held("s", "a", &started).await.unwrap(),
        "no lease"
    );
    assert!(log.claim("s", "a", ttl).await.unwrap());
    assert!(log.append_held("s", "a", &started).await.unwrap());
    let step = Transition::StepStarted { step: 0 };
    assert!(
        !log.append_held("s", "b", &step).await.unwrap(),
        "b does not hold it"
    );
    assert!(log.append_open("s", &cancel).await.unwrap());
    log.release("s", "a").await.unwrap();
    assert!(!log.append_held("s", "a", &step).await.unwrap(), "released");
    assert!(log.claim("s", "b", ttl).await.unwrap());
    assert!(log
        .append_held("s", "b", &Transition::CompensatedAll)
        .await
        .unwrap());
    assert!(!log.append_open("s", &cancel).await.unwrap(), "over");
    assert_eq!(
        log.read("s").await.unwrap(),
        [started, cancel, Transition::CompensatedAll]
    );
    assert!(log.unfinished().await.unwrap().is_empty());
}
