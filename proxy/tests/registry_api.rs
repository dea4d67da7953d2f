//! `/corral/registry` over real sockets: agents put, renew, read and
//! remove their entries (who may change what is in
//! `registry_rights.rs`); bad input is a 400 that says why; an entry expires after its TTL, with its
//! event and gauge; with `[state] backend = "redis"` two replicas share
//! one registry.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicU64, Ordering};

mod support;

use corral::Config;
use corral_e2e::{events, eventually_async, fast, metric_sum, mock, proxy_toml, Redis};

use support::registry::{agents, announce, call};

const FAST_SWEEP: &str = "[registry]\nsweep_interval = \"20ms\"\n";

#[tokio::test]
async fn an_agent_puts_renews_reads_and_removes_its_entry() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), FAST_SWEEP).await;
    let url = corral.url();
    let joined = call(
        &url,
        "PUT",
        "/summarizer-1",
        "summarizer-1",
        &announce(r#"["summarize"]"#, 60.0),
    )
    .await;
    assert_eq!(joined.status, 201, "{}", joined.text());
    let entry = joined.json();
    assert_eq!(entry["agent"], "summarizer-1");
    assert_eq!(entry["endpoint"], "http://summarizer.internal:8080");
    assert_eq!(entry["ttl_secs"], 60.0);
    assert_eq!(entry["metadata"]["region"], "eu");
    assert!(entry["expires_at"].as_f64().unwrap() > entry["registered_at"].as_f64().unwrap());

    let renewed = call(
        &url,
        "PUT",
        "/summarizer-1",
        "summarizer-1",
        &announce(r#"["summarize", "translate"]"#, 60.0),
    )
    .await;
    assert_eq!(renewed.status, 200, "{}", renewed.text());
    assert_eq!(renewed.json()["registered_at"], entry["registered_at"]);
    let beat = call(&url, "POST", "/summarizer-1/heartbeat", "summarizer-1", "").await;
    assert_eq!(beat.status, 200, "{}", beat.text());
    assert_eq!(beat.json()["capabilities"][1], "translate");

    let listed = call(&url, "GET", "?capability=translate", "someone-else", "").await;
    assert_eq!(agents(&listed), ["summarizer-1"]);
    let none = call(&url, "GET", "?capability=code", "someone-else", "").await;
    assert!(agents(&none).is_empty());
    let read = call(&url, "GET", "/summarizer-1", "someone-else", "").await;
    assert_eq!(read.json()["models"][0], "llama3.2:3b");

    let gone = call(&url, "DELETE", "/summarizer-1", "summarizer-1", "").await;
    assert_eq!(gone.status, 204);
    assert_eq!(
        call(&url, "GET", "/summarizer-1", "a", "").await.status,
        404
    );
    let late = call(&url, "POST", "/summarizer-1/heartbeat", "summarizer-1", "").await;
    assert_eq!(late.status, 404);
    assert!(
        late.error().contains("PUT its entry again"),
        "{}",
        late.error()
    );
    let kinds: Vec<_> = events(&url, "agent=summarizer-1")
        .await
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["registry_joined", "registry_left"]);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_message() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), "").await;
    let url = corral.url();
    let cases = [
        ("PUT", "/a", "not json".to_string(), 400, "expected"),
        (
            "PUT",
            "/a",
            r#"{"capabilities": []}"#.to_string(),
            400,
            "endpoint",
        ),
        (
            "PUT",
            "/a",
            r#"{"endpoint": "http://h", "colour": 1}"#.to_string(),
            400,
            "colour",
        ),
        (
            "PUT",
            "/a",
            r#"{"endpoint": "file:///etc/passwd"}"#.to_string(),
            400,
            "http",
        ),
        (
            "PUT",
            "/a",
            r#"{"endpoint": "http://h", "ttl_secs": -1}"#.to_string(),
            400,
            "ttl_secs",
        ),
        ("PUT", "/a", announce("[]", 7200.0), 400, "max_ttl"),
        (
            "PUT",
            "/a",
            announce(r#"["two words"]"#, 30.0),
            400,
            "capabilities",
        ),
        ("GET", "?model=llama3", String::new(), 400, "capability="),
        ("GET", "/a/b/c", String::new(), 404, "no registry path"),
        ("POST", "/a", String::new(), 405, "answers GET, PUT, DELETE"),
    ];
    for (method, path, body, status, says) in cases {
        let reply = call(&url, method, path, "a", &body).await;
        assert_eq!(
            reply.status,
            status,
            "{method} {path} {body}: {}",
            reply.text()
        );
        assert!(
            reply.error().contains(says),
            "{method} {path} {body}: {}",
            reply.error()
        );
    }
    assert!(agents(&call(&url, "GET", "", "a", "").await).is_empty());
}

#[tokio::test]
async fn a_registry_entry_expires_after_its_ttl() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), FAST_SWEEP).await;
    let url = corral.url();
    let put = call(
        &url,
        "PUT",
        "/brief",
        "brief",
        &announce(r#"["expiring-cap"]"#, 0.3),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let listed = call(&url, "GET", "?capability=expiring-cap", "x", "").await;
    assert_eq!(agents(&listed), ["brief"]);
    eventually_async("the entry expires", || async {
        agents(&call(&url, "GET", "?capability=expiring-cap", "x", "").await).is_empty()
    })
    .await;
    assert_eq!(call(&url, "GET", "/brief", "x", "").await.status, 404);
    eventually_async("the expiry is recorded", || async {
        let kinds: Vec<_> = events(&url, "agent=brief&kind=registry_expired").await;
        kinds.len() == 1
    })
    .await;
    let series = "corral_registry_agents{capability=\"expiring-cap\"}";
    eventually_async("the gauge drops to 0", || async {
        metric_sum(&url, series).await == 0.0
    })
    .await;
}

#[tokio::test]
async fn the_gauge_counts_live_agents_by_capability() {
    let upstream = mock(fast()).await;
    let corral = proxy_toml(&upstream.url(), FAST_SWEEP).await;
    let url = corral.url();
    for agent in ["g1", "g2"] {
        let path = format!("/{agent}");
        let put = call(
            &url,
            "PUT",
            &path,
            agent,
            &announce(r#"["gauge-cap"]"#, 60.0),
        )
        .await;
        assert_eq!(put.status, 201);
    }
    let series = "corral_registry_agents{capability=\"gauge-cap\"}";
    eventually_async("the gauge says 2", || async {
        metric_sum(&url, series).await == 2.0
    })
    .await;
    assert_eq!(call(&url, "DELETE", "/g1", "g1", "").await.status, 204);
    eventually_async("the gauge says 1", || async {
        metric_sum(&url, series).await == 1.0
    })
    .await;
}

#[test]
fn a_bad_registry_section_is_refused_at_load_with_its_key() {
    let text = "[registry]\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"\n";
    let error = Config::parse(text, std::path::Path::new("bad.toml")).unwrap_err();
    assert!(
        error.to_string().contains("registry.default_ttl"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_see_one_registry() {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let redis = Redis::start().await;
    let upstream = mock(fast()).await;
    let prefix = format!(
        "corral-test-{}-{}-registry:",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    );
    let state = format!(
        "[state]\nbackend = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{prefix}\"\nredis_timeout = \"500ms\"\n{FAST_SWEEP}",
        redis.url
    );
    let one = proxy_toml(&upstream.url(), &state).await;
    let two = proxy_toml(&upstream.url(), &state).await;
    let put = call(
        &one.url(),
        "PUT",
        "/shared",
        "shared",
        &announce(r#"["redis-cap"]"#, 60.0),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let found = call(&two.url(), "GET", "?capability=redis-cap", "x", "").await;
    assert_eq!(agents(&found), ["shared"]);
    let beat = call(&two.url(), "POST", "/shared/heartbeat", "shared", "").await;
    assert_eq!(beat.status, 200, "renewed through the other replica");
    assert_eq!(beat.json()["registered_at"], put.json()["registered_at"]);

    let brief = call(
        &two.url(),
        "PUT",
        "/brief",
        "brief",
        &announce(r#"["redis-cap"]"#, 0.3),
    )
    .await;
    assert_eq!(brief.status, 201);
    eventually_async("the entry expires on both", || async {
        let on_one = agents(&call(&one.url(), "GET", "?capability=redis-cap", "x", "").await);
        let on_two = agents(&call(&two.url(), "GET", "?capability=redis-cap", "x", "").await);
        on_one == ["shared"] && on_two == ["shared"]
    })
    .await;
    assert_eq!(
        call(&one.url(), "DELETE", "/shared", "shared", "")
            .await
            .status,
        204
    );
    assert_eq!(
        call(&two.url(), "GET", "/shared", "x", "").await.status,
        404
    );
}
