//! The runner over a `MemoryLog`, with paused time: sagas resumed after
//! a crash with each effect once, rebuilt by the resumer (or failed
//! after too many failed rebuilds), and the lease kept, lost or taken
//! over.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{EventSink, NewEvent};
use corral_saga::{
    MemoryLog, Rebuild, Runner, Saga, SagaError, SagaLog, SagaStatus, StepContext, Transition,
    MAX_RESUME_FAILURES,
};
use serde_json::json;
use support::{config, runner, saga, Behaviour, CutOff, Server};
use tokio::sync::Notify;

#[tokio::test(start_paused = true)]
async fn a_runner_dropped_mid_step_is_resumed_by_another_that_reruns_the_step_with_its_key() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let blocking = Behaviour::Block {
        started: started.clone(),
        go: go.clone(),
    };
    let first = saga(
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
    tokio::select! {
        _ = a.run(&first) => panic!("step 2 blocks"),
        () = started.notified() => {}
    }
    // `a` is gone (its future dropped) mid-step 2; its lease still holds.
    let b = runner(&log, "b");
    let again = saga("s", 3, &server, |_| Behaviour::Succeed, |_| 0);
    assert_eq!(b.resume(&again).await, Err(SagaError::Held));
    tokio::time::sleep(config().lease_ttl).await;
    assert_eq!(b.resume(&again).await, Ok(SagaStatus::Completed));
    assert_eq!(server.effects(), ["s:0:action", "s:1:action", "s:2:action"]);
    assert_eq!(
        server.calls("s:0:action"),
        1,
        "a step done is not run again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_compensating_and_compensated_reruns_the_compensation_with_one_effect() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let saga = saga(
        "s",
        4,
        &server,
        |i| {
            if i == 2 {
                Behaviour::Fail
            } else {
                Behaviour::Succeed
            }
        },
        |_| 0,
    );
    // What a runner that died right after compensating step 2 had written
    // (its effect made, `compensated` not yet logged).
    let partial = [
        Transition::Started {
            steps: saga.step_names(),
            agent: None,
            definition: json!(null),
            authenticated: false,
        },
        Transition::StepStarted { step: 0 },
        Transition::StepDone {
            step: 0,
            output: json!({"step": 0}),
        },
        Transition::StepStarted { step: 1 },
        Transition::StepDone {
            step: 1,
            output: json!({"step": 1}),
        },
        Transition::StepStarted { step: 2 },
        Transition::StepFailed {
            step: 2,
            reason: "refused".into(),
        },
        Transition::Compensating { step: 1 },
    ];
    for transition in &partial {
        log.append("s", transition).await.unwrap();
    }
    server.apply("s:0:action");
    server.apply("s:1:action");
    server.apply("s:1:compensate");
    assert_eq!(
        runner(&log, "b").resume(&saga).await,
        Ok(SagaStatus::Compensated)
    );
    assert_eq!(
        server.calls("s:1:compensate"),
        2,
        "run again with the same key"
    );
    assert_eq!(
        server.effects(),
        [
            "s:0:action",
            "s:1:action",
            "s:1:compensate",
            "s:0:compensate"
        ],
        "each compensation's effect once, in reverse"
    );
}

#[derive(Default)]
struct Events(Mutex<Vec<NewEvent>>);

impl EventSink for Events {
    fn record(&self, event: NewEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[tokio::test(start_paused = true)]
async fn unfinished_sagas_are_rebuilt_and_resumed_with_their_events_recorded() {
    let server = Arc::new(Server::default());
    let log = Arc::new(MemoryLog::new());
    let events = Arc::new(Events::default());
    let partial = Transition::Started {
        steps: vec!["step0".into(), "step1".into()],
        agent: Some("planner".into()),
        definition: json!({"n": 2}),
        authenticated: false,
    };
    log.append("s", &partial).await.unwrap();
    let b = runner(&log, "b").with_events(events.clone());
    let rebuilt = server.clone();
    let rebuild: Rebuild = Arc::new(move |id: &str, log: &[Transition]| match log.first() {
        Some(Transition::Started { definition, .. }) if definition["n"] == 2 => {
            Ok(saga(id, 2, &rebuilt, |_| Behaviour::Succeed, |_| 0))
        }
        _ => Err("unexpected".into()),
    });
    assert_eq!(b.resume_unfinished(&rebuild).await, Ok(1));
    while !log.unfinished().await.unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.effects(), ["s:0:action", "s:1:action"]);
    let recorded = events.0.lock().unwrap();
    let transitions: Vec<_> = recorded
        .iter()
        .map(|e| e.data["transition"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        transitions,
        [
            "step_started",
            "step_done",
            "step_started",
            "step_done",
            "completed"
        ]
    );
    assert!(recorded
        .iter()
        .all(|e| e.kind == "saga" && e.request_id.as_deref() == Some("s")));
    assert_eq!(
        recorded[0].data,
        json!({"saga": "s", "transition": "step_started", "step": 0, "name": "step0"})
    );
}

#[tokio::test(start_paused = true)]
async fn a_saga_that_cannot_be_rebuilt_stays_unfinished_until_its_tenth_failed_rebuild() {
    let log = Arc::new(MemoryLog::new());
    log.append(
        "s",
        &Transition::Started {
            steps: vec![],
            agent: None,
            definition: json!(null),
            authenticated: false,
        },
    )
    .await
    .unwrap();
    let rebuild: Rebuild = Arc::new(|_: &str, _: &[Transition]| Err("unknown kind".into()));
    let b = runner(&log, "b");
    for _ in 1..MAX_RESUME_FAILURES {
        assert_eq!(b.resume_unfinished(&rebuild).await, Ok(0));
        let entries = log.read("s").await.unwrap();
        assert!(
            matches!(entries.last(), Some(Transition::ResumeFailed { .. })),
            "{entries:?}"
        );
        assert_eq!(
            log.unfinished().await.unwrap(),
            ["s"],
            "left for another try"
        );
    }
    assert_eq!(b.resume_unfinished(&rebuild).await, Ok(0));
    let entries = log.read("s").await.unwrap();
    assert!(
        matches!(entries.last(), Some(Transition::Failed { .. })),
        "{entries:?}"
    );
    assert!(log.unfinished().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_step_longer_than_the_lease_keeps_it_renewed_so_nobody_takes_the_saga_over() {
    let log = Arc::new(MemoryLog::new());
    let ttl = config().lease_ttl;
    let slow = move |_: StepContext| async move {
        tokio::time::sleep(ttl * 10).await;
        Ok(json!(null))
    };
    let saga = Saga::new("s").step_without_compensation("slow", slow);
    let a = runner(&log, "a");
    let run = tokio::spawn({
        let (a, saga) = (a.clone(), saga.clone());
        async move { a.run(&saga).await }
    });
    let b = runner(&log, "b");
    for _ in 0..5 {
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(b.resume(&saga).await, Err(SagaError::Held));
    }
    assert_eq!(run.await.unwrap(), Ok(SagaStatus::Completed));
    assert!(
        log.claim("s", "b", ttl).await.unwrap(),
        "released at the end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_runner_cut_off_from_the_log_for_a_lease_stops_and_another_takes_over_alone() {
    let server = Arc::new(Server::default());
    let memory = Arc::new(MemoryLog::new());
    let cut = CutOff::new(&memory, "");
    let (started, go) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let block = Behaviour::Block {
        started: started.clone(),
        go: go.clone(),
    };
    let saga_a = saga(
        "s",
        2,
        &server,
        |i| {
            if i == 0 {
                block.clone()
            } else {
                Behaviour::Succeed
            }
        },
        |_| 0,
    );
    let a = Runner::new(cut.clone(), "a", config());
    let run = tokio::spawn({
        let (a, saga_a) = (a.clone(), saga_a.clone());
        async move { a.run(&saga_a).await }
    });
    started.notified().await;
    cut.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped = run.await.unwrap();
    assert_eq!(
        stopped,
        Err(SagaError::LeaseLost),
        "stopped after a lease without renewal"
    );

    // The lease lapsed: b takes over; a's late writes are refused.
    let b = runner(&memory, "b");
    let saga_b = saga("s", 2, &server, |_| Behaviour::Succeed, |_| 0);
    assert_eq!(b.resume(&saga_b).await, Ok(SagaStatus::Completed));
    cut.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    let late = Transition::StepFailed {
        step: 0,
        reason: "late".into(),
    };
    assert_eq!(memory.append_held("s", "a", &late).await, Ok(false));
    assert_eq!(server.calls("s:1:action"), 1);
    go.notify_one();
}

#[tokio::test(start_paused = true)]
async fn a_saga_the_resumer_cannot_read_is_skipped_and_the_others_resumed() {
    let server = Arc::new(Server::default());
    let memory = Arc::new(MemoryLog::new());
    for id in ["bad", "good"] {
        let started = Transition::Started {
            steps: vec!["step0".into()],
            agent: None,
            definition: json!(null),
            authenticated: false,
        };
        memory.append(id, &started).await.unwrap();
    }
    let b = Runner::new(CutOff::new(&memory, "bad"), "b", config());
    let rebuilt = server.clone();
    let rebuild: Rebuild = Arc::new(move |id: &str, _: &[Transition]| {
        Ok(saga(id, 1, &rebuilt, |_| Behaviour::Succeed, |_| 0))
    });
    assert_eq!(b.resume_unfinished(&rebuild).await, Ok(1));
    while memory.unfinished().await.unwrap() != ["bad"] {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.effects(), ["good:0:action"]);
    assert!(
        memory.claim("bad", "c", config().lease_ttl).await.unwrap(),
        "its lease was released"
    );
}
