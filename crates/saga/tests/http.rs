//! HTTP steps against a fake server on a real socket: the idempotency
//! key and the agent's id on every call, async jobs polled to their end,
//! failures compensated, sagas rebuilt from their log, calls to Corral
//! served in process.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_core::BoxBody;
use corral_saga::{
    BoxFuture, HttpSteps, Local, MemoryLog, NoAgents, Runner, SagaLog, SagaStatus, Transition,
};
use http::{Request, Response};
use http_body_util::Full;
use serde_json::json;
use support::server::{config, definition, server, Here};

#[tokio::test]
async fn an_async_step_waits_for_its_job_and_a_refused_step_compensates_the_one_before() {
    let (url, seen) = server().await;
    let steps = HttpSteps::new(url.clone(), Arc::new(Here(url.clone())), &config());
    let definition = definition(json!({"steps": [
        {"name": "summarize", "action": {"path": "/api/chat", "async": true, "body": {"model": "m"}},
         "compensation": {"method": "DELETE", "path": "/undo"}},
        {"name": "notify", "action": {"agent": {"capability": "mail"}, "path": "/send"}},
        {"name": "reserve", "action": {"url": format!("{url}/fail")}, "compensation": {"url": format!("{url}/never")}}
    ]}));
    let saga = steps.saga("s", &definition).with_agent("planner");
    let log = Arc::new(MemoryLog::new());
    let runner = Runner::new(log.clone(), "a", config());
    assert_eq!(runner.run(&saga).await, Ok(SagaStatus::Compensated));

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ["POST", "/api/chat", "s:0:action", "planner", "respond-async"],
            ["GET", "/corral/jobs/1", "", "planner", ""],
            ["GET", "/corral/jobs/1", "", "planner", ""],
            ["POST", "/send", "s:1:action", "", ""],
            ["POST", "/fail", "s:2:action", "", ""],
            ["DELETE", "/undo", "s:0:compensate", "planner", ""],
        ]
        .map(|row| row.map(String::from)),
        "the job polled to its end, the failed step not compensated, the step without compensation skipped"
    );
    let entries = log.read("s").await.unwrap();
    let output = entries.iter().find_map(|t| match t {
        Transition::StepDone { step: 0, output } => Some(output.clone()),
        _ => None,
    });
    assert_eq!(
        output,
        Some(json!({"status": 200, "body": {"message": "summary"}}))
    );
    let failed = entries.iter().find_map(|t| match t {
        Transition::StepFailed { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        failed.unwrap().contains("409"),
        "the reason names the status"
    );
}

#[tokio::test]
async fn an_agent_target_without_a_registry_fails_saying_so() {
    let (url, _) = server().await;
    let steps = HttpSteps::new(url, Arc::new(NoAgents), &config());
    let definition = definition(
        json!({"steps": [{"name": "notify", "action": {"agent": {"capability": "mail"}, "path": "/send"}}]}),
    );
    let log = Arc::new(MemoryLog::new());
    let runner = Runner::new(log.clone(), "a", config());
    assert_eq!(
        runner.run(&steps.saga("s", &definition)).await,
        Ok(SagaStatus::Compensated)
    );
    let entries = log.read("s").await.unwrap();
    assert!(entries.iter().any(|t| matches!(t, Transition::StepFailed { reason, .. } if reason.contains("no agent has capability \"mail\""))), "{entries:?}");
}

#[tokio::test]
async fn an_http_saga_is_rebuilt_from_its_started_entry() {
    let (url, seen) = server().await;
    let steps = HttpSteps::new(url.clone(), Arc::new(NoAgents), &config());
    let definition = definition(json!({"steps": [{"name": "a", "action": {"path": "/a"}}]}));
    let saga = steps.saga("s", &definition).with_agent("planner");
    let log = Arc::new(MemoryLog::new());
    let started = Transition::Started {
        steps: saga.step_names(),
        agent: Some("planner".into()),
        definition: json!(definition),
        authenticated: false,
    };
    log.append("s", &started).await.unwrap();
    let rebuilt = (steps.rebuild())("s", &log.read("s").await.unwrap()).unwrap();
    assert_eq!(rebuilt.agent(), Some("planner"));
    assert_eq!(
        Runner::new(log.clone(), "b", config())
            .resume(&rebuilt)
            .await,
        Ok(SagaStatus::Completed)
    );
    assert_eq!(seen.lock().unwrap()[0][3], "planner");
    assert!((steps.rebuild())("t", &[]).is_err());
}

/// Corral in the process: records who each call was made as.
/// Agent, authenticated, URI, idempotency key.
type Made = (String, bool, String, String);

#[derive(Default, Clone)]
struct InProcess(Arc<Mutex<Vec<Made>>>);

impl Local for InProcess {
    fn call(
        &self,
        agent: &str,
        authenticated: bool,
        request: Request<Full<Bytes>>,
    ) -> BoxFuture<'static, Response<BoxBody>> {
        let key = request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.0
            .lock()
            .unwrap()
            .push((agent.into(), authenticated, request.uri().to_string(), key));
        Box::pin(async { Response::new(corral_core::full(r#"{"local":true}"#)) })
    }
}

#[tokio::test]
async fn calls_to_corral_are_served_in_process_as_the_vouched_agent_and_the_rest_over_the_network()
{
    let (url, seen) = server().await;
    let steps = HttpSteps::new(url.clone(), Arc::new(NoAgents), &config());
    let local = InProcess::default();
    steps.set_local(Arc::new(local.clone()));
    let definition = definition(json!({"steps": [
        {"name": "chat", "action": {"path": "/api/chat?x=1", "body": {}}},
        {"name": "job", "action": {"path": "/api/chat", "async": true}},
        {"name": "own", "action": {"method": "GET", "path": "/corral/registry"}},
        {"name": "elsewhere", "action": {"url": format!("{url}/hook")}}
    ]}));
    let saga = steps
        .saga("s", &definition)
        .with_agent("planner")
        .with_authenticated(true);
    let log = Arc::new(MemoryLog::new());
    assert_eq!(
        Runner::new(log.clone(), "a", config()).run(&saga).await,
        Ok(SagaStatus::Completed)
    );
    let served: Vec<(String, bool, String, String)> = local.0.lock().unwrap().clone();
    let expected = [
        ("/api/chat?x=1", "s:0:action"),
        ("/api/chat", "s:1:action"),
        ("/corral/registry", "s:2:action"),
    ];
    assert_eq!(served.len(), expected.len(), "{served:?}");
    for ((agent, authenticated, uri, key), (path, wanted)) in served.iter().zip(expected) {
        assert_eq!((agent.as_str(), *authenticated), ("planner", true));
        assert_eq!((uri.as_str(), key.as_str()), (path, wanted));
    }
    let network: Vec<String> = seen.lock().unwrap().iter().map(|s| s[1].clone()).collect();
    assert_eq!(
        network,
        ["/hook"],
        "only the URL target goes over the network"
    );
}
