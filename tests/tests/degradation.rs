//! Degradation through the proxy against the simulated Ollama: under
//! overload non-critical work goes to the small model and critical work
//! does not; at Critical the rest gets the default answer; the level
//! falls back to Normal with the load; an operator can force a level.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral::Config;
use corral_e2e::{eventually, fast, get, mock, post, request, send, upstream_saw, upstream_until};

const STACK: &str = r#"
[upstream]
capacity = 4
model_capacity = { tinyllama = 2 }

[[classes]]
name = "system"
critical = true
[[agents]]
id = "ops"
class = "system"

[[layers]]
kind = "degrade"
smoothing = "0s"
saturation = 1.5
l2_model = "tinyllama"
l2_refuse_above = 8
[layers.defaults]
chat = "Overloaded: here is a default answer."

[[layers]]
kind = "priority"
"#;

fn config(upstream: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        STACK.replace("[upstream]", &format!("[upstream]\nurl = \"{upstream}\""))
    );
    Config::parse(&text, std::path::Path::new("degrade.toml")).unwrap()
}

/// Requests waiting in the scheduler, as `/metrics` reports them.
async fn queued(url: &str) -> usize {
    corral_e2e::metric_sum(url, "corral_queue_depth{").await as usize
}

/// Waits until `n` requests wait in the scheduler.
async fn until_queued(url: &str, n: usize) {
    corral_e2e::within(async {
        while queued(url).await != n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

fn chat(
    url: &str,
    id: &str,
    agent: &str,
    priority: u8,
    fault: &str,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    // Holders stream and pause after their first chunk until released:
    // they hold their permits as long as the test needs.
    let stream = fault.contains("pause_after");
    let mut r = request(
        "POST",
        &format!("{url}/api/chat"),
        format!(
            r#"{{"model":"llama3","messages":[{{"role":"user","content":"hi"}}],"stream":{stream}}}"#
        ),
    );
    let headers = r.headers_mut();
    headers.insert("x-request-id", id.parse().unwrap());
    headers.insert("x-mock-id", id.parse().unwrap());
    headers.insert("x-agent-id", agent.parse().unwrap());
    headers.insert("x-priority", priority.to_string().parse().unwrap());
    headers.insert("x-mock-fault", fault.parse().unwrap());
    r
}

#[tokio::test]
async fn under_overload_non_critical_work_is_rewritten_critical_is_not_and_critical_level_answers_defaults(
) {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url()))
        .await
        .unwrap();
    let url = corral.url();

    // Eight long requests: four run, four wait. Load 8 / (6 × 1.5) = 0.89: L2.
    let mut holders = Vec::new();
    for i in 0..8 {
        let url = url.clone();
        holders.push(tokio::spawn(async move {
            send(chat(
                &url,
                &format!("hold-{i}"),
                &format!("holder-{i}"),
                5,
                "pause_after=1,tokens=2",
            ))
            .await
        }));
    }
    eventually("four run upstream", || upstream.stats().in_flight == 4).await;
    until_queued(&url, 4).await;

    let rewritten = send(chat(&url, "worker", "worker", 5, "ttft_ms=1")).await;
    assert_eq!(rewritten.status, 200, "{:?}", rewritten.body);
    assert_eq!(rewritten.header("x-corral-degraded"), Some("L2"));
    assert_eq!(
        rewritten.header("x-corral-model-rewrite"),
        Some("llama3->tinyllama")
    );
    assert!(upstream_saw(&upstream, "worker")
        .body
        .contains("\"model\":\"tinyllama\""));

    let low = send(chat(&url, "low", "batcher", 9, "ttft_ms=1")).await;
    assert_eq!(low.status, 503);
    assert_eq!(low.header("x-corral-reason"), Some("degraded"));

    // One more, which L2 sends to the small model's own pool: 9 / 9 = 1.0:
    // Critical. Priority 5 now gets the default answer.
    let url2 = url.clone();
    holders.push(tokio::spawn(async move {
        send(chat(
            &url2,
            "hold-8",
            "holder-8",
            5,
            "pause_after=1,tokens=2",
        ))
        .await
    }));
    upstream_until(&upstream, "the ninth runs on the small model", |s| {
        s.in_flight == 5
    })
    .await;
    let defaulted = send(chat(&url, "late", "late", 5, "ttft_ms=1")).await;
    assert_eq!(defaulted.status, 200);
    assert_eq!(defaulted.header("x-corral-degraded"), Some("Critical"));
    assert_eq!(
        defaulted.json()["message"]["content"],
        "Overloaded: here is a default answer."
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.headers.get("x-mock-id").map(String::as_str) != Some("late")));

    // Critical work waits for a permit like anyone (at priority 1, first
    // in line); one holder finishing frees one.
    let url3 = url.clone();
    let critical =
        tokio::spawn(async move { send(chat(&url3, "ops-1", "ops", 1, "ttft_ms=1")).await });
    until_queued(&url, 5).await;
    upstream.release(1);
    let critical = critical.await.unwrap();
    assert_eq!(critical.status, 200);
    assert!(critical.header("x-corral-degraded").is_none());
    assert!(
        upstream_saw(&upstream, "ops-1")
            .body
            .contains("\"model\":\"llama3\""),
        "critical work is never rewritten"
    );

    upstream.release(8);
    for holder in holders {
        assert_eq!(holder.await.unwrap().status, 200);
    }
    // The load has fallen: Normal again.
    let calm = send(chat(&url, "calm", "worker", 5, "ttft_ms=1")).await;
    assert_eq!(calm.status, 200);
    assert!(calm.header("x-corral-degraded").is_none());
    assert!(upstream_saw(&upstream, "calm")
        .body
        .contains("\"model\":\"llama3\""));
}

#[tokio::test]
async fn an_operator_forces_a_level_and_releases_it() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url()))
        .await
        .unwrap();
    let admin = format!("{}/corral/degrade", corral.url());

    let forced = post(&admin, r#"{"level":"L2"}"#).await;
    assert_eq!(forced.status, 200);
    assert_eq!(forced.json()["level"], "L2");
    assert_eq!(forced.json()["forced"], "L2");
    let rewritten = send(chat(&corral.url(), "f1", "w", 5, "ttft_ms=1")).await;
    assert_eq!(
        rewritten.header("x-corral-model-rewrite"),
        Some("llama3->tinyllama")
    );

    let bad = post(&admin, r#"{"level":"L7"}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("unknown level"));

    let released = send(request("DELETE", &admin, "")).await;
    assert_eq!(released.json()["level"], "Normal");
    assert!(released.json()["forced"].is_null());
    let plain = send(chat(&corral.url(), "f2", "w", 5, "ttft_ms=1")).await;
    assert!(plain.header("x-corral-degraded").is_none());
    let metrics = String::from_utf8(
        get(&format!("{}/metrics", corral.url()))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(metrics.contains("corral_degradation_level"), "{metrics}");
}

#[tokio::test]
async fn a_request_the_queue_would_keep_past_its_ttft_runs_on_the_smaller_model_where_its_class_allows(
) {
    let upstream = mock(fast()).await;
    // No capacity set: each model has one permit of its own.
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "{}"

[[classes]]
name = "interactive"
ttft = "150ms"
ttft_fallback = true
[[agents]]
id = "chatter"
class = "interactive"

[[layers]]
kind = "degrade"
smoothing = "0s"
saturation = 1000.0
l2_model = "tinyllama"

[[layers]]
kind = "priority"
"#,
        upstream.url()
    );
    let config = Config::parse(&text, std::path::Path::new("ttft.toml")).unwrap();
    let corral = corral::Running::start(&config).await.unwrap();
    let url = corral.url();

    // llama3's permit is measured held ~300 ms a request.
    for i in 0..2 {
        let warm = send(chat(&url, &format!("warm-{i}"), "warm", 5, "ttft_ms=300")).await;
        assert_eq!(warm.status, 200);
    }
    // One holds it, three wait: about a second to wait.
    let mut holders = Vec::new();
    for i in 0..4 {
        let url = url.clone();
        holders.push(tokio::spawn(async move {
            send(chat(
                &url,
                &format!("hold-{i}"),
                &format!("holder-{i}"),
                5,
                "pause_after=1,tokens=2",
            ))
            .await
        }));
    }
    eventually("one runs upstream", || upstream.stats().in_flight == 1).await;
    until_queued(&url, 3).await;

    // The class aims for 150 ms: the small model's queue is empty.
    let moved = corral_e2e::within(send(chat(&url, "moved", "chatter", 5, "tokens=2"))).await;
    assert_eq!(moved.status, 200, "{:?}", moved.body);
    assert_eq!(moved.header("x-corral-degraded"), Some("ttft"));
    assert_eq!(
        moved.header("x-corral-model-rewrite"),
        Some("llama3->tinyllama")
    );
    assert!(upstream_saw(&upstream, "moved")
        .body
        .contains("\"model\":\"tinyllama\""));

    // An objective the queue meets, and a class not allowed to move: both
    // wait for llama3.
    let mut waiting = Vec::new();
    for (id, agent, ttft) in [
        ("patient", "chatter", "60000"),
        ("other", "somebody", "150"),
    ] {
        let mut request = chat(&url, id, agent, 5, "tokens=2");
        request
            .headers_mut()
            .insert("x-corral-ttft-ms", ttft.parse().unwrap());
        waiting.push(tokio::spawn(send(request)));
    }
    until_queued(&url, 5).await;
    upstream.release(4);
    for request in waiting {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(answer.header("x-corral-model-rewrite").is_none());
    }
    for holder in holders {
        assert_eq!(holder.await.unwrap().status, 200);
    }
}
