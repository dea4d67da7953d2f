//! `/corral/sagas` end to end: the HTTP API of one proxy (202, GET,
//! DELETE, 400, 404) against step servers on real sockets, and the
//! done-when of issue 17: a replica killed with SIGKILL between step 2
//! and 3 of 4, step 3 failing after the restart, has steps 2 and 1
//! compensated exactly once, by another replica resuming from the Redis
//! log.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_e2e::{eventually_async, metric_sum, mock, request, send, Redis, Reply};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::replica::{prefix, Replica};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The step servers listen on 127.0.0.1: allowed only when asked.
const LOOPBACK_STEPS: &str = "[sagas]\nallow_private_targets = true\n";

/// Step servers, one path per step: `/{n}/action` and `/{n}/compensate`.
/// Each counts calls per `Idempotency-Key` and applies a key's effect
/// once; `/{failing}/action` waits until the gate opens, then fails.
#[derive(Clone)]
struct Steps {
    url: String,
    shared: Arc<Shared>,
}

struct Shared {
    calls: Mutex<Vec<(String, String)>>,
    effects: Mutex<Vec<String>>,
    failing: usize,
    gate: watch::Sender<bool>,
}

impl Steps {
    /// Servers where step `failing` (from 1) blocks on the gate, then
    /// fails (0: none fails).
    async fn start(failing: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            effects: Mutex::new(Vec::new()),
            failing,
            gate: watch::channel(false).0,
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, shared }
    }

    fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// `(path, idempotency key)` of every call, in order.
    fn calls(&self) -> Vec<(String, String)> {
        self.shared.calls.lock().unwrap().clone()
    }

    fn calls_to(&self, path: &str) -> usize {
        self.calls().iter().filter(|(p, _)| p == path).count()
    }

    /// The effects applied (one per key), as `{path}` in order.
    fn effects(&self) -> Vec<String> {
        self.shared.effects.lock().unwrap().clone()
    }

    fn call(&self, n: usize, what: &str) -> Value {
        json!({"method": "POST", "url": format!("{}/{n}/{what}", self.url), "body": {"step": n}})
    }

    /// A saga of `n` steps on these servers.
    fn saga(&self, n: usize) -> String {
        let steps: Vec<Value> = (1..=n)
            .map(|i| json!({"name": format!("step{i}"), "action": self.call(i, "action"), "compensation": self.call(i, "compensate")}))
            .collect();
        json!({ "steps": steps }).to_string()
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    shared
        .calls
        .lock()
        .unwrap()
        .push((path.clone(), key.clone()));
    if path == format!("/{}/action", shared.failing) {
        let mut gate = shared.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut refused = Response::new(Full::from(r#"{"error":"sold out"}"#));
        *refused.status_mut() = StatusCode::CONFLICT;
        return Ok(refused);
    }
    let mut effects = shared.effects.lock().unwrap();
    if !effects.iter().any(|k| *k == format!("{path} {key}")) {
        effects.push(format!("{path} {key}"));
    }
    Ok(Response::new(Full::from(format!(r#"{{"done":"{path}"}}"#))))
}

fn as_agent(method: &str, url: &str, agent: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let mut request = request(method, url, body);
    request
        .headers_mut()
        .insert("x-agent-id", agent.parse().unwrap());
    request
}

async fn submit(url: &str, agent: &str, definition: String) -> Reply {
    send(as_agent(
        "POST",
        &format!("{url}/corral/sagas"),
        agent,
        definition,
    ))
    .await
}

async fn status_of(url: &str, agent: &str, id: &str) -> Value {
    send(as_agent(
        "GET",
        &format!("{url}/corral/sagas/{id}"),
        agent,
        "",
    ))
    .await
    .json()
}

async fn until_status(url: &str, agent: &str, id: &str, wanted: &str) -> Value {
    eventually_async(&format!("saga {id} {wanted}"), || async {
        status_of(url, agent, id).await["status"] == wanted
    })
    .await;
    status_of(url, agent, id).await
}

/// The effects' paths with the saga's keys checked: `{n}/{what}` each.
fn effects_of(steps: &Steps, id: &str) -> Vec<String> {
    steps
        .effects()
        .iter()
        .map(|effect| {
            let (path, key) = effect.split_once(' ').unwrap();
            let mut parts = path.trim_start_matches('/').split('/');
            let (n, what) = (parts.next().unwrap(), parts.next().unwrap());
            let step: usize = n.parse().unwrap();
            assert_eq!(key, format!("{id}:{}:{what}", step - 1), "{effect}");
            path.to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_is_submitted_read_and_completed_and_only_its_agent_sees_it() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_toml(&upstream.url(), LOOPBACK_STEPS).await;
    let steps = Steps::start(0).await;
    let url = corral.url();

    let submitted = submit(&url, "planner", steps.saga(2)).await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED);
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        submitted.header("location"),
        Some(format!("/corral/sagas/{id}").as_str())
    );
    assert_eq!(submitted.json()["status"], "running");

    let done = until_status(&url, "planner", &id, "completed").await;
    assert_eq!(done["steps"][0]["name"], "step1");
    assert_eq!(done["steps"][1]["state"], "done");
    assert_eq!(
        done["steps"][1]["output"],
        json!({"status": 200, "body": {"done": "/2/action"}})
    );
    assert_eq!(effects_of(&steps, &id), ["/1/action", "/2/action"]);
    let saga_events = || async {
        let events = corral_e2e::events(&url, "kind=saga").await;
        events
            .iter()
            .filter(|e| e["request_id"] == id.as_str() && e["agent"] == "planner")
            .map(|e| e["data"]["transition"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    // The event follows the log entry GET reads: wait for it.
    eventually_async("the saga's events", || async {
        saga_events().await.last().is_some_and(|t| t == "completed")
    })
    .await;
    assert_eq!(
        saga_events().await,
        [
            "started",
            "step_started",
            "step_done",
            "step_started",
            "step_done",
            "completed"
        ]
    );

    let other = send(as_agent(
        "GET",
        &format!("{url}/corral/sagas/{id}"),
        "intruder",
        "",
    ))
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let other = send(as_agent(
        "DELETE",
        &format!("{url}/corral/sagas/{id}"),
        "intruder",
        "",
    ))
    .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let over = send(as_agent(
        "DELETE",
        &format!("{url}/corral/sagas/{id}"),
        "planner",
        "",
    ))
    .await;
    assert_eq!(over.status, StatusCode::CONFLICT);
    let unknown = send(as_agent(
        "GET",
        &format!("{url}/corral/sagas/0123abcd"),
        "planner",
        "",
    ))
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.error().contains("no saga"), "{}", unknown.error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_definitions_are_refused_with_what_is_wrong() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_toml(&upstream.url(), "[sagas]\nmax_steps = 2\n").await;
    let url = corral.url();
    let table = [
        ("not json", "invalid saga definition"),
        (r#"{"steps": []}"#, "at least one step"),
        (
            r#"{"steps": [{"name": "a", "action": {"url": "ftp://x/"}}]}"#,
            "steps[0].action: url",
        ),
        (
            r#"{"steps": [{"name": "a", "action": {"path": "/x"}, "compensation": {}}]}"#,
            "steps[0].compensation",
        ),
        (
            r#"{"steps": [{"name": "a", "action": {"path": "/x"}, "retries": 3}]}"#,
            "unknown field `retries`",
        ),
        (
            r#"{"steps": [{"name": "a", "action": {"path": "/x"}}, {"name": "b", "action": {"path": "/x"}}, {"name": "c", "action": {"path": "/x"}}]}"#,
            "at most 2 steps",
        ),
    ];
    for (body, expected) in table {
        let reply = submit(&url, "planner", body.to_string()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            reply.error().contains(expected),
            "{body}: {}",
            reply.error()
        );
    }
    let put = send(as_agent(
        "PUT",
        &format!("{url}/corral/sagas"),
        "planner",
        "",
    ))
    .await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_saga_finishes_its_running_step_then_compensates_in_reverse() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_toml(&upstream.url(), LOOPBACK_STEPS).await;
    // Step 2 blocks until the gate opens, then fails: cancelled first, it
    // is not compensated (it failed), step 1 is.
    let steps = Steps::start(2).await;
    let url = corral.url();
    let id = submit(&url, "planner", steps.saga(3)).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually_async("step 2 runs", || async { steps.calls_to("/2/action") == 1 }).await;

    let cancelled = send(as_agent(
        "DELETE",
        &format!("{url}/corral/sagas/{id}"),
        "planner",
        "",
    ))
    .await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED);
    assert_eq!(cancelled.json()["status"], "compensating");
    steps.open_gate();

    let over = until_status(&url, "planner", &id, "compensated").await;
    assert_eq!(over["cancelled"], "cancelled by planner");
    assert_eq!(over["steps"][0]["compensation"], "done");
    assert_eq!(over["steps"][2]["state"], "pending");
    assert_eq!(effects_of(&steps, &id), ["/1/action", "/1/compensate"]);
    assert_eq!(steps.calls_to("/3/action"), 0);
}

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
async fn a_path_step_goes_through_the_stack_as_the_agent_whose_key_is_never_stored() {
    let upstream = mock(corral_e2e::fast()).await;
    let keys = "[identity]\nrequire_key = true\n\n[[agents]]\nid = \"planner\"\nkey = \"sk-planner-0123\"\n";
    let corral = corral_e2e::proxy_toml(&upstream.url(), keys).await;
    let url = corral.url();
    let with_key = |method: &str, path: &str, body: String| {
        let mut request = request(method, &format!("{url}{path}"), body);
        request
            .headers_mut()
            .insert("authorization", "Bearer sk-planner-0123".parse().unwrap());
        request
    };
    let chat = json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": false});
    let definition =
        json!({"steps": [{"name": "ask", "action": {"path": "/api/chat", "body": chat}}]});
    let submitted = send(with_key("POST", "/corral/sagas", definition.to_string())).await;
    assert_eq!(
        submitted.status,
        StatusCode::ACCEPTED,
        "{}",
        submitted.text()
    );
    let id = submitted.json()["id"].as_str().unwrap().to_string();

    let path = format!("/corral/sagas/{id}");
    eventually_async("the saga completes", || async {
        send(with_key("GET", &path, String::new())).await.json()["status"] == "completed"
    })
    .await;
    let done = send(with_key("GET", &path, String::new())).await.json();
    assert_eq!(done["steps"][0]["output"]["status"], 200);
    assert!(
        done["steps"][0]["output"]["body"]["message"].is_object(),
        "{done}"
    );
    let asked = upstream.requests();
    let asked = asked
        .iter()
        .find(|r| r.uri == "/api/chat")
        .expect("the chat reached Ollama");
    assert_eq!(
        asked.headers.get("idempotency-key"),
        Some(&format!("{id}:0:action"))
    );
    assert!(
        !asked.headers.contains_key("authorization"),
        "no key travels with the step"
    );
    let events = corral_e2e::events(&url, "kind=received&agent=planner").await;
    assert_eq!(
        events.len(),
        1,
        "the step was the agent's own request: {events:?}"
    );
}

#[test]
fn check_config_names_a_bad_sagas_option() {
    let output = support::check("[sagas]\nlease_ttl = \"1ms\"\n");
    assert!(!output.status.success());
    support::assert_says(&output, "sagas.lease_ttl");
    let output = support::check("[sagas]\nmax_steps = 8\ncall_timeout = \"5s\"\n");
    assert!(output.status.success(), "{}", support::stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_step_runs_as_a_job_of_the_agent_whose_key_is_never_stored() {
    let upstream = mock(corral_e2e::fast()).await;
    let keys = "[identity]\nrequire_key = true\n\n[[agents]]\nid = \"planner\"\nkey = \"sk-planner-0123\"\n";
    let corral = corral_e2e::proxy_toml(&upstream.url(), keys).await;
    let url = corral.url();
    let with_key = |method: &str, path: &str, body: String| {
        let mut request = request(method, &format!("{url}{path}"), body);
        request
            .headers_mut()
            .insert("authorization", "Bearer sk-planner-0123".parse().unwrap());
        request
    };
    let generate = json!({"model": "llama3", "prompt": "hi", "stream": false});
    let definition = json!({"steps": [{"name": "ask", "action": {"path": "/api/generate", "body": generate, "async": true}}]});
    let submitted = send(with_key("POST", "/corral/sagas", definition.to_string())).await;
    assert_eq!(
        submitted.status,
        StatusCode::ACCEPTED,
        "{}",
        submitted.text()
    );
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    let path = format!("/corral/sagas/{id}");
    eventually_async("the saga completes", || async {
        send(with_key("GET", &path, String::new())).await.json()["status"] == "completed"
    })
    .await;
    let done = send(with_key("GET", &path, String::new())).await.json();
    assert_eq!(done["steps"][0]["output"]["status"], 200, "{done}");
    assert_eq!(
        done["steps"][0]["output"]["body"]["done"], true,
        "the job's answer: {done}"
    );
    let jobs = corral_e2e::events(&url, "kind=job_finished&agent=planner").await;
    assert_eq!(jobs.len(), 1, "one job, the planner's: {jobs:?}");
    assert_eq!(jobs[0]["data"]["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_target_is_found_in_the_registry_by_its_capability() {
    let upstream = mock(corral_e2e::fast()).await;
    // The steps' server listens on 127.0.0.1: a private target, and a
    // private endpoint in the registry.
    let allowing = format!(
        "{LOOPBACK_STEPS}
[registry]
allow_private_endpoints = true
"
    );
    let corral = corral_e2e::proxy_toml(&upstream.url(), &allowing).await;
    let url = corral.url();
    let steps = Steps::start(0).await;
    let joined = send(as_agent(
        "PUT",
        &format!("{url}/corral/registry/worker-1"),
        "worker-1",
        json!({"endpoint": steps.url, "capabilities": ["reserve"], "ttl_secs": 60}).to_string(),
    ))
    .await;
    assert_eq!(joined.status, StatusCode::CREATED, "{}", joined.text());
    let definition = json!({"steps": [{
        "name": "reserve",
        "action": {"agent": {"capability": "reserve"}, "path": "/1/action", "method": "POST"},
        "compensation": {"agent": {"capability": "reserve"}, "path": "/1/compensate", "method": "POST"},
    }]});
    let submitted = submit(&url, "planner", definition.to_string()).await;
    assert_eq!(
        submitted.status,
        StatusCode::ACCEPTED,
        "{}",
        submitted.text()
    );
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    until_status(&url, "planner", &id, "completed").await;
    assert_eq!(effects_of(&steps, &id), vec!["/1/action"]);

    // A capability nobody has fails the step, saying so.
    let missing =
        json!({"steps": [{"name": "x", "action": {"agent": {"capability": "fly"}, "path": "/x"}}]});
    let submitted = submit(&url, "planner", missing.to_string()).await;
    let id = submitted.json()["id"].as_str().unwrap().to_string();
    let ended = until_status(&url, "planner", &id, "compensated").await;
    assert!(
        ended["steps"][0]["error"]
            .as_str()
            .unwrap()
            .contains("capability \"fly\""),
        "{ended}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_target_is_refused_by_default_at_submission_and_when_resolved() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let steps = Steps::start(0).await;

    let refused = submit(&url, "planner", steps.saga(1)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused
            .error()
            .contains("steps[0].action.url: 127.0.0.1 is a private address"),
        "{}",
        refused.error()
    );

    // A registered endpoint on loopback is refused when the step calls it.
    let joined = send(as_agent(
        "PUT",
        &format!("{url}/corral/registry/worker-1"),
        "worker-1",
        json!({"endpoint": steps.url, "capabilities": ["reserve"], "ttl_secs": 60}).to_string(),
    ))
    .await;
    if joined.status == StatusCode::CREATED {
        let definition = json!({"steps": [{"name": "reserve",
            "action": {"agent": {"capability": "reserve"}, "path": "/1/action"}}]});
        let submitted = submit(&url, "planner", definition.to_string()).await;
        let id = submitted.json()["id"].as_str().unwrap().to_string();
        let ended = until_status(&url, "planner", &id, "compensated").await;
        let error = ended["steps"][0]["error"].as_str().unwrap();
        assert!(error.contains("private address 127.0.0.1"), "{ended}");
    }
    assert!(steps.calls().is_empty(), "nothing reached the step server");
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
