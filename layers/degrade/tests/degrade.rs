//! Levels through every transition both ways with hysteresis and
//! smoothing (time paused), the operator's override, and what the layer
//! does at each level.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_core::{
    Body, Bus, Degradation, Endpoint, Level, LoadCell, LoadSnapshot, MemoryBus, Priority,
    RequestMeta, UpstreamLoad,
};
use corral_degrade::{DegradeConfig, DegradeLayer, DegradeService, Degraded, Levels, ResponseBody};
use http::{Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_test::mock;

const UP: [f64; 3] = [0.60, 0.80, 0.95];
const DOWN: [f64; 3] = [0.50, 0.70, 0.90];

/// Observes `load` now, smoothed over `smoothing`: the level then.
fn observe(levels: &mut Levels, load: f64, smoothing: Duration) -> Level {
    levels.observe(load, Instant::now(), smoothing, UP, DOWN);
    levels.effective()
}

/// Observes `load` now, unsmoothed: the level then.
fn step(levels: &mut Levels, load: f64) -> Level {
    observe(levels, load, Duration::ZERO)
}

#[tokio::test(start_paused = true)]
async fn every_transition_happens_at_its_threshold_in_both_directions() {
    let mut levels = Levels::new();
    // Up through each threshold, then down: at a threshold the level
    // holds, just past it the level changes.
    let crossings = [
        (0.60, 0.61, Level::Normal, Level::L1),
        (0.80, 0.81, Level::L1, Level::L2),
        (0.95, 0.96, Level::L2, Level::Critical),
        (0.90, 0.89, Level::Critical, Level::L2),
        (0.70, 0.69, Level::L2, Level::L1),
        (0.50, 0.49, Level::L1, Level::Normal),
    ];
    for (at, past, holds, becomes) in crossings {
        assert_eq!(step(&mut levels, at), holds, "at load {at}");
        assert_eq!(step(&mut levels, past), becomes, "at load {past}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_load_hovering_at_a_threshold_does_not_flap() {
    let mut levels = Levels::new();
    let mut changes = 0;
    for i in 0..100 {
        let load = if i % 2 == 0 { 0.59 } else { 0.62 };
        if levels
            .observe(load, Instant::now(), Duration::ZERO, UP, DOWN)
            .is_some()
        {
            changes += 1;
        }
    }
    assert_eq!(changes, 1, "up once to L1, and it stays");
    assert_eq!(levels.effective(), Level::L1);
}

#[tokio::test(start_paused = true)]
async fn a_jump_goes_straight_to_the_level_it_calls_for() {
    let mut levels = Levels::new();
    assert_eq!(step(&mut levels, 1.0), Level::Critical);
    assert_eq!(step(&mut levels, 0.0), Level::Normal);
}

#[tokio::test(start_paused = true)]
async fn the_load_is_smoothed_over_time() {
    let mut levels = Levels::new();
    let smoothing = Duration::from_secs(5);
    observe(&mut levels, 0.0, smoothing);
    tokio::time::advance(Duration::from_millis(500)).await;
    let spike = observe(&mut levels, 1.0, smoothing);
    assert_eq!(spike, Level::Normal, "a short spike is smoothed away");
    for _ in 0..30 {
        tokio::time::advance(Duration::from_secs(1)).await;
        observe(&mut levels, 1.0, smoothing);
    }
    assert_eq!(
        levels.effective(),
        Level::Critical,
        "a sustained load gets through"
    );
}

#[tokio::test(start_paused = true)]
async fn a_forced_level_holds_until_released() {
    let mut levels = Levels::new();
    levels.force(Some(Level::L2));
    assert_eq!(step(&mut levels, 0.0), Level::L2);
    let change = levels.force(None).unwrap();
    assert_eq!((change.from, change.to), (Level::L2, Level::Normal));
}

/// A scheduler stand-in with a settable amount of work.
struct Work(Mutex<usize>);

impl UpstreamLoad for Work {
    fn snapshot(&self) -> LoadSnapshot {
        let mut load = LoadSnapshot::idle(4);
        let work = *self.0.lock().unwrap();
        load.in_flight = work.min(4);
        load.queued[4] = work.saturating_sub(4);
        load
    }
}

fn setup(config: DegradeConfig) -> (DegradeLayer, Arc<Work>, MemoryBus) {
    let work = Arc::new(Work(Mutex::new(0)));
    let cell = LoadCell::default();
    cell.set(work.clone()).unwrap();
    let bus = MemoryBus::new("r");
    let layer = DegradeLayer::new(&DegradeConfig {
        smoothing: Duration::ZERO,
        defaults: [("chat".to_string(), "Busy: a default answer.".to_string())].into(),
        critical_classes: vec!["system".into()],
        ..config
    })
    .map(|l| {
        l.with_load(cell)
            .with_bus(Arc::new(bus.clone()) as Arc<dyn Bus>)
    })
    .unwrap();
    (layer, work, bus)
}

/// A chat request for llama3 with [`BODY`] from an agent of `class`.
fn chat(class: &str, priority: u8, stream: bool) -> Request<Body> {
    let mut meta = RequestMeta::new("r".into(), Endpoint::Chat)
        .with_agent("a".into(), class.into(), false)
        .with_priority(Priority::new(priority).unwrap())
        .with_model(Some("llama3".into()));
    meta.stream = stream;
    let mut request = Request::post("/api/chat").body(Body::from(BODY)).unwrap();
    request.extensions_mut().insert(meta);
    request
}

/// A whole-answer chat request of the default class at the default priority.
fn ordinary() -> Request<Body> {
    chat("default", 5, false)
}

type Upstream = mock::Mock<Request<Body>, Response<String>>;
type Handle = mock::Handle<Request<Body>, Response<String>>;

/// Sends `request` through `service` and answers it "ok" upstream: what
/// the upstream saw, and the answer the client got.
async fn through(
    service: &DegradeService<Upstream>,
    handle: &mut Handle,
    request: Request<Body>,
) -> (Request<Body>, Response<ResponseBody<String>>) {
    let call = tokio::spawn(service.clone().oneshot(request));
    let (seen, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::new("ok".into()));
    (seen, call.await.unwrap().unwrap())
}

/// The JSON body the upstream saw.
fn json_seen(seen: &Request<Body>) -> serde_json::Value {
    serde_json::from_slice(seen.body().buffered().unwrap()).unwrap()
}

/// Whether the answer says it was degraded.
fn marked<B>(response: &Response<B>) -> bool {
    response.headers().contains_key("x-corral-degraded")
}

const BODY: &str =
    r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}"#;

#[tokio::test(start_paused = true)]
async fn each_level_does_what_it_says_and_says_so() {
    let (layer, work, bus) = setup(DegradeConfig::default());
    let mut events = bus.subscribe();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    handle.allow(100);

    // Normal: untouched.
    let (seen, response) = through(&service, &mut handle, ordinary()).await;
    assert_eq!(seen.body().buffered().unwrap(), BODY);
    assert_eq!(
        seen.extensions().get::<Degradation>().unwrap().level,
        Level::Normal
    );
    assert!(!marked(&response));

    // L1 (load 0.7 = 11.2 of 16): tokens capped.
    *work.0.lock().unwrap() = 11;
    let (seen, response) = through(&service, &mut handle, ordinary()).await;
    let json = json_seen(&seen);
    assert_eq!(json["options"]["num_predict"], 512);
    assert_eq!(json["options"]["temperature"], 0, "other options kept");
    assert_eq!(
        seen.extensions()
            .get::<RequestMeta>()
            .unwrap()
            .generation
            .max_tokens,
        Some(512)
    );
    let directive = *seen.extensions().get::<Degradation>().unwrap();
    assert_eq!(
        (directive.level, directive.ttl_factor, directive.serve_stale),
        (Level::L1, 2.0, false)
    );
    assert_eq!(response.headers()["x-corral-degraded"], "L1");
    assert_eq!(response.headers()["x-corral-token-cap"], "512");
    assert_eq!(events.try_recv().unwrap().message["level"], "L1");

    // L2 (0.85): non-critical work goes to the small model; low priority refused.
    *work.0.lock().unwrap() = 14;
    let (seen, response) = through(&service, &mut handle, ordinary()).await;
    assert_eq!(json_seen(&seen)["model"], "tinyllama");
    assert_eq!(
        response.headers()["x-corral-model-rewrite"],
        "llama3->tinyllama"
    );
    assert_eq!(response.headers()["x-corral-degraded"], "L2");

    let (seen, critical) = through(&service, &mut handle, chat("system", 9, false)).await;
    assert_eq!(
        seen.body().buffered().unwrap(),
        BODY,
        "critical classes are never rewritten"
    );
    assert!(!marked(&critical));

    let err = service
        .clone()
        .oneshot(chat("default", 8, false))
        .await
        .unwrap_err();
    assert!(err.is::<Degraded>(), "{err}");

    // Critical (1.0): high priorities processed, the rest get the default answer.
    *work.0.lock().unwrap() = 16;
    let (_, kept) = through(&service, &mut handle, chat("default", 2, false)).await;
    assert_eq!(kept.headers()["x-corral-degraded"], "Critical");
    // A generated answer is not marked as a default one.
    assert!(kept.headers().get("x-corral-answer").is_none());

    let response = service
        .clone()
        .oneshot(chat("default", 5, true))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    assert_eq!(response.headers()["x-corral-answer"], "default");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["message"]["content"], "Busy: a default answer.");
    assert_eq!(lines[1]["done"], true);

    // Back to Normal when the load falls.
    *work.0.lock().unwrap() = 0;
    let (seen, response) = through(&service, &mut handle, ordinary()).await;
    assert_eq!(seen.body().buffered().unwrap(), BODY);
    assert!(!marked(&response));
    assert_eq!(layer.controller().status().level, Level::Normal);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_without_a_default_gets_503_at_critical() {
    let (layer, _work, _bus) = setup(DegradeConfig::default());
    layer.controller().force(Some(Level::Critical));
    let (upstream, _handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let mut request = ordinary();
    request
        .extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .endpoint = Endpoint::Generate;
    let err = service.oneshot(request).await.unwrap_err();
    let degraded = err.downcast_ref::<Degraded>().unwrap();
    assert_eq!(
        corral_core::Refusal::retry_after(degraded),
        Some(Duration::from_secs(30))
    );
}

#[test]
fn thresholds_that_would_flap_are_refused() {
    let config = DegradeConfig {
        down: [0.65, 0.70, 0.90],
        ..DegradeConfig::default()
    };
    assert_eq!(config.validate().unwrap_err().key(), "down[0]");
}

#[tokio::test(start_paused = true)]
async fn with_no_requests_the_level_still_follows_the_load_down() {
    let (layer, work, _bus) = setup(DegradeConfig {
        smoothing: Duration::from_secs(5),
        ..DegradeConfig::default()
    });
    let controller = layer.controller().clone();
    *work.0.lock().unwrap() = 16;
    // A burst: requests sample the load and raise the level.
    for _ in 0..30 {
        controller.level();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(controller.status().level, Level::Critical);
    // Then silence: no request comes, only the ticker samples.
    *work.0.lock().unwrap() = 0;
    let ticker = tokio::spawn(controller.clone().keep_current(Duration::from_secs(1)));
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(controller.status().level, Level::Normal);
    ticker.abort();
}

/// 17 requests in the system (4 running, 13 waiting) on 4 permits,
/// finishing `rate` per second.
struct Draining(f64);

impl UpstreamLoad for Draining {
    fn snapshot(&self) -> LoadSnapshot {
        let mut load = LoadSnapshot::idle(4);
        load.in_flight = 4;
        load.queued[4] = 13;
        load.completions_per_sec = self.0;
        load
    }
}

#[tokio::test(start_paused = true)]
async fn a_degraded_refusal_is_told_when_the_drain_lets_it_in() {
    let refusal = |rate: f64, forced: Option<Level>| {
        let cell = LoadCell::default();
        cell.set(Arc::new(Draining(rate))).unwrap();
        // Full (16 = 4 permits × saturation 4): Critical, unsmoothed.
        let layer = DegradeLayer::new(&DegradeConfig {
            smoothing: Duration::ZERO,
            ..DegradeConfig::default()
        })
        .map(|l| l.with_load(cell))
        .unwrap();
        layer.controller().force(forced);
        let (upstream, handle): (Upstream, _) = mock::pair();
        let service = layer.layer(upstream);
        async move {
            let _handle = handle;
            // Priority 8: refused from L2 (l2_refuse_above 7), let in at
            // L1, below a load of 0.70: 11.2 requests.
            let err = service
                .oneshot(chat("default", 8, false))
                .await
                .unwrap_err();
            let degraded = err.downcast_ref::<Degraded>().unwrap();
            corral_core::Refusal::retry_after(degraded).unwrap()
        }
    };
    // 5.8 requests to finish: 1.93 s at 3 per second (2 s, to the
    // 100 ms step), 19.33 s at 0.3.
    assert_eq!(refusal(3.0, None).await, Duration::from_millis(2_000));
    assert_eq!(refusal(0.3, None).await, Duration::from_millis(19_400));
    // Nothing drains, or too slowly, or the operator forced the level:
    // the configured Retry-After.
    assert_eq!(refusal(0.0, None).await, Duration::from_secs(30));
    assert_eq!(refusal(0.1, None).await, Duration::from_secs(30));
    assert_eq!(refusal(4.0, Some(Level::L2)).await, Duration::from_secs(30));
}
