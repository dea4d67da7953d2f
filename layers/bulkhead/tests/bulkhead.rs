//! The bulkhead alone: compartments bound what runs (until the stream
//! ends), waiting is bounded in number and time, rules choose the
//! compartment, and bad configs name the key.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use corral_bulkhead::{
    BulkheadConfig, BulkheadLayer, BulkheadService, CompartmentFull, ResponseBody,
};
use corral_core::{Body, BoxError, Endpoint, Priority, RequestMeta};
use http::{Request, Response};
use http_body_util::channel::Channel;
use http_body_util::BodyExt;
use tokio::task::JoinHandle;
use tokio_test::assert_pending;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type UpstreamBody = Channel<Bytes, Infallible>;
type Upstream = mock::Mock<Request<Body>, Response<UpstreamBody>>;

const CONFIG: &str = r#"
    [[compartments]]
    name = "opus_agents"
    max_concurrent = 1
    [[compartments]]
    name = "batch_ops"
    max_concurrent = 1
    max_waiting = 1
    max_wait = "10s"
    [[compartments]]
    name = "big_model"
    max_concurrent = 1

    [[rules]]
    compartment = "big_model"
    model = "llama3:70b"
    [[rules]]
    compartment = "opus_agents"
    class = "opus"
    [[rules]]
    compartment = "batch_ops"
    endpoint = "embed"
    [[rules]]
    compartment = "batch_ops"
    agent = "nightly"
"#;

type Handle = mock::Handle<Request<Body>, Response<UpstreamBody>>;
type Confined = BulkheadService<Upstream>;
type Call = JoinHandle<Result<Response<ResponseBody<UpstreamBody>>, BoxError>>;

/// The layer from [`CONFIG`] over a mocked upstream: the layer, its service
/// and the upstream's handle.
fn bulkhead() -> (BulkheadLayer, Confined, Handle) {
    let layer = BulkheadLayer::new(&toml::from_str::<BulkheadConfig>(CONFIG).unwrap()).unwrap();
    let (upstream, handle): (Upstream, _) = mock::pair();
    (layer.clone(), layer.layer(upstream), handle)
}

/// A request to `endpoint` for `model` from `agent` of `class`.
fn request(endpoint: Endpoint, agent: &str, class: &str, model: &str) -> Request<Body> {
    let meta = RequestMeta::new("r".into(), endpoint)
        .with_agent(agent.into(), class.into(), false)
        .with_priority(Priority::DEFAULT)
        .with_model(Some(model.into()));
    let mut request = Request::post("/api/chat").body(Body::from("{}")).unwrap();
    request.extensions_mut().insert(meta);
    request
}

/// A chat with llama3 from `agent` of the opus class.
fn opus_chat(agent: &str) -> Request<Body> {
    request(Endpoint::Chat, agent, "opus", "llama3")
}

/// An embedding with nomic from `agent` of the default class.
fn embed(agent: &str) -> Request<Body> {
    request(Endpoint::Embed, agent, "default", "nomic")
}

/// An upstream answer whose body ends at once.
fn empty() -> Response<UpstreamBody> {
    Response::new(Channel::new(1).1)
}

/// Sends `request` through `service` on a task of its own.
fn spawn_call(service: &Confined, request: Request<Body>) -> Call {
    tokio::spawn(service.clone().oneshot(request))
}

/// Sends `request` through `service`, which must refuse it: why.
async fn refused(service: &Confined, request: Request<Body>) -> BoxError {
    match service.clone().oneshot(request).await {
        Ok(_) => panic!("the bulkhead let the request through"),
        Err(err) => err,
    }
}

/// Sends `request` through `service`, answers it upstream with an empty
/// body, and waits for the answer to come back.
async fn passed(service: &Confined, handle: &mut Handle, request: Request<Body>) {
    let call = spawn_call(service, request);
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(empty());
    call.await.unwrap().unwrap();
}

/// The refusal, which must be a full compartment's.
fn full(err: &BoxError) -> &CompartmentFull {
    err.downcast_ref::<CompartmentFull>()
        .unwrap_or_else(|| panic!("not CompartmentFull: {err}"))
}

#[tokio::test(start_paused = true)]
async fn a_full_compartment_refuses_at_once_until_the_running_stream_ends() {
    let (layer, service, mut handle) = bulkhead();
    let first = spawn_call(&service, opus_chat("planner"));
    let (_, reply) = handle.next_request().await.unwrap();
    let (tx, body) = Channel::new(1);
    reply.send_response(Response::new(body));
    let response = first.await.unwrap().unwrap();
    assert_eq!(
        layer.usage()[0],
        ("opus_agents".to_string(), 1),
        "headers out, slot still held"
    );

    let err = refused(&service, opus_chat("writer")).await;
    assert_eq!(full(&err).compartment(), "opus_agents");
    assert_eq!(corral_core::Refusal::reason(full(&err)), "bulkhead_full");

    drop(tx);
    let mut body = response.into_body();
    assert!(body.frame().await.is_none());
    assert_eq!(layer.usage()[0].1, 0, "the stream ended, the slot is back");
    handle.allow(1);
    passed(&service, &mut handle, opus_chat("writer")).await;
}

#[tokio::test(start_paused = true)]
async fn a_bounded_number_may_wait_a_bounded_time() {
    let (_layer, service, mut handle) = bulkhead();
    let running = spawn_call(&service, embed("a"));
    let (_, running_reply) = handle.next_request().await.unwrap();

    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(embed("b")));
    assert_pending!(waiting.poll());
    let err = refused(&service, embed("c")).await;
    assert!(
        full(&err).to_string().contains("is full"),
        "the waiting room holds one"
    );

    tokio::time::advance(Duration::from_secs(10)).await;
    let err = waiting.await.unwrap_err();
    assert!(
        full(&err).to_string().contains("10000 ms"),
        "{}",
        full(&err)
    );

    // A waiter that is granted goes through.
    let waiter = spawn_call(&service, embed("d"));
    tokio::task::yield_now().await;
    running_reply.send_response(empty());
    let _ = running.await.unwrap().unwrap(); // its body is dropped here: slot back
    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(empty());
    waiter.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn rules_choose_by_model_class_endpoint_and_agent_first_match_wins() {
    let (layer, service, mut handle) = bulkhead();
    handle.allow(100);
    let mut replies = Vec::new();
    let mut calls = Vec::new();
    for (endpoint, agent, class, model) in [
        (Endpoint::Chat, "planner", "opus", "llama3:70b"), // model rule first: big_model
        (Endpoint::Chat, "nightly", "batch", "llama3"),    // agent rule: batch_ops
        (Endpoint::Chat, "free", "sonnet", "llama3"),      // no rule: not confined
    ] {
        calls.push(spawn_call(&service, request(endpoint, agent, class, model)));
        replies.push(handle.next_request().await.unwrap().1);
    }
    let usage = layer.usage();
    assert_eq!(
        usage,
        [
            ("opus_agents".into(), 0),
            ("batch_ops".into(), 1),
            ("big_model".into(), 1)
        ]
    );
    for reply in replies {
        reply.send_response(empty());
    }
    for call in calls {
        drop(call.await.unwrap().unwrap());
    }
    assert!(layer.usage().iter().all(|(_, n)| *n == 0));
}

#[tokio::test(start_paused = true)]
async fn metadata_is_not_confined_by_default() {
    let (_layer, service, mut handle) = bulkhead();
    handle.allow(2);
    let _busy = spawn_call(&service, opus_chat("planner"));
    let (_, _busy_reply) = handle.next_request().await.unwrap();
    let tags = request(Endpoint::Tags, "planner", "opus", "llama3");
    passed(&service, &mut handle, tags).await;
}

#[test]
fn an_unknown_compartment_is_a_start_up_error_that_names_the_rule() {
    let config: BulkheadConfig = toml::from_str(
        "[[compartments]]\nname = \"a\"\nmax_concurrent = 1\n[[rules]]\ncompartment = \"ghost\"\nclass = \"x\"\n",
    )
    .unwrap();
    let err = BulkheadLayer::new(&config).unwrap_err();
    assert_eq!(err.key(), "rules[0].compartment");
    assert!(err.reason().contains("unknown compartment \"ghost\""));

    let bad_endpoint: BulkheadConfig = toml::from_str(
        "[[compartments]]\nname = \"a\"\nmax_concurrent = 1\n[[rules]]\ncompartment = \"a\"\nendpoint = \"generation\"\n",
    )
    .unwrap();
    assert_eq!(
        BulkheadLayer::new(&bad_endpoint).unwrap_err().key(),
        "rules[0].endpoint"
    );
}
