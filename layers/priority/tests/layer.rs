//! The layer alone in a tower stack: permits ride the response body,
//! cancellation while queued or streaming, deadlines, pass-through of
//! metadata, the queue-time header, and fair share settled from the
//! answer's token counts.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use corral_core::{Body, Endpoint, GenerationParams, Priority, RequestMeta, UpstreamLoad};
use corral_priority::{DeadlineExceeded, PriorityConfig, PriorityLayer};
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use tokio_test::{assert_pending, assert_ready};
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Upstream = mock::Mock<Request<Body>, Response<Channel<Bytes, Infallible>>>;

fn layer(capacity: usize) -> PriorityLayer {
    PriorityLayer::new(&PriorityConfig {
        capacity,
        ..PriorityConfig::default()
    })
    .unwrap()
}

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

fn streaming() -> (
    Sender<Bytes, Infallible>,
    Response<Channel<Bytes, Infallible>>,
) {
    let (tx, body) = Channel::new(4);
    (tx, Response::new(body))
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_held_until_the_stream_ends_not_until_the_headers() {
    let layer = layer(1);
    let scheduler = layer.scheduler().clone();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);

    let first = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, reply) = handle.next_request().await.unwrap();
    let (mut tx, response) = streaming();
    reply.send_response(response);
    let response = first.await.unwrap().unwrap();
    assert_eq!(
        scheduler.snapshot().in_flight,
        1,
        "headers are out, the permit is still held"
    );

    let mut second =
        tokio_test::task::spawn(service.clone().oneshot(request(Endpoint::Generate, "b", 5)));
    assert_pending!(second.poll());
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
    let layer = layer(1);
    let scheduler = layer.scheduler().clone();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let first = tokio::spawn(service.clone().oneshot(request(Endpoint::Chat, "a", 5)));
    let (_, reply) = handle.next_request().await.unwrap();
    let (_tx, response) = streaming();
    reply.send_response(response);
    let response = first.await.unwrap().unwrap();
    assert_eq!(scheduler.snapshot().in_flight, 1);
    drop(response);
    assert_eq!(scheduler.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let layer = layer(1);
    let scheduler = layer.scheduler().clone();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let first = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, _reply) = handle.next_request().await.unwrap();
    let mut queued =
        tokio_test::task::spawn(service.clone().oneshot(request(Endpoint::Generate, "b", 1)));
    assert_pending!(queued.poll());
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
    let layer = layer(1);
    let scheduler = layer.scheduler().clone();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let _busy = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, _busy_reply) = handle.next_request().await.unwrap();
    let mut waiting =
        tokio_test::task::spawn(service.clone().oneshot(request(Endpoint::Generate, "b", 1)));
    assert_pending!(waiting.poll());

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
    let layer = layer(1);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let first = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, reply) = handle.next_request().await.unwrap();
    let (tx, response) = streaming();
    reply.send_response(response);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.headers()["x-corral-queue-ms"], "0");

    let second = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "b", 5)));
    tokio::time::sleep(Duration::from_millis(1234)).await;
    drop((tx, first));
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(streaming().1);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.headers()["x-corral-queue-ms"], "1234");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_in_the_queue_is_a_deadline_refusal() {
    let layer = layer(1);
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    let _busy = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, _busy_reply) = handle.next_request().await.unwrap();
    let mut late = request(Endpoint::Generate, "b", 1);
    let meta = late.extensions_mut().get_mut::<RequestMeta>().unwrap();
    meta.deadline = Some(tokio::time::Instant::now() + Duration::from_secs(2));
    let err = service.clone().oneshot(late).await.unwrap_err();
    let refusal = err
        .downcast_ref::<DeadlineExceeded>()
        .expect("a deadline refusal");
    assert_eq!(refusal.waited(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_counter_is_settled_with_the_tokens_the_answer_reports() {
    let layer = layer(2);
    let scheduler = layer.scheduler().clone();
    let (upstream, mut handle): (Upstream, _) = mock::pair();
    let service = layer.layer(upstream);
    // Someone else keeps the pool busy so counters are remembered.
    let _other = tokio::spawn(
        service
            .clone()
            .oneshot(request(Endpoint::Generate, "other", 5)),
    );
    let (_, _other_reply) = handle.next_request().await.unwrap();

    let call = tokio::spawn(service.clone().oneshot(request(Endpoint::Generate, "a", 5)));
    let (_, reply) = handle.next_request().await.unwrap();
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
