//! How an answer ended is counted as it ended: a stream the upstream
//! breaks is a failure for the breaker, the metrics and the events (and
//! still reaches the client as an error in its own framing); a
//! non-streamed answer and an embedding are completed; an upstream error
//! after every attempt is an error; a long non-streamed generation is
//! waited for and asked of the upstream once; a stream whose client
//! closes the connection as soon as it has read the terminal frame is
//! completed.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;
use std::time::Duration;

use corral::Config;
use corral_e2e::{
    broken_stream, events, fast, get, metric_sum, mock, open, post, proxy_toml, request_with, send,
    text, within,
};
use http_body_util::BodyExt;

const BREAKER: &str =
    "[[layers]]\nkind = \"breaker\"\nconsecutive_failures = 2\nopen_for = \"60s\"\n";

async fn a_stream_the_upstream_breaks_twice_opens_the_breaker(
    path: &str,
    body: &'static str,
    error_in: impl Fn(&str) -> bool,
) {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), BREAKER).await;
    let url = corral.url();
    for _ in 0..2 {
        let text = broken_stream(&format!("{url}{path}"), body).await;
        assert!(error_in(&text), "the client is told: {text}");
    }
    // Two broken streams in a row: the breaker is open, the next request
    // is refused without reaching the upstream.
    let before = upstream.requests().len();
    let refused = post(&format!("{url}{path}"), body).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(refused.header("x-corral-reason"), Some("breaker_open"));
    assert_eq!(upstream.requests().len(), before);

    let errors = metric_sum(&url, "corral_request_duration_seconds_count{endpoint=\"").await;
    assert!(errors >= 3.0);
    let text = String::from_utf8(get(&format!("{url}/metrics")).await.body.to_vec()).unwrap();
    let count = |outcome: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("corral_request_duration_seconds_count{"))
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(count("error"), 2.0, "{text}");
    assert_eq!(count("completed"), 0.0);
    assert_eq!(count("refused"), 1.0);

    let completed = events(&url, "kind=completed").await;
    let outcomes: Vec<&str> = completed
        .iter()
        .map(|e| e["data"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["error", "error"]);
    let agents = get(&format!("{url}/corral/agents")).await.json();
    assert_eq!(agents["anonymous"]["failed"], 2);
    assert_eq!(agents["anonymous"]["completed"], 0);
}

#[tokio::test]
async fn a_broken_ndjson_stream_opens_the_breaker_and_counts_as_an_error() {
    a_stream_the_upstream_breaks_twice_opens_the_breaker(
        "/api/chat",
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
        |text| {
            let last: serde_json::Value =
                serde_json::from_str(text.lines().last().unwrap()).unwrap();
            last["error"]
                .as_str()
                .unwrap()
                .contains("upstream stream broke")
                && !text.contains("\"done\":true")
        },
    )
    .await;
}

#[tokio::test]
async fn a_broken_sse_stream_opens_the_breaker_and_counts_as_an_error() {
    a_stream_the_upstream_breaks_twice_opens_the_breaker(
        "/v1/chat/completions",
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":true}"#,
        |text| {
            let last = text.split("\n\n").filter(|e| !e.is_empty()).last().unwrap();
            let last: serde_json::Value =
                serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
            last["error"]["message"]
                .as_str()
                .unwrap()
                .contains("upstream stream broke")
                && !text.contains("[DONE]")
        },
    )
    .await;
}

#[tokio::test]
async fn a_non_streamed_answer_and_an_embedding_count_completed() {
    let upstream = mock(fast()).await;
    // The cache answers through a shared flight whose body never says
    // "end" by itself: hyper stops at the Content-Length.
    let corral = proxy_toml(
        &upstream.url(),
        &format!("{BREAKER}[[layers]]\nkind = \"cache\"\n"),
    )
    .await;
    let url = corral.url();
    for (path, body) in [
        (
            "/api/generate",
            r#"{"model":"llama3","prompt":"x","stream":false}"#,
        ),
        (
            "/api/generate",
            r#"{"model":"llama3","prompt":"y","stream":false,"options":{"temperature":0}}"#,
        ),
        (
            "/api/embed",
            r#"{"model":"nomic-embed-text","input":"hello"}"#,
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
        ),
    ] {
        let reply = post(&format!("{url}{path}"), body).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    let completed = events(&url, "kind=completed").await;
    let outcomes: Vec<&str> = completed
        .iter()
        .map(|e| e["data"]["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["completed"; 4]);
    let agents = get(&format!("{url}/corral/agents")).await.json();
    assert_eq!(agents["anonymous"]["completed"], 4);
    assert_eq!(agents["anonymous"]["cancelled"], 0);
    assert_eq!(
        metric_sum(
            &url,
            "corral_request_duration_seconds_count{endpoint=\"embed\",model=\"nomic-embed-text\",class=\"default\",outcome=\"completed\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn an_upstream_error_after_every_attempt_is_an_error_not_a_completion() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(
        &upstream.url(),
        "[[layers]]\nkind = \"retry\"\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n",
    )
    .await;
    let url = corral.url();
    let req = request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"x","stream":false}"#,
        &[("x-mock-fault", "busy")],
    );
    let reply = send(req).await;
    assert_eq!(reply.status, 503);
    assert_eq!(upstream.requests().len(), 3, "three attempts");
    let completed = events(&url, "kind=completed").await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["data"]["outcome"], "error");
    assert_eq!(completed[0]["data"]["status"], 503);
}

/// A generation that sends nothing for 40 s (`"stream": false`): answered,
/// and asked of the upstream once.
async fn a_long_silent_generation_answers_once(config: Config) {
    let upstream = mock(fast()).await;
    let mut config = config;
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = upstream.url();
    let corral = corral::Running::start(&config).await.unwrap();
    let req = request_with(
        "POST",
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"write a long story","stream":false}"#,
        &[("x-mock-fault", "ttft_ms=40000,tokens=4")],
    );
    let started = tokio::time::Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(90), async {
        let response = corral_e2e::client().request(req).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    })
    .await
    .expect("answered");
    assert!(started.elapsed() >= Duration::from_secs(40));
    assert_eq!(reply.0, 200, "{:?}", reply.1);
    let answer: serde_json::Value = serde_json::from_slice(&reply.1).unwrap();
    assert_eq!(answer["done"], true);
    let generations = upstream
        .requests()
        .iter()
        .filter(|r| r.uri == "/api/generate")
        .count();
    assert_eq!(generations, 1, "the upstream generated it once");
}

#[tokio::test]
async fn a_40s_non_streamed_generation_answers_once_through_the_default_stack() {
    a_long_silent_generation_answers_once(Config::default()).await;
}

#[tokio::test]
async fn a_40s_non_streamed_generation_answers_once_through_the_shipped_config() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/corral.toml");
    a_long_silent_generation_answers_once(Config::load(&shipped).unwrap()).await;
}

#[tokio::test]
async fn the_shipped_configs_first_byte_limit_waits_for_streams_only() {
    // The shipped file with its first-byte limit at 1 s: a non-streamed
    // generation silent for 2.5 s is waited for; a stream silent as long
    // is cut, and neither is run twice.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/corral.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    assert!(text.contains("first_byte_timeout = \"5m\""));
    let text = text.replace("first_byte_timeout = \"5m\"", "first_byte_timeout = \"1s\"");
    let mut config = Config::parse(&text, &shipped).unwrap();
    let upstream = mock(fast()).await;
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = upstream.url();
    let corral = corral::Running::start(&config).await.unwrap();
    let ask = |stream: bool| {
        let req = request_with(
            "POST",
            &format!("{}/api/generate", corral.url()),
            format!(r#"{{"model":"llama3","prompt":"x","stream":{stream}}}"#),
            &[("x-mock-fault", "ttft_ms=2500,tokens=2")],
        );
        req
    };
    assert_eq!(send(ask(false)).await.status, 200);
    let streamed = send(ask(true)).await;
    assert_eq!(streamed.status, 504, "{:?}", streamed.body);
    assert_eq!(streamed.header("x-corral-reason"), Some("upstream_timeout"));
    assert_eq!(
        upstream.requests().len(),
        2,
        "one upstream call each: a timed-out generation is not run again"
    );
}

/// Whether the text read so far holds the answer's terminal frame.
type Terminal = fn(&str) -> bool;

/// Reads `response` until `terminal` says the text so far holds the
/// answer's terminal frame, and drops it at once: the client closes the
/// connection as the OpenAI SDKs do after `[DONE]`.
async fn read_to_the_terminal_frame(
    response: http::Response<hyper::body::Incoming>,
    terminal: Terminal,
) {
    let mut body = response.into_body();
    let mut text = String::new();
    while !terminal(&text) {
        let frame = within(body.frame())
            .await
            .expect("the terminal frame comes before the end")
            .expect("the stream is whole");
        if let Some(data) = frame.data_ref() {
            text.push_str(std::str::from_utf8(data).unwrap());
        }
    }
}

#[tokio::test]
async fn a_client_that_closes_right_after_the_terminal_frame_is_counted_completed() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let streams: [(&str, &str, Terminal); 3] = [
        (
            "/api/chat",
            r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
            |text| text.contains("\"done\":true") && text.ends_with('\n'),
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            |text| text.contains("data: [DONE]\n\n"),
        ),
        (
            "/v1/messages",
            r#"{"model":"llama3","max_tokens":64,"messages":[{"role":"user","content":"x"}],"stream":true}"#,
            |text| text.contains("event: message_stop") && text.ends_with("\n\n"),
        ),
    ];
    let mut sent = 0;
    for (path, body, terminal) in streams {
        // The frames of a whole answer, to hold the upstream's body open
        // after the last of them: the race always lost, then left to run.
        let before = upstream.stats().chunks_sent;
        let whole = open(request_with("POST", &format!("{url}{path}"), body, &[])).await;
        text(whole).await;
        let frames = upstream.stats().chunks_sent - before;
        let held = format!("pause_after={frames}");
        for round in 0..10 {
            let fault: &[(&str, &str)] = if round % 2 == 0 {
                &[("x-mock-fault", &held)]
            } else {
                &[]
            };
            let request = request_with("POST", &format!("{url}{path}"), body, fault);
            let response = open(request).await;
            assert_eq!(response.status(), 200, "{path}");
            read_to_the_terminal_frame(response, terminal).await;
        }
        sent += 11;
    }

    corral_e2e::eventually_async("every answer's end is logged", || async {
        events(&url, "kind=completed").await.len() == sent
    })
    .await;
    let completed = events(&url, "kind=completed").await;
    for event in &completed {
        assert_eq!(event["data"]["outcome"], "completed", "{event}");
        assert!(
            event["data"]["generated_tokens"].as_u64().unwrap() > 0,
            "{event}"
        );
    }
    let agents = get(&format!("{url}/corral/agents")).await.json();
    assert_eq!(agents["anonymous"]["completed"], sent);
    assert_eq!(agents["anonymous"]["cancelled"], 0);
}

#[tokio::test]
async fn a_request_whose_client_left_while_it_waited_counts_as_one_cancelled_request_in_usage_and_metrics(
) {
    let upstream = mock(fast()).await;
    // The default stack: one request at a time per model.
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let generate = |agent: &str, fault: &str| {
        let headers = [("x-agent-id", agent), ("x-mock-fault", fault)];
        let body = r#"{"model":"llama3","prompt":"x"}"#;
        request_with("POST", &format!("{url}/api/generate"), body, &headers)
    };
    // The only permit, held by a stream paused after its first line.
    let holder = open(generate("holder", "pause_after=1")).await;
    let waiting = tokio::spawn(send(generate("leaver", "")));
    corral_e2e::eventually_async("the second request waits", || async {
        metric_sum(&url, "corral_queue_depth").await == 1.0
    })
    .await;
    waiting.abort();
    corral_e2e::eventually_async("the leaver's request is counted", || async {
        let usage = get(&format!("{url}/corral/usage?agent=leaver&since=1h")).await;
        usage.json()["agents"]["leaver"]["requests"] == 1
    })
    .await;

    let usage = get(&format!("{url}/corral/usage?agent=leaver&since=1h")).await;
    let leaver = &usage.json()["agents"]["leaver"];
    assert_eq!(leaver["cancelled"], 1, "{leaver}");
    assert_eq!(leaver["completed"], 0, "{leaver}");
    assert_eq!(leaver["prompt_tokens"], 0, "{leaver}");
    assert_eq!(leaver["generated_tokens"], 0, "{leaver}");
    let left = events(&url, "agent=leaver").await;
    let kinds: Vec<&str> = left.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["received", "completed"], "{left:?}");
    assert_eq!(left[1]["data"]["outcome"], "cancelled");
    assert_eq!(left[0]["data"]["model"], "llama3");
    let cancelled = "corral_request_duration_seconds_count{endpoint=\"generate\",model=\"llama3\",class=\"default\",outcome=\"cancelled\"}";
    corral_e2e::eventually_async("the leaver's request is in the metrics", || async {
        metric_sum(&url, cancelled).await == 1.0
    })
    .await;
    // In the requests counted too, as nginx counts a client that closed
    // its request: 499.
    let status = "corral_requests_total{endpoint=\"generate\",status=\"499\",class=\"default\"}";
    assert_eq!(
        metric_sum(&url, status).await,
        1.0,
        "{}",
        corral_e2e::metrics(&url).await
    );

    upstream.release(1);
    assert!(text(holder).await.contains("\"done\":true"));
    let answered = "corral_requests_total{endpoint=\"generate\",status=\"200\",class=\"default\"}";
    assert_eq!(metric_sum(&url, answered).await, 1.0);
    assert_eq!(metric_sum(&url, cancelled).await, 1.0, "counted once");
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.headers.get("x-agent-id").map(String::as_str) != Some("leaver")),
        "the leaver never reached the upstream"
    );
}
