//! Every Ollama and OpenAI-compatible endpoint through the proxy: the
//! client receives exactly the bytes the upstream sent, with the same
//! status and content type, and the upstream receives exactly the bytes
//! the client sent.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast_proxy, post, send, upstream_saw, Reply};
use http::Request;
use http_body_util::Full;

struct Case {
    method: &'static str,
    path: &'static str,
    body: &'static str,
}

/// One row of the table: a request as a client sends it.
const fn case(method: &'static str, path: &'static str, body: &'static str) -> Case {
    Case { method, path, body }
}

const CASES: &[Case] = &[
    case("GET", "/", ""),
    case("GET", "/api/version", ""),
    case("GET", "/api/tags", ""),
    case("POST", "/api/show", r#"{"model":"llama3"}"#),
    case("POST", "/api/show", r#"{"name":"llama3"}"#),
    case(
        "POST",
        "/api/generate",
        r#"{"model":"llama3","prompt":"why is the sky blue?"}"#,
    ),
    case(
        "POST",
        "/api/generate",
        r#"{"model":"llama3","prompt":"why is the sky blue?","stream":false}"#,
    ),
    case(
        "POST",
        "/api/generate",
        r#"{"model":"llama3","prompt":"","keep_alive":"5m"}"#,
    ),
    case(
        "POST",
        "/api/chat",
        r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}]}"#,
    ),
    case(
        "POST",
        "/api/chat",
        r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}],"stream":false,"options":{"num_predict":3}}"#,
    ),
    case(
        "POST",
        "/api/embed",
        r#"{"model":"nomic-embed-text","input":["one","two"]}"#,
    ),
    case(
        "POST",
        "/api/embeddings",
        r#"{"model":"nomic-embed-text","prompt":"one"}"#,
    ),
    case("GET", "/api/ps", ""),
    case("POST", "/api/pull", r#"{"model":"phi3"}"#),
    case("POST", "/api/pull", r#"{"model":"phi3","stream":false}"#),
    case("POST", "/api/push", r#"{"model":"phi3"}"#),
    case("POST", "/api/create", r#"{"model":"mine","from":"llama3"}"#),
    case(
        "POST",
        "/api/copy",
        r#"{"source":"llama3","destination":"llama3-copy"}"#,
    ),
    case("DELETE", "/api/delete", r#"{"model":"llama3-copy"}"#),
    case("DELETE", "/api/delete", r#"{"name":"never-was"}"#),
    case(
        "POST",
        "/v1/chat/completions",
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#,
    ),
    case(
        "POST",
        "/v1/chat/completions",
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    ),
    case(
        "POST",
        "/v1/completions",
        r#"{"model":"llama3","prompt":"once upon"}"#,
    ),
    case(
        "POST",
        "/v1/completions",
        r#"{"model":"llama3","prompt":"once upon","stream":true}"#,
    ),
    case(
        "POST",
        "/v1/embeddings",
        r#"{"model":"nomic-embed-text","input":"hello"}"#,
    ),
    case("GET", "/v1/models", ""),
    case("GET", "/v1/models/llama3", ""),
    case("GET", "/v1/models/ghost", ""),
    case("GET", "/no/such/path?x=1", ""),
    case("POST", "/api/generate", r#"{"model":"ghost","prompt":"x"}"#),
    case("GET", "/api/generate", ""),
];

async fn through(url: &str, case: &Case, id: &str) -> Reply {
    send(
        Request::builder()
            .method(case.method)
            .uri(format!("{url}{}", case.path))
            .header("x-request-id", id)
            .header("x-mock-id", id)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from_static(case.body.as_bytes())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn every_endpoint_passes_through_byte_for_byte() {
    let (upstream, corral) = fast_proxy().await;

    for (i, case) in CASES.iter().enumerate() {
        let id = format!("case-{i}");
        let reply = through(&corral.url(), case, &id).await;
        let seen = upstream_saw(&upstream, &id);
        let what = format!("{} {} {}", case.method, case.path, case.body);

        assert_eq!(seen.method, case.method, "{what}");
        assert_eq!(seen.uri, case.path, "{what}: path and query unchanged");
        assert_eq!(seen.body, case.body, "{what}: request body unchanged");
        assert_eq!(
            reply.status.as_u16(),
            seen.status,
            "{what}: status unchanged"
        );
        assert!(seen.completed, "{what}: the upstream finished its answer");
        assert_eq!(
            std::str::from_utf8(&reply.body).unwrap(),
            seen.response,
            "{what}: the client got exactly what the upstream sent"
        );
        assert_eq!(reply.header("x-request-id"), Some(id.as_str()), "{what}");
        if !reply.body.is_empty() {
            assert!(
                reply.header("content-type").is_some(),
                "{what}: content type kept"
            );
        }
    }
}

#[tokio::test]
async fn head_requests_get_headers_only() {
    let (_upstream, corral) = fast_proxy().await;
    let reply = send(corral_e2e::request(
        "HEAD",
        &format!("{}/", corral.url()),
        "",
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("17"));
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn streams_keep_their_content_types_and_frames() {
    let (_upstream, corral) = fast_proxy().await;

    let ndjson = post(
        &format!("{}/api/chat", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}]}"#,
    )
    .await;
    assert_eq!(ndjson.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&ndjson.body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9, "8 tokens and the done message");
    assert_eq!(lines.last().unwrap()["done"], true);
    assert_eq!(lines.last().unwrap()["eval_count"], 8);

    let sse = post(
        &format!("{}/v1/chat/completions", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
    .await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert!(std::str::from_utf8(&sse.body)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
}
