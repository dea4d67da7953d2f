//! Helpers shared by the tests of the compatibility paths: a client that
//! keeps the response's frames as they arrived, an SSE parser, a fast
//! mock, and waiting for a condition of the stats.

#![allow(dead_code)] // each test file uses some of these
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use bytes::Bytes;
use corral_mock_ollama::{MockConfig, MockOllama, Stats, BUSY_MESSAGE};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// No time to first token and no time between tokens: answers come as
/// fast as the sockets carry them.
pub(crate) fn fast() -> MockConfig {
    MockConfig {
        ttft: Duration::ZERO,
        tokens_per_sec: f64::INFINITY,
        ..MockConfig::default()
    }
}

/// A [`fast`] mock, started.
pub(crate) async fn fast_mock() -> MockOllama {
    MockOllama::start(fast()).await.unwrap()
}

/// A [`fast`] mock, started, with `parallel` slots a model and room for
/// `max_queue` waiting.
pub(crate) async fn fast_slots(parallel: usize, max_queue: usize) -> MockOllama {
    let config = MockConfig {
        parallel,
        max_queue,
        ..fast()
    };
    MockOllama::start(config).await.unwrap()
}

/// [`call`] on a task of its own.
pub(crate) fn spawn_call(
    url: String,
    body: &'static str,
    fault: Option<&'static str>,
) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move { call(&url, body, fault).await })
}

/// A [`fast`] mock, started, and the URL of its `path`.
pub(crate) async fn fast_at(path: &str) -> (MockOllama, String) {
    let mock = fast_mock().await;
    let url = format!("{}{path}", mock.url());
    (mock, url)
}

/// Posts `body` to `url`, which must answer 200 with a JSON document: the
/// document.
pub(crate) async fn json_ok(url: &str, body: &str) -> Value {
    let reply = call(url, body, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.content_type.starts_with("application/json"),
        "{}",
        reply.content_type
    );
    reply.json()
}

/// Posts `body` to `url`, which must answer 200 with an SSE stream: its
/// events.
pub(crate) async fn events_ok(url: &str, body: &str) -> Vec<(String, Value)> {
    let reply = call(url, body, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type, "text/event-stream");
    reply.events()
}

/// Posts the streamed `body` to `url` with the fault `drop_after=n`: the
/// answer must start, then break after `n` whole events, which it returns.
pub(crate) async fn events_until_broken(url: &str, body: &str, n: usize) -> Vec<(String, Value)> {
    let reply = call(url, body, Some(&format!("drop_after={n}"))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.broken, "the connection broke: {}", reply.text());
    let events = reply.events();
    assert_eq!(events.len(), n, "whole events up to the break");
    events
}

/// Asserts `doc` holds all of `expected`: each field of an object and
/// each item of an array, down to equal values.
pub(crate) fn assert_holds(doc: &Value, expected: &Value) {
    holds(doc, expected, "");
}

/// [`assert_holds`] at the JSON pointer `path`.
fn holds(doc: &Value, expected: &Value, path: &str) {
    match expected {
        Value::Object(fields) => {
            for (key, value) in fields {
                holds(&doc[key.as_str()], value, &format!("{path}/{key}"));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                holds(&doc[i], item, &format!("{path}/{i}"));
            }
        }
        _ => assert_eq!(doc, expected, "at {path}"),
    }
}

/// The events' names, in order.
pub(crate) fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

/// What an error's message must say.
pub(crate) enum Says {
    /// Exactly this.
    Exactly(&'static str),
    /// Something with this in it.
    Naming(&'static str),
    /// Anything.
    Anything,
}

/// One request that must fail: its body, its fault header if any, and the
/// status, error type and message it must be answered with.
pub(crate) type ErrorCase = (String, Option<&'static str>, u16, &'static str, Says);

/// The error type of a request the API cannot take.
pub(crate) const INVALID: &str = "invalid_request_error";

/// `ask` for a model the mock does not have: a 404 that names it.
pub(crate) fn unknown_model(ask: &str) -> ErrorCase {
    let body = ask.replace("llama3", "no-such-model");
    (
        body,
        None,
        404,
        "not_found_error",
        Says::Naming("no-such-model"),
    )
}

/// `body`, which the API cannot take: a 400 that says exactly `why`.
pub(crate) fn invalid(body: &str, why: &'static str) -> ErrorCase {
    (body.into(), None, 400, INVALID, Says::Exactly(why))
}

/// `body`, which is not JSON: a 400.
pub(crate) fn not_json(body: &str) -> ErrorCase {
    (body.into(), None, 400, INVALID, Says::Anything)
}

/// `ask` with the fault `busy`: a 503 of the error type `kind` that says
/// Ollama's busy message.
pub(crate) fn busy(ask: &str, kind: &'static str) -> ErrorCase {
    let busy = Says::Exactly(BUSY_MESSAGE);
    (ask.into(), Some("busy"), 503, kind, busy)
}

/// Posts each case to `url` in turn and checks its error: the status, the
/// `error`'s type and message, and what `check` asserts of the whole body.
pub(crate) async fn assert_errors(url: &str, cases: &[ErrorCase], check: impl Fn(&Value)) {
    for (body, fault, status, kind, says) in cases {
        let reply = call(url, body, *fault).await;
        let doc = reply.json();
        check(&doc);
        let error = &doc["error"];
        assert_eq!(
            (reply.status, error["type"].as_str().unwrap()),
            (*status, *kind),
            "{body} with {fault:?}: {doc}"
        );
        let message = error["message"].as_str().unwrap();
        match says {
            Says::Exactly(expected) => assert_eq!(message, *expected, "{body}"),
            Says::Naming(part) => assert!(message.contains(part), "{body}: {message}"),
            Says::Anything => {}
        }
    }
}

/// A response read to its end, or to the error that broke it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    /// The body's data frames, as the client received them.
    pub(crate) frames: Vec<Bytes>,
    /// Whether reading the body failed (the connection broke).
    pub(crate) broken: bool,
}

impl Reply {
    /// The body's frames joined.
    pub(crate) fn text(&self) -> String {
        self.frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect()
    }

    /// The body, which must be JSON.
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text()).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The SSE events, `(name, data)`, in order. Also checks each frame
    /// holds at most one event: what the server writes goes out one
    /// whole event per frame (the client may split a frame, never join
    /// two).
    pub(crate) fn events(&self) -> Vec<(String, Value)> {
        for frame in &self.frames {
            let frame = String::from_utf8_lossy(frame);
            assert!(
                frame.matches("event: ").count() <= 1,
                "two events in one frame: {frame:?}"
            );
        }
        self.text()
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let name = e
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap_or_else(|| panic!("no event name in {e:?}"));
                let data = e
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("no data in {e:?}"));
                (name.to_string(), serde_json::from_str(data).unwrap())
            })
            .collect()
    }
}

/// Sends the request and returns the response with its body unread.
pub(crate) async fn send(url: &str, body: &str, fault: Option<&str>) -> http::Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    if let Some(fault) = fault {
        request
            .headers_mut()
            .insert("x-mock-fault", fault.parse().unwrap());
    }
    tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .unwrap()
        .unwrap()
}

/// Sends the request and reads the answer to its end.
pub(crate) async fn call(url: &str, body: &str, fault: Option<&str>) -> Reply {
    let response = send(url, body, fault).await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = response.into_body();
    let mut frames = Vec::new();
    let mut broken = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .unwrap()
        {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    frames.push(data);
                }
            }
            Some(Err(_)) => {
                broken = true;
                break;
            }
            None => break,
        }
    }
    Reply {
        status,
        content_type,
        frames,
        broken,
    }
}

/// Waits until the mock's stats satisfy `done`, for at most 10 s.
pub(crate) async fn wait_for(mock: &MockOllama, what: &str, done: impl Fn(&Stats) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = mock.stats();
        if done(&stats) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
