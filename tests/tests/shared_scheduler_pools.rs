//! The scheduler with its pools in Redis, further: an agent's cap and the
//! reserve hold across replicas, a flooding agent does not idle permits,
//! pools never wake each other's waiters, and running permits count again
//! after Redis loses its data.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::Duration;

use corral_core::redis;
use corral_e2e::Redis;
use corral_priority::{Permit, Scheduler};

mod sched;

use sched::{
    capped, config, counts, granted, joined, replica, state, ticket, two_replicas, unique,
    until_counts, with_big_pool,
};

/// A replica with the default pool and `big`'s (leases `lease` long)
/// holding agent a's permit in each: the replica and the two permits.
async fn holding_both_pools(
    redis: &Redis,
    prefix: &str,
    lease: Duration,
) -> (Arc<Scheduler>, Permit, Permit) {
    let scheduler = replica(redis, prefix, "one", &with_big_pool(), lease);
    let default = granted(scheduler.acquire(ticket("a", 5), None)).await;
    let big = granted(scheduler.acquire(ticket("a", 5), Some("big"))).await;
    (scheduler, default, big)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_cap_holds_across_replicas() {
    let redis = Redis::start().await;
    let prefix = unique("cap");
    let capped = capped();
    let (one, two) = two_replicas(&redis, &prefix, &capped);
    let first = granted(one.acquire(ticket("a", 5), None)).await;
    // A permit is free, but agent a runs one already (on the other replica).
    let second = tokio::spawn(two.acquire(ticket("a", 1), None));
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (1, 1)).await;
    let other = granted(two.acquire(ticket("b", 9), None)).await;
    assert!(!second.is_finished(), "agent a waits for its own permit");
    drop(first);
    let second = joined(second).await;
    drop((second, other));
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_flooding_the_queue_past_a_page_does_not_keep_others_from_a_free_permit() {
    let redis = Redis::start().await;
    let prefix = unique("flood");
    let capped = capped();
    let scheduler = replica(&redis, &prefix, "one", &capped, Duration::from_secs(5));
    let probe = state(&redis, &prefix, "probe");
    let running = granted(scheduler.acquire(ticket("flood", 1), None)).await;
    // 70 more of the same agent wait ahead (priority 1), past the 64 the
    // grant script reads at once.
    let flood: Vec<_> = (0..70)
        .map(|_| tokio::spawn(scheduler.acquire(ticket("flood", 1), None)))
        .collect();
    until_counts(&probe, (70, 1)).await;
    let other = granted(scheduler.acquire(ticket("other", 9), None)).await;
    for task in &flood {
        task.abort();
    }
    drop((running, other));
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_in_one_pool_never_wakes_a_waiter_of_another() {
    let redis = Redis::start().await;
    let prefix = unique("pools");
    let (scheduler, default, big) =
        holding_both_pools(&redis, &prefix, Duration::from_secs(5)).await;
    // The same agent at the same priority waits in both pools.
    let waits_default = tokio::spawn(scheduler.acquire(ticket("a", 5), None));
    let waits_big = tokio::spawn(scheduler.acquire(ticket("a", 5), Some("big")));
    let probe = state(&redis, &prefix, "probe");
    until_counts(&probe, (1, 1)).await;
    corral_e2e::eventually("both wait", || {
        scheduler.snapshot_for(Some("big")).queued_total() == 1
    })
    .await;
    drop(big);
    let big = joined(waits_big).await;
    // The default pool still has its ticket queued and its permit held.
    assert_eq!(counts(&probe).await, (1, 1));
    assert!(
        !waits_default.is_finished(),
        "the default pool's permit is still held: its waiter waits"
    );
    drop(default);
    let default = joined(waits_default).await;
    drop((big, default));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_grants_another_replicas_ticket_leaves_its_permit_counted() {
    let redis = Redis::start().await;
    let prefix = unique("others");
    let (one, two) = two_replicas(&redis, &prefix, &config(1));
    let probe = state(&redis, &prefix, "probe");
    let held = granted(one.acquire(ticket("a", 5), None)).await;
    let waiting = tokio::spawn(two.acquire(ticket("b", 5), None));
    until_counts(&probe, (1, 1)).await;
    // Replica one's script grants replica two's ticket.
    one.set_capacity(2);
    let granted = joined(waiting).await;
    until_counts(&probe, (0, 2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counts(&probe).await, (0, 2), "both permits still counted");
    let third = tokio::spawn(one.acquire(ticket("c", 5), None));
    until_counts(&probe, (1, 2)).await;
    assert!(!third.is_finished(), "a third waits: the capacity is 2");
    drop((held, granted));
    let third = joined(third).await;
    drop(third);
    until_counts(&probe, (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_every_pools_running_permits_count_again() {
    let redis = Redis::start().await;
    let prefix = unique("flushed");
    let (_scheduler, default, big) =
        holding_both_pools(&redis, &prefix, Duration::from_secs(1)).await;
    let probe = state(&redis, &prefix, "probe");
    let _: () = probe.query(&redis::cmd("FLUSHALL")).await.unwrap();
    let leases = |pool: &'static str| {
        let probe = probe.clone();
        async move {
            let mut zcard = redis::cmd("ZCARD");
            zcard.arg(probe.key(&format!("prio:{pool}:leases")));
            probe.query::<usize>(&zcard).await.unwrap()
        }
    };
    corral_e2e::eventually_async("both pools count their running permit again", || async {
        leases("*").await == 1 && leases("big:latest").await == 1
    })
    .await;
    drop((default, big));
}
