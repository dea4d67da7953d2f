//! What the proxy does to headers: hop-by-hop dropped, request id kept or
//! made and returned (never sent upstream), forwarding headers added,
//! Host rewritten.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast_proxy, get, request, request_with, send, upstream_saw};

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_end_to_end_ones_kept() {
    let (upstream, corral) = fast_proxy().await;
    let mut req = request("GET", &format!("{}/api/tags", corral.url()), "");
    let h = req.headers_mut();
    h.insert("x-mock-id", "hop-1".parse().unwrap());
    h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
    h.insert("x-secret-hop", "for the first hop only".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    h.insert("proxy-authorization", "Basic eDp5".parse().unwrap());
    h.insert("authorization", "Bearer agent-key".parse().unwrap());
    h.insert("x-custom", "kept".parse().unwrap());
    let reply = send(req).await;
    assert_eq!(reply.status, 200);

    let seen = upstream_saw(&upstream, "hop-1");
    for gone in ["x-secret-hop", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} must not be forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.headers.get("authorization").map(String::as_str),
        Some("Bearer agent-key")
    );
    assert_eq!(
        seen.headers.get("x-custom").map(String::as_str),
        Some("kept")
    );
}

#[tokio::test]
async fn the_request_id_is_kept_or_made_and_returned_to_the_client_but_not_sent_upstream() {
    let (upstream, corral) = fast_proxy().await;
    let url = format!("{}/api/version", corral.url());

    let req = request_with(
        "GET",
        &url,
        "",
        &[("x-request-id", "client-chosen"), ("x-mock-id", "chosen")],
    );
    assert_eq!(
        send(req).await.header("x-request-id"),
        Some("client-chosen")
    );
    // Some OpenAI-compatible servers (llama.cpp's) answer 400 to an id
    // that is not a UUID; Ollama ignores it: the id is the client's.
    let seen = upstream_saw(&upstream, "chosen");
    assert!(!seen.headers.contains_key("x-request-id"), "{seen:?}");

    let made = get(&url).await;
    let id = made
        .header("x-request-id")
        .expect("an id is made")
        .to_string();
    assert_eq!(id.len(), 32);
    let other = get(&url).await;
    assert_ne!(other.header("x-request-id"), Some(id.as_str()));
    assert!(upstream
        .requests()
        .iter()
        .all(|r| !r.headers.contains_key("x-request-id")));
}

#[tokio::test]
async fn a_streamed_inference_request_keeps_its_id_from_the_upstream_too() {
    let (upstream, corral) = fast_proxy().await;
    let body = r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let reply = send(request_with(
        "POST",
        &format!("{}/v1/chat/completions", corral.url()),
        body,
        &[("x-request-id", "not-a-uuid"), ("x-mock-id", "sdk")],
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("not-a-uuid"));
    let seen = upstream_saw(&upstream, "sdk");
    assert!(!seen.headers.contains_key("x-request-id"), "{seen:?}");
}

#[tokio::test]
async fn forwarding_headers_are_added_and_host_is_the_upstreams() {
    let (upstream, corral) = fast_proxy().await;
    let req = request_with(
        "GET",
        &format!("{}/api/tags", corral.url()),
        "",
        &[("x-mock-id", "fwd-1"), ("x-forwarded-for", "10.1.2.3")],
    );
    send(req).await;

    let seen = upstream_saw(&upstream, "fwd-1");
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], corral.addr().to_string());
    // Ollama refuses Host names it does not expect: it gets its own.
    assert_eq!(seen.headers["host"], upstream.addr().to_string());
}
