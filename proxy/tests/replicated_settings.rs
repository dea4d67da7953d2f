//! Settings made on one of three `corral` processes sharing one Redis
//! (`[state] backend = "redis"`) reach the others: a forced degradation
//! level, an agent's priority and the capacity, an open breaker; and an
//! answer one replica generated is served by the others from the shared
//! cache.
//!
//! Each test starts its own `redis-server` on a free port (or uses
//! `REDIS_URL` with a key prefix of its own).

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use corral_e2e::{get, metric_sum, post, request_with, send, upstream_until, Reply};
use support::config_file;
use support::replica::{ask, redis_cli, Fleet, Replica};
use tokio::task::JoinHandle;

const CACHE: &str = "[[layers]]\nkind = \"cache\"\n";

/// Sends `body` from `agent` through `replica`, slowed by the mock
/// `fault`, and waits until the upstream generates it: its answer, to
/// come.
async fn generating(
    fleet: &Fleet,
    replica: &Replica,
    agent: &str,
    body: &str,
    fault: &str,
) -> JoinHandle<Reply> {
    let asked = tokio::spawn(send(ask(
        &replica.url,
        agent,
        body,
        &[("x-mock-fault", fault)],
    )));
    upstream_until(&fleet.upstream, "the first request is generating", |s| {
        s.in_flight == 1
    })
    .await;
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_forced_on_one_replica_is_in_force_on_the_others() {
    let fleet = Fleet::start("degrade", "[[layers]]\nkind = \"degrade\"\n").await;
    let [a, b, c] = fleet.three().await;
    // The followers listen before the change.
    fleet.listening("system:degradation:level", 3).await;
    assert_eq!(a.degrade(r#"{"level": "L2"}"#).await["forced"], "L2");
    // Pub/sub carries it: how fast is the bus's business (and a loaded
    // machine's), not a bound this test can hold.
    for other in [&b, &c] {
        corral_e2e::eventually_async("the forced level reaches the other replicas", || async {
            other.degrade("").await["forced"] == "L2"
        })
        .await;
    }
    // A replica that starts later reads the setting before it listens.
    let late = Replica::start("replica-late", &fleet.text).await;
    corral_e2e::eventually_async("the late replica reads the forced level", || async {
        late.degrade("").await["forced"] == "L2"
    })
    .await;
    // Released on another replica: released everywhere.
    b.degrade(r#"{"level": null}"#).await;
    corral_e2e::eventually_async("the release reaches the first replica", || async {
        a.degrade("").await["forced"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_one_replica_generated_is_served_by_the_others_from_the_shared_cache() {
    let fleet = Fleet::start("cache", CACHE).await;
    let [a, b, c] = fleet.three().await;
    let same = |replica: &Replica| {
        send(ask(
            &replica.url,
            "sonnet-0",
            r#"{"model":"llama3","prompt":"the same question","stream":false,"options":{"temperature":0}}"#,
            &[],
        ))
    };
    let first = same(&a).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-corral-cache"), Some("miss"));
    // The entry is written to Redis as the answer ends, a moment after
    // the client may have read it.
    corral_e2e::eventually("the answer is in Redis", || {
        let entries = format!("{}cache:*", fleet.keys);
        // The entry itself, not the coalescing's flight marker
        // (`cache:flight:…`), there while the answer is generated.
        redis_cli(&fleet.redis.url, &["--scan", "--pattern", &entries])
            .lines()
            .any(|key| !key.contains("cache:flight:") && !key.ends_with("cache:done"))
    })
    .await;
    assert_eq!(same(&b).await.header("x-corral-cache"), Some("hit"));
    let third = same(&c).await;
    assert_eq!(third.header("x-corral-cache"), Some("hit"));
    assert_eq!(third.json()["response"], first.json()["response"]);
    assert_eq!(
        fleet.upstream.stats().by_path.get("/api/generate").copied(),
        Some(1),
        "generated once for three replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_priority_and_the_capacity_set_on_one_replica_take_effect_on_all() {
    let fleet = Fleet::start("settings", "").await;
    let [a, b, c] = fleet.three().await;
    fleet.listening("agent:priority:change", 3).await;
    let set = post(
        &format!("{}/corral/priority", a.url),
        r#"{"agent": "batch-7", "priority": 1}"#,
    )
    .await;
    assert_eq!(set.status, 200);
    assert_eq!(set.json()["agents"]["batch-7"], 1);
    for other in [&b, &c] {
        corral_e2e::eventually_async("the priority reaches every replica", || async {
            get(&format!("{}/corral/priority", other.url)).await.json()["agents"]["batch-7"] == 1
        })
        .await;
    }
    // Its requests on another replica run at priority 1, whatever the
    // class (batch, 9) and the header say.
    let promoted = ask(
        &c.url,
        "batch-7",
        r#"{"model":"llama3","prompt":"promoted","stream":false}"#,
        &[("x-priority", "9"), ("x-request-id", "promoted-1")],
    );
    assert_eq!(send(promoted).await.status, 200);
    corral_e2e::eventually_async("the request was received at priority 1", || async {
        b.events("agent=batch-7&kind=received")
            .await
            .iter()
            .any(|e| e["request_id"] == "promoted-1" && e["data"]["priority"] == 1)
    })
    .await;

    // The capacity lives in Redis: set on one replica, every replica's
    // pool has it.
    let set = post(&format!("{}/corral/capacity", b.url), r#"{"capacity": 2}"#).await;
    assert_eq!(set.status, 200, "{:?}", set.body);
    for replica in [&a, &c] {
        corral_e2e::eventually_async("the capacity reaches every replica", || async {
            // A request runs a grant, which reads the capacity from Redis.
            replica.generate("sonnet-1", 5, "capacity").await;
            get(&format!("{}/corral/capacity", replica.url))
                .await
                .json()["pools"][0]["capacity"]
                == 2
        })
        .await;
    }
    let refused = post(&format!("{}/corral/capacity", a.url), r#"{"capacity": 0}"#).await;
    assert_eq!(refused.status, 400);
    assert!(refused.error().contains("capacity"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_one_replica_opened_fails_fast_on_the_others_too() {
    let breaker = "[[layers]]\nkind = \"breaker\"\nconsecutive_failures = 3\nopen_for = \"30s\"\n";
    let fleet = Fleet::start("breaker", breaker).await;
    let [a, b, c] = fleet.three().await;
    fleet.listening("ollama:breaker:state", 3).await;
    for n in 0..3 {
        let body = format!(r#"{{"model":"llama3","prompt":"fail {n}","stream":false}}"#);
        let url = format!("{}/api/generate", a.url);
        let failing = request_with("POST", &url, body, &[("x-mock-fault", "status=500")]);
        assert_eq!(send(failing).await.status, 500);
    }
    let upstream = &fleet.upstream;
    let before = upstream.stats().requests;
    for other in [&b, &c] {
        corral_e2e::eventually_async("the other replicas' breakers open", || async {
            metric_sum(
                &other.url,
                "corral_circuit_breaker_state{breaker=\"upstream\"}",
            )
            .await
                == 2.0
        })
        .await;
        let reply = other.generate("sonnet-2", 5, "while it is open").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("x-corral-reason"), Some("breaker_open"));
    }
    assert_eq!(
        upstream.stats().requests,
        before,
        "no replica sent the upstream anything while the breaker was open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_on_three_replicas_are_generated_once() {
    let fleet = Fleet::start("coalesce", CACHE).await;
    let (replicas, upstream) = (fleet.three().await, &fleet.upstream);
    let body = r#"{"model":"llama3","prompt":"everyone asks this","stream":false,"options":{"temperature":0}}"#;
    // A second of generation: long enough for the others to ask meanwhile.
    let slow = [("x-mock-fault", "tokens=20, tps=20")];
    let first = generating(&fleet, &replicas[0], "sonnet-0", body, slow[0].1).await;
    let others: Vec<_> = replicas[1..]
        .iter()
        .map(|r| tokio::spawn(send(ask(&r.url, "sonnet-1", body, &slow))))
        .collect();
    let first = corral_e2e::within(first).await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-corral-cache"), Some("miss"));
    for other in others {
        let reply = corral_e2e::within(other).await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.header("x-corral-cache"), Some("coalesced"));
        assert_eq!(reply.json()["response"], first.json()["response"]);
    }
    assert_eq!(
        upstream.stats().by_path.get("/api/generate").copied(),
        Some(1),
        "one generation for three replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_replica_generating_for_the_others_loses_its_client_they_generate_it_themselves() {
    let fleet = Fleet::start("coalesce-gone", CACHE).await;
    let [a, b, _c] = fleet.three().await;
    let upstream = &fleet.upstream;
    let body = r#"{"model":"llama3","prompt":"asked and abandoned","stream":false,"options":{"temperature":0}}"#;
    let slow = [("x-mock-fault", "tokens=40, tps=20")];
    let leaving = generating(&fleet, &a, "sonnet-0", body, slow[0].1).await;
    let waiting = tokio::spawn(send(ask(&b.url, "sonnet-1", body, &slow)));
    // The second replica listens for the first one's answer: it waits.
    fleet.listening("cache:done", 1).await;
    assert!(!waiting.is_finished(), "the second waits for the first");
    // The first client goes away: its replica stops generating, and the
    // one waiting is told to go on.
    leaving.abort();
    let reply = corral_e2e::within(waiting).await.unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-corral-cache"), Some("miss"));
    assert_eq!(
        upstream.stats().cancelled,
        1,
        "the first generation was stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_request_does_not_wait_for_a_batch_one_generating_on_another_replica() {
    let fleet = Fleet::start("coalesce-urgent", CACHE).await;
    let [a, b, _c] = fleet.three().await;
    let body = r#"{"model":"llama3","prompt":"the same, at two priorities","stream":false,"options":{"temperature":0}}"#;
    let batch = generating(&fleet, &a, "batch-0", body, "tokens=60, tps=20").await;
    // Priority 1 on another replica: generated for it, not waited for.
    let urgent = send(ask(
        &b.url,
        "system-0",
        body,
        &[("x-mock-fault", "tokens=2, tps=100")],
    ))
    .await;
    assert_eq!(urgent.status, 200);
    assert_eq!(urgent.header("x-corral-cache"), Some("miss"));
    assert!(
        !batch.is_finished(),
        "the urgent answer came before the batch one"
    );
    batch.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_away_from_redis_during_a_reload_reloads_when_it_is_back() {
    let fleet = Fleet::start("reload-away", "").await;
    // Replica b reaches Redis through a relay, cut at first: it starts
    // alone.
    let redis_at = host_and_port(&fleet.redis.url).to_string();
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_at = relay.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(true));
    tokio::spawn(relay_to(relay, redis_at.clone(), cut.clone()));
    let b_text = fleet.text.replace(
        &format!("redis_url = \"{}\"", fleet.redis.url),
        &format!(
            "redis_url = \"{}\"",
            fleet.redis.url.replacen(&redis_at, &relay_at, 1)
        ),
    );
    assert_ne!(b_text, fleet.text);
    let a = Replica::start("reload-away-a", &fleet.text).await;
    let b = Replica::start("reload-away-b", &b_text).await;
    corral_e2e::eventually_async("b serves without Redis", || async {
        b.backend_up().await == 0.0
    })
    .await;
    // The capacity goes from 4 to 6 in both files; a announces the reload.
    let raised = |text: &str| text.replace("capacity = 4", "capacity = 6");
    config_file("reload-away-a.toml", &raised(&fleet.text));
    config_file("reload-away-b.toml", &raised(&b_text));
    let reload = post(&format!("{}/corral/reload", a.url), "").await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let capacity = |replica: &Replica| {
        let url = format!("{}/corral/config", replica.url);
        async move { get(&url).await.json()["upstream"]["capacity"].clone() }
    };
    assert_eq!(capacity(&a).await, 6);
    // b missed it: the announcement went by while it was away.
    assert_eq!(capacity(&b).await, 4);
    // Back with Redis, b reads the kept reload and its own file again.
    cut.store(false, Ordering::SeqCst);
    corral_e2e::eventually_async("b shares Redis again", || async {
        b.backend_up().await == 1.0
    })
    .await;
    corral_e2e::eventually_async("b reloaded on its return", || async {
        capacity(&b).await == 6
    })
    .await;
}

/// Relays each connection `listener` accepts to `to`, or closes it at
/// once while `cut` holds.
async fn relay_to(listener: tokio::net::TcpListener, to: String, cut: Arc<AtomicBool>) {
    while let Ok((mut client, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        let to = to.clone();
        tokio::spawn(async move {
            if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

/// The `host:port` of a `redis://[user:password@]host:port[/db]` URL.
fn host_and_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}
