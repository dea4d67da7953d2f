//! What an operator reads and sets: the config view hides secrets and
//! nothing else, settings a stack cannot honour are refused, the status
//! names classes without noise, a wrong key is warned about, and every
//! configured compartment, breaker, class and pool is in `/metrics` from
//! the start.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral::Running;
use corral_e2e::{fast, mock, post, proxy_toml, proxy_with, request_with, send, Reply};

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

/// A fast upstream and a proxy in front of it configured with [`CLASSES`].
async fn operated() -> (corral_mock_ollama::MockOllama, Running) {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), CLASSES).await;
    (upstream, corral)
}

/// `GET url` with the admin token.
async fn admin_get(url: &str) -> Reply {
    let token = [("authorization", "Bearer admin-secret-1")];
    send(request_with("GET", url, "", &token)).await
}

/// A generation at `url` that presents `key`.
async fn generate_with_key(url: &str, key: &str) -> Reply {
    let bearer = format!("Bearer {key}");
    let body = r#"{"model":"llama3","prompt":"x","stream":false}"#;
    let ask = request_with(
        "POST",
        &format!("{url}/api/generate"),
        body,
        &[("authorization", &bearer)],
    );
    send(ask).await
}

#[tokio::test]
async fn the_config_view_hides_keys_and_tokens_but_not_token_quotas() {
    let (_upstream, corral) = operated().await;
    let shown = admin_get(&format!("{}/corral/config", corral.url()))
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
    let (_upstream, corral) = operated().await;
    let url = corral.url();
    assert_eq!(generate_with_key(&url, "sk-planner-0123").await.status, 200);
    let status = admin_get(&format!("{url}/corral/status")).await.json();
    let opus = &status["classes"]["opus"];
    assert_eq!(opus["completed"], 1, "{status}");
    assert!(opus.get("class").is_none(), "{opus}");
}

#[tokio::test]
async fn configured_compartments_breakers_classes_and_pools_are_exported_at_zero_from_the_start() {
    let (_upstream, corral) = operated().await;
    let metrics = admin_get(&format!("{}/metrics", corral.url())).await;
    let text = metrics.text();
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
    let (_upstream, corral) = operated().await;
    let url = corral.url();
    for _ in 0..3 {
        let served = generate_with_key(&url, "sk-planer-0123").await;
        assert_eq!(served.status, 200, "keys are optional here");
    }
    let metrics = admin_get(&format!("{url}/metrics")).await;
    let text = metrics.text();
    assert!(text.contains("corral_unknown_keys_total 3"), "{text}");
}
