//! The Redis registry against a real `redis-server` (started on a free
//! port, or `REDIS_URL` with a key prefix of this test's own): Redis's
//! own TTL expires entries, two handles (two replicas) see one registry,
//! and an expiry is told by one of them only.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{EventSink, NewEvent, RedisState};
use corral_registry::{Entry, Registry, RegistryConfig, RegistryError};

use corral_test_redis::Redis;

/// A handle as a replica has one, under a prefix of this test's own.
fn state(redis: &Redis, prefix: &str, replica: &str) -> RedisState {
    RedisState::new(&redis.url, prefix, replica, Duration::from_secs(2)).unwrap()
}

fn prefix(test: &str) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    format!(
        "corral-registry-test-{}-{}-{test}:",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

#[derive(Default)]
struct Events(Mutex<Vec<NewEvent>>);

impl EventSink for Events {
    fn record(&self, event: NewEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn kinds(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().iter().map(|e| e.kind).collect()
    }
}

fn replica(state: RedisState, config: RegistryConfig) -> (Registry, Arc<Events>) {
    let events = Arc::new(Events::default());
    (
        Registry::redis(config, state, events.clone()).unwrap(),
        events,
    )
}

fn entry(agent: &str, ttl: Duration, capabilities: &[&str]) -> Entry {
    Entry::new(agent, "http://summarizer.internal:8080", ttl)
        .with_capabilities(capabilities.iter().copied())
        .with_metadata(serde_json::json!({"note": "a|b", "registered_at": 1}))
}

fn agents(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.agent.as_str()).collect()
}

/// Waits until `registry` no longer lists `agent`, failing after 10 s.
async fn until_gone(registry: &Registry, agent: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while registry.get(agent).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{agent} never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_entry_expires_after_its_ttl_in_redis() {
    let redis = Redis::start().await;
    let (registry, events) = replica(
        state(&redis, &prefix("ttl"), "r1"),
        RegistryConfig::default(),
    );
    let ttl = Duration::from_millis(300);
    let put = registry.put(entry("a", ttl, &["summarize"])).await.unwrap();
    assert!(put.joined());
    let found = registry.find(Some("summarize")).await;
    assert_eq!(agents(&found), ["a"]);
    assert_eq!(found[0].metadata.as_ref().unwrap()["note"], "a|b");
    assert_eq!(found[0].registered_at, put.entry().registered_at);
    assert!(
        registry.sweep().await.is_empty(),
        "the first sweep takes stock"
    );
    let started = tokio::time::Instant::now();
    until_gone(&registry, "a").await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before its TTL"
    );
    assert!(registry.find(Some("summarize")).await.is_empty());
    assert!(registry.heartbeat("a").await.unwrap().is_none());
    assert_eq!(agents(&registry.sweep().await), ["a"]);
    assert_eq!(events.kinds(), ["registry_joined", "registry_expired"]);
}

#[tokio::test]
async fn heartbeats_and_puts_renew_keeping_registered_at() {
    let redis = Redis::start().await;
    let (registry, events) = replica(
        state(&redis, &prefix("renew"), "r1"),
        RegistryConfig::default(),
    );
    let ttl = Duration::from_millis(400);
    let first = registry.put(entry("a", ttl, &["x"])).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let renewed = registry.heartbeat("a").await.unwrap().expect("still live");
        assert_eq!(renewed.registered_at, first.entry().registered_at);
    }
    let again = registry.put(entry("a", ttl, &["y"])).await.unwrap();
    assert!(!again.joined());
    assert_eq!(again.entry().registered_at, first.entry().registered_at);
    assert_eq!(agents(&registry.find(Some("y")).await), ["a"]);
    assert!(registry.find(Some("x")).await.is_empty(), "replaced whole");
    assert_eq!(events.kinds(), ["registry_joined"]);
}

#[tokio::test]
async fn an_expiry_then_a_rejoin_between_sweeps_is_told_as_both() {
    let redis = Redis::start().await;
    let (registry, events) = replica(
        state(&redis, &prefix("rejoin"), "r1"),
        RegistryConfig::default(),
    );
    let first = registry
        .put(entry("a", Duration::from_millis(300), &["x"]))
        .await
        .unwrap();
    until_gone(&registry, "a").await;
    let again = registry
        .put(entry("a", Duration::from_secs(60), &["x"]))
        .await
        .unwrap();
    assert!(again.joined());
    // The rejoin takes the expired registration out, and tells it.
    assert!(registry.sweep().await.is_empty(), "told once");
    assert_eq!(
        events.kinds(),
        ["registry_joined", "registry_expired", "registry_joined"]
    );
    let told = events.0.lock().unwrap()[1].clone();
    assert_eq!(told.data["registered_at"], first.entry().registered_at);
}

/// `command` on `key` against the test's Redis directly.
async fn raw(redis: &Redis, command: &str, key: &str) -> i64 {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd(command)
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_sweep_finds_expiries_by_deadline_and_a_late_delete_is_still_an_expiry() {
    let redis = Redis::start().await;
    let prefix = prefix("index");
    let (registry, events) = replica(state(&redis, &prefix, "r1"), RegistryConfig::default());
    for (agent, ttl) in [("a", 300), ("b", 300), ("c", 60_000)] {
        let ttl = Duration::from_millis(ttl);
        registry.put(entry(agent, ttl, &["x"])).await.unwrap();
    }
    let deadlines = format!("{prefix}registry:deadlines");
    let entries = format!("{prefix}registry:entries");
    assert_eq!(raw(&redis, "ZCARD", &deadlines).await, 3);
    until_gone(&registry, "a").await;
    until_gone(&registry, "b").await;
    assert!(
        registry.remove("b").await.unwrap().is_none(),
        "b expired: not a departure"
    );
    assert_eq!(raw(&redis, "ZCARD", &deadlines).await, 3, "kept until told");
    let expired = registry.sweep().await;
    assert_eq!(agents(&expired), ["a", "b"]);
    assert!(expired[0].expires_at > expired[0].registered_at);
    assert_eq!(expired[0].endpoint, "http://summarizer.internal:8080");
    assert_eq!(raw(&redis, "ZCARD", &deadlines).await, 1);
    assert_eq!(raw(&redis, "HLEN", &entries).await, 1);
    assert!(registry.sweep().await.is_empty());
    let expiries = events
        .kinds()
        .iter()
        .filter(|k| **k == "registry_expired")
        .count();
    assert_eq!(expiries, 2);
    assert!(!events.kinds().contains(&"registry_left"));
}

#[tokio::test]
async fn two_replicas_share_entries_and_an_expiry_is_told_once() {
    let redis = Redis::start().await;
    let prefix = prefix("shared");
    let (one, one_events) = replica(state(&redis, &prefix, "r1"), RegistryConfig::default());
    let (two, two_events) = replica(state(&redis, &prefix, "r2"), RegistryConfig::default());
    one.sweep().await;
    two.sweep().await;
    one.put(entry("a", Duration::from_millis(300), &["x"]))
        .await
        .unwrap();
    one.put(entry("b", Duration::from_secs(60), &["x"]))
        .await
        .unwrap();
    assert_eq!(agents(&two.find(Some("x")).await), ["a", "b"]);
    two.sweep().await;
    until_gone(&two, "a").await;
    let told = two.sweep().await.len() + one.sweep().await.len();
    assert_eq!(told, 1, "one replica tells the expiry");
    assert!(two.remove("b").await.unwrap().is_some());
    assert!(one.get("b").await.unwrap().is_none());
    assert!(one.sweep().await.is_empty(), "b left: not an expiry");
    let mut kinds = one_events.kinds();
    kinds.extend(two_events.kinds());
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "registry_expired",
            "registry_joined",
            "registry_joined",
            "registry_left"
        ]
    );
}

#[tokio::test]
async fn a_full_redis_registry_refuses_new_agents_until_one_expires() {
    let redis = Redis::start().await;
    let config = RegistryConfig {
        max_agents: 2,
        ..RegistryConfig::default()
    };
    let (registry, _) = replica(state(&redis, &prefix("full"), "r1"), config);
    registry
        .put(entry("a", Duration::from_secs(60), &[]))
        .await
        .unwrap();
    registry
        .put(entry("b", Duration::from_millis(300), &[]))
        .await
        .unwrap();
    let refused = registry.put(entry("c", Duration::from_secs(60), &[])).await;
    assert_eq!(refused.unwrap_err(), RegistryError::Full { max_agents: 2 });
    assert!(!registry
        .put(entry("a", Duration::from_secs(60), &[]))
        .await
        .unwrap()
        .joined());
    until_gone(&registry, "b").await;
    let put = registry
        .put(entry("c", Duration::from_secs(60), &[]))
        .await
        .unwrap();
    assert!(put.joined(), "b's expiry made room");
}

#[tokio::test]
async fn a_rejoin_refused_as_full_leaves_its_expiry_for_the_sweep() {
    let redis = Redis::start().await;
    let config = RegistryConfig {
        max_agents: 1,
        ..RegistryConfig::default()
    };
    let (registry, events) = replica(state(&redis, &prefix("full-rejoin"), "r1"), config);
    let short = Duration::from_millis(300);
    registry.put(entry("a", short, &[])).await.unwrap();
    until_gone(&registry, "a").await;
    let long = Duration::from_secs(60);
    assert!(registry.put(entry("c", long, &[])).await.unwrap().joined());
    let refused = registry.put(entry("a", long, &[])).await;
    assert_eq!(refused.unwrap_err(), RegistryError::Full { max_agents: 1 });
    assert_eq!(events.kinds(), ["registry_joined", "registry_joined"]);
    assert_eq!(agents(&registry.sweep().await), ["a"], "still told");
}

#[tokio::test]
async fn calls_fail_and_sweeps_tell_nothing_while_redis_is_away() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let state = RedisState::new(
        &format!("redis://127.0.0.1:{port}"),
        "corral-registry-away:",
        "r1",
        Duration::from_millis(200),
    )
    .unwrap();
    let (registry, events) = replica(state, RegistryConfig::default());
    let put = registry
        .put(entry("a", Duration::from_secs(5), &["x"]))
        .await;
    assert!(matches!(put, Err(RegistryError::Unavailable(_))), "{put:?}");
    assert!(registry.try_find(Some("x")).await.is_err());
    assert!(registry.find(Some("x")).await.is_empty());
    assert!(registry.sweep().await.is_empty());
    assert!(events.kinds().is_empty());
}
