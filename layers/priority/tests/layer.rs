//! The layer alone in a tower stack: permits ride the response body,
//! cancellation while queued or streaming, deadlines, pass-through of
//! metadata, the queue-time header, and fair share settled from the
//! answer's token counts.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corral_core::{
    Body, BoxError, Endpoint, GenerationParams, Priority, RequestMeta, UpstreamLoad,
};
use corral_priority::{
    DeadlineExceeded, DeadlineUnreachable, PriorityConfig, PriorityLayer, PriorityService,
    ResponseBody, Scheduler,
};
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio_test::task::Spawn;
use tokio_test::{assert_pending, assert_ready};
use tower::util::Oneshot;
use tower::{Layer, ServiceExt};
use tower_test::mock;
use tower_test::mock::SendResponse;

type UpstreamBody = Channel<Bytes, Infallible>;
type Upstream = mock::Mock<Request<Body>, Response<UpstreamBody>>;
type Handle = mock::Handle<Request<Body>, Response<UpstreamBody>>;
type Prioritized = PriorityService<Upstream>;
type Answer = Result<Response<ResponseBody<UpstreamBody>>, BoxError>;

/// The layer with `capacity` permits over a mocked upstream: its
/// scheduler, its service and the upstream's handle.
fn prioritized(capacity: usize) -> (Arc<Scheduler>, Prioritized, Handle) {
    let layer = PriorityLayer::new(&PriorityConfig {
        capacity,
        ..PriorityConfig::default()
    })
    .unwrap();
    let (upstream, handle): (Upstream, _) = mock::pair();
    (layer.scheduler().clone(), layer.layer(upstream), handle)
}

/// A request to `endpoint` from `agent` at `priority`: 400 bytes, at most
/// 50 tokens.
fn request(endpoint: Endpoint, agent: &str, priority: u8) -> Request<Body> {
    let mut meta = RequestMeta::new(format!("{agent}-{priority}").into(), endpoint)
        .with_agent(agent.into(), "default".into(), false)
        .with_priority(Priority::new(priority).unwrap());
    meta.body_bytes = 400;
    meta.generation = GenerationParams {
        max_tokens: Some(50),
        ..GenerationParams::default()
    };
    let path = match endpoint {
        Endpoint::Tags => "/api/tags",
        _ => "/api/generate",
    };
    let mut request = Request::post(path).body(Body::from("{}")).unwrap();
    request.extensions_mut().insert(meta);
    request
}

/// A generation from `agent` at `priority`.
fn generate(agent: &str, priority: u8) -> Request<Body> {
    request(Endpoint::Generate, agent, priority)
}

/// An upstream answer whose body the test writes, and its writer.
fn streaming() -> (Sender<Bytes, Infallible>, Response<UpstreamBody>) {
    let (tx, body) = Channel::new(4);
    (tx, Response::new(body))
}

/// Sends `request` through `service` on a task of its own and waits until
/// it reaches the upstream: the call, and the upstream's reply to send.
async fn upstream_has(
    service: &Prioritized,
    handle: &mut Handle,
    request: Request<Body>,
) -> (JoinHandle<Answer>, SendResponse<Response<UpstreamBody>>) {
    let call = tokio::spawn(service.clone().oneshot(request));
    let (_, reply) = handle.next_request().await.unwrap();
    (call, reply)
}

/// Sends `request` through `service` and answers it upstream with a body
/// the test writes: the writer, and the answer the client got.
async fn streamed(
    service: &Prioritized,
    handle: &mut Handle,
    request: Request<Body>,
) -> (
    Sender<Bytes, Infallible>,
    Response<ResponseBody<UpstreamBody>>,
) {
    let (call, reply) = upstream_has(service, handle, request).await;
    let (tx, response) = streaming();
    reply.send_response(response);
    (tx, call.await.unwrap().unwrap())
}

/// Sends `request` through `service`, polled by hand; it must wait.
fn queued(
    service: &Prioritized,
    request: Request<Body>,
) -> Spawn<Oneshot<Prioritized, Request<Body>>> {
    let mut call = tokio_test::task::spawn(service.clone().oneshot(request));
    assert_pending!(call.poll());
    call
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_held_until_the_stream_ends_not_until_the_headers() {
    let (scheduler, service, mut handle) = prioritized(1);
    let (mut tx, response) = streamed(&service, &mut handle, generate("a", 5)).await;
    assert_eq!(
        scheduler.snapshot().in_flight,
        1,
        "headers are out, the permit is still held"
    );

    let mut second = queued(&service, generate("b", 5));
    assert_eq!(scheduler.snapshot().queued_total(), 1);

    tx.send_data(Bytes::from_static(b"{\"done\":false}\n"))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();
    assert_pending!(second.poll(), "still streaming");
    drop(tx);
    assert!(body.frame().await.is_none(), "the stream ended");
    assert!(second.is_woken());
    assert_pending!(second.poll(), "now calling the upstream");
    assert_eq!(scheduler.snapshot().in_flight, 1);
    assert_eq!(scheduler.snapshot().queued_total(), 0);
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(streaming().1);
    assert_ready!(second.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_mid_stream_frees_the_permit() {
    let (scheduler, service, mut handle) = prioritized(1);
    let chat = request(Endpoint::Chat, "a", 5);
    let (_tx, response) = streamed(&service, &mut handle, chat).await;
    assert_eq!(scheduler.snapshot().in_flight, 1);
    drop(response);
    assert_eq!(scheduler.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let (scheduler, service, mut handle) = prioritized(1);
    let (first, _reply) = upstream_has(&service, &mut handle, generate("a", 5)).await;
    let queued = queued(&service, generate("b", 1));
    assert_eq!(scheduler.snapshot().queued_total(), 1);
    drop(queued);
    assert_eq!(scheduler.snapshot().queued_total(), 0);
    first.abort();
    let _ = first.await;
    assert_eq!(
        scheduler.snapshot().in_flight,
        0,
        "an aborted call gives its permit back"
    );
}

#[tokio::test(start_paused = true)]
async fn metadata_reads_never_wait_behind_a_generation() {
    let (scheduler, service, mut handle) = prioritized(1);
    let _busy = upstream_has(&service, &mut handle, generate("a", 5)).await;
    let _waiting = queued(&service, generate("b", 1));

    let tags = tokio::spawn(service.clone().oneshot(request(Endpoint::Tags, "c", 10)));
    let (seen, reply) = handle.next_request().await.unwrap();
    assert_eq!(seen.uri().path(), "/api/tags");
    reply.send_response(streaming().1);
    let response = tags.await.unwrap().unwrap();
    assert!(!response.headers().contains_key("x-corral-queue-ms"));
    assert_eq!(scheduler.snapshot().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn the_queue_time_is_reported_in_a_header() {
    let (_scheduler, service, mut handle) = prioritized(1);
    let (tx, first) = streamed(&service, &mut handle, generate("a", 5)).await;
    assert_eq!(first.headers()["x-corral-queue-ms"], "0");

    let second = tokio::spawn(service.clone().oneshot(generate("b", 5)));
    tokio::time::sleep(Duration::from_millis(1234)).await;
    drop((tx, first));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(streaming().1);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.headers()["x-corral-queue-ms"], "1234");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_in_the_queue_is_a_deadline_refusal() {
    let (_scheduler, service, mut handle) = prioritized(1);
    let _busy = upstream_has(&service, &mut handle, generate("a", 5)).await;
    let mut late = generate("b", 1);
    let meta = late.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
    let err = service.clone().oneshot(late).await.unwrap_err();
    let refusal = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("a deadline refusal");
    assert_eq!(refusal.waited(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_in_the_queue_says_how_long_it_waited_in_a_header() {
    let (_scheduler, service, mut handle) = prioritized(1);
    let _busy = upstream_has(&service, &mut handle, generate("a", 5)).await;
    let mut late = generate("b", 1);
    let meta = late.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.deadline = Some(tokio::time::Instant::now() + Duration::from_millis(1500));
    let err = service.clone().oneshot(late).await.unwrap_err();
    let refusal = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("a deadline refusal");
    use corral_core::Refusal;
    let headers = refusal.headers();
    assert!(
        headers
            .iter()
            .any(|(n, v)| n == "x-corral-queue-ms" && v == "1500"),
        "{headers:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_counter_is_settled_with_the_tokens_the_answer_reports() {
    let (scheduler, service, mut handle) = prioritized(2);
    // Someone else keeps the pool busy so counters are remembered.
    let _other = upstream_has(&service, &mut handle, generate("other", 5)).await;

    let (call, reply) = upstream_has(&service, &mut handle, generate("a", 5)).await;
    // "a" starts level with the busy agent (200), then is charged its
    // estimate: 400 bytes / 4 + 2 × max_tokens.
    let floor = scheduler.counter("other", None).unwrap();
    assert_eq!(floor, 200.0);
    assert_eq!(
        scheduler.counter("a", None).unwrap(),
        floor + 100.0 + 2.0 * 50.0
    );
    let (mut tx, response) = streaming();
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    tx.send_data(Bytes::from_static(
        b"{\"done\":true,\"prompt_eval_count\":30,\"eval_count\":7}\n",
    ))
    .await
    .unwrap();
    drop(tx);
    while body.frame().await.is_some() {}
    assert_eq!(
        scheduler.counter("a", None).unwrap(),
        floor + 30.0 + 2.0 * 7.0
    );
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_charges_about_nothing_so_its_agent_is_not_sent_to_the_back() {
    let (scheduler, service, mut handle) = prioritized(2);
    let _other = upstream_has(&service, &mut handle, generate("other", 5)).await;
    let (call, reply) = upstream_has(&service, &mut handle, generate("a", 5)).await;
    let floor = scheduler.counter("other", None).unwrap();
    // The upstream fails it at once, with an error that reports no usage.
    let (tx, mut response) = streaming();
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    reply.send_response(response);
    let mut body = call.await.unwrap().unwrap().into_body();
    drop(tx);
    while body.frame().await.is_some() {}
    // Charged as about one token, not the 200 its estimate said: it
    // generated nothing, and its next request is not queued behind every
    // other agent's fair share.
    let charged = scheduler.counter("a", None).unwrap() - floor;
    assert!(charged <= 1.0, "charged {charged}");
    // And its next request that sets no length is predicted to generate
    // what the error did, nothing: its prompt only (400 bytes / 4).
    let mut next = generate("a", 5);
    next.extensions_mut()
        .get_mut::<RequestMeta>()
        .unwrap()
        .generation
        .max_tokens = None;
    let settled = scheduler.counter("a", None).unwrap();
    let _next = upstream_has(&service, &mut handle, next).await;
    assert_eq!(scheduler.counter("a", None).unwrap() - settled, 100.0);
}

/// Runs `n` generations of `agent` through `service`, each answered after
/// `held`: what the pool learns its holds from.
async fn teach(service: &Prioritized, handle: &mut Handle, n: usize, held: Duration) {
    for _ in 0..n {
        let (call, reply) = upstream_has(service, handle, generate("teacher", 5)).await;
        tokio::time::sleep(held).await;
        let (tx, response) = streaming();
        reply.send_response(response);
        drop(tx);
        let mut body = call.await.unwrap().unwrap().into_body();
        while body.frame().await.is_some() {}
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_the_queue_cannot_meet_is_refused_at_once_and_the_answer_says_where_it_stood() {
    let (_scheduler, service, mut handle) = prioritized(1);
    teach(&service, &mut handle, 4, Duration::from_secs(2)).await;
    let (_running, _reply) = upstream_has(&service, &mut handle, generate("a", 5)).await;
    // One ahead of 2 s and the running one, just started: 4 s to wait.
    let queued = tokio::spawn(service.clone().oneshot(generate("b", 5)));
    tokio::task::yield_now().await;
    let mut hurried = generate("c", 5);
    let meta = hurried.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(1));
    let arrived = tokio::time::Instant::now();
    let err = service.clone().oneshot(hurried).await.unwrap_err();
    assert_eq!(arrived.elapsed(), Duration::ZERO, "refused at arrival");
    let refusal = err
        .downcast_ref::<DeadlineUnreachable>()
        .expect("a deadline refusal at arrival");
    let estimate = refusal.estimate();
    assert_eq!(estimate.position, 1);
    let eta = estimate.eta.unwrap();
    assert_eq!(eta, Duration::from_secs(4));
    use corral_core::Refusal;
    assert_eq!(refusal.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    // Its client named it: its place is kept for when a permit is free
    // for it.
    assert!(refusal.reserved());
    assert_eq!(refusal.retry_after(), Some(Duration::from_secs(4)));
    let headers = refusal.headers();
    assert!(headers
        .iter()
        .any(|(n, v)| n == "x-corral-queue-eta-ms" && v == "4000"));
    // One with time enough waits, and its answer says where it stood.
    let mut patient = generate("d", 5);
    let meta = patient.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(60));
    let patient = tokio::spawn(service.clone().oneshot(patient));
    tokio::task::yield_now().await;
    queued.abort();
    // The running one ends (its upstream call fails): the next is d.
    drop(_reply);
    let _ = _running.await;
    let (_, reply) = handle.next_request().await.unwrap();
    let (tx, response) = streaming();
    reply.send_response(response);
    drop(tx);
    let response = patient.await.unwrap().unwrap();
    // Behind b and c's reservation (due before it would be served).
    assert_eq!(response.headers()["x-corral-queue-position"], "2");
    assert!(response.headers().contains_key("x-corral-queue-eta-ms"));
}

/// A generation from `agent` that sets no length.
fn untold(agent: &str) -> Request<Body> {
    let mut request = generate(agent, 5);
    let meta = request.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.generation.max_tokens = None;
    request
}

#[tokio::test(start_paused = true)]
async fn an_untold_length_is_what_the_agents_answers_generated_lately() {
    let (scheduler, service, mut handle) = prioritized(2);
    let _other = upstream_has(&service, &mut handle, generate("other", 5)).await;
    // Granted: charged its estimate. Returns how much.
    let charged = |before: f64| scheduler.counter("a", None).unwrap() - before;

    let (mut tx, answer) = streamed(&service, &mut handle, untold("a")).await;
    let granted = scheduler.counter("a", None).unwrap();
    tx.send_data(Bytes::from_static(
        b"{\"done\":true,\"prompt_eval_count\":100,\"eval_count\":7}\n",
    ))
    .await
    .unwrap();
    drop(tx);
    let mut body = answer.into_body();
    while body.frame().await.is_some() {}
    // Nothing seen from the model before: its prompt alone (400 bytes /
    // 4) was charged, then settled with the 7 tokens generated.
    assert_eq!(scheduler.counter("a", None).unwrap() - granted, 2.0 * 7.0);

    // Seven tokens the last time: 400 bytes / 4 + 2 × 7.
    let settled = scheduler.counter("a", None).unwrap();
    let (tx, answer) = streamed(&service, &mut handle, untold("a")).await;
    assert_eq!(charged(settled), 100.0 + 2.0 * 7.0);
    // An answer its client leaves teaches nothing.
    let (mut tx2, answer2) = (tx, answer);
    tx2.send_data(Bytes::from_static(b"{\"eval_count\":900}\n"))
        .await
        .unwrap();
    let mut body = answer2.into_body();
    body.frame().await.unwrap().unwrap();
    drop(body);
    let settled = scheduler.counter("a", None).unwrap();
    let (_tx, _answer) = streamed(&service, &mut handle, untold("a")).await;
    assert_eq!(charged(settled), 100.0 + 2.0 * 7.0);
}
