//! Quotas with time paused: GCRA's arithmetic, atomic sets of checks,
//! token corrections, the layer's 429 and its headers, and a property:
//! no window ever admits more than the burst plus the rate.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

mod common;

use bytes::Bytes;
use common::{answered, chat, limited, passed, refused, request};
use corral_core::{Endpoint, Refusal};
use corral_ratelimit::{Check, MemoryRates, Quota, RateLimitConfig, RateLimitLayer, Verdict};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use proptest::prelude::*;

/// A check of `cost` against `quota` under `key`.
fn check(key: &str, quota: Quota, cost: u64) -> Check {
    Check {
        key: key.into(),
        limit: quota.into(),
        cost,
    }
}

/// Whether the verdict let the request through.
fn allowed(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Allowed(_))
}

#[tokio::test(start_paused = true)]
async fn ten_a_minute_allows_ten_at_once_then_one_every_six_seconds() {
    let store = MemoryRates::new();
    let quota = Quota::per_minute(10);
    for i in 0..10 {
        let verdict = store.decide(&[check("a", quota, 1)]);
        let Verdict::Allowed(standing) = verdict else {
            panic!("request {i} refused")
        };
        assert_eq!(standing[0].remaining, 9 - i);
    }
    let Verdict::Denied { retry_after, .. } = store.decide(&[check("a", quota, 1)]) else {
        panic!("the eleventh passed")
    };
    assert_eq!(retry_after, Duration::from_secs(6));
    tokio::time::advance(Duration::from_millis(5_999)).await;
    assert!(!allowed(&store.decide(&[check("a", quota, 1)])));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(allowed(&store.decide(&[check("a", quota, 1)])));
    assert!(
        allowed(&store.decide(&[check("b", quota, 1)])),
        "another key has its own quota"
    );
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_one_spaces_requests_evenly() {
    let store = MemoryRates::new();
    let quota = Quota {
        limit: 60,
        period: Duration::from_secs(60),
        burst: 1,
    };
    assert!(allowed(&store.decide(&[check("a", quota, 1)])));
    assert!(!allowed(&store.decide(&[check("a", quota, 1)])));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(allowed(&store.decide(&[check("a", quota, 1)])));
}

#[tokio::test(start_paused = true)]
async fn a_set_of_checks_is_charged_all_or_nothing() {
    let store = MemoryRates::new();
    let agent = Quota::per_minute(10);
    let class = Quota::per_minute(1);
    assert!(allowed(
        &store.decide(&[check("agent", agent, 1), check("class", class, 1)])
    ));
    let verdict = store.decide(&[check("agent", agent, 1), check("class", class, 1)]);
    assert!(
        matches!(verdict, Verdict::Denied { index: 1, .. }),
        "{verdict:?}"
    );
    // The refused request charged nothing to the agent: nine are left.
    let Verdict::Allowed(standing) = store.decide(&[check("agent", agent, 1)]) else {
        panic!()
    };
    assert_eq!(standing[0].remaining, 8);
}

#[tokio::test(start_paused = true)]
async fn corrections_give_back_what_was_not_used() {
    let store = MemoryRates::new();
    let tokens = Quota::per_minute(1000);
    assert!(allowed(&store.decide(&[check("t", tokens, 800)])));
    assert!(
        !allowed(&store.decide(&[check("t", tokens, 300)])),
        "800 charged up front"
    );
    store.shift("t", &tokens, -700); // only 100 were generated
    assert!(allowed(&store.decide(&[check("t", tokens, 300)])));
}

#[tokio::test(start_paused = true)]
async fn over_quota_is_a_429_with_retry_after_and_the_ietf_headers() {
    let (service, mut handle) = limited("[classes.opus]\nrequests_per_minute = 2");
    for remaining in [1, 0] {
        let response = passed(&service, &mut handle, chat("planner", "opus", None)).await;
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"agent-requests\";q=2;w=60"
        );
        assert_eq!(
            response.headers()["ratelimit"].to_str().unwrap(),
            format!(
                "\"agent-requests\";r={remaining};t={}",
                30 * (2 - remaining)
            )
        );
    }
    let limited = refused(&service, chat("planner", "opus", None)).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(Refusal::reason(&limited), "rate_limited");
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(30)));
    assert!(
        limited.to_string().contains("2 requests a minute"),
        "{limited}"
    );
    let headers: Vec<(String, String)> = limited
        .headers()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    assert!(
        headers.contains(&("ratelimit".into(), "\"agent-requests\";r=0;t=30".into())),
        "{headers:?}"
    );

    // Another agent of the class has its own quota; another class none.
    passed(&service, &mut handle, chat("writer", "opus", None)).await;
    let free = passed(&service, &mut handle, chat("x", "batch", None)).await;
    assert!(!free.headers().contains_key("ratelimit"));
}

#[tokio::test(start_paused = true)]
async fn token_quotas_are_corrected_from_what_the_answer_generated() {
    let (service, mut handle) = limited("[classes.opus]\ntokens_per_minute = 1000");
    let (mut tx, body) = Channel::new(2);
    let response = answered(&service, &mut handle, chat("a", "opus", Some(900)), body).await;
    let mut body = response.into_body();

    // 900 charged up front: a second request for 200 does not fit yet.
    let limited = refused(&service, chat("a", "opus", Some(200))).await;
    assert_eq!(limited.policy(), "agent-tokens");

    tx.send_data(Bytes::from_static(b"{\"done\":true,\"eval_count\":50}\n"))
        .await
        .unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    // Only 50 were generated: the 200 fit now.
    passed(&service, &mut handle, chat("a", "opus", Some(200))).await;
}

#[tokio::test(start_paused = true)]
async fn metadata_reads_are_never_limited() {
    let (service, mut handle) = limited("[classes.opus]\nrequests_per_minute = 1");
    for _ in 0..3 {
        passed(
            &service,
            &mut handle,
            request(Endpoint::Tags, "a", "opus", None),
        )
        .await;
    }
}

#[test]
fn a_zero_limit_is_refused_with_its_key() {
    let config: RateLimitConfig =
        toml::from_str("[classes.opus]\nrequests_per_minute = 0").unwrap();
    assert_eq!(
        RateLimitLayer::new(&config).unwrap_err().key(),
        "classes.opus.requests_per_minute"
    );
}

proptest! {
    #[test]
    fn no_window_admits_more_than_the_burst_plus_the_rate(
        limit in 1u64..40,
        burst_share in 1u64..=100,
        gaps_ms in proptest::collection::vec(0u64..4_000, 1..200),
    ) {
        let burst = (limit * burst_share / 100).max(1);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async move {
            let store = MemoryRates::new();
            let quota = Quota { limit, period: Duration::from_secs(60), burst };
            let interval = Duration::from_secs(60).as_secs_f64() / limit as f64;
            let start = tokio::time::Instant::now();
            let mut admitted: Vec<f64> = Vec::new();
            for gap in gaps_ms {
                tokio::time::advance(Duration::from_millis(gap)).await;
                let now = start.elapsed().as_secs_f64();
                let idle_long_enough = admitted.last().is_none_or(|last| now - last >= interval * burst as f64);
                match store.decide(&[check("k", quota, 1)]) {
                    Verdict::Allowed(_) => admitted.push(now),
                    Verdict::Denied { retry_after, .. } => {
                        assert!(!idle_long_enough, "refused after a full refill");
                        assert!(retry_after <= Duration::from_secs_f64(interval * burst as f64 + 1e-6));
                    }
                }
            }
            for (i, first) in admitted.iter().enumerate() {
                for (j, last) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as f64;
                    // A tolerance for the float division: one admitted
                    // exactly an interval later must count (2.4 / 2.4
                    // may come out a hair under 1).
                    let bound = burst as f64 + ((last - first) / interval + 1e-9).floor();
                    assert!(count <= bound + 1e-9, "{count} admitted in {:.3} s, bound {bound}", last - first);
                }
            }
        });
    }
}
