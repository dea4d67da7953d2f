//! The batcher alone, time paused: concurrent single embeds merge into
//! few upstream calls and every caller gets the vector of its own input.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_batch::{BatchConfig, BatchLayer};
use corral_core::{Body, BoxError, Endpoint, RequestMeta};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{service_fn, Layer, ServiceExt};

/// The vector the fake model computes for an input.
fn vector(input: &str) -> Value {
    json!([input.len(), input.bytes().map(u64::from).sum::<u64>()])
}

type Calls = Arc<Mutex<Vec<Value>>>;

fn upstream(
    calls: Calls,
    status: StatusCode,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(move |request: Request<Body>| {
        let calls = calls.clone();
        async move {
            let body: Value = serde_json::from_slice(request.body().buffered().unwrap()).unwrap();
            calls.lock().unwrap().push(body.clone());
            let inputs: Vec<String> = match &body["input"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
                _ => vec![],
            };
            let doc = if status == StatusCode::OK {
                json!({"model": body["model"], "embeddings": inputs.iter().map(|i| vector(i)).collect::<Vec<_>>(),
                       "total_duration": 100, "load_duration": 0, "prompt_eval_count": inputs.len() * 2})
            } else {
                json!({"error": "model \"ghost\" not found, try pulling it first"})
            };
            let mut response =
                Response::new(Full::new(Bytes::from(serde_json::to_vec(&doc).unwrap())));
            *response.status_mut() = status;
            Ok::<_, BoxError>(response)
        }
    })
}

fn embed(model: &str, input: &str) -> Request<Body> {
    let body = json!({"model": model, "input": input}).to_string();
    let mut request = Request::post("/api/embed").body(Body::from(body)).unwrap();
    request
        .extensions_mut()
        .insert(RequestMeta::new("r".into(), Endpoint::Embed).with_model(Some(model.into())));
    request
}

async fn json_of(response: Response<corral_core::BoxBody>) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(start_paused = true)]
async fn thirty_two_single_embeds_make_one_call_and_each_gets_its_own_vector() {
    let calls = Calls::default();
    let service = BatchLayer::new(&BatchConfig::default())
        .unwrap()
        .layer(upstream(calls.clone(), StatusCode::OK));
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            tokio::spawn(
                service
                    .clone()
                    .oneshot(embed("nomic-embed-text", &format!("text number {i}"))),
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, doc) = json_of(task.await.unwrap().unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(
            doc["embeddings"],
            json!([vector(&format!("text number {i}"))]),
            "caller {i}"
        );
        assert_eq!(doc["prompt_eval_count"], 2);
        assert_eq!(doc["model"], "nomic-embed-text");
    }
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 1, "one upstream call for 32 callers");
    assert_eq!(calls[0]["input"].as_array().unwrap().len(), 32);
}

#[tokio::test(start_paused = true)]
async fn batches_are_bounded_by_max_inputs_and_split_by_model() {
    let calls = Calls::default();
    let service = BatchLayer::new(&BatchConfig {
        max_inputs: 10,
        ..BatchConfig::default()
    })
    .unwrap()
    .layer(upstream(calls.clone(), StatusCode::OK));
    let mut tasks = Vec::new();
    for i in 0..25 {
        tasks.push(tokio::spawn(
            service
                .clone()
                .oneshot(embed("nomic-embed-text", &format!("a{i}"))),
        ));
    }
    tasks.push(tokio::spawn(
        service.clone().oneshot(embed("other-model", "b")),
    ));
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), 200);
    }
    let calls = calls.lock().unwrap();
    let sizes: Vec<usize> = calls
        .iter()
        .map(|c| c["input"].as_array().map_or(1, Vec::len))
        .collect();
    assert_eq!(
        calls.len(),
        4,
        "10 + 10 + 5, and the other model alone: {sizes:?}"
    );
    assert!(sizes.iter().all(|n| *n <= 10));
}

#[tokio::test(start_paused = true)]
async fn a_lone_request_goes_unchanged_after_the_window() {
    let calls = Calls::default();
    let service = BatchLayer::new(&BatchConfig {
        window: Duration::from_millis(5),
        ..BatchConfig::default()
    })
    .unwrap()
    .layer(upstream(calls.clone(), StatusCode::OK));
    let started = tokio::time::Instant::now();
    let (_, doc) = json_of(
        service
            .oneshot(embed("nomic-embed-text", "alone"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(started.elapsed(), Duration::from_millis(5));
    assert_eq!(doc["embeddings"], json!([vector("alone")]));
    assert_eq!(
        calls.lock().unwrap()[0]["input"],
        "alone",
        "sent as it came"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_gives_every_caller_the_answer() {
    let calls = Calls::default();
    let service = BatchLayer::new(&BatchConfig::default())
        .unwrap()
        .layer(upstream(calls, StatusCode::NOT_FOUND));
    let tasks: Vec<_> = (0..3)
        .map(|i| tokio::spawn(service.clone().oneshot(embed("ghost", &format!("{i}")))))
        .collect();
    for task in tasks {
        let (status, doc) = json_of(task.await.unwrap().unwrap()).await;
        assert_eq!(status, 404);
        assert!(doc["error"].as_str().unwrap().contains("not found"));
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_that_cannot_be_reached_gives_every_caller_its_own_typed_error() {
    let unreachable = service_fn(|_request: Request<Body>| async {
        Err::<Response<Full<Bytes>>, BoxError>(Box::new(corral_core::UpstreamFailed::new(
            "http://ollama:11434",
            true,
            "connection refused",
        )))
    });
    let service = BatchLayer::new(&BatchConfig::default())
        .unwrap()
        .layer(unreachable);
    let tasks: Vec<_> = (0..3)
        .map(|i| tokio::spawn(service.clone().oneshot(embed("m", &format!("{i}")))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        // The proxy answers each a 502 `upstream_unreachable`, not a 500.
        let refusal = corral_core::find_refusal(
            &*err,
            &[corral_core::as_refusal::<corral_core::UpstreamFailed>],
        )
        .expect("the upstream's error, for every caller");
        assert_eq!(refusal.reason(), "upstream_unreachable");
        assert_eq!(
            corral_core::classify_error(&*err),
            corral_core::Outcome::Failure(corral_core::Failure::Connect)
        );
    }
}
