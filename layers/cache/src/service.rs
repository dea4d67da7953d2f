use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use corral_core::{Body, BoxBody, BoxError, Degradation, EndpointKind, RequestMeta};
use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::answer::Answer;
use crate::coalesce::{follow, lead, respond_from, Coalesced, Keeping};
use crate::config::CacheConfig;
use crate::key::{key, usage, Key, X_CORRAL_CACHE};
use crate::metrics::{CACHE_COALESCED_TOTAL, CACHE_HITS_TOTAL, CACHE_MISSES_TOTAL};
use crate::store::{CacheStore, Entry, Lookup};

/// What every clone of the service shares: the settings, the store and
/// the coalesced calls running now.
pub(crate) struct Cache {
    pub(crate) config: CacheConfig,
    pub(crate) store: Arc<dyn CacheStore>,
    leaders: Mutex<HashMap<(Key, bool), Arc<Coalesced>>>,
}

impl Cache {
    pub(crate) fn new(config: CacheConfig, store: Arc<dyn CacheStore>) -> Self {
        Self {
            config,
            store,
            leaders: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn leaders(&self) -> MutexGuard<'_, HashMap<(Key, bool), Arc<Coalesced>>> {
        corral_core::lock(&self.leaders)
    }
}

corral_core::layer_service! {
    /// Serves deterministic answers from the cache, joins identical requests
    /// in flight, and keeps what comes back.
    pub struct CacheService<S> {
        shared: Arc<Cache>,
    }
    debug()
}

/// The response future of [`CacheService`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send>>;

pub(crate) fn with_cache_header(
    mut response: Response<BoxBody>,
    value: &'static str,
) -> Response<BoxBody> {
    response
        .headers_mut()
        .insert(X_CORRAL_CACHE, HeaderValue::from_static(value));
    response
}

pub(crate) fn boxed<B>(response: Response<B>) -> Response<BoxBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    response.map(corral_core::boxed)
}

impl<S, B> Service<Request<Body>> for CacheService<S>
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
        let passing = |inner: S, request| -> ResponseFuture {
            Box::pin(async move { inner.oneshot(request).await.map(boxed).map_err(Into::into) })
        };
        let Some(meta) = RequestMeta::of(&request, "cache").cloned() else {
            return passing(inner, request);
        };
        // A private class's answers are keyed by agent: an agent that did
        // not prove who it is could be anyone, so it shares nothing.
        if meta.endpoint.kind() != EndpointKind::Inference || (meta.private && !meta.authenticated)
        {
            return passing(inner, request);
        }
        let allowed = usage(&meta, request.headers());
        if !allowed.read && !allowed.write {
            let future = passing(inner, request);
            return Box::pin(async move { future.await.map(|r| with_cache_header(r, "bypass")) });
        }
        let Some(json) = request
            .body()
            .buffered()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        else {
            return passing(inner, request);
        };
        let shared = &self.shared;
        let key = key(&meta, &json, shared.config.namespace);
        let include_usage = json
            .pointer("/stream_options/include_usage")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        let degradation = request
            .extensions()
            .get::<Degradation>()
            .copied()
            .unwrap_or_default();

        let request = Call {
            inner,
            request,
            meta,
            key,
            write: allowed.write,
            include_usage,
            degradation,
        };
        if !allowed.read {
            return miss(shared, request);
        }
        match shared.store.get(&request.key) {
            Lookup::Now(entry) => match hit(entry, &request) {
                Some(response) => Box::pin(std::future::ready(Ok(response))),
                None => miss(shared, request),
            },
            Lookup::Later(entry) => {
                let shared = shared.clone();
                Box::pin(async move {
                    match hit(entry.await, &request) {
                        Some(response) => Ok(response),
                        None => miss(&shared, request).await,
                    }
                })
            }
        }
    }
}

/// A cacheable request, between the lookup and the answer.
struct Call<S> {
    inner: S,
    request: Request<Body>,
    meta: RequestMeta,
    key: Key,
    write: bool,
    include_usage: bool,
    degradation: Degradation,
}

/// The answer `entry` gives `call`, if it is fresh enough.
fn hit<S>(entry: Option<Arc<Entry>>, call: &Call<S>) -> Option<Response<BoxBody>> {
    let entry = entry?;
    let fresh = Instant::now() < entry.fresh_until;
    if !fresh && !call.degradation.serve_stale {
        return None;
    }
    let label = if fresh { "fresh" } else { "stale" };
    metrics::counter!(CACHE_HITS_TOTAL, "freshness" => label).increment(1);
    let response = render(&entry.answer, call.meta.stream, call.include_usage);
    Some(with_cache_header(
        response,
        if fresh { "hit" } else { "stale" },
    ))
}

/// Not in the cache: joins an identical request in flight, or starts one.
fn miss<S, B>(shared: &Arc<Cache>, call: Call<S>) -> ResponseFuture
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Call {
        inner,
        request,
        meta,
        key,
        write,
        degradation,
        include_usage,
    } = call;
    let slot = (key, meta.stream);
    if shared.config.coalesce {
        let leaders = shared.leaders();
        if let Some(reader) = leaders.get(&slot).and_then(|f| f.reader(false)) {
            drop(leaders);
            metrics::counter!(CACHE_COALESCED_TOTAL).increment(1);
            return Box::pin(follow(reader, inner, request));
        }
    }
    metrics::counter!(CACHE_MISSES_TOTAL).increment(1);
    let call = Coalesced::new();
    let Some(reader) = call.reader(true) else {
        return Box::pin(
            async move { inner.oneshot(request).await.map(boxed).map_err(Into::into) },
        );
    };
    if shared.config.coalesce {
        shared.leaders().insert(slot, call.clone());
    }
    let ttl = shared
        .config
        .ttl_for(meta.endpoint)
        .mul_f64(degradation.ttl_factor.max(1.0));
    tokio::spawn(lead(
        shared.clone(),
        call,
        slot,
        inner,
        request,
        Keeping {
            write,
            endpoint: meta.endpoint,
            ttl,
            include_usage,
            priority: meta.priority.get(),
        },
    ));
    Box::pin(async move {
        match respond_from(reader).await {
            // Another replica's answer says so already.
            Ok(response) if response.headers().contains_key(X_CORRAL_CACHE) => Ok(response),
            Ok(response) => Ok(with_cache_header(response, "miss")),
            Err((error, _)) => Err(error.unwrap_or_else(|| "the upstream call failed".into())),
        }
    })
}

/// A cached answer as a response.
fn render(answer: &Answer, stream: bool, include_usage: bool) -> Response<BoxBody> {
    let (content_type, frames) = answer.render(stream, include_usage);
    let body = if frames.len() == 1 {
        corral_core::full(frames.into_iter().next().unwrap_or_default())
    } else {
        // One whole line (or event) per frame.
        let frames = frames
            .into_iter()
            .map(|f| Ok::<_, BoxError>(http_body::Frame::data(f)));
        http_body_util::StreamBody::new(futures_stream(frames)).boxed_unsync()
    };
    let mut response = Response::new(body);
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// An iterator as a stream, ready at every poll.
fn futures_stream<I: Iterator + Unpin>(iter: I) -> Frames<I> {
    Frames(iter)
}

struct Frames<I>(I);

impl<I: Iterator + Unpin> futures_core::Stream for Frames<I> {
    type Item = I::Item;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
}
