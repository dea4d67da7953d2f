//! Admission control through the proxy: shedding refuses what the queue
//! has no room for, in Ollama's shape, with Retry-After, and counts it.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral::Running;
use corral_e2e::{eventually, get, metrics, mock, request_with, send, stalled};
use corral_mock_ollama::MockOllama;

/// A proxy of capacity 1 in front of `upstream`, with `layers`.
async fn corral(upstream: &str, layers: &str) -> Running {
    corral_e2e::proxy_toml(upstream, &format!("capacity = 1\n{layers}")).await
}

/// An upstream that holds every request for half a minute, and a proxy
/// of capacity 1 with `layers` in front of it: its permit stays taken.
async fn stalled_corral(layers: &str) -> (MockOllama, Running) {
    let upstream = mock(stalled(Duration::from_secs(30))).await;
    let corral = corral(&upstream.url(), layers).await;
    (upstream, corral)
}

fn generate(
    url: &str,
    agent: &str,
    priority: u8,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"hold the slot","stream":false}"#,
        &[("x-agent-id", agent), ("x-priority", &priority.to_string())],
    )
}

#[tokio::test]
async fn a_full_queue_refuses_low_priority_with_503_retry_after_and_a_reason() {
    let (upstream, corral) = stalled_corral(
        "[[layers]]\nkind = \"shed\"\nmax_queue = 2\n\n[[layers]]\nkind = \"priority\"\n",
    )
    .await;
    let url = corral.url();
    // One runs (capacity 1), two wait: the queue is full.
    let mut held = Vec::new();
    for i in 0..3 {
        let url = url.clone();
        held.push(tokio::spawn(async move {
            send(generate(&url, &format!("holder-{i}"), 5)).await
        }));
    }
    eventually("one runs upstream", || upstream.stats().in_flight == 1).await;
    let mut queued = 0;
    for _ in 0..500 {
        queued = metrics(&url)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("corral_queue_depth{priority=\"5\"} "))
            .map(|v| v.parse::<f64>().unwrap() as usize)
            .unwrap_or(0);
        if queued == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(queued, 2, "two wait in the scheduler");

    let refused = send(generate(&url, "batch-1", 9)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-corral-reason"), Some("shed"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(refused.error().contains("server busy"));

    let tags = get(&format!("{url}/api/tags")).await;
    assert_eq!(tags.status, 200, "metadata is never shed nor queued");

    let metrics = metrics(&url).await;
    assert!(
        metrics.contains("corral_dropped_requests_total{reason=\"queue_full\",priority=\"9\"}")
            || metrics
                .contains("corral_dropped_requests_total{priority=\"9\",reason=\"queue_full\"}"),
        "{metrics}"
    );
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn an_agent_over_its_quota_gets_429_with_retry_after_and_ratelimit_headers() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral(
        &upstream.url(),
        "[[classes]]\nname = \"opus\"\nrate_limit = { requests_per_minute = 2 }\n[[agents]]\nid = \"planner\"\nclass = \"opus\"\n\n[[layers]]\nkind = \"ratelimit\"\n",
    )
    .await;
    for left in ["1", "0"] {
        let ok = send(generate(&corral.url(), "planner", 5)).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.header("ratelimit-policy"),
            Some("\"agent-requests\";q=2;w=60")
        );
        assert!(ok
            .header("ratelimit")
            .unwrap()
            .contains(&format!(";r={left};")));
    }
    let limited = send(generate(&corral.url(), "planner", 5)).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("x-corral-reason"), Some("rate_limited"));
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(
        limited.header("ratelimit"),
        Some("\"agent-requests\";r=0;t=30")
    );
    assert!(limited.error().contains("rate limit reached"));
    assert_eq!(
        upstream.stats().requests,
        2,
        "the refused request never reached the upstream"
    );

    let other = send(generate(&corral.url(), "somebody-else", 5)).await;
    assert_eq!(other.status, 200, "the default class has no limit");
}

#[tokio::test]
async fn a_full_compartment_answers_503_bulkhead_full() {
    let (upstream, corral) = stalled_corral(
        "[[classes]]\nname = \"batch\"\ncompartment = \"batch_ops\"\n[[agents]]\nid = \"nightly\"\nclass = \"batch\"\n\n[[layers]]\nkind = \"bulkhead\"\n[[layers.compartments]]\nname = \"batch_ops\"\nmax_concurrent = 1\n",
    )
    .await;
    let url = corral.url();
    let running = tokio::spawn(async move { send(generate(&url, "nightly", 9)).await });
    eventually("the first runs", || upstream.stats().in_flight == 1).await;
    let refused = send(generate(&corral.url(), "nightly", 9)).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("x-corral-reason"), Some("bulkhead_full"));
    assert!(refused.error().contains("batch_ops"));
    let free = get(&format!("{}/api/version", corral.url())).await;
    assert_eq!(free.status, 200);
    running.abort();
}

#[tokio::test]
async fn a_spent_day_budget_is_a_429_until_midnight_and_usage_shows_what_was_used() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral(
        &upstream.url(),
        "[[classes]]\nname = \"batch\"\nrate_limit = { tokens_per_day = 20 }\n[[agents]]\nid = \"batcher\"\nclass = \"batch\"\n\n[[layers]]\nkind = \"ratelimit\"\n",
    )
    .await;
    let url = corral.url();
    let ollama = || {
        request_with(
            "POST",
            &format!("{url}/api/generate"),
            r#"{"model":"llama3","prompt":"p","stream":false,"options":{"num_predict":8}}"#,
            &[("x-agent-id", "batcher")],
        )
    };
    // Each reserves 8 and generates 8; the third starts with 4 left.
    for left in ["12", "4", "0"] {
        let ok = send(ollama()).await;
        assert_eq!(ok.status, 200);
        assert!(
            ok.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"agent-tokens-day\";r={left};")),
            "{:?}",
            ok.header("ratelimit")
        );
    }
    let spent = send(ollama()).await;
    assert_eq!(spent.status, 429);
    assert_eq!(spent.header("x-corral-reason"), Some("budget_spent"));
    let wait: u64 = spent.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&wait), "{wait}");
    assert!(
        spent.error().contains("20 tokens a day"),
        "{}",
        spent.error()
    );
    assert!(
        spent.error().contains("whole again at "),
        "{}",
        spent.error()
    );

    // The OpenAI API gets the same refusal in its own shape.
    let openai = send(request_with(
        "POST",
        &format!("{url}/v1/chat/completions"),
        r#"{"model":"llama3","messages":[{"role":"user","content":"p"}],"max_tokens":8}"#,
        &[("x-agent-id", "batcher")],
    ))
    .await;
    assert_eq!(openai.status, 429);
    let body = openai.json();
    assert_eq!(body["error"]["code"], "budget_spent", "{body}");
    assert_eq!(
        upstream.stats().requests,
        3,
        "refused requests never reached the upstream"
    );

    let usage = get(&format!("{url}/corral/usage?agent=batcher&since=1h")).await;
    assert_eq!(usage.status, 200);
    let usage = usage.json();
    assert_eq!(
        usage["agents"]["batcher"]["generated_tokens"], 24,
        "{usage}"
    );
    assert_eq!(usage["agents"]["batcher"]["requests"], 5, "{usage}");
    assert_eq!(usage["agents"]["batcher"]["refused"], 2, "{usage}");
    assert_eq!(usage["agents"]["batcher"]["class"], "batch", "{usage}");
    assert_eq!(usage["total"]["generated_tokens"], 24, "{usage}");
    let budget = &usage["budgets"]["batcher"][0];
    assert_eq!(budget["policy"], "agent-tokens-day", "{usage}");
    assert_eq!(
        (budget["limit"].as_u64(), budget["spent"].as_u64()),
        (Some(20), Some(24))
    );
    assert_eq!(budget["remaining"], 0);
    assert_eq!(budget["mode"], "enforce");
    assert!(
        budget["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"),
        "{budget}"
    );
    let wrong = get(&format!("{url}/corral/usage?since=yesterday")).await;
    assert_eq!(wrong.status, 400);
    assert!(
        wrong.error().contains("not a timestamp"),
        "{}",
        wrong.error()
    );
}
