//! Every Ollama and OpenAI-compatible endpoint through the proxy: the
//! client receives exactly the bytes the upstream sent, with the same
//! status and content type, and the upstream receives exactly the bytes
//! the client sent.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, mock, proxy, send, upstream_saw, Reply};
use http::Request;
use http_body_util::Full;

struct Case {
    method: &'static str,
    path: &'static str,
    body: &'static str,
}

const CASES: &[Case] = &[
    Case {
        method: "GET",
        path: "/",
        body: "",
    },
    Case {
        method: "GET",
        path: "/api/version",
        body: "",
    },
    Case {
        method: "GET",
        path: "/api/tags",
        body: "",
    },
    Case {
        method: "POST",
        path: "/api/show",
        body: r#"{"model":"llama3"}"#,
    },
    Case {
        method: "POST",
        path: "/api/show",
        body: r#"{"name":"llama3"}"#,
    },
    Case {
        method: "POST",
        path: "/api/generate",
        body: r#"{"model":"llama3","prompt":"why is the sky blue?"}"#,
    },
    Case {
        method: "POST",
        path: "/api/generate",
        body: r#"{"model":"llama3","prompt":"why is the sky blue?","stream":false}"#,
    },
    Case {
        method: "POST",
        path: "/api/generate",
        body: r#"{"model":"llama3","prompt":"","keep_alive":"5m"}"#,
    },
    Case {
        method: "POST",
        path: "/api/chat",
        body: r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}]}"#,
    },
    Case {
        method: "POST",
        path: "/api/chat",
        body: r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}],"stream":false,"options":{"num_predict":3}}"#,
    },
    Case {
        method: "POST",
        path: "/api/embed",
        body: r#"{"model":"nomic-embed-text","input":["one","two"]}"#,
    },
    Case {
        method: "POST",
        path: "/api/embeddings",
        body: r#"{"model":"nomic-embed-text","prompt":"one"}"#,
    },
    Case {
        method: "GET",
        path: "/api/ps",
        body: "",
    },
    Case {
        method: "POST",
        path: "/api/pull",
        body: r#"{"model":"phi3"}"#,
    },
    Case {
        method: "POST",
        path: "/api/pull",
        body: r#"{"model":"phi3","stream":false}"#,
    },
    Case {
        method: "POST",
        path: "/api/push",
        body: r#"{"model":"phi3"}"#,
    },
    Case {
        method: "POST",
        path: "/api/create",
        body: r#"{"model":"mine","from":"llama3"}"#,
    },
    Case {
        method: "POST",
        path: "/api/copy",
        body: r#"{"source":"llama3","destination":"llama3-copy"}"#,
    },
    Case {
        method: "DELETE",
        path: "/api/delete",
        body: r#"{"model":"llama3-copy"}"#,
    },
    Case {
        method: "DELETE",
        path: "/api/delete",
        body: r#"{"name":"never-was"}"#,
    },
    Case {
        method: "POST",
        path: "/v1/chat/completions",
        body: r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#,
    },
    Case {
        method: "POST",
        path: "/v1/chat/completions",
        body: r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#,
    },
    Case {
        method: "POST",
        path: "/v1/completions",
        body: r#"{"model":"llama3","prompt":"once upon"}"#,
    },
    Case {
        method: "POST",
        path: "/v1/completions",
        body: r#"{"model":"llama3","prompt":"once upon","stream":true}"#,
    },
    Case {
        method: "POST",
        path: "/v1/embeddings",
        body: r#"{"model":"nomic-embed-text","input":"hello"}"#,
    },
    Case {
        method: "GET",
        path: "/v1/models",
        body: "",
    },
    Case {
        method: "GET",
        path: "/v1/models/llama3",
        body: "",
    },
    Case {
        method: "GET",
        path: "/v1/models/ghost",
        body: "",
    },
    Case {
        method: "GET",
        path: "/no/such/path?x=1",
        body: "",
    },
    Case {
        method: "POST",
        path: "/api/generate",
        body: r#"{"model":"ghost","prompt":"x"}"#,
    },
    Case {
        method: "GET",
        path: "/api/generate",
        body: "",
    },
];

async fn through(url: &str, case: &Case, id: &str) -> Reply {
    send(
        Request::builder()
            .method(case.method)
            .uri(format!("{url}{}", case.path))
            .header("x-request-id", id)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from_static(case.body.as_bytes())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn every_endpoint_passes_through_byte_for_byte() {
    let upstream = mock(fast()).await;
    let corral = proxy(&upstream.url()).await;

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
    let upstream = mock(fast()).await;
    let corral = proxy(&upstream.url()).await;
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
    let upstream = mock(fast()).await;
    let corral = proxy(&upstream.url()).await;

    let ndjson = send(corral_e2e::request(
        "POST",
        &format!("{}/api/chat", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"hello"}]}"#,
    ))
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

    let sse = send(corral_e2e::request(
        "POST",
        &format!("{}/v1/chat/completions", corral.url()),
        r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    ))
    .await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert!(std::str::from_utf8(&sse.body)
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
}
