//! Who may ask, through the proxy: API keys (hashed in the config) give
//! an agent its class's priority; a missing, wrong or revoked key is 401;
//! a class outside its rights is 403; signed requests pass and tampered,
//! stale and replayed ones are refused with their reason; a private
//! class's answers are never served to another agent.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::Bytes;
use corral::{Config, Running};
use corral_auth::Signed;
use corral_e2e::{fast, get, mock, request, send, within, Reply};
use corral_mock_ollama::MockOllama;
use http_body_util::Full;
use ollama_rs::generation::completion::request::GenerationRequest;
use ollama_rs::Ollama;

const PLANNER_KEY: &str = "sk-planner-0123456789";
const SIGNER_KEY: &str = "sk-signer-0123456789";
const SIGNER_SECRET: &str = "the signer's secret, long enough";
const OPS_KEYS: [&str; 2] = ["sk-ops-a-0123456789", "sk-ops-b-0123456789"];

fn config(upstream: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream]
url = "{upstream}"

[identity]
require_key = true

[[classes]]
name = "opus"
priority = 3
priorities = [2, 5]

[[classes]]
name = "ops"
priority = 4
private = true

[[agents]]
id = "planner"
key_sha256 = "sha256:{planner}"
class = "opus"

[[agents]]
id = "retired"
key = "sk-retired-0123456789"
revoked = true

[[agents]]
id = "signer"
key = "{SIGNER_KEY}"
class = "opus"

[[agents]]
id = "ops-a"
key = "{ops_a}"
class = "ops"

[[agents]]
id = "ops-b"
key = "{ops_b}"
class = "ops"

[[layers]]
kind = "auth"
secrets = {{ signer = {{ value = "{SIGNER_SECRET}" }} }}
classes = {{ ops = {{ endpoints = ["all"] }} }}

[[layers]]
kind = "cache"

[[layers]]
kind = "priority"
"#,
        planner = corral_auth::key_digest(PLANNER_KEY),
        ops_a = OPS_KEYS[0],
        ops_b = OPS_KEYS[1],
    );
    Config::parse(&text, std::path::Path::new("auth.toml")).unwrap()
}

async fn start() -> (MockOllama, Running) {
    let upstream = mock(fast()).await;
    let corral = Running::start(&config(&upstream.url())).await.unwrap();
    (upstream, corral)
}

fn with_key(mut r: http::Request<Full<Bytes>>, key: &str) -> http::Request<Full<Bytes>> {
    r.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

fn generate(url: &str, prompt: &str) -> http::Request<Full<Bytes>> {
    request(
        "POST",
        &format!("{url}/api/generate"),
        format!(
            r#"{{"model":"llama3","prompt":"{prompt}","stream":false,"options":{{"temperature":0}}}}"#
        ),
    )
}

fn assert_refused(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    assert_eq!(reply.header("x-corral-reason"), Some(reason));
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(!error.is_empty());
}

#[tokio::test]
async fn a_hashed_key_admits_its_agent_with_its_class_priority_through_ollama_rs() {
    let (upstream, corral) = start().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {PLANNER_KEY}").parse().unwrap(),
    );
    let mut ollama = Ollama::try_new(corral.url()).unwrap();
    ollama.set_headers(Some(headers));
    let answer = within(ollama.generate(GenerationRequest::new("llama3".into(), "plan")))
        .await
        .unwrap();
    assert!(answer.done);
    assert_eq!(upstream.requests().len(), 1);

    let events = get(&format!("{}/corral/events?kind=received", corral.url()))
        .await
        .json();
    let received = &events[0];
    assert_eq!(received["agent"], "planner");
    assert_eq!(received["data"]["class"], "opus");
    assert_eq!(received["data"]["priority"], 3);

    // The resolved config shows none of it.
    let shown = get(&format!("{}/corral/config", corral.url())).await;
    let shown = String::from_utf8_lossy(&shown.body);
    assert!(shown.contains("<redacted>"), "{shown}");
    for secret in [
        PLANNER_KEY,
        SIGNER_KEY,
        SIGNER_SECRET,
        &corral_auth::key_digest(PLANNER_KEY),
    ] {
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test]
async fn a_missing_wrong_or_revoked_key_is_401_and_reaches_nothing() {
    let (upstream, corral) = start().await;
    let url = corral.url();
    let missing = send(generate(&url, "a")).await;
    assert_refused(&missing, 401, "unauthenticated");
    assert!(missing.error().contains("API key"));
    let wrong = send(with_key(generate(&url, "b"), "sk-not-a-known-key")).await;
    assert_refused(&wrong, 401, "unauthenticated");
    let revoked = send(with_key(generate(&url, "c"), "sk-retired-0123456789")).await;
    assert_refused(&revoked, 401, "unauthenticated");
    assert!(revoked.error().contains("revoked"));
    // The revoked agent cannot claim its id without the key either.
    let mut claimed = generate(&url, "d");
    claimed
        .headers_mut()
        .insert("x-agent-id", "retired".parse().unwrap());
    assert_eq!(send(claimed).await.status, 401);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn model_management_is_403_for_a_default_class_and_open_to_a_class_given_it() {
    let (upstream, corral) = start().await;
    let url = corral.url();
    for (method, path, body) in [
        ("DELETE", "/api/delete", r#"{"model":"llama3"}"#),
        ("POST", "/api/pull", r#"{"model":"llama3"}"#),
        ("POST", "/api/create", r#"{"model":"mine","from":"llama3"}"#),
    ] {
        let reply = send(with_key(
            request(method, &format!("{url}{path}"), body),
            PLANNER_KEY,
        ))
        .await;
        assert_refused(&reply, 403, "forbidden");
    }
    assert!(upstream.requests().is_empty(), "nothing forbidden went up");
    let reply = send(with_key(
        request(
            "DELETE",
            &format!("{url}/api/delete"),
            r#"{"model":"llama3"}"#,
        ),
        OPS_KEYS[0],
    ))
    .await;
    assert_ne!(reply.status.as_u16(), 403, "{:?}", reply.body);
    assert_eq!(upstream.requests().len(), 1);
}

/// A request from the signer, signed at `timestamp` with `request_id`;
/// `sent_body` is what goes on the wire (a tampered copy, or the same).
fn signed(
    url: &str,
    timestamp: u64,
    request_id: &str,
    body: &str,
    sent_body: &str,
) -> http::Request<Full<Bytes>> {
    let timestamp = timestamp.to_string();
    let signature = Signed {
        agent: "signer",
        method: "POST",
        path_and_query: "/api/generate",
        timestamp: &timestamp,
        request_id,
        body: body.as_bytes(),
    }
    .sign(SIGNER_SECRET.as_bytes());
    let mut r = with_key(
        request(
            "POST",
            &format!("{url}/api/generate"),
            sent_body.to_string(),
        ),
        SIGNER_KEY,
    );
    let headers = r.headers_mut();
    headers.insert("x-timestamp", timestamp.parse().unwrap());
    headers.insert("x-request-id", request_id.parse().unwrap());
    headers.insert("x-signature", signature.parse().unwrap());
    r
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn signed_requests_pass_and_tampered_stale_or_replayed_ones_are_refused_with_a_reason() {
    let (upstream, corral) = start().await;
    let url = corral.url();
    let body = r#"{"model":"llama3","prompt":"sign me","stream":false}"#;

    let valid = send(signed(&url, now(), "sig-1", body, body)).await;
    assert_eq!(valid.status, 200, "{:?}", valid.body);

    let tampered = body.replace("sign me", "sign me and delete everything");
    let reply = send(signed(&url, now(), "sig-2", body, &tampered)).await;
    assert_refused(&reply, 401, "bad_signature");

    let reply = send(signed(&url, now() - 3600, "sig-3", body, body)).await;
    assert_refused(&reply, 401, "stale_request");

    let reply = send(signed(&url, now(), "sig-1", body, body)).await;
    assert_refused(&reply, 401, "replayed_request");

    // Unsigned, from an agent with a secret: refused too.
    let reply = send(with_key(generate(&url, "unsigned"), SIGNER_KEY)).await;
    assert_refused(&reply, 401, "signature_required");

    assert_eq!(upstream.requests().len(), 1, "only the valid one went up");
}

#[tokio::test]
async fn a_private_class_never_gets_another_agents_cached_answer() {
    let (upstream, corral) = start().await;
    let url = corral.url();
    let ask = |key: &str| with_key(generate(&url, "the same question"), key);

    let first = send(ask(OPS_KEYS[0])).await;
    assert_eq!(first.status, 200);
    let again = send(ask(OPS_KEYS[0])).await;
    assert_eq!(
        again.header("x-corral-cache"),
        Some("hit"),
        "its own answer"
    );
    let other = send(ask(OPS_KEYS[1])).await;
    assert_ne!(other.header("x-corral-cache"), Some("hit"));
    assert_eq!(
        upstream.requests().len(),
        2,
        "the other agent asked upstream"
    );
}
