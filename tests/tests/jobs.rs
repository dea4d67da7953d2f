//! Async jobs through a real proxy and the simulated Ollama: accepted
//! with 202, run through the same stack, read whole, followed live,
//! replayed for a late reader, cancelled, refused when full, theirs only
//! to their owner; 131 agents' jobs keep the upstream's capacity and the
//! priority order.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use corral_e2e::herd::{assert_priority_one_went_first, assert_the_upstream_kept_up, CLASSES};
use corral_e2e::{
    eventually_async, get, mock, open, proxy_toml, request_with, send, streaming, text,
    upstream_saw, upstream_until, within,
};
use serde_json::Value;

const GENERATE: &str = r#"{"model":"llama3","prompt":"hi","stream":false}"#;

use corral_e2e::jobs::{read as job, submit, until};

#[tokio::test]
async fn a_call_that_prefers_to_be_answered_later_is_a_job_answered_as_a_live_one_would_be() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let live = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &[("x-mock-id", "live")],
    ))
    .await;

    let id = submit(&url, "/api/generate", GENERATE, "planner").await;
    let done = until(&url, &id, "planner", "done").await;
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["response"]["status"], 200);
    assert_eq!(done["response"]["body"]["done"], true);
    assert_eq!(
        done["response"]["body"]["response"],
        live.json()["response"],
        "the same answer as a live request"
    );
    // The job's request went upstream once, its id kept to Corral (as a
    // live request's is).
    let runs: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.uri == "/api/generate" && !r.headers.contains_key("x-mock-id"))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let seen = &runs[0];
    assert!(!seen.headers.contains_key("x-request-id"));
    assert!(
        !seen.headers.contains_key("prefer"),
        "the preference is the proxy's"
    );

    let result = send(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}/result"),
        "",
        &[("x-agent-id", "planner")],
    ))
    .await;
    assert_eq!(result.status, 200);
    assert_eq!(result.header("content-type"), live.header("content-type"));
    assert_eq!(result.json()["response"], live.json()["response"]);
    // Its events name the job.
    let events = corral_e2e::events(&url, "kind=job_finished&agent=planner").await;
    assert!(
        events
            .iter()
            .any(|e| e["data"]["job"] == id.as_str() && e["data"]["status"] == "done"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_job_described_to_corral_jobs_streams_and_a_late_reader_gets_every_chunk() {
    // 30 tokens at 60/s: half a second of stream to join in the middle.
    let upstream = mock(streaming(30, 60.0)).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let described = r#"{"endpoint": "/api/chat", "body": {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}}"#;
    let reply = send(request_with(
        "POST",
        &format!("{url}/corral/jobs"),
        described,
        &[("x-agent-id", "writer")],
    ))
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_string();

    until(&url, &id, "writer", "running").await;
    let live = open(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}/stream"),
        "",
        &[("x-agent-id", "writer")],
    ))
    .await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers()["content-type"], "application/x-ndjson");
    let followed = text(live).await;
    until(&url, &id, "writer", "done").await;

    // A reader after the end gets the same, from the start.
    let late = text(
        open(request_with(
            "GET",
            &format!("{url}/corral/jobs/{id}/stream"),
            "",
            &[("x-agent-id", "writer")],
        ))
        .await,
    )
    .await;
    let result = send(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}/result"),
        "",
        &[("x-agent-id", "writer")],
    ))
    .await;
    assert_eq!(
        followed,
        result.text(),
        "the live follower read every chunk from the first"
    );
    assert_eq!(late, result.text(), "the late reader too");
    let lines: Vec<Value> = late
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 31, "30 tokens and the final line");
    assert_eq!(lines.last().unwrap()["done"], true);
}

#[tokio::test]
async fn only_the_agent_that_submitted_a_job_sees_it_and_bad_submissions_are_refused() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let id = submit(&url, "/api/generate", GENERATE, "owner").await;
    until(&url, &id, "owner", "done").await;
    assert_eq!(job(&url, &id, "someone-else").await.status, 404);
    let cancel = send(request_with(
        "DELETE",
        &format!("{url}/corral/jobs/{id}"),
        "",
        &[("x-agent-id", "someone-else")],
    ))
    .await;
    assert_eq!(cancel.status, 404);
    assert_eq!(job(&url, "job-0123", "owner").await.status, 404);
    assert_eq!(
        job(&url, "3f0c2a9e-0000-4000-8000-000000000000", "owner")
            .await
            .status,
        404
    );

    for (body, expected) in [
        (r#"{"endpoint": "/api/tags"}"#, "not an inference call"),
        (
            r#"{"endpoint": "/corral/jobs", "body": {}}"#,
            "not an Ollama or OpenAI path",
        ),
        (r#"{"body": {}}"#, "endpoint"),
        (r#"not json"#, "expected"),
        (
            r#"{"endpoint": "/api/generate", "body": {}, "callback_url": "ftp://example.com/"}"#,
            "only http and https",
        ),
    ] {
        let reply = send(request_with(
            "POST",
            &format!("{url}/corral/jobs"),
            body,
            &[],
        ))
        .await;
        assert_eq!(reply.status, 400, "{body}");
        assert!(
            reply.error().contains(expected),
            "{body}: {}",
            reply.error()
        );
    }
}

#[tokio::test]
async fn cancelling_a_running_job_stops_its_generation_upstream() {
    // 2,000 tokens at 50/s: 40 s of stream, cut short.
    let upstream = mock(streaming(2000, 50.0)).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let body = r#"{"model":"llama3","prompt":"a long story"}"#;
    let id = submit(&url, "/api/generate", body, "writer").await;
    until(&url, &id, "writer", "running").await;
    let cancelled = send(request_with(
        "DELETE",
        &format!("{url}/corral/jobs/{id}"),
        "",
        &[("x-agent-id", "writer")],
    ))
    .await;
    assert_eq!(cancelled.status, 200);
    let view = until(&url, &id, "writer", "cancelled").await;
    assert_eq!(view["reason"], "cancelled by its owner");
    upstream_until(&upstream, "the upstream saw its client leave", |s| {
        s.cancelled == 1
    })
    .await;
    assert_eq!(upstream.stats().completed, 0);
}

#[tokio::test]
async fn a_stream_the_upstream_breaks_fails_the_job_with_what_a_live_client_would_have_read() {
    let upstream = mock(streaming(20, 1000.0)).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"hi"}"#,
        &[
            ("prefer", "respond-async"),
            ("x-agent-id", "a"),
            ("x-mock-fault", "drop_after=3"),
        ],
    ))
    .await;
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let failed = until(&url, &id, "a", "failed").await;
    assert!(failed["reason"].as_str().unwrap().len() > 3, "{failed}");
    let result = send(request_with(
        "GET",
        &format!("{url}/corral/jobs/{id}/result"),
        "",
        &[("x-agent-id", "a")],
    ))
    .await;
    let last: Value = serde_json::from_str(result.text().lines().last().unwrap()).unwrap();
    assert!(
        last["error"].is_string(),
        "the error line a live client reads last: {last}"
    );
}

#[tokio::test]
async fn a_job_waiting_for_the_upstream_is_queued_with_its_place() {
    let upstream = mock(corral_e2e::stalled(Duration::from_secs(30))).await;
    let corral = proxy_toml(&upstream.url(), "capacity = 1\n").await;
    let url = corral.url();
    let first = submit(&url, "/api/generate", GENERATE, "a").await;
    until(&url, &first, "a", "running").await;
    let second = submit(&url, "/api/generate", GENERATE, "b").await;
    let third = submit(&url, "/api/generate", GENERATE, "c").await;
    // Both wait behind the first, in the priority queue.
    upstream_until(&upstream, "one request upstream", |s| s.in_flight == 1).await;
    // Each enters the queue when its runner sends it: wait for both
    // (the scheduler then tells where each stands: a job not yet sent
    // has only the rough count, which has no waited_ms).
    eventually_async("both wait in the queue", || async {
        let mut both = true;
        for (id, agent) in [(&second, "b"), (&third, "c")] {
            both &= job(&url, id, agent).await.json()["queue"]["waited_ms"].is_u64();
        }
        both
    })
    .await;
    // In the scheduler's order: b came first, equal service.
    for (id, agent, ahead) in [(&second, "b", 0), (&third, "c", 1)] {
        let view = job(&url, id, agent).await.json();
        assert_eq!(view["status"], "queued", "{view}");
        assert_eq!(view["queue"]["ahead"], ahead, "{view}");
        assert_eq!(view["queue"]["position"], ahead + 1, "{view}");
        assert_eq!(view["queue"]["priority"], 5, "{view}");
        assert_eq!(
            view["attempts"], 1,
            "a runner took it: it waits for a permit"
        );
    }
    assert_eq!(upstream.stats().requests, 1);
}

#[tokio::test]
async fn a_submission_repeated_with_its_idempotency_key_gets_the_same_job_and_runs_once() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let headers = [
        ("prefer", "respond-async"),
        ("x-agent-id", "planner"),
        ("idempotency-key", "saga-9:1:action"),
    ];
    let first = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &headers,
    ))
    .await;
    let again = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &headers,
    ))
    .await;
    assert_eq!((first.status.as_u16(), again.status.as_u16()), (202, 202));
    let id = first.json()["id"].as_str().unwrap().to_string();
    assert_eq!(again.json()["id"], id.as_str(), "the same job");
    until(&url, &id, "planner", "done").await;
    assert_eq!(upstream.stats().completed, 1, "generated once");
}

#[tokio::test]
async fn a_full_job_store_refuses_with_503_and_retry_after() {
    let upstream = mock(corral_e2e::stalled(Duration::from_secs(30))).await;
    let corral = proxy_toml(&upstream.url(), "[jobs]\nmax_jobs = 1\n").await;
    let url = corral.url();
    submit(&url, "/api/generate", GENERATE, "a").await;
    let refused = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &[("prefer", "respond-async")],
    ))
    .await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(refused.header("x-corral-reason"), Some("jobs_full"));
    assert!(refused.error().contains("full"), "{}", refused.error());
}

#[tokio::test]
async fn one_agent_cannot_hold_more_jobs_than_its_bound_and_others_are_not_held_back() {
    let upstream = mock(corral_e2e::stalled(Duration::from_secs(30))).await;
    let corral = proxy_toml(&upstream.url(), "[jobs]\nmax_jobs_per_agent = 1\n").await;
    let url = corral.url();
    submit(&url, "/api/generate", GENERATE, "greedy").await;
    let refused = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &[("prefer", "respond-async"), ("x-agent-id", "greedy")],
    ))
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("x-corral-reason"), Some("agent_jobs_full"));
    assert!(refused.header("retry-after").is_some());
    submit(&url, "/api/generate", GENERATE, "modest").await;
}

#[tokio::test]
async fn a_job_runs_as_the_agent_whose_key_submitted_it_and_needs_that_key_to_be_read() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(
        &upstream.url(),
        "[identity]\nrequire_key = true\n[[agents]]\nid = \"planner\"\nkey = \"sk-planner-0123456789\"\n[[agents]]\nid = \"other\"\nkey = \"sk-other-0123456789\"\n",
    )
    .await;
    let url = corral.url();
    let planner = [("authorization", "Bearer sk-planner-0123456789")];
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &[
            planner[0],
            ("prefer", "respond-async"),
            ("x-mock-id", "planned"),
        ],
    ))
    .await;
    assert_eq!(reply.status, 202);
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let read = |key: &'static str| {
        let url = format!("{url}/corral/jobs/{id}");
        async move { send(request_with("GET", &url, "", &[("authorization", key)])).await }
    };
    eventually_async("the job is done", || async {
        read("Bearer sk-planner-0123456789").await.json()["status"] == "done"
    })
    .await;
    let seen = upstream_saw(&upstream, "planned");
    assert!(
        !seen.headers.contains_key("authorization"),
        "the key is not kept with the job"
    );
    assert_eq!(read("Bearer sk-other-0123456789").await.status, 404);
    assert_eq!(read("Bearer sk-wrong").await.status, 401);
    let agents = get(&format!("{url}/corral/agents")).await.json();
    assert_eq!(
        agents["planner"]["completed"], 1,
        "served as the planner: {agents}"
    );
}

/// 131 agents each submit a job at once: the upstream never runs more
/// than its 4, and priority 1's jobs waited a small fraction of what
/// priority 9's did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_131_agents_submitting_jobs_keeps_the_upstream_capacity_and_the_priority_order() {
    // Slower than the live herd's upstream: submitting 131 jobs takes
    // longer than sending 131 requests on warm connections, and the
    // queue must build for its order to show.
    let upstream = mock(corral_mock_ollama::MockConfig {
        ttft: Duration::from_millis(30),
        ..corral_e2e::herd::upstream()
    })
    .await;
    let mut toml = "capacity = 4\n[[layers]]\nkind = \"priority\"\n".to_string();
    for (name, priority, count) in CLASSES {
        toml.push_str(&format!("[[classes]]\nname = \"{name}\"\npriority = {priority}\npriorities = [{priority}, {priority}]\n"));
        for i in 0..count {
            toml.push_str(&format!(
                "[[agents]]\nid = \"{name}-{i}\"\nclass = \"{name}\"\n"
            ));
        }
    }
    let corral = proxy_toml(&upstream.url(), &toml).await;
    let url = Arc::new(corral.url());
    let start = Arc::new(tokio::sync::Barrier::new(corral_e2e::herd::agents()));
    let mut submitted = Vec::new();
    for (class, priority, count) in CLASSES {
        for i in 0..count {
            let (url, start) = (url.clone(), start.clone());
            submitted.push(tokio::spawn(async move {
                let agent = format!("{class}-{i}");
                start.wait().await;
                let body = format!(r#"{{"model":"llama3","prompt":"{agent}","stream":false}}"#);
                (
                    priority,
                    agent.clone(),
                    submit(&url, "/api/generate", &body, &agent).await,
                )
            }));
        }
    }
    let mut jobs = Vec::new();
    for s in submitted {
        jobs.push(within(s).await.unwrap());
    }
    let mut waits: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
    for (priority, agent, id) in &jobs {
        let done = until(&url, id, agent, "done").await;
        let wait: u64 = done["response"]["headers"]["x-corral-queue-ms"]
            .as_str()
            .map_or(0, |v| v.parse().unwrap());
        waits.entry(*priority).or_default().push(wait);
    }
    let stats = upstream.stats();
    assert_the_upstream_kept_up(&stats, "from 131 agents' jobs");
    assert_eq!(stats.completed as usize, jobs.len(), "each job ran once");
    assert_priority_one_went_first(waits, "of the jobs");
}

/// Submits a generation to `POST /corral/jobs` with `callback_url`.
async fn with_callback(url: &str, callback: &str) -> corral_e2e::Reply {
    let described = format!(
        r#"{{"endpoint": "/api/generate", "body": {GENERATE}, "callback_url": "{callback}"}}"#
    );
    send(request_with(
        "POST",
        &format!("{url}/corral/jobs"),
        described,
        &[],
    ))
    .await
}

/// What a callback receiver got: head and body.
type Called = (http::HeaderMap, bytes::Bytes);

/// A server that records each `POST` it receives and answers `status`.
async fn receiver(status: u16) -> (String, tokio::sync::mpsc::UnboundedReceiver<Called>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/done?token=1", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = http_body_util::BodyExt::collect(body)
                                .await
                                .unwrap()
                                .to_bytes();
                            tx.send((parts.headers, body)).unwrap();
                            let mut answer =
                                http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                            *answer.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(answer)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_finished_job_calls_back_once_signed_with_the_auth_scheme() {
    let upstream = mock(corral_e2e::fast()).await;
    std::env::set_var("JOBS_TEST_CALLBACK_SECRET", "callback secret, long enough");
    let corral = proxy_toml(
        &upstream.url(),
        "[jobs]\nallow_private_callbacks = true\ncallback_secret_env = \"JOBS_TEST_CALLBACK_SECRET\"\n",
    )
    .await;
    let url = corral.url();
    let (callback, mut calls) = receiver(200).await;
    let reply = with_callback(&url, &callback).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    let (headers, body) = within(calls.recv()).await.unwrap();
    let told: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(told["id"], id.as_str());
    assert_eq!(told["status"], "done");
    let header = |name: &str| headers[name].to_str().unwrap().to_string();
    assert_eq!(header("x-request-id"), id);
    let signed = corral_auth::Signed {
        agent: &header("x-agent-id"),
        method: "POST",
        path_and_query: "/done?token=1",
        timestamp: &header("x-timestamp"),
        request_id: &id,
        body: &body,
    };
    assert!(
        signed.verify(b"callback secret, long enough", &header("x-signature")),
        "signed with the auth layer's scheme"
    );
    // Once: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), calls.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_callback_to_a_private_address_is_refused_unless_allowed_and_a_failing_one_is_retried() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(&upstream.url(), "[jobs]\ncallback_attempts = 2\n").await;
    let url = corral.url();
    let (callback, mut calls) = receiver(200).await;
    // An address written out is refused at once.
    let reply = with_callback(&url, &callback).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.error().contains("private or loopback"),
        "{}",
        reply.error()
    );
    // A name is checked when called: the job runs, the callback does not.
    let by_name = callback.replace("127.0.0.1", "localhost");
    let reply = with_callback(&url, &by_name).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    until(&url, &id, "anonymous", "done").await;
    corral_e2e::eventually_async("the refused callback is counted", || async {
        corral_e2e::metric_sum(&url, "corral_jobs_callbacks_failed_total").await >= 1.0
    })
    .await;
    assert!(
        calls.try_recv().is_err(),
        "loopback is not called without allow_private_callbacks"
    );

    // Allowed, a receiver that fails is tried again.
    let corral = proxy_toml(
        &upstream.url(),
        "[jobs]\nallow_private_callbacks = true\ncallback_attempts = 2\n",
    )
    .await;
    let url = corral.url();
    let (callback, mut calls) = receiver(500).await;
    with_callback(&url, &callback).await;
    within(calls.recv()).await.unwrap();
    within(calls.recv()).await.unwrap();
}

#[tokio::test]
async fn an_agent_that_signs_submits_signed_jobs_that_run_without_a_signature_and_unsigned_ones_are_refused(
) {
    const SECRET: &str = "signer secret, long enough";
    let upstream = mock(corral_e2e::fast()).await;
    let corral = proxy_toml(
        &upstream.url(),
        &format!(
            "[[agents]]\nid = \"signer\"\nkey = \"sk-signer-0123456789\"\n\n[[layers]]\nkind = \"auth\"\nsecrets = {{ signer = {{ value = \"{SECRET}\" }} }}\n\n[[layers]]\nkind = \"priority\"\n"
        ),
    )
    .await;
    let url = corral.url();
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = corral_auth::Signed {
        agent: "signer",
        method: "POST",
        path_and_query: "/api/generate",
        timestamp: &timestamp,
        request_id: "signed-job-1",
        body: GENERATE.as_bytes(),
    }
    .sign(SECRET.as_bytes());
    let key = ("authorization", "Bearer sk-signer-0123456789");
    let prefer = ("prefer", "respond-async");
    let signed = [
        key,
        prefer,
        ("x-timestamp", &timestamp),
        ("x-request-id", "signed-job-1"),
        ("x-signature", &signature),
    ];
    let reply = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &signed,
    ))
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_string();
    // Reading is a request like any other: signed too.
    let reads = std::sync::atomic::AtomicU32::new(0);
    let read = |id: String| {
        let path = format!("/corral/jobs/{id}");
        let request_id = format!(
            "read-{}",
            reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let signature = corral_auth::Signed {
            agent: "signer",
            method: "GET",
            path_and_query: &path,
            timestamp: &timestamp,
            request_id: &request_id,
            body: b"",
        }
        .sign(SECRET.as_bytes());
        let request = request_with(
            "GET",
            &format!("{url}{path}"),
            "",
            &[
                key,
                ("x-timestamp", &timestamp),
                ("x-request-id", &request_id),
                ("x-signature", &signature),
            ],
        );
        async move { send(request).await.json() }
    };
    eventually_async("the signed job is done", || async {
        read(id.clone()).await["status"] == "done"
    })
    .await;

    // The same again is a replay; unsigned, it is refused as the layer would.
    let replayed = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &signed,
    ))
    .await;
    assert_eq!(replayed.status, 401, "{}", replayed.text());
    assert_eq!(replayed.header("x-corral-reason"), Some("replayed_request"));
    let unsigned = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        GENERATE,
        &[key, prefer],
    ))
    .await;
    assert_eq!(unsigned.status, 401, "{}", unsigned.text());
    assert_eq!(upstream.stats().requests, 1, "only the signed job ran");
}
