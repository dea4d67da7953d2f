//! `/corral/sagas` end to end: the HTTP API of one proxy (202, GET,
//! DELETE, 400, 404) against step servers on real sockets, steps on
//! Corral made as the agent (its key never stored), agents found in
//! the registry, loopback targets refused by default. Replicas sharing
//! Redis are in `sagas_replicas.rs`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use corral_e2e::{eventually_async, mock, request, send};
use http::StatusCode;
use serde_json::json;
use support::steps::{as_agent, effects_of, submit, until_status, Steps, LOOPBACK_STEPS};

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
