use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use corral_core::{Body, BoxBody, BoxError, ConfigError, Endpoint, Priority, RequestMeta};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

use crate::config::BatchConfig;
use crate::metrics::{BATCHED_REQUESTS_TOTAL, BATCHES_TOTAL};

/// One caller in a batch.
struct Waiter {
    inputs: Vec<Value>,
    priority: Priority,
    request: Request<Body>,
    answer: oneshot::Sender<Result<Response<BoxBody>, BoxError>>,
}

struct Pending {
    waiters: Vec<Waiter>,
    inputs: usize,
    generation: u64,
}

struct Shared {
    config: BatchConfig,
    pending: Mutex<HashMap<String, Pending>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Puts a [`BatchService`] in front of a service.
#[derive(Clone)]
pub struct BatchLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BatchLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchLayer")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl BatchLayer {
    /// A layer for `config`.
    pub fn new(config: &BatchConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                config: config.clone(),
                pending: Mutex::new(HashMap::new()),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }
}

impl<S> Layer<S> for BatchLayer {
    type Service = BatchService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BatchService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Merges concurrent single embedding requests; passes everything else.
#[derive(Clone)]
pub struct BatchService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> BatchService<S> {
    corral_core::define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for BatchService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchService").finish()
    }
}

/// The response future of [`BatchService`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

/// The inputs of a batchable embed request and the key of its batch: the
/// request without its input, keys sorted.
fn batchable(request: &Request<Body>) -> Option<(Vec<Value>, String)> {
    let meta = RequestMeta::of(request, "batch")?;
    if meta.endpoint != Endpoint::Embed {
        return None;
    }
    let mut json: Map<String, Value> = serde_json::from_slice(request.body().buffered()?).ok()?;
    let inputs = match json.remove("input")? {
        Value::String(s) => vec![Value::String(s)],
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => items,
        _ => return None,
    };
    let sorted: std::collections::BTreeMap<String, Value> = json.into_iter().collect();
    Some((inputs, serde_json::to_string(&sorted).ok()?))
}

impl<S, B> Service<Request<Body>> for BatchService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let Some((inputs, key)) = batchable(&request) else {
            return Box::pin(async move {
                inner
                    .oneshot(request)
                    .await
                    .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
                    .map_err(Into::into)
            });
        };
        let (answer, answered) = oneshot::channel();
        let priority = request
            .extensions()
            .get::<RequestMeta>()
            .map(|m| m.priority)
            .unwrap_or_default();
        let count = inputs.len();
        let waiter = Waiter {
            inputs,
            priority,
            request,
            answer,
        };
        let shared = self.shared.clone();
        let mut pending = shared.pending();
        let full = match pending.get_mut(&key) {
            Some(batch) if batch.inputs + count <= shared.config.max_inputs => {
                batch.inputs += count;
                batch.waiters.push(waiter);
                batch.inputs >= shared.config.max_inputs
            }
            existing => {
                // A new batch (or the one gathering has no room: it goes
                // now and this one starts the next).
                let generation = shared
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(batch) = existing.map(|b| {
                    std::mem::replace(
                        b,
                        Pending {
                            waiters: Vec::new(),
                            inputs: 0,
                            generation,
                        },
                    )
                }) {
                    tokio::spawn(send(inner.clone(), batch));
                }
                let batch = pending.entry(key.clone()).or_insert(Pending {
                    waiters: Vec::new(),
                    inputs: 0,
                    generation,
                });
                batch.generation = generation;
                batch.inputs = count;
                batch.waiters.push(waiter);
                let (timer_shared, timer_key, timer_inner) =
                    (shared.clone(), key.clone(), inner.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(timer_shared.config.window).await;
                    let batch = {
                        let mut pending = timer_shared.pending();
                        match pending.get(&timer_key) {
                            Some(b) if b.generation == generation => pending.remove(&timer_key),
                            _ => None,
                        }
                    };
                    if let Some(batch) = batch {
                        send(timer_inner, batch).await;
                    }
                });
                count >= shared.config.max_inputs
            }
        };
        if full {
            if let Some(batch) = pending.remove(&key) {
                tokio::spawn(send(inner, batch));
            }
        }
        drop(pending);
        Box::pin(async move {
            answered
                .await
                .unwrap_or_else(|_| Err("the embedding batch was dropped".into()))
        })
    }
}

/// Sends a batch and gives each caller its part.
async fn send<S, B>(inner: S, batch: Pending)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut waiters = batch.waiters;
    metrics::counter!(BATCHES_TOTAL).increment(1);
    if waiters.len() == 1 {
        let Some(waiter) = waiters.pop() else { return };
        let result = inner
            .oneshot(waiter.request)
            .await
            .map(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into);
        let _ = waiter.answer.send(result);
        return;
    }
    metrics::counter!(BATCHED_REQUESTS_TOTAL).increment(waiters.len() as u64);

    // The first caller's request carries the merged input, at the best
    // priority among the callers.
    let all: Vec<Value> = waiters
        .iter()
        .flat_map(|w| w.inputs.iter().cloned())
        .collect();
    let best = waiters.iter().map(|w| w.priority).min().unwrap_or_default();
    let template = &waiters[0].request;
    let merged = template
        .body()
        .buffered()
        .and_then(|b| serde_json::from_slice::<Map<String, Value>>(b).ok());
    let Some(mut merged) = merged else {
        for waiter in waiters {
            let _ = waiter
                .answer
                .send(Err("could not merge an embedding batch".into()));
        }
        return;
    };
    merged.insert("input".into(), Value::Array(all));
    let body = Bytes::from(serde_json::to_vec(&merged).unwrap_or_default());
    let mut request = Request::builder()
        .method(template.method().clone())
        .uri(template.uri().clone())
        .version(template.version())
        .body(Body::from(body.clone()))
        .unwrap_or_default();
    *request.headers_mut() = template.headers().clone();
    request.headers_mut().remove(header::CONTENT_LENGTH);
    if let Some(meta) = template.extensions().get::<RequestMeta>() {
        let mut meta = meta.clone();
        meta.priority = best;
        meta.body_bytes = body.len();
        request.extensions_mut().insert(meta);
    }

    let answer = match inner.oneshot(request).await.map_err(Into::into) {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            match body.collect().await {
                Ok(collected) => Ok((parts, collected.to_bytes())),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e),
    };
    let (parts, bytes) = match answer {
        Ok(answer) => answer,
        Err(error) => {
            // Every waiter gets the upstream's own error (a 502, a 504),
            // not a message a 500 would be made of.
            let shared = corral_core::SharedError::new(error);
            for waiter in waiters {
                let _ = waiter.answer.send(Err(Box::new(shared.clone())));
            }
            return;
        }
    };
    let split = (parts.status == StatusCode::OK)
        .then(|| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .flatten()
        .and_then(|doc| {
            let vectors = doc.get("embeddings")?.as_array()?.clone();
            let total: usize = waiters.iter().map(|w| w.inputs.len()).sum();
            (vectors.len() == total).then_some((doc, vectors))
        });
    let Some((doc, vectors)) = split else {
        // An error, or an answer that cannot be split: everyone gets it.
        for waiter in waiters {
            let mut response = Response::new(corral_core::full(bytes.clone()));
            *response.status_mut() = parts.status;
            *response.headers_mut() = parts.headers.clone();
            let _ = waiter.answer.send(Ok(response));
        }
        return;
    };
    let total = vectors.len().max(1) as f64;
    let prompt_tokens = doc
        .get("prompt_eval_count")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut offset = 0;
    for waiter in waiters {
        let n = waiter.inputs.len();
        let mut own = doc.clone();
        own.insert(
            "embeddings".into(),
            Value::Array(vectors[offset..offset + n].to_vec()),
        );
        own.insert(
            "prompt_eval_count".into(),
            Value::from((prompt_tokens * n as f64 / total).round() as u64),
        );
        offset += n;
        let mut response = Response::new(corral_core::full(
            serde_json::to_vec(&own).unwrap_or_default(),
        ));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers.clone();
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response
            .headers_mut()
            .insert("x-corral-batch", HeaderValue::from(vectors.len()));
        let _ = waiter.answer.send(Ok(response));
    }
}
