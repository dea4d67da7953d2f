//! Bad input gets a clear, Ollama-shaped answer and never disturbs
//! anyone else.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, mock, post, proxy_with, request, request_with, send, streaming};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

#[tokio::test]
async fn a_body_over_the_bound_is_refused_with_413_whether_declared_or_streamed() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |c| c.server.max_request_bytes = 1024).await;
    let url = format!("{}/api/generate", corral.url());
    let big = format!(r#"{{"model":"llama3","prompt":"{}"}}"#, "x".repeat(2000));

    let declared = post(&url, big.clone()).await;
    assert_eq!(declared.status, 413);
    assert_eq!(declared.header("x-corral-reason"), Some("body_too_large"));
    assert!(declared.error().contains("1024 bytes"));

    // No Content-Length: chunked, so the bound is found while reading.
    let chunks: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = big
        .as_bytes()
        .chunks(300)
        .map(|c| Ok(Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let response = corral_e2e::within(client.request(Request::post(&url).body(body).unwrap()))
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.headers().get("content-length").is_some());

    assert_eq!(
        upstream.stats().requests,
        0,
        "nothing too large reached the upstream"
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_what_is_wrong_in_each_api_shape() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |_| {}).await;

    let native = post(
        &format!("{}/api/chat", corral.url()),
        r#"{"model": "llama3", "messages": [}"#,
    )
    .await;
    assert_eq!(native.status, 400);
    let error = native.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("invalid JSON") && error.contains("line 1"),
        "{error}"
    );

    let openai = post(&format!("{}/v1/chat/completions", corral.url()), "{").await;
    assert_eq!(openai.status, 400);
    assert_eq!(openai.json()["error"]["type"], "invalid_request_error");
    assert!(openai.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("invalid JSON"));

    let no_model = post(
        &format!("{}/api/generate", corral.url()),
        r#"{"prompt":"hi"}"#,
    )
    .await;
    assert_eq!(no_model.status, 400);
    assert_eq!(no_model.json()["error"], "model is required");

    let wrong_type = post(&format!("{}/api/embed", corral.url()), r#"{"model":["a"]}"#).await;
    assert_eq!(wrong_type.status, 400);

    let priority = send({
        let r = request_with(
            "POST",
            &format!("{}/api/generate", corral.url()),
            r#"{"model":"llama3","prompt":"hi"}"#,
            &[("x-priority", "0")],
        );
        r
    })
    .await;
    assert_eq!(priority.status, 400);
    assert!(priority.error().contains("X-Priority"));

    assert_eq!(
        upstream.stats().requests,
        0,
        "nothing malformed reached the upstream"
    );
}

#[tokio::test]
async fn bad_requests_do_not_disturb_a_stream_in_flight_for_someone_else() {
    let upstream = mock(streaming(40, 200.0)).await;
    let corral = proxy_with(&upstream.url(), |c| c.server.max_request_bytes = 4096).await;
    let good = corral_e2e::open(request(
        "POST",
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"steady"}"#,
    ))
    .await;

    let mut bad = Vec::new();
    for i in 0..50 {
        let url = format!("{}/api/chat", corral.url());
        bad.push(tokio::spawn(async move {
            let body = match i % 3 {
                0 => "{not json".to_string(),
                1 => "y".repeat(10_000),
                _ => r#"{"messages":[]}"#.to_string(),
            };
            post(&url, body).await.status
        }));
    }
    for handle in bad {
        let status = handle.await.unwrap();
        assert!(status == 400 || status == 413, "{status}");
    }

    let body = corral_e2e::within(good.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert_eq!(text.lines().count(), 41);
    assert!(text.lines().last().unwrap().contains("\"done\":true"));
}
