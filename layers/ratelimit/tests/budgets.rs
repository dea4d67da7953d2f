//! Day and month token budgets with time paused: charged up front and
//! corrected, refused with the time they are whole again, a new window at
//! midnight UTC and on the first, shadow mode, class budgets.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use common::{answered, chat, limited_on, passed, refused};
use corral_core::Refusal;
use corral_ratelimit::{Budget, Calendar, Check, MemoryRates, Verdict};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;

/// 2026-12-06 17:00:00 UTC.
const DEC_6_17H: u64 = 1_796_576_400;
const HOUR: Duration = Duration::from_secs(3600);

fn calendar() -> Calendar {
    Calendar::following_tokio(Duration::from_secs(DEC_6_17H))
}

#[tokio::test(start_paused = true)]
async fn a_spent_day_budget_is_a_429_until_midnight_utc() {
    let (service, mut handle) = limited_on("[classes.batch]\ntokens_per_day = 1000", calendar());
    for remaining in [600, 200] {
        let answer = passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
        assert_eq!(
            answer.headers()["ratelimit"].to_str().unwrap(),
            format!("\"agent-tokens-day\";r={remaining};t={}", 7 * 3600)
        );
        assert_eq!(
            answer.headers()["ratelimit-policy"],
            "\"agent-tokens-day\";q=1000;w=86400"
        );
    }
    let spent = refused(&service, chat("a", "batch", Some(400))).await;
    assert_eq!(spent.status(), 429);
    assert_eq!(Refusal::reason(&spent), "budget_spent");
    assert_eq!(spent.policy(), "agent-tokens-day");
    assert_eq!(spent.retry_after(), Some(7 * HOUR));
    assert_eq!(
        spent.resets_at(),
        Some(UNIX_EPOCH + Duration::from_secs(DEC_6_17H) + 7 * HOUR)
    );
    assert!(
        spent
            .to_string()
            .contains("1000 tokens a day (UTC); it is whole again at 2026-12-07T00:00:00Z"),
        "{spent}"
    );
    // What is left still serves a request that fits; another agent has
    // its own budget.
    passed(&service, &mut handle, chat("a", "batch", Some(200))).await;
    passed(&service, &mut handle, chat("b", "batch", Some(400))).await;

    tokio::time::advance(7 * HOUR - Duration::from_secs(1)).await;
    refused(&service, chat("a", "batch", Some(1))).await;
    tokio::time::advance(Duration::from_secs(1)).await;
    let answer = passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
    assert_eq!(
        answer.headers()["ratelimit"].to_str().unwrap(),
        format!("\"agent-tokens-day\";r=600;t={}", 24 * 3600),
        "a new day, a whole budget"
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_is_charged_what_the_answer_generated() {
    let (service, mut handle) = limited_on("[classes.batch]\ntokens_per_day = 1000", calendar());
    let (mut tx, body) = Channel::new(2);
    let answer = answered(&service, &mut handle, chat("a", "batch", Some(900)), body).await;
    let mut body = answer.into_body();
    assert_eq!(
        refused(&service, chat("a", "batch", Some(200)))
            .await
            .policy(),
        "agent-tokens-day",
        "900 charged up front"
    );
    tx.send_data(Bytes::from_static(b"{\"done\":true,\"eval_count\":50}\n"))
        .await
        .unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    let answer = passed(&service, &mut handle, chat("a", "batch", Some(200))).await;
    assert!(
        answer.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"agent-tokens-day\";r=750;"),
        "50 generated, 200 charged: {:?}",
        answer.headers()["ratelimit"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_month_budget_is_the_whole_class_and_starts_again_on_the_first() {
    let toml = "[classes.batch]\nclass_tokens_per_month = 1000\ntokens_per_day = 800";
    let (service, mut handle) = limited_on(toml, calendar());
    passed(&service, &mut handle, chat("a", "batch", Some(600))).await;
    let spent = refused(&service, chat("b", "batch", Some(600))).await;
    assert_eq!(
        spent.policy(),
        "class-tokens-month",
        "two agents, one class"
    );
    assert!(
        spent
            .to_string()
            .contains("this agent's class may generate 1000 tokens a month"),
        "{spent}"
    );
    assert_eq!(spent.retry_after(), Some(25 * 24 * HOUR + 7 * HOUR));
    // Refused by the class: nothing charged to b's own day budget.
    let answer = passed(&service, &mut handle, chat("b", "batch", Some(400))).await;
    assert!(
        answer.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"agent-tokens-day\";r=400;"),
        "{:?}",
        answer.headers()["ratelimit"]
    );
    tokio::time::advance(25 * 24 * HOUR + 7 * HOUR).await;
    passed(&service, &mut handle, chat("b", "batch", Some(600))).await;
}

#[tokio::test(start_paused = true)]
async fn a_shadow_budget_reports_and_lets_through() {
    let toml = "budget_mode = \"shadow\"\n[classes.batch]\ntokens_per_day = 500";
    let (service, mut handle) = limited_on(toml, calendar());
    passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
    let over = passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
    assert!(
        over.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"agent-tokens-day\";r=0;"),
        "{:?}",
        over.headers()["ratelimit"]
    );
    // A class may enforce while the layer's default is shadow.
    let toml = "budget_mode = \"shadow\"\n[classes.batch]\ntokens_per_day = 500\nbudget_mode = \"enforce\"";
    let (service, mut handle) = limited_on(toml, calendar());
    passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
    refused(&service, chat("a", "batch", Some(400))).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_budget_is_charged_the_whole_budget() {
    let store = MemoryRates::new();
    let budget = Budget {
        limit: 100,
        resets_in: HOUR,
        shadow: false,
    };
    let check = |cost| Check {
        key: "agent:a:agent-tokens-day:2026-12-06".into(),
        limit: budget.into(),
        cost,
    };
    let Verdict::Allowed(standing) = store.decide(&[check(5000)]) else {
        panic!("a fresh budget refused a large request")
    };
    assert_eq!(standing[0].remaining, 0);
    assert!(!standing[0].over);
    assert!(matches!(
        store.decide(&[check(1)]),
        Verdict::Denied { index: 0, retry_after } if retry_after == HOUR
    ));
}
