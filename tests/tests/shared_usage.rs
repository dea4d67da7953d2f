//! Usage by the hour in Redis: what two replicas record is one usage,
//! read from either; with Redis away a replica answers with its own.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use corral_core::{EventSink, NewEvent, RedisState};
use corral_e2e::Redis;
use corral_events::{EventLog, EventStore, EventsConfig, RedisEvents};
use serde_json::json;

fn replica(url: &str, prefix: &str, name: &str) -> Arc<RedisEvents> {
    let state = RedisState::new(url, prefix, name, Duration::from_millis(300)).unwrap();
    RedisEvents::start(
        state,
        Arc::new(EventLog::open(&EventsConfig::default()).unwrap()),
    )
}

fn answered(events: &RedisEvents, agent: &str, generated: u64) {
    events.record(NewEvent::new("received", json!({"class": "batch"})).about(agent, "r"));
    events.record(
        NewEvent::new(
            "completed",
            json!({"outcome": "completed", "prompt_tokens": 2, "generated_tokens": generated}),
        )
        .about(agent, "r"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_record_one_usage_by_the_hour() {
    let redis = Redis::start().await;
    let prefix = format!("corral-usage-{}:", std::process::id());
    let (one, two) = (
        replica(&redis.url, &prefix, "one"),
        replica(&redis.url, &prefix, "two"),
    );
    answered(&one, "a", 10);
    answered(&two, "a", 5);
    answered(&two, "b", 1);
    let since = corral_core::unix_now_f64() - 60.0;
    corral_e2e::eventually_async("both replicas' usage in Redis", || async {
        let usage = one.usage_since(since, None).await;
        usage.get("a").is_some_and(|a| a.generated_tokens == 15) && usage.contains_key("b")
    })
    .await;
    let usage = two.usage_since(since, Some("a".into())).await;
    assert_eq!(usage.len(), 1, "only the agent asked for: {usage:?}");
    let a = &usage["a"];
    assert_eq!((a.requests, a.completed, a.prompt_tokens), (2, 2, 4));
    assert_eq!(a.class.as_deref(), Some("batch"));
    assert!(one.usage_since(since + 7200.0, None).await.is_empty());

    drop(redis);
    // Redis gone: each replica answers with what it recorded itself.
    corral_e2e::eventually_async("the replica's own usage", || async {
        let usage = two.usage_since(since, None).await;
        usage.get("a").is_some_and(|a| a.generated_tokens == 5)
    })
    .await;
}
