//! What the runner's tests share: a fake step server applying each
//! idempotency key once, sagas of steps on it, a runner's config, and a
//! `MemoryLog` the runner may be cut off from. The HTTP steps' tests
//! share [`server`].

#![allow(dead_code)] // each test file uses its own share

pub(crate) mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_saga::{
    BoxFuture, LogResult, LogUnavailable, MemoryLog, Runner, Saga, SagaConfig, SagaLog,
    StepContext, StepResult, Transition,
};
use serde_json::json;
use tokio::sync::Notify;

/// A fake step server: counts calls per idempotency key and applies each
/// key's effect once.
#[derive(Default)]
pub(crate) struct Server {
    calls: Mutex<HashMap<String, usize>>,
    effects: Mutex<Vec<String>>,
}

impl Server {
    pub(crate) fn apply(&self, key: &str) {
        *self.calls.lock().unwrap().entry(key.into()).or_default() += 1;
        let mut effects = self.effects.lock().unwrap();
        if !effects.iter().any(|k| k == key) {
            effects.push(key.into());
        }
    }

    pub(crate) fn effects(&self) -> Vec<String> {
        self.effects.lock().unwrap().clone()
    }

    pub(crate) fn calls(&self, key: &str) -> usize {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
pub(crate) enum Behaviour {
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
pub(crate) fn saga(
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

pub(crate) async fn act(server: &Server, behaviour: &Behaviour, cx: &StepContext) -> StepResult {
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

pub(crate) fn config() -> SagaConfig {
    SagaConfig {
        lease_ttl: Duration::from_secs(3),
        compensation_backoff: Duration::from_millis(100),
        max_compensation_backoff: Duration::from_secs(1),
        ..SagaConfig::default()
    }
}

pub(crate) fn runner(log: &Arc<MemoryLog>, owner: &str) -> Runner {
    Runner::new(log.clone(), owner, config())
}

pub(crate) fn names(log: &[Transition]) -> Vec<String> {
    log.iter()
        .map(|t| match t.step() {
            Some(i) => format!("{}:{i}", t.name()),
            None => t.name().to_string(),
        })
        .collect()
}

/// A `MemoryLog` this runner may be cut off from: renewals and appends
/// fail while `cut`; reads of `unreadable` always fail.
pub(crate) struct CutOff {
    log: Arc<MemoryLog>,
    pub(crate) cut: std::sync::atomic::AtomicBool,
    unreadable: &'static str,
}

impl CutOff {
    pub(crate) fn new(log: &Arc<MemoryLog>, unreadable: &'static str) -> Arc<Self> {
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
