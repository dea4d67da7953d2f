//! A fleet shared by replicas through a real `redis-server`: each
//! "replica" is a `Fleet` with its own Redis connection and id. Permits
//! held on one are not granted on another, a model loaded by one is not
//! evicted by another while busy, a drain one decides holds for all, a
//! replica that dies gives its permits back within the lease, and while
//! Redis is away each places alone with its share.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral_core::RedisState;
use corral_fleet::{Fleet, Route, UpstreamSpec, Urgency, Want};
use corral_test_redis::Redis;
use tokio::time::Instant;

const TTL: Duration = Duration::from_millis(600);

/// A key prefix no other test uses (several may share `REDIS_URL`).
fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-fleet-{name}-{}-{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn replica(redis: &Redis, prefix: &str, name: &str, specs: &[UpstreamSpec]) -> Arc<Fleet> {
    let state = RedisState::new(&redis.url, prefix, name, Duration::from_millis(300)).unwrap();
    let fleet = Fleet::new(specs.to_vec());
    fleet.share(state, TTL).unwrap();
    fleet
}

fn urgency(level: usize) -> Urgency {
    Urgency {
        level,
        since: Instant::now(),
    }
}

fn want(level: usize) -> Want {
    Want {
        urgency: urgency(level),
        waiting: 1,
        session: None,
        hold: None,
    }
}

/// A request placed by `fleet`'s own view, and its claim in Redis
/// running in the background.
fn claim(fleet: &Arc<Fleet>, model: &str) -> (Arc<Route>, tokio::task::JoinHandle<()>) {
    let route = placed(fleet, model);
    let task = claiming(&route);
    (route, task)
}

/// A request placed by `fleet`'s own view, not claimed yet.
fn placed(fleet: &Arc<Fleet>, model: &str) -> Arc<Route> {
    Route::new(fleet.clone(), fleet.place(model, &want(4)).unwrap())
}

fn claiming(route: &Arc<Route>) -> tokio::task::JoinHandle<()> {
    let route = route.clone();
    tokio::spawn(async move { route.claimed(want(4)).await })
}

/// Waits (at most 10 s: a bound on failure, not a measure) until `what`.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn finished(task: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("in time")
        .unwrap();
}

fn running(fleet: &Fleet, model: &str) -> usize {
    fleet.status()[0]
        .models
        .iter()
        .find(|m| &*m.model == model)
        .map_or(0, |m| m.in_flight)
}

fn give_back(route: &Route) {
    let fleet = route.fleet().clone();
    fleet.free(route.take().unwrap());
    fleet.kick();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_held_on_one_replica_is_granted_on_another_only_once_given_back() {
    let redis = Redis::start().await;
    let prefix = unique("permit");
    let specs = [UpstreamSpec::new("gpu", 1)];
    let (one, two) = (
        replica(&redis, &prefix, "one", &specs),
        replica(&redis, &prefix, "two", &specs),
    );
    // Replica two places by its own view, and replica one too, which
    // claims first: Redis refuses replica two's claim, and its request
    // waits, its view now counting replica one's permit.
    let second = placed(&two, "llama3:latest");
    let (first, claimed) = claim(&one, "llama3:latest");
    finished(claimed).await;
    let waiting = claiming(&second);
    until("replica two sees the permit held", || {
        second.upstream().is_none() && running(&two, "llama3:latest") == 1
    })
    .await;
    assert!(!waiting.is_finished());
    give_back(&first);
    finished(waiting).await;
    assert_eq!(second.upstream(), Some(0));
    // Replica one heard of it: its own view places nothing more.
    until("replica one sees replica two's permit", || {
        running(&one, "llama3:latest") == 1
    })
    .await;
    assert!(one.place("llama3:latest", &want(4)).is_none());
    give_back(&second);
    until("replica one hears it is free", || {
        running(&one, "llama3:latest") == 0
    })
    .await;
    let (third, claimed) = claim(&one, "llama3:latest");
    finished(claimed).await;
    give_back(&third);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_model_is_not_evicted_by_another_replica_and_its_drain_holds_for_all() {
    let redis = Redis::start().await;
    let prefix = unique("residency");
    // One server that holds one model, two requests of it at once.
    let specs = [UpstreamSpec::new("gpu", 2).with_max_loaded(Some(1))];
    let (one, two) = (
        replica(&redis, &prefix, "one", &specs),
        replica(&redis, &prefix, "two", &specs),
    );
    // Each places by its own view; replica one claims first.
    let beta = placed(&two, "beta:latest");
    let (alpha, claimed) = claim(&one, "alpha:latest");
    finished(claimed).await;
    let alpha_again = placed(&one, "alpha:latest");
    // Replica two wants another model: refused (alpha is busy there), it
    // drains the server for it.
    let beta_waits = claiming(&beta);
    // Both know it: replica one from Redis.
    until("the server drained for beta", || {
        one.status()[0].switching_to.as_deref() == Some("beta:latest")
            && two.status()[0].switching_to.as_deref() == Some("beta:latest")
    })
    .await;
    assert!(beta.upstream().is_none());
    // Replica one's next alpha request would fit (2 permits) but the
    // drain holds: it waits too.
    let alpha_waits = claiming(&alpha_again);
    until("replica one's second alpha refused", || {
        alpha_again.upstream().is_none()
    })
    .await;
    assert!(!beta_waits.is_finished() && !alpha_waits.is_finished());
    // Alpha's last request ends: beta is loaded in its place.
    give_back(&alpha);
    finished(beta_waits).await;
    assert_eq!(beta.upstream(), Some(0));
    let status = two.status();
    let models: Vec<&str> = status[0].models.iter().map(|m| &*m.model).collect();
    assert_eq!(models, ["beta:latest"], "alpha evicted, beta loaded");
    assert!(!alpha_waits.is_finished(), "alpha waits while beta runs");
    give_back(&beta);
    finished(alpha_waits).await;
    give_back(&alpha_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_gives_its_permits_back_within_the_lease() {
    let redis = Redis::start().await;
    let prefix = unique("dies");
    let specs = [UpstreamSpec::new("gpu", 1)];
    let one = replica(&redis, &prefix, "one", &specs);
    let two = replica(&redis, &prefix, "two", &specs);
    let second = placed(&two, "llama3:latest");
    let (held, claimed) = claim(&one, "llama3:latest");
    finished(claimed).await;
    let waiting = claiming(&second);
    until("refused", || second.upstream().is_none()).await;
    // Replica one is gone without giving anything back.
    drop(held);
    drop(one);
    let lost = Instant::now();
    finished(waiting).await;
    assert!(lost.elapsed() < TTL * 5, "{:?}", lost.elapsed());
    give_back(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_away_each_replica_places_alone_with_its_share_and_counts_again_after() {
    let mut redis = Redis::start().await;
    if !redis.owned() {
        return; // a shared server is not this test's to stop
    }
    let prefix = unique("away");
    let specs = [UpstreamSpec::new("gpu", 2)];
    let one = replica(&redis, &prefix, "one", &specs);
    let two = replica(&redis, &prefix, "two", &specs);
    // Replica two holds both permits; replica one knows.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (route, claimed) = claim(&two, "m");
        finished(claimed).await;
        held.push(route);
    }
    until("replica one sees both held", || running(&one, "m") == 2).await;
    assert!(one.place("m", &want(4)).is_none());
    redis.stop();
    // What replica two held is not known any more: replica one places
    // alone, with its share (2 / 2 replicas).
    let mut mine = None;
    until("replica one places alone", || {
        mine = one.place("m", &want(4));
        mine.is_some()
    })
    .await;
    let mine = Route::new(one.clone(), mine.unwrap());
    finished(claiming(&mine)).await;
    assert!(one.place("m", &want(4)).is_none(), "its share is one");
    // Redis back, empty: every replica's permits count again.
    redis.restart().await;
    until("both replicas' permits counted again", || {
        running(&one, "m") == 3 && running(&two, "m") == 3
    })
    .await;
    for route in held {
        give_back(&route);
    }
    until("replica one hears they are back", || {
        running(&one, "m") == 1
    })
    .await;
    give_back(&mine);
}
