//! A replica and a Redis that is not there, or is slow: `corral` starts
//! and serves from its own state, never waits on Redis longer than
//! `redis_timeout`, and shares again (flushing what it buffered) once
//! Redis answers.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::time::Duration;

use corral_e2e::{get, metric_sum, mock, send, Redis};
use support::free_port;
use support::replica::{ask, config, prefix, redis_cli, Replica};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_before_redis_serves_alone_then_shares_once_redis_is_there() {
    let port = free_port();
    let upstream = mock(corral_e2e::fast()).await;
    let keys = prefix("late-redis");
    let text = config(
        &upstream.url(),
        &format!("redis://127.0.0.1:{port}"),
        &keys,
        "2s",
        "replicas = 2\n[[layers]]\nkind = \"ratelimit\"\n",
    );
    let replica = Replica::start("replica-early", &text).await;
    // Alone, and told it is one of two: half the capacity of 4.
    let slow: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(send(ask(
                &replica.url,
                "sonnet-3",
                &format!(r#"{{"model":"llama3","prompt":"alone {n}","stream":false}}"#),
                &[("x-mock-fault", "tokens=10, tps=40")],
            )))
        })
        .collect();
    for reply in slow {
        assert_eq!(corral_e2e::within(reply).await.unwrap().status, 200);
    }
    assert_eq!(
        upstream.stats().peak_in_flight,
        2,
        "a replica that never reached Redis keeps to its share"
    );
    let early = ask(
        &replica.url,
        "sonnet-3",
        r#"{"model":"llama3","prompt":"before redis","stream":false}"#,
        &[("x-request-id", "before-redis")],
    );
    assert_eq!(send(early).await.status, 200, "served without Redis");
    assert_eq!(replica.backend_up().await, 0.0);
    assert!(metric_sum(&replica.url, "corral_state_backend_errors_total").await >= 1.0);

    let redis = Redis::start_at(port).await;
    corral_e2e::eventually_async("the replica finds Redis", || async {
        replica.backend_up().await == 1.0
    })
    .await;
    // What it recorded alone is in the shared stream now.
    corral_e2e::eventually("the buffered events are flushed to the stream", || {
        redis_cli(&redis.url, &["XLEN", &format!("{keys}events")])
            .parse::<u64>()
            .unwrap_or(0)
            >= 2
    })
    .await;
    let reply = replica.generate("sonnet-3", 5, "with redis").await;
    assert_eq!(reply.status, 200);
    corral_e2e::eventually_async(
        "its permits are counted in Redis, and given back",
        || async {
            metric_sum(&replica.url, "corral_shared_permits_held").await == 0.0
                && replica.backend_up().await == 1.0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_stops_answering_never_holds_a_request_longer_than_the_timeout() {
    let redis = Redis::start().await;
    if !redis.owned() {
        eprintln!("REDIS_URL is shared: this test pauses its own server only");
        return;
    }
    let upstream = mock(corral_e2e::fast()).await;
    let text = config(
        &upstream.url(),
        &redis.url,
        &prefix("slow-redis"),
        "2s",
        "[[layers]]\nkind = \"ratelimit\"\n[[layers]]\nkind = \"cache\"\n",
    );
    let replica = Replica::start("replica-patient", &text).await;
    assert_eq!(replica.generate("sonnet-4", 5, "warm").await.status, 200);
    // Redis holds every client for 4 s: a slow Redis, not a dead one.
    assert_eq!(
        redis_cli(&redis.url, &["CLIENT", "PAUSE", "4000", "ALL"]),
        "OK"
    );
    let started = tokio::time::Instant::now();
    for n in 0..3 {
        let reply = replica
            .generate("sonnet-4", 5, &format!("while redis is slow {n}"))
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let took = started.elapsed();
    eprintln!("three requests while Redis was paused took {took:?} (redis_timeout 200ms)");
    assert!(
        took < Duration::from_secs(3),
        "the requests did not wait for the paused Redis: {took:?}"
    );
    assert_eq!(
        replica.backend_up().await,
        0.0,
        "the slow Redis was noticed"
    );
    corral_e2e::eventually_async("Redis answers again after the pause", || async {
        replica.backend_up().await == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_given_only_corral_redis_url_shares_its_state() {
    let redis = Redis::start().await;
    let upstream = mock(corral_e2e::fast()).await;
    let port = free_port();
    let mut child = support::corral()
        .env("CORRAL_LISTEN", format!("127.0.0.1:{port}"))
        .env("CORRAL_UPSTREAM", upstream.url())
        .env("CORRAL_REDIS_URL", &redis.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    support::wait_for(port).await;
    let url = format!("http://127.0.0.1:{port}");
    let config = get(&format!("{url}/corral/config")).await;
    assert_eq!(config.json()["state"]["backend"], "redis");
    let version = get(&format!("{url}/api/version")).await;
    assert_eq!(version.status, 200);
    corral_e2e::eventually_async("the replica reaches Redis", || async {
        metric_sum(&url, "corral_state_backend_up").await == 1.0
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();

    let refused = support::corral()
        .env("CORRAL_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("CORRAL_REDIS_URL", "not a url")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(support::stderr(&refused).contains("CORRAL_REDIS_URL"));
}
