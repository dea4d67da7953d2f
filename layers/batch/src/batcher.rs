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

/// The batches being gathered, by model and options, shared by every
/// clone of the service.
struct Batches {
    config: BatchConfig,
    pending: Mutex<HashMap<String, Pending>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Batches {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        corral_core::lock(&self.pending)
    }
}

/// Puts a [`BatchService`] in front of a service.
#[derive(Clone)]
pub struct BatchLayer {
    shared: Arc<Batches>,
}

corral_core::impl_debug!(BatchLayer {
    config: shared.config
});

impl BatchLayer {
    /// A layer for `config`.
    pub fn new(config: &BatchConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Batches {
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
        BatchService::new(inner, self.shared.clone())
    }
}

corral_core::layer_service! {
    /// Merges concurrent single embedding requests; passes everything else.
    pub struct BatchService<S> {
        shared: Arc<Batches>,
    }
    debug()
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
        let inner = corral_core::take_ready(&mut self.inner);
        let Some((inputs, key)) = batchable(&request) else {
            return Box::pin(alone(inner, request));
        };
        let (answer, answered) = oneshot::channel();
        let priority = request
            .extensions()
            .get::<RequestMeta>()
            .map(|m| m.priority)
            .unwrap_or_default();
        let waiter = Waiter {
            inputs,
            priority,
            request,
            answer,
        };
        gather(&self.shared, key, waiter, inner);
        Box::pin(async move {
            answered
                .await
                .unwrap_or_else(|_| Err("the embedding batch was dropped".into()))
        })
    }
}

/// Puts the waiter in the batch gathering under `key`, or starts one
/// (sent when its window ends); a batch goes as soon as it is full, and
/// one with no room for the waiter goes at once.
fn gather<S, B>(shared: &Arc<Batches>, key: String, waiter: Waiter, inner: S)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let max = shared.config.max_inputs;
    let count = waiter.inputs.len();
    let mut pending = shared.pending();
    // A new batch, or the one gathering has no room: it goes now and
    // this waiter starts the next.
    if pending.get(&key).is_none_or(|b| b.inputs + count > max) {
        if let Some(full) = pending.remove(&key) {
            tokio::spawn(send(inner.clone(), full));
        }
        let generation = shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let batch = Pending {
            waiters: Vec::new(),
            inputs: 0,
            generation,
        };
        pending.insert(key.clone(), batch);
        tokio::spawn(send_when_due(
            shared.clone(),
            key.clone(),
            generation,
            inner.clone(),
        ));
    }
    let Some(batch) = pending.get_mut(&key) else {
        return;
    };
    batch.inputs += count;
    batch.waiters.push(waiter);
    if batch.inputs >= max {
        if let Some(full) = pending.remove(&key) {
            tokio::spawn(send(inner, full));
        }
    }
}

/// Sends the batch `generation` under `key` when its window ends, unless
/// it went already (full).
async fn send_when_due<S, B>(shared: Arc<Batches>, key: String, generation: u64, inner: S)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    tokio::time::sleep(shared.config.window).await;
    let batch = {
        let mut pending = shared.pending();
        match pending.get(&key) {
            Some(b) if b.generation == generation => pending.remove(&key),
            _ => None,
        }
    };
    if let Some(batch) = batch {
        send(inner, batch).await;
    }
}

/// One request on its own, its answer's body boxed.
async fn alone<S, B>(inner: S, request: Request<Body>) -> Result<Response<BoxBody>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    inner
        .oneshot(request)
        .await
        .map(|r| r.map(corral_core::boxed))
        .map_err(Into::into)
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
        let _ = waiter.answer.send(alone(inner, waiter.request).await);
        return;
    }
    metrics::counter!(BATCHED_REQUESTS_TOTAL).increment(waiters.len() as u64);
    let Some(request) = merged(&waiters) else {
        for waiter in waiters {
            let _ = waiter
                .answer
                .send(Err("could not merge an embedding batch".into()));
        }
        return;
    };
    let (parts, bytes) = match whole(inner, request).await {
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
    let sizes: Vec<usize> = waiters.iter().map(|w| w.inputs.len()).collect();
    let shares = (parts.status == StatusCode::OK)
        .then(|| shares(&bytes, &sizes))
        .flatten();
    let Some(shares) = shares else {
        // An error, or an answer that cannot be split: everyone gets it.
        for waiter in waiters {
            let mut response = Response::new(corral_core::full(bytes.clone()));
            *response.status_mut() = parts.status;
            *response.headers_mut() = parts.headers.clone();
            let _ = waiter.answer.send(Ok(response));
        }
        return;
    };
    let inputs: usize = sizes.iter().sum();
    for (waiter, share) in waiters.into_iter().zip(shares) {
        let mut response = Response::new(corral_core::full(share));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers.clone();
        response.headers_mut().remove(header::CONTENT_LENGTH);
        response
            .headers_mut()
            .insert("x-corral-batch", HeaderValue::from(inputs));
        let _ = waiter.answer.send(Ok(response));
    }
}

/// The first caller's request carrying every caller's input, at the best
/// priority among them.
fn merged(waiters: &[Waiter]) -> Option<Request<Body>> {
    let all: Vec<Value> = waiters
        .iter()
        .flat_map(|w| w.inputs.iter().cloned())
        .collect();
    let best = waiters.iter().map(|w| w.priority).min().unwrap_or_default();
    let template = &waiters.first()?.request;
    let mut json: Map<String, Value> = serde_json::from_slice(template.body().buffered()?).ok()?;
    json.insert("input".into(), Value::Array(all));
    let body = Bytes::from(serde_json::to_vec(&json).ok()?);
    let mut request = Request::builder()
        .method(template.method().clone())
        .uri(template.uri().clone())
        .version(template.version())
        .body(Body::from(body.clone()))
        .ok()?;
    *request.headers_mut() = template.headers().clone();
    request.headers_mut().remove(header::CONTENT_LENGTH);
    if let Some(meta) = template.extensions().get::<RequestMeta>() {
        let mut meta = meta.clone();
        meta.priority = best;
        meta.body_bytes = body.len();
        request.extensions_mut().insert(meta);
    }
    Some(request)
}

/// The answer's head and its whole body.
async fn whole<S, B>(
    inner: S,
    request: Request<Body>,
) -> Result<(http::response::Parts, Bytes), BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let response = inner.oneshot(request).await.map_err(Into::into)?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
    Ok((parts, bytes))
}

/// Each caller's part of a batch's answer, `sizes[i]` inputs each: its
/// embeddings, and the prompt tokens in proportion. `None` when the answer
/// does not hold one embedding per input.
fn shares(answer: &[u8], sizes: &[usize]) -> Option<Vec<Vec<u8>>> {
    let doc: Map<String, Value> = serde_json::from_slice(answer).ok()?;
    let vectors = doc.get("embeddings")?.as_array()?;
    if vectors.len() != sizes.iter().sum::<usize>() {
        return None;
    }
    let total = vectors.len().max(1) as f64;
    let prompt_tokens = doc
        .get("prompt_eval_count")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let mut offset = 0;
    let mut parts = Vec::with_capacity(sizes.len());
    for &n in sizes {
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
        parts.push(serde_json::to_vec(&own).ok()?);
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::shares;
    use serde_json::{json, Value};

    #[test]
    fn each_caller_gets_its_embeddings_and_its_share_of_the_prompt() {
        let answer =
            json!({"model": "m", "embeddings": [[1], [2], [3], [4]], "prompt_eval_count": 8});
        let parts = shares(answer.to_string().as_bytes(), &[1, 3]).unwrap();
        let parts: Vec<Value> = parts
            .iter()
            .map(|p| serde_json::from_slice(p).unwrap())
            .collect();
        assert_eq!(
            parts[0],
            json!({"model": "m", "embeddings": [[1]], "prompt_eval_count": 2})
        );
        assert_eq!(
            parts[1],
            json!({"model": "m", "embeddings": [[2], [3], [4]], "prompt_eval_count": 6})
        );
    }

    #[test]
    fn an_answer_without_one_embedding_per_input_is_not_split() {
        let short = json!({"embeddings": [[1], [2]]}).to_string();
        assert!(shares(short.as_bytes(), &[1, 2]).is_none());
        assert!(shares(b"{\"error\": \"no\"}", &[1, 1]).is_none());
        assert!(shares(b"not json", &[1]).is_none());
    }
}
