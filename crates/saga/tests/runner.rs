//! The runner over a `MemoryLog`, with paused time: in order, in reverse
//! on failure, resumed after a crash, each effect once.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{EventSink, NewEvent};
use corral_saga::{
    BoxFuture, LogResult, LogUnavailable, MemoryLog, Rebuild, Runner, Saga, SagaConfig, SagaError,
    SagaLog, SagaStatus, StepContext, StepResult, Transition, MAX_RESUME_FAILURES,
};
use serde_json::json;
use tokio::sync::Notify;

/// A fake step server: counts calls per idempotency key and applies each
/// key's effect once.
#[derive(Default)]
struct Server {
    calls: Mutex<HashMap<String, usize>>,
    effects: Mutex<Vec<String>>,
}

impl Server {
    fn apply(&self, key: &str) {
        *self.calls.lock().unwrap().entry(key.into()).or_default() += 1;
        let mut effects = self.effects.lock().unwrap();
        if !effects.iter().any(|k| k == key) {
            effects.push(key.into());
        }
    }

    fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }

    fn calls(&self, key: &str) -> usize {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
enum Behaviour {
    #[default]
    Succeed,
    Fail,
    /// Signals `started`, then waits for `go` before succeeding.
    Block {
        started: Arc<Notify>,
        go: Arc<Notify>,
    },
}

/// `n` steps on `server`; `behave(i)` says how step `i`'s action acts;
/// compensation of step `i` fails its first `flaky(i)` attempts.
fn saga(
    id: &str,
    n: usize,
    server: &Arc<Server>,
    behave: impl Fn(usize) -> Behaviour,
    flaky: impl Fn(usize) -> usize,
) -> Saga {
    let mut saga = Saga::new(id).with_agent("planner");
    for i in 0..n {
        let behaviour = behave(i);
        let s = server.clone();
        let action = move |cx: StepContext| {
            let (s, behaviour) = (s.clone(), behaviour.clone());
            async move { act(&s, &behaviour, &cx).await }
        };
        let s = server.clone();
        let failures = Arc::new(Mutex::new(flaky(i)));
        let compensation = move |cx: StepContext| {
            let (s, failures) = (s.clone(), failures.clone());
            async move {
                let mut left = failures.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err("compensation refused".into());
                }
                s.apply(&cx.idempotency_key);
                Ok(json!(null))
            }
        };
        saga = saga.step(format!("step{i}"), action, compensation);
    }
    saga
}

async fn act(server: &Server, behaviour: &Behaviour, cx: &StepContext) -> StepResult {
    match behaviour {
        Behaviour::Succeed => {}
        Behaviour::Fail => return Err(format!("step {} refused", cx.step).into()),
        Behaviour::Block { started, go } => {
            started.notify_one();
            go.notified().await;
        }
    }
    server.apply(&cx.idempotency_key);
    Ok(json!({"step": cx.step}))
}

fn config() -> SagaConfig {
    SagaConfig {
        lease_ttl: Duration::from_secs(3),
        compensation_backoff: Duration::from_millis(100),
        max_compensation_backoff: Duration::from_secs(1),
        ..SagaConfig::default()
    }
}

fn runner(log: &Arc<MemoryLog>, owner: &str) -> Runner {
    Runner::new(log.clone(), owner, config())
}

fn names(log: &[Transition]) -> Vec<String> {
    log.iter()
        .map(|t| match t.step() {
            Some(i) => format!("{}:{i}", t.name()),
            None => t.name().to_string(),
        })
        .collect()
}

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

/// A `MemoryLog` this runner may be cut off from: renewals and appends
/// fail while `cut`; reads of `unreadable` always fail.
struct CutOff {
    log: Arc<MemoryLog>,
    cut: std::sync::atomic::AtomicBool,
    unreadable: &'static str,
}

impl CutOff {
    fn new(log: &Arc<MemoryLog>, unreadable: &'static str) -> Arc<Self> {
        Arc::new(Self {
            log: log.clone(),
            cut: Default::default(),
            unreadable,
        })
    }

    fn check(&self) -> LogResult<()> {
        if self.cut.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(LogUnavailable::new("cut off"));
        }
        Ok(())
    }
}

impl SagaLog for CutOff {
    fn append<'a>(&'a self, id: &'a str, t: &'a Transition) -> BoxFuture<'a, LogResult<()>> {
        Box::pin(async move {
            self.check()?;
            self.log.append(id, t).await
        })
    }
    fn append_held<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        t: &'a Transition,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(async move {
            self.check()?;
            self.log.append_held(id, owner, t).await
        })
    }
    fn append_open<'a>(&'a self, id: &'a str, t: &'a Transition) -> BoxFuture<'a, LogResult<bool>> {
        self.log.append_open(id, t)
    }
    fn read<'a>(&'a self, id: &'a str) -> BoxFuture<'a, LogResult<Vec<Transition>>> {
        if id == self.unreadable {
            return Box::pin(async { Err(LogUnavailable::new("unreadable")) });
        }
        self.log.read(id)
    }
    fn unfinished(&self) -> BoxFuture<'_, LogResult<Vec<String>>> {
        self.log.unfinished()
    }
    fn claim<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        self.log.claim(id, owner, ttl)
    }
    fn renew<'a>(
        &'a self,
        id: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, LogResult<bool>> {
        Box::pin(async move {
            self.check()?;
            self.log.renew(id, owner, ttl).await
        })
    }
    fn release<'a>(&'a self, id: &'a str, owner: &'a str) -> BoxFuture<'a, LogResult<()>> {
        self.log.release(id, owner)
    }
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
