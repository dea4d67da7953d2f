//! Helpers for the end-to-end tests: a simulated Ollama and a proxy in
//! front of it, over real sockets, and a plain HTTP client.

pub mod herd;
pub mod jobs;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use corral::{Config, Running};
use corral_mock_ollama::{MockConfig, MockOllama, RecordedRequest, Stats};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// How long any single step of a test may take before it fails instead
/// of hanging.
pub const STEP: Duration = Duration::from_secs(15);

/// A simulated Ollama, fast enough for tests.
pub async fn mock(config: MockConfig) -> MockOllama {
    MockOllama::start(config).await.expect("mock binds")
}

/// The default fast mock: 1 ms to first token, 1000 tokens/s.
pub fn fast() -> MockConfig {
    streaming(8, 1000.0)
}

/// A mock streaming `tokens` tokens at `tokens_per_sec`, 1 ms to the
/// first: for streams a test watches (or leaves) part of the way through.
pub fn streaming(tokens: usize, tokens_per_sec: f64) -> MockConfig {
    MockConfig {
        ttft: Duration::from_millis(1),
        tokens_per_sec,
        tokens,
        ..MockConfig::default()
    }
}

/// A mock that takes `ttft` to its first token: requests stay in flight
/// (holding their permits) for as long as the test needs.
pub fn stalled(ttft: Duration) -> MockConfig {
    MockConfig {
        ttft,
        ..MockConfig::default()
    }
}

/// A proxy on a free port forwarding to `upstream`, with the defaults.
pub async fn proxy(upstream: &str) -> Running {
    proxy_with(upstream, |_| {}).await
}

/// A proxy on a free port forwarding to `upstream`, its config changed by
/// `tweak`.
pub async fn proxy_with(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Running {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("address");
    config.upstream.url = upstream.to_string();
    tweak(&mut config);
    Running::start(&config).await.expect("proxy starts")
}

/// A [`fast`] mock and a proxy with the defaults in front of it: where
/// most tests start.
pub async fn fast_proxy() -> (MockOllama, Running) {
    let upstream = mock(fast()).await;
    let corral = proxy(&upstream.url()).await;
    (upstream, corral)
}

/// A proxy on a free port forwarding to `upstream`, configured as an
/// operator's file would: `toml` follows the `[upstream]` url (its
/// capacity, then classes, agents, layers).
pub async fn proxy_toml(upstream: &str, toml: &str) -> Running {
    let text =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n{toml}");
    let config = Config::parse(&text, std::path::Path::new("test.toml")).expect("config parses");
    Running::start(&config).await.expect("proxy starts")
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A whole answer.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body)
            .unwrap_or_else(|e| panic!("not UTF-8 ({e}): {:?}", self.body))
    }

    /// The message of an Ollama-shaped refusal (`{"error": "..."}`).
    pub fn error(&self) -> String {
        let body = self.json();
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_string()
    }
}

/// Sends `request` and reads the whole answer.
pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    within(async {
        let response = client()
            .request(request)
            .await
            .expect("request is answered");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body is read").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await
}

/// Sends `request` and returns the answer with its body unread.
pub async fn open(request: Request<Full<Bytes>>) -> http::Response<Incoming> {
    within(async {
        client()
            .request(request)
            .await
            .expect("request is answered")
    })
    .await
}

/// Sends `GET url` and reads the whole answer.
pub async fn get(url: &str) -> Reply {
    send(request("GET", url, "")).await
}

/// Sends `POST url` with `body` and reads the whole answer.
pub async fn post(url: &str, body: impl Into<Bytes>) -> Reply {
    send(request("POST", url, body)).await
}

/// A request with a JSON or text body.
pub fn request(method: &str, url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    request_with(method, url, body, &[])
}

/// A request with a JSON or text body and `headers` (an agent, a
/// priority, a fault for the mock to inject...).
pub fn request_with(
    method: &str,
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .expect("request builds")
}

/// Reads the rest of a streamed answer as text, failing after [`STEP`].
pub async fn text(response: http::Response<Incoming>) -> String {
    let body = within(response.into_body().collect())
        .await
        .expect("the body is read")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("the body is UTF-8")
}

/// Sends `body` to `url` with the upstream told to break the stream
/// after three chunks; what the client read (an error in the stream's
/// own framing, after a 200).
pub async fn broken_stream(url: &str, body: &'static str) -> String {
    let fault = [("x-mock-fault", "drop_after=3")];
    let response = open(request_with("POST", url, body, &fault)).await;
    assert_eq!(response.status(), StatusCode::OK, "{url}");
    text(response).await
}

/// The proxy's events at `url` (`/corral/events?{query}`), oldest first.
pub async fn events(url: &str, query: &str) -> Vec<serde_json::Value> {
    let reply = get(&format!("{url}/corral/events?{query}")).await;
    match reply.json() {
        serde_json::Value::Array(events) => events,
        other => panic!("events are a list: {other}"),
    }
}

/// Runs `step`, failing the test if it takes longer than [`STEP`].
pub async fn within<T>(step: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, step)
        .await
        .expect("step finished in time")
}

/// Waits until `condition` holds, failing after [`STEP`]. For what the
/// upstream observes across a socket, which has no event to wait on.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the upstream's counters satisfy `condition` (it has no
/// event to wait on either), failing after [`STEP`].
pub async fn upstream_until(upstream: &MockOllama, what: &str, condition: impl Fn(&Stats) -> bool) {
    eventually(what, || condition(&upstream.stats())).await;
}

/// Waits until the asynchronous `condition` holds (a question to a
/// replica over HTTP), failing after [`STEP`].
pub async fn eventually_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The upstream's record of the request the test named `X-Mock-Id: id`
/// (its `X-Request-Id` stays with Corral).
pub fn upstream_saw(mock: &MockOllama, id: &str) -> RecordedRequest {
    mock.requests()
        .into_iter()
        .find(|r| r.headers.get("x-mock-id").map(String::as_str) == Some(id))
        .unwrap_or_else(|| panic!("the upstream never saw request {id}"))
}

pub use corral_test_redis::Redis;

/// The sum of the values of the `/metrics` series whose line starts with
/// `series` (a name, or a name and the start of its labels); 0 when none
/// is written yet.
pub async fn metric_sum(url: &str, series: &str) -> f64 {
    metrics(url)
        .await
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The text of the proxy's `/metrics` at `url`.
pub async fn metrics(url: &str) -> String {
    get(&format!("{url}/metrics")).await.text().to_string()
}
