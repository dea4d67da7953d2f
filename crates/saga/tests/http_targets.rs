//! Where HTTP steps go, against fake servers on real sockets: agents
//! found by capability (picked once, for the re-run and the
//! compensation too), private targets refused unless allowed, https.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::{Arc, Mutex};

use corral_saga::{
    BoxFuture, Definition, HttpSteps, MemoryLog, NoAgents, Resolve, Runner, SagaConfig, SagaLog,
    SagaStatus, Transition,
};
use serde_json::json;
use support::server::{config, definition, server, Here};

/// Hands out `first` once, then `then` (another agent): counts the picks.
struct Picks {
    first: String,
    then: String,
    picked: Mutex<usize>,
}

impl Resolve for Picks {
    fn resolve<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, String>> {
        let mut picked = self.picked.lock().unwrap();
        *picked += 1;
        let url = if *picked == 1 {
            &self.first
        } else {
            &self.then
        };
        let url = url.clone();
        Box::pin(async move { Ok(url) })
    }
}

#[tokio::test]
async fn an_agent_is_picked_once_and_its_compensation_and_a_rerun_go_to_the_same_one() {
    let (url, seen) = server().await;
    let (other, elsewhere) = server().await;
    let picks = Arc::new(Picks {
        first: url.clone(),
        then: other,
        picked: Mutex::new(0),
    });
    let steps = HttpSteps::new(url.clone(), picks.clone(), &config());
    let definition = definition(json!({"steps": [
        {"name": "reserve", "action": {"agent": {"capability": "inv"}, "path": "/reserve"},
         "compensation": {"agent": {"capability": "inv"}, "path": "/release"}},
        {"name": "pay", "action": {"url": format!("{url}/fail")}}
    ]}));
    let log = Arc::new(MemoryLog::new());
    let saga = steps.saga("s", &definition);
    assert_eq!(
        Runner::new(log.clone(), "a", config()).run(&saga).await,
        Ok(SagaStatus::Compensated)
    );
    assert_eq!(*picks.picked.lock().unwrap(), 1, "picked once");
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|s| s[1].clone()).collect();
    assert_eq!(paths, ["/reserve", "/fail", "/release"]);
    assert!(
        elsewhere.lock().unwrap().is_empty(),
        "the compensation went to the same agent"
    );
    let entries = log.read("s").await.unwrap();
    assert_eq!(
        entries[1],
        Transition::Resolved {
            step: 0,
            target: url.clone()
        }
    );

    // A crash after the pick: the re-run goes to the logged agent.
    let crashed = Arc::new(MemoryLog::new());
    let started = entries[0].clone();
    for entry in [
        started,
        entries[1].clone(),
        Transition::StepStarted { step: 0 },
    ] {
        crashed.append("t", &entry).await.unwrap();
    }
    let again = steps.saga("t", &definition);
    let status = Runner::new(crashed.clone(), "b", config())
        .resume(&again)
        .await;
    assert_eq!(status, Ok(SagaStatus::Compensated));
    assert_eq!(*picks.picked.lock().unwrap(), 1, "not picked again");
    assert!(elsewhere.lock().unwrap().is_empty());
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    let (url, seen) = server().await;
    let strict = SagaConfig {
        allow_private_targets: false,
        ..config()
    };
    let steps = HttpSteps::new(url.clone(), Arc::new(Here(url.clone())), &strict);
    let definition = definition(json!({"steps": [
        {"name": "registered", "action": {"agent": {"capability": "inv"}, "path": "/x"}},
    ]}));
    let log = Arc::new(MemoryLog::new());
    let runner = Runner::new(log.clone(), "a", strict.clone());
    assert_eq!(
        runner.run(&steps.saga("s", &definition)).await,
        Ok(SagaStatus::Compensated)
    );
    let entries = log.read("s").await.unwrap();
    assert!(
        entries.iter().any(|t| matches!(t, Transition::StepFailed { reason, .. } if reason.contains("private address 127.0.0.1"))),
        "{entries:?}"
    );
    let named = definition_of(&format!(
        "http://localhost:{}/x",
        url.rsplit(':').next().unwrap()
    ));
    assert_eq!(
        runner.run(&steps.saga("t", &named)).await,
        Ok(SagaStatus::Compensated),
        "a name resolving to loopback is refused too"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the server"
    );
}

fn definition_of(url: &str) -> Definition {
    definition(json!({"steps": [{"name": "a", "action": {"url": url}}]}))
}

#[tokio::test]
async fn an_https_target_is_spoken_to_with_tls() {
    let (url, _) = server().await;
    let steps = HttpSteps::new(url.clone(), Arc::new(NoAgents), &config());
    // The fake server speaks plain HTTP: the TLS handshake fails, which
    // shows the call went out as https (not refused for its scheme).
    let tls = definition_of(&url.replace("http://", "https://"));
    let log = Arc::new(MemoryLog::new());
    let runner = Runner::new(log.clone(), "a", config());
    assert_eq!(
        runner.run(&steps.saga("s", &tls)).await,
        Ok(SagaStatus::Compensated)
    );
    let entries = log.read("s").await.unwrap();
    let reason = entries
        .iter()
        .find_map(|t| match t {
            Transition::StepFailed { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.starts_with("POST https://"), "{reason}");
    assert!(!reason.contains("scheme"), "{reason}");
}
