//! The memory registry on tokio's paused clock: joins, renewals,
//! expiry with its event, lookups by capability, and the bounds.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{EventSink, NewEvent};
use corral_registry::{Entry, Put, Registry, RegistryConfig, RegistryError};

#[derive(Default)]
struct Events(Mutex<Vec<NewEvent>>);

impl EventSink for Events {
    fn record(&self, event: NewEvent) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    fn kinds(&self) -> Vec<(&'static str, String)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .map(|e| (e.kind, e.agent.clone().unwrap_or_default()))
            .collect()
    }
}

fn registry(config: RegistryConfig) -> (Registry, Arc<Events>) {
    let events = Arc::new(Events::default());
    (Registry::memory(config, events.clone()).unwrap(), events)
}

fn entry(agent: &str, secs: u64, capabilities: &[&str]) -> Entry {
    Entry::new(
        agent,
        "http://summarizer.internal:8080/a2a",
        Duration::from_secs(secs),
    )
    .with_capabilities(capabilities.iter().copied())
}

fn agents(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.agent.as_str()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_put_joins_then_renews_keeping_registered_at() {
    let (registry, events) = registry(RegistryConfig::default());
    let first = registry.put(entry("a", 10, &["summarize"])).await.unwrap();
    let Put::Joined(joined) = first else {
        panic!("a first put joins: {first:?}")
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = registry.put(entry("a", 10, &["translate"])).await.unwrap();
    assert!(!second.joined(), "a second put renews: {second:?}");
    assert_eq!(second.entry().registered_at, joined.registered_at);
    assert_eq!(second.entry().capabilities, ["translate"], "replaced whole");
    assert_eq!(events.kinds(), [("registry_joined", "a".to_string())]);
    let event = events.0.lock().unwrap()[0].clone();
    assert_eq!(
        event.data["endpoint"],
        "http://summarizer.internal:8080/a2a"
    );
    assert_eq!(event.data["ttl_secs"], 10.0);
    assert_eq!(event.data["capabilities"][0], "summarize");
}

#[tokio::test(start_paused = true)]
async fn an_entry_expires_after_its_ttl_and_the_sweep_records_it_once() {
    let (registry, events) = registry(RegistryConfig::default());
    registry.put(entry("a", 10, &["summarize"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(9_999)).await;
    assert!(
        registry.get("a").await.unwrap().is_some(),
        "live until the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        registry.get("a").await.unwrap().is_none(),
        "expired at the TTL"
    );
    assert!(registry.find(None).await.is_empty());
    let expired = registry.sweep().await;
    assert_eq!(agents(&expired), ["a"]);
    assert!(registry.sweep().await.is_empty(), "told once");
    assert_eq!(
        events.kinds(),
        [
            ("registry_joined", "a".to_string()),
            ("registry_expired", "a".to_string())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_an_entry_alive_past_its_ttl() {
    let (registry, _) = registry(RegistryConfig::default());
    registry.put(entry("a", 10, &[])).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let renewed = registry.heartbeat("a").await.unwrap();
        assert!(renewed.is_some(), "renewed before the TTL");
    }
    assert!(
        registry.get("a").await.unwrap().is_some(),
        "40 s later, still live"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(
        registry.heartbeat("a").await.unwrap().is_none(),
        "too late: put again"
    );
    assert!(registry.heartbeat("never-was").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_put_after_expiry_rejoins_and_the_expiry_is_still_told() {
    let (registry, events) = registry(RegistryConfig::default());
    let first = registry.put(entry("a", 1, &[])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = registry.put(entry("a", 1, &[])).await.unwrap();
    assert!(again.joined(), "expired, so a join");
    assert!(again.entry().registered_at >= first.entry().registered_at);
    assert_eq!(agents(&registry.sweep().await), ["a"]);
    let kinds: Vec<_> = events.kinds().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        kinds,
        ["registry_joined", "registry_joined", "registry_expired"]
    );
}

#[tokio::test(start_paused = true)]
async fn find_lists_live_entries_with_the_capability_by_agent() {
    let (registry, _) = registry(RegistryConfig::default());
    registry
        .put(entry("c", 100, &["summarize", "code"]))
        .await
        .unwrap();
    registry.put(entry("a", 100, &["summarize"])).await.unwrap();
    registry.put(entry("b", 5, &["summarize"])).await.unwrap();
    registry.put(entry("d", 100, &["code"])).await.unwrap();
    assert_eq!(
        agents(&registry.find(Some("summarize")).await),
        ["a", "b", "c"]
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        agents(&registry.find(Some("summarize")).await),
        ["a", "c"],
        "b expired"
    );
    assert_eq!(agents(&registry.find(Some("code")).await), ["c", "d"]);
    assert_eq!(agents(&registry.find(None).await), ["a", "c", "d"]);
    assert!(registry.find(Some("translate")).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_removed_entry_is_gone_and_told_as_left_not_expired() {
    let (registry, events) = registry(RegistryConfig::default());
    registry.put(entry("a", 10, &["x"])).await.unwrap();
    assert_eq!(registry.remove("a").await.unwrap().unwrap().agent, "a");
    assert!(registry.remove("a").await.unwrap().is_none());
    assert!(registry.get("a").await.unwrap().is_none());
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(registry.sweep().await.is_empty());
    let kinds: Vec<_> = events.kinds().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["registry_joined", "registry_left"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_registry_refuses_new_agents_but_renews_and_makes_room_on_expiry() {
    let config = RegistryConfig {
        max_agents: 2,
        ..RegistryConfig::default()
    };
    let (registry, _) = registry(config);
    registry.put(entry("a", 100, &[])).await.unwrap();
    registry.put(entry("b", 5, &[])).await.unwrap();
    let refused = registry.put(entry("c", 100, &[])).await.unwrap_err();
    assert_eq!(refused, RegistryError::Full { max_agents: 2 });
    assert!(!registry.put(entry("a", 100, &[])).await.unwrap().joined());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        registry.put(entry("c", 100, &[])).await.unwrap().joined(),
        "b expired"
    );
}

#[tokio::test(start_paused = true)]
async fn what_breaks_a_rule_is_refused_with_a_message() {
    let (registry, _) = registry(RegistryConfig::default());
    let ttl = Duration::from_secs(10);
    let cases = [
        (
            Entry::new("a", "http://h:1", Duration::from_secs(7200)),
            "ttl_secs",
        ),
        (Entry::new("a", "http://h:1", Duration::ZERO), "ttl_secs"),
        (Entry::new("a", "ftp://h/x", ttl), "http"),
        (Entry::new("a", "/just/a/path", ttl), "endpoint"),
        (Entry::new("a", "not a url", ttl), "endpoint"),
        (Entry::new("", "http://h:1", ttl), "agent id"),
        (
            Entry::new("a", "http://h:1", ttl).with_capabilities(["has space"]),
            "capabilities",
        ),
        (
            Entry::new("a", "http://h:1", ttl).with_capabilities(vec!["x"; 33]),
            "capabilities",
        ),
        (
            Entry::new("a", "http://h:1", ttl)
                .with_metadata(serde_json::json!({"blob": "x".repeat(20_000)})),
            "metadata",
        ),
    ];
    for (entry, says) in cases {
        match registry.put(entry.clone()).await {
            Err(RegistryError::Invalid(message)) => {
                assert!(message.contains(says), "{entry:?}: {message}")
            }
            other => panic!("{entry:?} is refused, not {other:?}"),
        }
    }
    assert!(registry.find(None).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn endpoints_at_private_addresses_are_refused_unless_allowed() {
    let (registry, _) = registry(RegistryConfig::default());
    let ttl = Duration::from_secs(10);
    for endpoint in [
        "http://127.0.0.1:8080",
        "http://10.0.0.7:8080",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080",
        "http://[::ffff:192.168.0.1]/",
        "http://localhost:8080",
        "http://LocalHost.:8080",
        "http://api.localhost/",
    ] {
        match registry.put(Entry::new("a", endpoint, ttl)).await {
            Err(RegistryError::Invalid(message)) => {
                assert!(message.contains("endpoint"), "{endpoint}: {message}");
                assert!(message.contains("allow_private_endpoints"), "{message}");
            }
            other => panic!("{endpoint} is refused, not {other:?}"),
        }
    }
    for endpoint in ["http://8.8.8.8:80", "https://agent.internal/a2a"] {
        let put = registry.put(Entry::new("b", endpoint, ttl)).await;
        assert!(put.is_ok(), "{endpoint}: {put:?}");
    }
    let allowing = RegistryConfig {
        allow_private_endpoints: true,
        ..RegistryConfig::default()
    };
    let (registry, _) = self::registry(allowing);
    let put = registry
        .put(Entry::new("a", "http://127.0.0.1:8080", ttl))
        .await;
    assert!(put.unwrap().joined(), "allowed by the option");
}

#[tokio::test(start_paused = true)]
async fn whether_the_agent_proved_itself_is_kept_and_shown() {
    let (registry, _) = registry(RegistryConfig::default());
    let ttl = Duration::from_secs(10);
    let proven = Entry::new("a", "http://h:1", ttl).with_authenticated(true);
    registry.put(proven).await.unwrap();
    registry
        .put(Entry::new("b", "http://h:1", ttl))
        .await
        .unwrap();
    assert!(
        registry
            .heartbeat("a")
            .await
            .unwrap()
            .unwrap()
            .authenticated
    );
    let found = registry.find(None).await;
    let shown: Vec<_> = found
        .iter()
        .map(|e| (e.agent.as_str(), e.authenticated))
        .collect();
    assert_eq!(shown, [("a", true), ("b", false)]);
    assert_eq!(
        serde_json::to_value(&found[0]).unwrap()["authenticated"],
        true
    );
}

#[tokio::test(start_paused = true)]
async fn the_sweeper_records_expiries_on_its_own_and_stops_with_the_registry() {
    let config = RegistryConfig {
        sweep_interval: Duration::from_secs(1),
        ..RegistryConfig::default()
    };
    let (registry, events) = registry(config);
    let sweeper = registry.spawn_sweeper();
    registry.put(entry("a", 3, &["x"])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let kinds: Vec<_> = events.kinds().into_iter().map(|(k, _)| k).collect();
    assert_eq!(kinds, ["registry_joined", "registry_expired"]);
    drop(registry);
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the sweeper ends once the registry is dropped")
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_join_wakes_the_sweeper_after_a_short_wait() {
    let config = RegistryConfig {
        sweep_interval: Duration::from_secs(10),
        ..RegistryConfig::default()
    };
    let (registry, events) = registry(config);
    let _sweeper = registry.spawn_sweeper();
    registry.put(entry("a", 1, &["x"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    registry.put(entry("b", 60, &["x"])).await.unwrap();
    let kinds = || -> Vec<_> { events.kinds().into_iter().map(|(k, _)| k).collect() };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kinds(), ["registry_joined", "registry_joined"], "waiting");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        kinds(),
        ["registry_joined", "registry_joined", "registry_expired"],
        "b's join woke the sweeper, which found a expired, long before the tick"
    );
}

#[test]
fn config_bounds_name_the_key() {
    let secs = Duration::from_secs;
    let cases = [
        (
            RegistryConfig {
                default_ttl: Duration::ZERO,
                ..Default::default()
            },
            "default_ttl",
        ),
        (
            RegistryConfig {
                max_ttl: Duration::ZERO,
                ..Default::default()
            },
            "max_ttl",
        ),
        (
            RegistryConfig {
                default_ttl: secs(60),
                max_ttl: secs(30),
                ..Default::default()
            },
            "default_ttl",
        ),
        (
            RegistryConfig {
                max_agents: 0,
                ..Default::default()
            },
            "max_agents",
        ),
        (
            RegistryConfig {
                sweep_interval: Duration::ZERO,
                ..Default::default()
            },
            "sweep_interval",
        ),
        (
            RegistryConfig {
                sweep_interval: secs(7200),
                ..Default::default()
            },
            "sweep_interval",
        ),
    ];
    for (config, key) in cases {
        assert_eq!(config.validate().unwrap_err().key(), key, "{config:?}");
        assert!(Registry::memory(config, Arc::new(Events::default())).is_err());
    }
    assert!(RegistryConfig::default().validate().is_ok());
}
