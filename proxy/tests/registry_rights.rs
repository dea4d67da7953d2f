//! Who may change the registry: an agent its own entry only, never the
//! shared `anonymous` agent, only with a key once keys are in use; and
//! endpoints at private addresses only with the option.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use corral_e2e::{fast, mock, proxy_toml};
use support::registry::{agents, announce, call, call_with};

#[tokio::test]
async fn an_agent_cannot_change_another_agents_entry() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    assert_eq!(
        call(&url, "PUT", "/a", "a", &announce("[]", 60.0))
            .await
            .status,
        201
    );
    for (method, path) in [("PUT", "/a"), ("POST", "/a/heartbeat"), ("DELETE", "/a")] {
        let reply = call(&url, method, path, "b", &announce("[]", 60.0)).await;
        assert_eq!(reply.status, 403, "{method} {path}");
        assert!(
            reply.error().contains("its own registry entry"),
            "{}",
            reply.error()
        );
    }
    assert_eq!(
        call(&url, "GET", "/a", "b", "").await.status,
        200,
        "still there"
    );
}

#[tokio::test]
async fn the_anonymous_agent_cannot_change_the_registry() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    for (method, path) in [
        ("PUT", "/anonymous"),
        ("POST", "/anonymous/heartbeat"),
        ("DELETE", "/anonymous"),
    ] {
        let reply = call_with(&url, method, path, &[], &announce("[]", 60.0)).await;
        assert_eq!(reply.status, 403, "{method} {path}: {}", reply.text());
        assert!(reply.error().contains("X-Agent-Id"), "{}", reply.error());
    }
    assert!(agents(&call(&url, "GET", "", "a", "").await).is_empty());
}

const KEYED: &str = "[[agents]]\nid = \"planner\"\nkey = \"sk-planner-0123456789\"\n";

#[tokio::test]
async fn once_agents_have_keys_writes_need_one() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), KEYED).await;
    let url = corral.url();
    let claimed = call(&url, "PUT", "/worker", "worker", &announce("[]", 60.0)).await;
    assert_eq!(claimed.status, 403, "{}", claimed.text());
    assert!(claimed.error().contains("API key"), "{}", claimed.error());
    let bearer = [("authorization", "Bearer sk-planner-0123456789")];
    let proven = call_with(&url, "PUT", "/planner", &bearer, &announce("[]", 60.0)).await;
    assert_eq!(proven.status, 201, "{}", proven.text());
    assert_eq!(proven.json()["authenticated"], true);
    let read = call(&url, "GET", "/planner", "someone", "").await;
    assert_eq!(read.json()["authenticated"], true, "readers see it");

    let optional = format!("{KEYED}[registry]\nrequire_key = false\n");
    let corral = proxy_toml(&upstream.url(), &optional).await;
    let claimed = call(
        &corral.url(),
        "PUT",
        "/worker",
        "worker",
        &announce("[]", 60.0),
    )
    .await;
    assert_eq!(claimed.status, 201, "{}", claimed.text());
    assert_eq!(claimed.json()["authenticated"], false);
}

#[tokio::test]
async fn endpoints_at_private_addresses_need_the_option() {
    let upstream = mock(fast()).await;
    let private = r#"{"endpoint": "http://169.254.169.254/latest"}"#;
    let corral = proxy_toml(&upstream.url(), "").await;
    let refused = call(&corral.url(), "PUT", "/a", "a", private).await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.error().contains("endpoint"), "{}", refused.error());
    let allowing = "[registry]\nallow_private_endpoints = true\n";
    let corral = proxy_toml(&upstream.url(), allowing).await;
    let loopback = r#"{"endpoint": "http://127.0.0.1:8080"}"#;
    let allowed = call(&corral.url(), "PUT", "/a", "a", loopback).await;
    assert_eq!(allowed.status, 201, "{}", allowed.text());
}
