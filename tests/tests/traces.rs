//! W3C trace context and OTLP export: an agent's `traceparent` is
//! continued to the upstream with Corral's span as the parent, a request
//! without one starts a trace, and each request's span reaches an OTLP
//! collector (here a stand-in that records what it is sent).

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_e2e::{eventually, mock, request_with, send, upstream_saw};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// An OTLP/HTTP collector stand-in: answers 200 to every POST and keeps
/// the JSON bodies sent to `/v1/traces`.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        let path = request.uri().path().to_string();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        if path == "/v1/traces" {
                            kept.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"{}"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// Every span the collector was sent.
fn spans(received: &Mutex<Vec<Value>>) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|doc| {
            doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    let found = span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key);
    &found.unwrap_or_else(|| panic!("no {key} in {span}"))["value"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_continued_upstream_and_the_span_reaches_the_collector() {
    let (collector, received) = collector().await;
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_toml(
        &upstream.url(),
        &format!("[traces]\notlp_endpoint = \"{collector}\"\nservice_name = \"corral-test\"\n"),
    )
    .await;
    let url = corral.url();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"traced","stream":false}"#,
        &[
            ("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01")),
            ("x-agent-id", "tracer"),
            ("x-mock-id", "traced"),
        ],
    ))
    .await;
    assert_eq!(answer.status, 200);
    // The upstream is sent the same trace, Corral's span as the parent.
    let sent = upstream_saw(&upstream, "traced").headers["traceparent"].clone();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace, "{sent}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "Corral's own span: {sent}");
    assert_eq!(parts[3], "01");

    eventually("the span exported", || {
        spans(&received).iter().any(|s| s["traceId"] == trace)
    })
    .await;
    let all = spans(&received);
    let span = all.iter().find(|s| s["traceId"] == trace).unwrap();
    assert_eq!(
        span["spanId"], parts[2],
        "the span the upstream was given as parent"
    );
    assert_eq!(span["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(span["kind"], 2);
    assert_eq!(attribute(span, "corral.agent")["stringValue"], "tracer");
    assert_eq!(
        attribute(span, "http.response.status_code")["intValue"],
        "200"
    );
    assert_eq!(
        attribute(span, "gen_ai.request.model")["stringValue"],
        "llama3"
    );
    assert_eq!(
        attribute(span, "corral.outcome")["stringValue"],
        "completed"
    );
    let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert!(start > 0 && start <= end, "{span}");
    let service =
        received.lock().unwrap()[0]["resourceSpans"][0]["resource"]["attributes"][0].clone();
    assert_eq!(service["value"]["stringValue"], "corral-test");

    // No traceparent: a trace of its own, passed on all the same.
    let answer = send(request_with(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"untraced","stream":false}"#,
        &[("x-mock-id", "untraced")],
    ))
    .await;
    assert_eq!(answer.status, 200);
    let sent = upstream_saw(&upstream, "untraced").headers["traceparent"].clone();
    let new_trace = sent.split('-').nth(1).unwrap().to_string();
    assert_eq!(new_trace.len(), 32);
    assert_ne!(new_trace, trace);
    eventually("the new trace's span exported", || {
        spans(&received)
            .iter()
            .any(|s| s["traceId"] == new_trace.as_str() && s.get("parentSpanId").is_none())
    })
    .await;
}

#[tokio::test]
async fn a_bad_collector_address_is_refused_at_start() {
    let upstream = mock(corral_e2e::fast()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[traces]\notlp_endpoint = \"grpc://collector:4317\"\n",
        upstream.url()
    );
    // Refused where the file is read, with the file, line and key.
    let error = corral::Config::parse(&text, std::path::Path::new("traces.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("traces.toml:6: traces.otlp_endpoint: "),
        "{error}"
    );
}
