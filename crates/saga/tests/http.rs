//! HTTP steps against a fake server on a real socket: the idempotency
//! key and the agent's id on every call, async jobs polled to their end,
//! agents found by capability, failures compensated.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_core::BoxBody;
use corral_saga::{
    BoxFuture, Definition, HttpSteps, Local, MemoryLog, NoAgents, Resolve, Runner, SagaConfig,
    SagaLog, SagaStatus, Transition,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the fake server saw: method, path, `Idempotency-Key`,
/// `X-Agent-Id`, `Prefer`.
type Seen = Arc<Mutex<Vec<[String; 5]>>>;

/// A fake Corral and agent: `POST /api/chat` with `Prefer:
/// respond-async` becomes job 1, `running` on the first poll and `done`
/// after; `/fail` answers 409; anything else 200 with `{"path": ...}`.
async fn server() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = recorded.clone();
            let service = service_fn(move |request| answer(seen.clone(), request));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, seen)
}

async fn answer(
    seen: Seen,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let path = request.uri().path().to_string();
    let polls = {
        let mut seen = seen.lock().unwrap();
        seen.push([
            request.method().to_string(),
            path.clone(),
            header("idempotency-key"),
            header("x-agent-id"),
            header("prefer"),
        ]);
        seen.iter().filter(|s| s[1] == "/corral/jobs/1").count()
    };
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::from(body.to_string()));
        *response.status_mut() = status;
        response
    };
    Ok(match path.as_str() {
        "/api/chat" if header("prefer") == "respond-async" => {
            let mut accepted = reply(StatusCode::ACCEPTED, json!({"id": "1"}));
            accepted
                .headers_mut()
                .insert("location", "/corral/jobs/1".parse().unwrap());
            accepted
        }
        "/corral/jobs/1" if polls < 2 => reply(StatusCode::OK, json!({"status": "running"})),
        "/corral/jobs/1" => reply(
            StatusCode::OK,
            json!({"status": "done", "response": {"status": 200, "headers": {}, "body": {"message": "summary"}}}),
        ),
        "/fail" => reply(StatusCode::CONFLICT, json!({"error": "sold out"})),
        _ => reply(StatusCode::OK, json!({"path": path})),
    })
}

/// Every agent is the fake server.
struct Here(String);

impl Resolve for Here {
    fn resolve<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

fn config() -> SagaConfig {
    SagaConfig {
        job_poll_interval: Duration::from_millis(10),
        call_timeout: Duration::from_secs(5),
        compensation_backoff: Duration::from_millis(10),
        // The fake servers listen on 127.0.0.1.
        allow_private_targets: true,
        ..SagaConfig::default()
    }
}

fn definition(json: Value) -> Definition {
    let definition: Definition = serde_json::from_value(json).unwrap();
    definition.validate(8).unwrap();
    definition
}

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
