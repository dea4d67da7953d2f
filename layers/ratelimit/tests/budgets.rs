//! Day and month token budgets with time paused: charged up front and
//! corrected, refused with the time they are whole again, a new window at
//! midnight UTC and on the first, shadow mode, class budgets.

#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use common::{answered, chat, limited_on, passed, refused, Handle, Upstream};
use corral_core::Refusal;
use corral_ratelimit::{
    Budget, BudgetBook, Calendar, Check, MemoryRates, RateLimitConfig, RateLimitLayer,
    RateLimitService, Verdict,
};
use http::Response;
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};

/// 2026-12-06 17:00:00 UTC.
const DEC_6_17H: u64 = 1_796_576_400;
const HOUR: Duration = Duration::from_secs(3600);

fn calendar() -> Calendar {
    Calendar::following_tokio(Duration::from_secs(DEC_6_17H))
}

#[tokio::test(start_paused = true)]
async fn a_spent_day_budget_is_a_429_until_midnight_utc() {
    let (service, mut handle) = limited_on("[classes.batch]\ntokens_per_day = 1000", calendar());
    // Each reserves its 400 (its answers say nothing of what they
    // generated: the reservation stands); the third starts with 200 left.
    for remaining in [600, 200, 0] {
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
    let spent = refused(&service, chat("a", "batch", Some(1))).await;
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
    // Another agent has its own budget.
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
    let answer = answered(&service, &mut handle, chat("a", "batch", Some(1000)), body).await;
    let mut body = answer.into_body();
    assert_eq!(
        refused(&service, chat("a", "batch", Some(200)))
            .await
            .policy(),
        "agent-tokens-day",
        "1000 reserved up front"
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
        "50 generated, 200 reserved: {:?}",
        answer.headers()["ratelimit"]
    );
}

/// The layer from `toml` on the test's calendar over a mocked upstream:
/// its budgets' book, its service and the upstream's handle.
fn booked(toml: &str) -> (BudgetBook, RateLimitService<Upstream>, Handle) {
    let config: RateLimitConfig = toml::from_str(toml).unwrap();
    let layer = RateLimitLayer::new(&config)
        .unwrap()
        .with_calendar(calendar());
    let (upstream, mut handle): (Upstream, _) = tower_test::mock::pair();
    handle.allow(10);
    (layer.budgets(), layer.layer(upstream), handle)
}

/// What the budgets of agent `a` of class `batch` have spent, as the
/// layer's book reads them.
async fn spent(book: &BudgetBook) -> u64 {
    book.standing("a", "batch").await[0].spent
}

#[tokio::test(start_paused = true)]
async fn a_request_that_generated_nothing_gives_its_reservation_back() {
    let (book, service, mut handle) = booked("[classes.batch]\ntokens_per_day = 1000");

    // Refused further in (or failed before an answer): nothing generated.
    let call = tokio::spawn(service.clone().oneshot(chat("a", "batch", Some(400))));
    let (_, reply) = handle.next_request().await.unwrap();
    assert_eq!(spent(&book).await, 400, "reserved while it runs");
    reply.send_error("the queue is full");
    assert!(call.await.unwrap().is_err());
    assert_eq!(spent(&book).await, 0);

    // A client that leaves while it waits.
    let waiting = tokio::spawn(service.clone().oneshot(chat("a", "batch", Some(400))));
    let (_, reply) = handle.next_request().await.unwrap();
    waiting.abort();
    let _ = waiting.await;
    drop(reply);
    assert_eq!(spent(&book).await, 0);

    // An error answer that reports nothing.
    let (_tx, body) = Channel::new(1);
    let mut failed = Response::new(body);
    *failed.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    let call = tokio::spawn(service.clone().oneshot(chat("a", "batch", Some(400))));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(failed);
    let answer = call.await.unwrap().unwrap();
    drop(_tx);
    let mut body = answer.into_body();
    while body.frame().await.is_some() {}
    assert_eq!(spent(&book).await, 0);

    // A good answer that says nothing keeps its reservation.
    let (tx, body) = Channel::new(1);
    let call = tokio::spawn(service.clone().oneshot(chat("a", "batch", Some(400))));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new(body));
    let mut body = call.await.unwrap().unwrap().into_body();
    drop(tx);
    while body.frame().await.is_some() {}
    assert_eq!(spent(&book).await, 400);
}

#[tokio::test(start_paused = true)]
async fn a_month_budget_is_the_whole_class_and_starts_again_on_the_first() {
    let toml = "[classes.batch]\nclass_tokens_per_month = 1000\ntokens_per_day = 800";
    let (service, mut handle) = limited_on(toml, calendar());
    passed(&service, &mut handle, chat("a", "batch", Some(600))).await;
    passed(&service, &mut handle, chat("b", "batch", Some(600))).await;
    let spent = refused(&service, chat("c", "batch", Some(1))).await;
    assert_eq!(
        spent.policy(),
        "class-tokens-month",
        "three agents, one class"
    );
    assert!(
        spent
            .to_string()
            .contains("this agent's class may generate 1000 tokens a month"),
        "{spent}"
    );
    assert_eq!(spent.retry_after(), Some(25 * 24 * HOUR + 7 * HOUR));
    tokio::time::advance(25 * 24 * HOUR + 7 * HOUR).await;
    passed(&service, &mut handle, chat("c", "batch", Some(600))).await;
}

#[tokio::test(start_paused = true)]
async fn when_a_day_and_a_month_are_both_spent_the_wait_is_the_months() {
    let store = MemoryRates::new();
    let budget = |limit, hours| Budget {
        limit,
        resets_in: hours * HOUR,
        shadow: false,
    };
    let checks = |cost| {
        [
            Check {
                key: "agent:a:agent-tokens-day:2026-12-06".into(),
                limit: budget(100, 7).into(),
                cost,
            },
            Check {
                key: "agent:a:agent-tokens-month:2026-12".into(),
                limit: budget(100, 607).into(),
                cost,
            },
        ]
    };
    assert!(matches!(store.decide(&checks(100)), Verdict::Allowed(_)));
    assert!(matches!(
        store.decide(&checks(1)),
        Verdict::Denied { index: 1, retry_after } if retry_after == 607 * HOUR
    ));
    // What generates nothing is not held to them.
    assert!(matches!(store.decide(&checks(0)), Verdict::Allowed(_)));
}

#[tokio::test(start_paused = true)]
async fn a_shadow_budget_lets_through_and_is_reported_but_not_in_the_headers() {
    let (book, service, mut handle) =
        booked("budget_mode = \"shadow\"\n[classes.batch]\ntokens_per_day = 500");
    for _ in 0..2 {
        let answer = passed(&service, &mut handle, chat("a", "batch", Some(400))).await;
        assert!(
            !answer.headers().contains_key("ratelimit"),
            "{:?}",
            answer.headers()
        );
    }
    let standing = &book.standing("a", "batch").await[0];
    assert_eq!(
        (standing.spent, standing.limit, standing.shadow),
        (800, 500, true)
    );
    // A class may enforce while the layer's default is shadow.
    let toml = "budget_mode = \"shadow\"\n[classes.batch]\ntokens_per_day = 500\nbudget_mode = \"enforce\"";
    let (service, mut handle) = limited_on(toml, calendar());
    passed(&service, &mut handle, chat("a", "batch", Some(500))).await;
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
