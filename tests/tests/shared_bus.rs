//! The bus across replicas against a real `redis-server`: a message from
//! one reaches the others, a setting is replayed to a replica that starts
//! later, and an older setting never overwrites a newer one.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_core::{channels, redis, Bus, RedisBus, RedisState};
use corral_e2e::{within, Redis};

fn state(redis: &Redis, prefix: &str, replica: &str) -> RedisState {
    RedisState::new(&redis.url, prefix, replica, Duration::from_millis(500)).unwrap()
}

/// Waits until `n` buses listen on the degradation channel.
async fn listening(probe: &RedisState, n: i64) {
    let channel = probe.key(channels::DEGRADATION_LEVEL);
    corral_e2e::eventually_async("the buses listen", || async {
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(&channel);
        let reply: (String, i64) = probe.query(&numsub).await.unwrap();
        reply.1 >= n
    })
    .await;
}

/// The next message on the degradation channel `receiver` hears.
async fn next_level(
    receiver: &mut tokio::sync::broadcast::Receiver<corral_core::BusMessage>,
) -> corral_core::BusMessage {
    within(async {
        loop {
            let message = receiver.recv().await.unwrap();
            if &*message.channel == channels::DEGRADATION_LEVEL {
                return message;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_reach_the_other_replicas_and_those_that_start_later() {
    let redis = Redis::start().await;
    let prefix = format!("corral-bus-{}-reach:", std::process::id());
    let one = RedisBus::start(state(&redis, &prefix, "one"));
    let two = RedisBus::start(state(&redis, &prefix, "two"));
    let mut heard = two.subscribe();
    // Both listen before the message.
    let probe = state(&redis, &prefix, "probe");
    listening(&probe, 2).await;
    one.publish_state(
        channels::DEGRADATION_LEVEL,
        "forced",
        serde_json::json!({"cause": "operator", "forced": "L2"}),
    );
    let message = within(async {
        loop {
            let message = heard.recv().await.unwrap();
            if &*message.publisher == "one" {
                return message;
            }
        }
    })
    .await;
    assert_eq!(&*message.channel, channels::DEGRADATION_LEVEL);
    assert_eq!(message.message["forced"], "L2");

    let late = RedisBus::start(state(&redis, &prefix, "late"));
    let message = next_level(&mut late.subscribe()).await;
    assert_eq!(message.message["forced"], "L2", "read before it listens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_comes_after_the_start_up_replay_still_reads_the_settings() {
    let redis = Redis::start().await;
    let prefix = format!("corral-bus-{}-after:", std::process::id());
    let one = RedisBus::start(state(&redis, &prefix, "one"));
    one.publish_state(
        channels::DEGRADATION_LEVEL,
        "forced",
        serde_json::json!({"cause": "operator", "forced": "L2"}),
    );
    let probe = state(&redis, &prefix, "probe");
    let kept = probe.key(&format!("state:{}", channels::DEGRADATION_LEVEL));
    corral_e2e::eventually_async("the setting is kept", || async {
        let mut get = redis::cmd("HGET");
        get.arg(&kept).arg("forced");
        probe.query::<Option<String>>(&get).await.unwrap().is_some()
    })
    .await;
    // A replica whose bus has replayed before anything subscribed (a
    // replica under load builds its layers meanwhile).
    let late = RedisBus::start(state(&redis, &prefix, "late"));
    // Listening, it has replayed (it subscribes in Redis first); a
    // moment more for the replay's round trips.
    listening(&probe, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let message = next_level(&mut late.subscribe()).await;
    assert_eq!(message.message["forced"], "L2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_setting_never_overwrites_a_newer_one() {
    let redis = Redis::start().await;
    let prefix = format!("corral-bus-{}-newer:", std::process::id());
    let probe = state(&redis, &prefix, "probe");
    let hash = probe.key(&format!("state:{}", channels::DEGRADATION_LEVEL));
    // Another replica set it "later" than this replica's clock says now
    // (a replica back from an outage writes what it kept).
    let newer = serde_json::json!({
        "channel": channels::DEGRADATION_LEVEL,
        "timestamp": corral_core::unix_now_f64() + 3600.0,
        "publisher": "other",
        "message": {"cause": "operator", "forced": null},
    });
    let mut set = redis::cmd("HSET");
    set.arg(&hash).arg("forced").arg(newer.to_string());
    let _: i64 = probe.query(&set).await.unwrap();
    let bus = RedisBus::start(state(&redis, &prefix, "one"));
    bus.publish_state(
        channels::DEGRADATION_LEVEL,
        "forced",
        serde_json::json!({"cause": "operator", "forced": "Critical"}),
    );
    // The bus writes in order: once a later setting is in, the earlier
    // one was tried.
    bus.publish_state(
        channels::DEGRADATION_LEVEL,
        "marker",
        serde_json::json!({"cause": "test"}),
    );
    corral_e2e::eventually_async("the later setting is in", || async {
        let mut exists = redis::cmd("HEXISTS");
        exists.arg(&hash).arg("marker");
        probe.query::<i64>(&exists).await.unwrap() == 1
    })
    .await;
    let mut get = redis::cmd("HGET");
    get.arg(&hash).arg("forced");
    let kept: String = probe.query(&get).await.unwrap();
    let kept: serde_json::Value = serde_json::from_str(&kept).unwrap();
    assert_eq!(kept["publisher"], "other", "the newer setting stays");
    // A newer one of its own is written.
    let mut older = newer.clone();
    older["timestamp"] = serde_json::json!(1.0);
    let mut set = redis::cmd("HSET");
    set.arg(&hash).arg("forced").arg(older.to_string());
    let _: i64 = probe.query(&set).await.unwrap();
    bus.publish_state(
        channels::DEGRADATION_LEVEL,
        "forced",
        serde_json::json!({"cause": "operator", "forced": "L1"}),
    );
    corral_e2e::eventually_async("the newer setting replaces the older", || async {
        let kept: String = probe.query(&get).await.unwrap();
        kept.contains("\"L1\"")
    })
    .await;
}
