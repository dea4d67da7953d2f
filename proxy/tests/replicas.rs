//! Three `corral` processes sharing one Redis (`[state] backend =
//! "redis"`) in front of one simulated Ollama: the limits hold across
//! them, a replica killed with SIGKILL gives its permits back within the
//! lease, Redis may stop and come back. Settings reaching every replica
//! are in `replicated_settings.rs`.
//!
//! Each test starts its own `redis-server` on a free port (or uses
//! `REDIS_URL` with a key prefix of its own).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use corral_e2e::herd::{assert_priority_one_went_first, assert_the_upstream_kept_up, CLASSES};
use corral_e2e::{metric_sum, mock, send, upstream_until, within, Redis};
use corral_mock_ollama::MockConfig;
use support::replica::{ask, config, every_backend, prefix, redis_cli, three, Fleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_over_three_replicas_never_overloads_the_upstream_and_priority_holds_across_them() {
    let fleet = Fleet::start_with(corral_e2e::herd::upstream(), "herd", "5s", "").await;
    let (replicas, upstream) = (Arc::new(fleet.three().await), &fleet.upstream);
    let agents = corral_e2e::herd::agents();
    assert_eq!(agents, 131);
    let start = Arc::new(tokio::sync::Barrier::new(agents));
    let mut calls = Vec::new();
    let mut n = 0;
    for (class, priority, count) in CLASSES {
        for i in 0..count {
            let (replicas, start) = (replicas.clone(), start.clone());
            let replica = n % 3;
            n += 1;
            calls.push(tokio::spawn(async move {
                start.wait().await;
                let mut waits = Vec::new();
                for k in 0..2 {
                    let reply = replicas[(replica + k) % 3]
                        .generate(
                            &format!("{class}-{i}"),
                            priority,
                            &format!("{class} {i} {k}"),
                        )
                        .await;
                    assert_eq!(
                        reply.status, 200,
                        "every request is answered: {:?}",
                        reply.body
                    );
                    waits.push(
                        reply
                            .header("x-corral-queue-ms")
                            .map_or(0, |v| v.parse().unwrap()),
                    );
                }
                (priority, waits[0])
            }));
        }
    }
    let mut by_priority: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
    for call in calls {
        let (priority, wait) = within(call).await.unwrap();
        by_priority.entry(priority).or_default().push(wait);
    }
    let stats = upstream.stats();
    assert_the_upstream_kept_up(&stats, "across three replicas");
    assert_eq!(
        stats.completed as usize,
        agents * 2,
        "every request was served"
    );
    assert_priority_one_went_first(by_priority, "across replicas");
    for replica in replicas.iter() {
        assert_eq!(replica.backend_up().await, 1.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_holding_every_permit_gives_them_back_within_the_lease() {
    // Long generations: the permits are held until the holder dies.
    let upstream = MockConfig {
        parallel: 4,
        ttft: Duration::from_millis(5),
        tokens_per_sec: 2.0,
        tokens: 1000,
        ..MockConfig::default()
    };
    let lease = Duration::from_secs(1);
    let fleet = Fleet::start_with(upstream, "kill", "1s", "").await;
    let (redis, keys, upstream) = (&fleet.redis, &fleet.keys, &fleet.upstream);
    let [mut doomed, b, c] = fleet.three().await;
    let mut held = Vec::new();
    for i in 0..4 {
        let url = doomed.url.clone();
        held.push(tokio::spawn(async move {
            let request = ask(
                &url,
                "batch-0",
                &format!(r#"{{"model":"llama3","prompt":"long {i}"}}"#),
                &[],
            );
            // The answer streams for minutes: hold it open until the
            // replica dies.
            let response = corral_e2e::client().request(request).await;
            std::future::pending::<()>().await;
            drop(response);
        }));
    }
    upstream_until(upstream, "the doomed replica holds every permit", |s| {
        s.in_flight == 4
    })
    .await;
    // Another replica's request waits: the permits are all held.
    let waiting = {
        let b_url = b.url.clone();
        tokio::spawn(async move {
            send(ask(
                &b_url,
                "system-0",
                r#"{"model":"llama3","prompt":"after the kill","stream":false,"options":{"num_predict":1}}"#,
                &[],
            ))
            .await
        })
    };
    // Its ticket is in the shared queue: no permit is free.
    corral_e2e::eventually("the other replica's request is queued", || {
        redis_cli(&redis.url, &["ZCARD", &format!("{keys}prio:*:queue")]) == "1"
    })
    .await;
    assert!(
        !waiting.is_finished(),
        "no permit is free while the doomed replica holds them"
    );
    let killed = tokio::time::Instant::now();
    doomed.kill();
    for h in held {
        h.abort();
    }
    let reply = within(waiting).await.unwrap();
    let took = killed.elapsed();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    eprintln!("a killed replica's permits came back after {took:?} (lease {lease:?})");
    assert!(
        took < lease * 3,
        "the permits come back within the lease and a renewal tick, not {took:?}"
    );
    assert!(upstream.stats().peak_in_flight <= 4);
    let carry_on = ask(
        &c.url,
        "sonnet-0",
        r#"{"model":"llama3","prompt":"the others carry on","stream":false,"options":{"num_predict":1}}"#,
        &[],
    );
    assert_eq!(send(carry_on).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_quota_spread_over_three_replicas_admits_exactly_its_limit() {
    let fleet = Fleet::start("quota", "[[layers]]\nkind = \"ratelimit\"\n").await;
    let replicas = fleet.three().await;
    let mut admitted = 0;
    let mut refused = 0;
    for n in 0..15 {
        let reply = replicas[n % 3]
            .generate("opus-0", 3, &format!("quota {n}"))
            .await;
        match reply.status.as_u16() {
            200 => admitted += 1,
            429 => {
                refused += 1;
                assert!(reply.header("retry-after").is_some());
                assert!(reply.error().contains("rate"));
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!(
        admitted, 5,
        "opus allows 5 requests a minute per agent, across replicas"
    );
    assert_eq!(refused, 10);
    // Every replica's events are in one stream, read from any of them,
    // their ids growing.
    corral_e2e::eventually_async("one replica replays the refusals of all three", || async {
        let refusals = replicas[2].events("agent=opus-0&kind=refused").await;
        let ids: Vec<u64> = refusals.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
        refusals.len() == 10
    })
    .await;
    // Another agent of the class has its own quota.
    assert_eq!(replicas[1].generate("opus-1", 3, "mine").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_run_fails_no_request_and_sharing_resumes() {
    let mut redis = Redis::start().await;
    if !redis.owned() {
        eprintln!("REDIS_URL is shared: this test stops its own server only");
        return;
    }
    let upstream = mock(MockConfig {
        parallel: 4,
        ttft: Duration::from_millis(5),
        tokens_per_sec: 500.0,
        tokens: 10,
        ..MockConfig::default()
    })
    .await;
    let text = config(&upstream.url(), &redis.url, &prefix("outage"), "2s", "");
    let replicas = Arc::new(three(&text).await);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agents = Vec::new();
    for i in 0..12 {
        let (replicas, done) = (replicas.clone(), done.clone());
        agents.push(tokio::spawn(async move {
            let mut answered = 0;
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                let reply = replicas[(i + n) % 3]
                    .generate(&format!("sonnet-{i}"), 5, &format!("steady {i} {n}"))
                    .await;
                assert_eq!(
                    reply.status, 200,
                    "no request fails for Redis: {:?}",
                    reply.body
                );
                answered += 1;
                n += 1;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.stop();
    corral_e2e::eventually_async("every replica notices Redis is gone", || {
        every_backend(&replicas[..], 0.0)
    })
    .await;
    // Serving alone, each replica with its share of the capacity; what
    // happens meanwhile is buffered for the shared event stream.
    let marked = ask(
        &replicas[2].url,
        "system-1",
        r#"{"model":"llama3","prompt":"during the outage","stream":false}"#,
        &[("x-request-id", "during-the-outage")],
    );
    assert_eq!(send(marked).await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    corral_e2e::eventually_async("every replica shares state again", || {
        every_backend(&replicas[..], 1.0)
    })
    .await;
    // What ran alone during the outage has ended: from here the shared
    // pool holds the upstream to its capacity again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let apart = upstream.stats().peak_in_flight;
    upstream.reset();
    tokio::time::sleep(Duration::from_millis(700)).await;
    done.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for agent in agents {
        answered += within(agent).await.unwrap();
    }
    assert!(answered > 12, "the agents kept working: {answered} answers");
    // Apart, each replica keeps to its share (4 / 3 replicas = 1) beside
    // the leases it held when Redis went: never more than twice the
    // capacity, in the switch.
    assert!(apart <= 8, "{apart} at once while apart");
    let stats = upstream.stats();
    assert!(stats.completed > 0, "requests ran after the outage");
    assert!(
        stats.peak_in_flight <= 4,
        "the shared pool again after the outage: {} at once",
        stats.peak_in_flight
    );
    // The event recorded while Redis was away reached the shared stream.
    corral_e2e::eventually_async("the buffered event is in the shared stream", || async {
        replicas[0]
            .events("agent=system-1")
            .await
            .iter()
            .any(|e| e["request_id"] == "during-the-outage")
    })
    .await;
    // Shared state is back: permits are counted in Redis again, and
    // every one given back once the run ends.
    let reply = replicas[0]
        .generate("system-0", 1, "after the outage")
        .await;
    assert_eq!(reply.status, 200);
    corral_e2e::eventually_async("Redis counts no permit once all are answered", || async {
        metric_sum(&replicas[0].url, "corral_shared_permits_held").await == 0.0
    })
    .await;
}
