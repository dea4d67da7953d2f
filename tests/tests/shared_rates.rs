//! GCRA quotas and token budgets in Redis: one quota for stores on two
//! "replicas", token charges corrected across them, and a store that
//! decides alone while Redis is away.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use corral_core::RedisState;
use corral_e2e::Redis;
use corral_ratelimit::{Budget, Check, Checked, Quota, RateStore, RedisRates, Verdict};

fn store(url: &str, prefix: &str, replica: &str) -> RedisRates {
    RedisRates::new(RedisState::new(url, prefix, replica, Duration::from_millis(300)).unwrap())
}

/// Replicas `one` and `two` of the rates in `redis`, under a prefix of
/// the `test`'s own.
fn two_stores(redis: &Redis, test: &str) -> (RedisRates, RedisRates) {
    let prefix = format!("corral-rates-{}-{test}:", std::process::id());
    (
        store(&redis.url, &prefix, "one"),
        store(&redis.url, &prefix, "two"),
    )
}

async fn verdict(store: &RedisRates, checks: &[Check]) -> Verdict {
    match store.check(checks) {
        Checked::Now(verdict) => verdict,
        Checked::Later(verdict) => verdict.await,
    }
}

fn check(key: &str, quota: Quota, cost: u64) -> Check {
    Check {
        key: key.into(),
        limit: quota.into(),
        cost,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_quota_and_a_set_of_checks_is_charged_whole_or_not_at_all() {
    let redis = Redis::start().await;
    let (one, two) = two_stores(&redis, "share");
    let quota = Quota::per_minute(4);
    let mut allowed = 0;
    for n in 0..10 {
        let replica = if n % 2 == 0 { &one } else { &two };
        if let Verdict::Allowed(standing) =
            verdict(replica, &[check("agent:a:requests", quota, 1)]).await
        {
            allowed += 1;
            assert_eq!(
                standing[0].remaining,
                4 - allowed,
                "what is left, as Redis counts it"
            );
        }
    }
    assert_eq!(allowed, 4, "four a minute, across both replicas");
    let Verdict::Denied { index, retry_after } =
        verdict(&one, &[check("agent:a:requests", quota, 1)]).await
    else {
        panic!("the quota is spent");
    };
    assert_eq!(index, 0);
    assert!(retry_after > Duration::from_secs(1) && retry_after <= Duration::from_secs(15));
    // A class quota that refuses leaves the agent's uncharged.
    let class = Quota::per_minute(1);
    assert!(matches!(
        verdict(
            &two,
            &[
                check("agent:b:requests", quota, 1),
                check("class:c:requests", class, 1)
            ]
        )
        .await,
        Verdict::Allowed(_)
    ));
    let refused = verdict(
        &two,
        &[
            check("agent:b:requests", quota, 1),
            check("class:c:requests", class, 1),
        ],
    )
    .await;
    assert!(matches!(refused, Verdict::Denied { index: 1, .. }));
    let Verdict::Allowed(standing) = verdict(&one, &[check("agent:b:requests", quota, 1)]).await
    else {
        panic!("agent b has spent 1 of 4");
    };
    assert_eq!(standing[0].remaining, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_charge_corrected_on_one_replica_frees_the_quota_on_the_other() {
    let redis = Redis::start().await;
    let (one, two) = two_stores(&redis, "adjust");
    let tokens = Quota::per_minute(1000);
    assert!(matches!(
        verdict(&one, &[check("agent:t:tokens", tokens, 900)]).await,
        Verdict::Allowed(_)
    ));
    assert!(matches!(
        verdict(&two, &[check("agent:t:tokens", tokens, 300)]).await,
        Verdict::Denied { .. }
    ));
    // Only 100 were generated: 800 come back.
    one.adjust("agent:t:tokens", &tokens.into(), -800);
    corral_e2e::eventually_async("the correction reaches Redis", || async {
        matches!(
            verdict(&two, &[check("agent:probe:tokens", tokens, 1)]).await,
            Verdict::Allowed(_)
        ) && matches!(
            verdict(&two, &[check("agent:t:tokens", tokens, 300)]).await,
            Verdict::Allowed(_)
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_each_replica_keeps_the_quota_alone() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let alone = store(&format!("redis://127.0.0.1:{port}"), "corral:", "alone");
    let quota = Quota::per_minute(2);
    let mut allowed = 0;
    for _ in 0..5 {
        if matches!(
            verdict(&alone, &[check("agent:a:requests", quota, 1)]).await,
            Verdict::Allowed(_)
        ) {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 2,
        "the local store holds the quota while Redis is away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_budget_is_one_budget_across_replicas_with_its_rate_in_one_script() {
    let redis = Redis::start().await;
    let (one, two) = two_stores(&redis, "budget");
    let day = |shadow| Budget {
        limit: 1000,
        resets_in: Duration::from_secs(3600),
        shadow,
    };
    let spend = |key: &str, cost, shadow| Check {
        key: key.into(),
        limit: day(shadow).into(),
        cost,
    };
    let key = "agent:t:agent-tokens-day:2026-12-06";
    let Verdict::Allowed(standing) = verdict(&one, &[spend(key, 700, false)]).await else {
        panic!("a fresh budget refused")
    };
    assert_eq!(standing[0].remaining, 300);
    // The other replica sees the spending; a rate in the same set is not
    // charged when the budget refuses.
    let rate = Quota::per_minute(1);
    let refused = verdict(
        &two,
        &[check("agent:t:requests", rate, 1), spend(key, 400, false)],
    )
    .await;
    assert!(
        matches!(refused, Verdict::Denied { index: 1, retry_after } if retry_after == Duration::from_secs(3600)),
        "{refused:?}"
    );
    assert!(matches!(
        verdict(&two, &[check("agent:t:requests", rate, 1)]).await,
        Verdict::Allowed(_)
    ));
    // Only 100 generated of the 700: 600 come back, on the other replica.
    one.adjust(key, &day(false).into(), -600);
    corral_e2e::eventually_async("the correction reaches Redis", || async {
        matches!(
            verdict(&two, &[spend(key, 800, false)]).await,
            Verdict::Allowed(_)
        )
    })
    .await;
    // Spent: a shadow check passes and says it went over.
    let Verdict::Allowed(standing) = verdict(&one, &[spend(key, 500, true)]).await else {
        panic!("a shadow budget refused")
    };
    assert!(standing[0].over, "{standing:?}");
    assert_eq!(standing[0].remaining, 0);
    // Read without charging, from the other replica.
    assert_eq!(
        two.spent(&[key.to_string(), "agent:t:never".into()]).await,
        [1400, 0]
    );
}
