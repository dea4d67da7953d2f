//! Ollama's Anthropic Messages (`/v1/messages`) and OpenAI Responses
//! (`/v1/responses`) endpoints spend the GPU as `/api/chat` does: they
//! are scheduled, limited in tokens read from their own usage fields,
//! counted under their own labels, refused in their own error shapes, and
//! a stream the upstream breaks ends with their own error event.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral::Running;
use corral_e2e::{
    broken_stream, events, fast, metric_sum, mock, open, post, proxy, request, send, streaming,
    upstream_until, within,
};
use corral_mock_ollama::MockConfig;
use http_body_util::BodyExt;

const MESSAGES: &str =
    r#"{"model":"llama3","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}"#;
const RESPONSES: &str = r#"{"model":"llama3","input":"hi"}"#;

/// A quota of 20 tokens a minute for everyone, and the layer keeping it.
const TOKEN_QUOTA: &str = "[[classes]]\nname = \"default\"\nrate_limit = { tokens_per_minute = 20 }\n\n[[layers]]\nkind = \"ratelimit\"\n";

#[tokio::test]
async fn through_the_default_stack_they_wait_for_a_permit_like_any_generation() {
    let upstream = mock(MockConfig {
        ttft: Duration::from_millis(200),
        ..streaming(4, 1000.0)
    })
    .await;
    // No config: one request at a time for the model.
    let corral = proxy(&upstream.url()).await;
    let url = corral.url();
    let calls = (0..3).map(|i| {
        let (path, body) = if i % 2 == 0 {
            ("/v1/messages", MESSAGES)
        } else {
            ("/v1/responses", RESPONSES)
        };
        send(request("POST", &format!("{url}{path}"), body))
    });
    let replies = futures_util::future::join_all(calls).await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    let stats = upstream.stats();
    assert_eq!(
        stats.peak_in_flight, 1,
        "one at a time, as Ollama's default"
    );
    assert_eq!(stats.completed, 3);
    for endpoint in ["v1_messages", "v1_responses"] {
        assert!(
            metric_sum(
                &url,
                &format!("corral_requests_total{{endpoint=\"{endpoint}\",status=\"200\"")
            )
            .await
                >= 1.0,
            "{endpoint} is counted under its own label"
        );
    }
}

/// A proxy of capacity 2 in front of `upstream`, with `extra` config.
async fn corral(upstream: &str, extra: &str) -> Running {
    corral_e2e::proxy_toml(upstream, &format!("capacity = 2\n{extra}")).await
}

#[tokio::test]
async fn tokens_are_read_from_their_usage_and_a_quota_refuses_in_their_own_shape() {
    let upstream = mock(fast()).await;
    let corral = corral(
        &upstream.url(),
        &format!("{TOKEN_QUOTA}default_generation_tokens = 4\n\n[[layers]]\nkind = \"priority\"\n"),
    )
    .await;
    let url = corral.url();
    // The fast mock answers 8 tokens: the quota of 20 is spent by the
    // answers' own counts, whatever was estimated up front (64, charged
    // as the whole bucket of 20, then 4): 8 + 8 leave 4, too few for the
    // next estimate of 64. Had the first been refunded from the 64 it
    // asked for rather than the 20 it was charged, the bucket would be
    // full again.
    for (path, body) in [("/v1/messages", MESSAGES), ("/v1/responses", RESPONSES)] {
        assert_eq!(post(&format!("{url}{path}"), body).await.status, 200);
    }
    let generated: Vec<u64> = events(&url, "kind=completed")
        .await
        .iter()
        .map(|e| e["data"]["generated_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(generated, [8, 8], "read from usage.output_tokens");

    let refused = post(&format!("{url}/v1/messages"), MESSAGES).await;
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.header("retry-after").is_some());
    let body = refused.json();
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    let refused = post(
        &format!("{url}/v1/responses"),
        r#"{"model":"llama3","input":"hi","max_output_tokens":64}"#,
    )
    .await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn a_stream_the_upstream_breaks_ends_with_their_error_event_and_counts_as_an_error() {
    let upstream = mock(fast()).await;
    let corral = corral(&upstream.url(), "").await;
    let url = corral.url();
    for (path, body) in [
        (
            "/v1/messages",
            r#"{"model":"llama3","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "/v1/responses",
            r#"{"model":"llama3","input":"hi","stream":true}"#,
        ),
    ] {
        let text = broken_stream(&format!("{url}{path}"), body).await;
        let last = text
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .last()
            .unwrap();
        let data = last
            .strip_prefix("event: error\ndata: ")
            .unwrap_or_else(|| panic!("{path}: an error event last: {text}"));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["type"], "error", "{path}");
        assert!(!text.contains("message_stop") && !text.contains("response.completed"));
    }
    let errors = metric_sum(&url, "corral_request_duration_seconds_count{endpoint=\"v1_").await;
    assert_eq!(errors, 2.0);
    let failed = events(&url, "kind=completed").await;
    assert!(
        failed.iter().all(|e| e["data"]["outcome"] == "error"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn an_anthropic_stream_the_client_leaves_early_is_not_refunded_its_tokens() {
    let upstream = mock(streaming(40, 20.0)).await;
    let corral = corral(&upstream.url(), TOKEN_QUOTA).await;
    let url = corral.url();
    let stream = r#"{"model":"llama3","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut response = open(request("POST", &format!("{url}/v1/messages"), stream)).await;
    assert_eq!(response.status(), 200);
    // `message_start` says `output_tokens: 0`; the client leaves then.
    let first = within(response.body_mut().frame()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("message_start"));
    drop(response);
    upstream_until(&upstream, "the upstream sees the client leave", |s| {
        s.cancelled == 1
    })
    .await;
    let next = post(&format!("{url}/v1/messages"), MESSAGES).await;
    assert_eq!(
        next.status, 429,
        "the estimate charged stands: leaving is no refund"
    );
}
