//! What an operator reads and sets: the config view hides secrets and
//! nothing else, settings a stack cannot honour are refused, the status
//! names classes without noise, a wrong key is warned about, and every
//! configured compartment, breaker, class and pool is in `/metrics` from
//! the start.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;

use corral::Config;
use corral_e2e::{fast, mock, post, proxy_with, request, send};

fn config(upstream: &str, rest: &str) -> Config {
    let text =
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{upstream}\"\n{rest}");
    Config::parse(&text, Path::new("operator.toml")).unwrap()
}

const CLASSES: &str = r#"
[admin]
token = "admin-secret-1"

[[classes]]
name = "opus"
compartment = "opus_agents"
rate_limit = { requests_per_minute = 10, tokens_per_minute = 20000 }

[[agents]]
id = "planner"
key = "sk-planner-0123"
class = "opus"

[[layers]]
kind = "bulkhead"
[[layers.compartments]]
name = "opus_agents"
max_concurrent = 2

[[layers]]
kind = "priority"

[[layers]]
kind = "breaker"
"#;

fn admin(method: &str, url: &str, body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut r = request(method, url, body.to_string());
    r.headers_mut()
        .insert("authorization", "Bearer admin-secret-1".parse().unwrap());
    r
}

#[tokio::test]
async fn the_config_view_hides_keys_and_tokens_but_not_token_quotas() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url(), CLASSES))
        .await
        .unwrap();
    let shown = send(admin("GET", &format!("{}/corral/config", corral.url()), ""))
        .await
        .json();
    assert_eq!(shown["admin"]["token"], "<redacted>");
    assert_eq!(shown["agents"][0]["key"], "<redacted>");
    assert_eq!(
        shown["classes"][0]["rate_limit"]["tokens_per_minute"], 20000,
        "{shown}"
    );
}

#[tokio::test]
async fn an_agents_priority_cannot_be_set_on_a_stack_that_schedules_nothing() {
    let upstream = mock(fast()).await;
    let corral = proxy_with(&upstream.url(), |c| c.layers = Some(vec![])).await;
    let reply = post(
        &format!("{}/corral/priority", corral.url()),
        r#"{"agent":"planner","priority":1}"#,
    )
    .await;
    assert_eq!(reply.status, 404);
    assert!(reply.error().contains("no priority layer"));
}

#[tokio::test]
async fn the_status_sums_classes_without_a_class_field_of_their_own() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url(), CLASSES))
        .await
        .unwrap();
    let url = corral.url();
    let mut ask = request(
        "POST",
        &format!("{url}/api/generate"),
        r#"{"model":"llama3","prompt":"x","stream":false}"#,
    );
    ask.headers_mut()
        .insert("authorization", "Bearer sk-planner-0123".parse().unwrap());
    assert_eq!(send(ask).await.status, 200);
    let status = send(admin("GET", &format!("{url}/corral/status"), ""))
        .await
        .json();
    let opus = &status["classes"]["opus"];
    assert_eq!(opus["completed"], 1, "{status}");
    assert!(opus.get("class").is_none(), "{opus}");
}

#[tokio::test]
async fn configured_compartments_breakers_classes_and_pools_are_exported_at_zero_from_the_start() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url(), CLASSES))
        .await
        .unwrap();
    let text = String::from_utf8(
        send(admin("GET", &format!("{}/metrics", corral.url()), ""))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    for series in [
        "corral_bulkhead_in_use{compartment=\"opus_agents\"} 0",
        "corral_bulkhead_rejections_total{compartment=\"opus_agents\"} 0",
        "corral_circuit_breaker_state{breaker=\"upstream\"} 0",
        "corral_circuit_breaker_rejections_total{breaker=\"upstream\"} 0",
        "corral_requests_in_flight{class=\"opus\"} 0",
        "corral_requests_in_flight{class=\"default\"} 0",
        "corral_pool_capacity{pool=\"*\"} 1",
        "corral_pool_in_flight{pool=\"*\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
}

#[tokio::test]
async fn a_key_no_agent_has_is_served_as_keyless_but_counted() {
    let upstream = mock(fast()).await;
    let corral = corral::Running::start(&config(&upstream.url(), CLASSES))
        .await
        .unwrap();
    let url = corral.url();
    for _ in 0..3 {
        let mut ask = request(
            "POST",
            &format!("{url}/api/generate"),
            r#"{"model":"llama3","prompt":"x","stream":false}"#,
        );
        ask.headers_mut()
            .insert("authorization", "Bearer sk-planer-0123".parse().unwrap());
        assert_eq!(send(ask).await.status, 200, "keys are optional here");
    }
    let text = String::from_utf8(
        send(admin("GET", &format!("{url}/metrics"), ""))
            .await
            .body
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("corral_unknown_keys_total 3"), "{text}");
}
