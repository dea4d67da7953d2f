//! The upstream fails: unreachable, erroring, or breaking mid-stream.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, fast_proxy, get, mock, open, post, proxy_with, request_with, send, within};
use http_body_util::BodyExt;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_in_the_api_shape_and_not_ready() {
    let dead = format!("127.0.0.1:{}", free_port());
    // Bare: the default stack's retries and breaker have their own tests.
    let corral = proxy_with(&dead, |c| c.layers = Some(vec![])).await;

    let native = post(
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"hi"}"#,
    )
    .await;
    assert_eq!(native.status, 502);
    assert_eq!(
        native.header("x-corral-reason"),
        Some("upstream_unreachable")
    );
    let message = native.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("unreachable") && message.contains(&dead),
        "{message}"
    );

    let openai = get(&format!("{}/v1/models", corral.url())).await;
    assert_eq!(openai.status, 502);
    assert!(openai.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unreachable"));

    let health = get(&format!("{}/corral/healthz", corral.url())).await;
    assert_eq!(health.status, 200, "the process is alive");
    let ready = get(&format!("{}/corral/readyz", corral.url())).await;
    assert_eq!(ready.status, 503, "but not ready");
    assert_eq!(ready.json()["status"], "not ready");
}

#[tokio::test]
async fn readiness_follows_the_upstream() {
    let (_upstream, corral) = fast_proxy().await;
    let ready = get(&format!("{}/corral/readyz", corral.url())).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["version"], "0.12.6");
}

/// A stand-in for an OpenAI-compatible server (llama.cpp's): nothing of
/// Ollama's API, and `/v1/models` only when `models`; its address.
async fn openai_only(models: bool) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let answer = move |path: &str| match path {
        "/v1/models" if models => (
            200,
            r#"{"object":"list","data":[{"id":"model.gguf","object":"model","owned_by":"llamacpp"}]}"#,
        ),
        _ => (
            404,
            r#"{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}"#,
        ),
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (status, body) = answer(request.uri().path());
                    let mut response =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    std::future::ready(Ok::<_, std::convert::Infallible>(response))
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

#[tokio::test]
async fn readiness_in_front_of_an_openai_only_server_asks_for_its_models() {
    let corral = proxy_with(&openai_only(true).await, |_| {}).await;
    let ready = get(&format!("{}/corral/readyz", corral.url())).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["status"], "ready");

    let corral = proxy_with(&openai_only(false).await, |_| {}).await;
    let ready = get(&format!("{}/corral/readyz", corral.url())).await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    let error = ready.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("/api/version answered 404") && error.contains("/v1/models answered 404"),
        "{error}"
    );
}

#[tokio::test]
async fn upstream_errors_reach_the_client_unchanged() {
    let (_upstream, corral) = fast_proxy().await;

    let unknown = post(
        &format!("{}/api/chat", corral.url()),
        r#"{"model":"ghost","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json()["error"],
        "model \"ghost\" not found, try pulling it first"
    );
    assert!(
        unknown.header("x-corral-reason").is_none(),
        "not Corral's refusal"
    );

    for (fault, status) in [("status=500", 500), ("status=400", 400), ("busy", 503)] {
        let req = request_with(
            "POST",
            &format!("{}/api/generate", corral.url()),
            r#"{"model":"llama3","prompt":"x"}"#,
            &[("x-mock-fault", fault)],
        );
        let reply = send(req).await;
        assert_eq!(reply.status, status, "{fault}");
        assert!(reply.json()["error"].is_string(), "{fault}");
    }
}

async fn broken_stream(path: &str, body: &'static str) -> (u16, String) {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |_| {}).await;
    let req = request_with(
        "POST",
        &format!("{}{path}", corral.url()),
        body,
        &[("x-mock-fault", "drop_after=3")],
    );
    let response = open(req).await;
    let status = response.status().as_u16();
    let body = within(response.into_body().collect())
        .await
        .expect("ends cleanly with an error line")
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn an_ndjson_stream_the_upstream_breaks_ends_with_an_ollama_error_line() {
    let (status, text) = broken_stream(
        "/api/chat",
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    // The upstream broke after its third chunk; what it had not flushed
    // is lost, as on a real broken connection.
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        (2..=4).contains(&lines.len()),
        "some chunks, then the error: {text}"
    );
    for line in &lines[..lines.len() - 1] {
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(line).unwrap()["done"],
            false
        );
    }
    let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("upstream stream broke"),
        "{last}"
    );
    assert!(!text.contains("\"done\":true"), "never looks complete");
}

#[tokio::test]
async fn an_sse_stream_the_upstream_breaks_ends_with_an_error_event() {
    let (status, text) = broken_stream(
        "/v1/chat/completions",
        r#"{"model":"llama3","messages":[{"role":"user","content":"x"}],"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!((2..=4).contains(&events.len()), "{text}");
    let last: serde_json::Value =
        serde_json::from_str(events[events.len() - 1].strip_prefix("data: ").unwrap()).unwrap();
    assert!(last["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream stream broke"));
    assert!(!text.contains("[DONE]"));
}
