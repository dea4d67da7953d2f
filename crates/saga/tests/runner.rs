//! The runner over a `MemoryLog`, with paused time: steps in order,
//! compensations in reverse on failure, retried, cancellation, and at
//! most `max_running` sagas per runner.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::Arc;
use std::time::Duration;

use corral_saga::{
    MemoryLog, Rebuild, Runner, SagaConfig, SagaError, SagaLog, SagaStatus, Transition,
};
use serde_json::json;
use support::{config, names, runner, saga, Behaviour, Server};
use tokio::sync::Notify;

#[tokio::test(start_paused = true)]
async fn every_step_runs_in_order_and_the_saga_completes() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let saga = saga("s", 3, &server, |_| Behaviour::Succeed, |_| 0);
    assert_eq!(
        runner(&log, "a").run(&saga).await,
        Ok(SagaStatus::Completed)
    );
    assert_eq!(server.effects(), ["s:0:action", "s:1:action", "s:2:action"]);
    let entries = log.read("s").await.unwrap();
    assert_eq!(
        names(&entries),
        [
            "started",
            "step_started:0",
            "step_done:0",
            "step_started:1",
            "step_done:1",
            "step_started:2",
            "step_done:2",
            "completed"
        ]
    );
    assert!(log.unfinished().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failure_at_step_three_of_four_compensates_two_then_one() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let behave = |i| {
        if i == 2 {
            Behaviour::Fail
        } else {
            Behaviour::Succeed
        }
    };
    let saga = saga("s", 4, &server, behave, |_| 0);
    assert_eq!(
        runner(&log, "a").run(&saga).await,
        Ok(SagaStatus::Compensated)
    );
    assert_eq!(
        server.effects(),
        [
            "s:0:action",
            "s:1:action",
            "s:1:compensate",
            "s:0:compensate"
        ]
    );
    assert_eq!(server.calls("s:3:action"), 0, "step 4 never ran");
    assert_eq!(
        server.calls("s:2:compensate"),
        0,
        "a failed step is not compensated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_compensation_failing_twice_then_succeeding_is_retried_with_backoff() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let saga = saga(
        "s",
        2,
        &server,
        |i| {
            if i == 1 {
                Behaviour::Fail
            } else {
                Behaviour::Succeed
            }
        },
        |i| if i == 0 { 2 } else { 0 },
    );
    let before = tokio::time::Instant::now();
    assert_eq!(
        runner(&log, "a").run(&saga).await,
        Ok(SagaStatus::Compensated)
    );
    assert_eq!(server.effects(), ["s:0:action", "s:0:compensate"]);
    assert_eq!(
        before.elapsed(),
        Duration::from_millis(100 + 200),
        "waited 100 ms, then 200 ms"
    );
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_keeps_failing_leaves_the_saga_failed() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let saga = saga(
        "s",
        2,
        &server,
        |i| {
            if i == 1 {
                Behaviour::Fail
            } else {
                Behaviour::Succeed
            }
        },
        |_| 99,
    );
    assert_eq!(runner(&log, "a").run(&saga).await, Ok(SagaStatus::Failed));
    let entries = log.read("s").await.unwrap();
    assert!(
        matches!(
            entries.last(),
            Some(Transition::Failed { step: Some(0), .. })
        ),
        "{entries:?}"
    );
    assert!(log.unfinished().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_saga_stops_after_the_running_step_and_compensates_in_reverse() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let blocking = Behaviour::Block {
        started: started.clone(),
        go: go.clone(),
    };
    let saga = saga(
        "s",
        3,
        &server,
        |i| {
            if i == 1 {
                blocking.clone()
            } else {
                Behaviour::Succeed
            }
        },
        |_| 0,
    );
    let a = runner(&log, "a");
    let run = tokio::spawn({
        let (a, saga) = (a.clone(), saga.clone());
        async move { a.run(&saga).await }
    });
    started.notified().await;
    assert_eq!(
        a.cancel("s", "asked").await,
        Ok(Some(SagaStatus::Compensating))
    );
    go.notify_one();
    assert_eq!(run.await.unwrap(), Ok(SagaStatus::Compensated));
    assert_eq!(
        server.effects(),
        [
            "s:0:action",
            "s:1:action",
            "s:1:compensate",
            "s:0:compensate"
        ]
    );
    assert_eq!(
        a.cancel("s", "again").await,
        Ok(Some(SagaStatus::Compensated))
    );
    assert_eq!(a.cancel("nope", "x").await, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn a_cancellation_after_the_end_or_of_no_saga_appends_nothing() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let a = runner(&log, "a");
    let done = saga("s", 1, &server, |_| Behaviour::Succeed, |_| 0);
    assert_eq!(a.run(&done).await, Ok(SagaStatus::Completed));
    let before = log.read("s").await.unwrap();
    assert_eq!(a.cancel("s", "late").await, Ok(Some(SagaStatus::Completed)));
    assert_eq!(log.read("s").await.unwrap(), before);
    assert_eq!(a.cancel("gone", "late").await, Ok(None));
    assert!(log.read("gone").await.unwrap().is_empty());
    let cancel = Transition::Cancelled {
        reason: "race".into(),
    };
    assert_eq!(
        log.append_open("s", &cancel).await,
        Ok(false),
        "refused even past the read"
    );
}

#[tokio::test(start_paused = true)]
async fn a_runner_drives_at_most_max_running_sagas_and_resumes_only_with_room() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let one = SagaConfig {
        max_running: 1,
        ..config()
    };
    let a = Runner::new(log.clone(), "a", one);
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let block = Behaviour::Block {
        started: started.clone(),
        go: go.clone(),
    };
    let first = saga("first", 1, &server, move |_| block.clone(), |_| 0);
    let run = tokio::spawn({
        let (a, first) = (a.clone(), first.clone());
        async move { a.run(&first).await }
    });
    started.notified().await;
    let second = saga("second", 1, &server, |_| Behaviour::Succeed, |_| 0);
    assert_eq!(a.start(&second).await, Err(SagaError::Full));
    assert!(log.read("second").await.unwrap().is_empty(), "not started");

    // An orphan waits while the runner is full, and is taken once there is room.
    let orphan = Transition::Started {
        steps: vec!["step0".into()],
        agent: None,
        definition: json!(null),
        authenticated: false,
    };
    log.append("orphan", &orphan).await.unwrap();
    let rebuilt = server.clone();
    let rebuild: Rebuild = Arc::new(move |id: &str, _: &[Transition]| {
        Ok(saga(id, 1, &rebuilt, |_| Behaviour::Succeed, |_| 0))
    });
    assert_eq!(a.resume_unfinished(&rebuild).await, Ok(0));
    go.notify_one();
    assert_eq!(run.await.unwrap(), Ok(SagaStatus::Completed));
    assert_eq!(a.resume_unfinished(&rebuild).await, Ok(1));
    while !log.unfinished().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.run(&second).await, Ok(SagaStatus::Completed));
}
