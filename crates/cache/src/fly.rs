//! The upstream call behind a flight, and the requests waiting on it:
//! the call runs on its own task, reads the answer into the flight and
//! keeps it; the leader and those who joined read the flight.

use std::sync::Arc;

use bytes::Bytes;
use corral_core::{Body, BoxBody, BoxError};
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::answer::Answer;
use crate::flight::{Flight, FlightBody, Outcome, Subscription};
use crate::key::{Key, X_CORRAL_CACHE};
use crate::metrics::CACHE_COALESCED_TOTAL;
use crate::service::{boxed, with_cache_header, Shared};
use crate::store::{Claim, ClaimGuard, Entry};

/// Waits for the flight's headers; the response reading its frames.
pub(crate) async fn head(
    mut subscription: Subscription,
) -> Result<Response<BoxBody>, (Option<BoxError>, Subscription)> {
    let outcome = std::future::poll_fn(|cx| subscription.poll_head(cx)).await;
    match outcome {
        Outcome::Ready(status, headers) => {
            let mut response = Response::new(FlightBody::new(subscription).boxed_unsync());
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        }
        Outcome::Failed(error) => Err((error, subscription)),
    }
}

/// A joined request: the leader's answer, or its own call if the leader's
/// failed.
pub(crate) async fn follow<S, B>(
    subscription: Subscription,
    inner: S,
    request: Request<Body>,
) -> Result<Response<BoxBody>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match head(subscription).await {
        Ok(response) => Ok(with_cache_header(response, "coalesced")),
        Err((_, subscription)) => {
            drop(subscription);
            inner.oneshot(request).await.map(boxed).map_err(Into::into)
        }
    }
}

/// What to keep once the answer is complete.
pub(crate) struct Keep {
    pub(crate) write: bool,
    pub(crate) endpoint: corral_core::Endpoint,
    pub(crate) ttl: std::time::Duration,
    /// For an answer another replica generated: whether the stream ends
    /// with OpenAI's usage chunk.
    pub(crate) include_usage: bool,
    /// The request's priority: a more urgent one does not wait for a
    /// less urgent one another replica generates.
    pub(crate) priority: u8,
}

/// The shared upstream call: reads the answer into the flight, keeps it
/// when complete, and stops early if every reader left.
pub(crate) async fn fly<S, B>(
    shared: Arc<Shared>,
    flight: Arc<Flight>,
    slot: (Key, bool),
    inner: S,
    request: Request<Body>,
    keep: Keep,
) where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let forget = |shared: &Shared| {
        let mut flights = shared.flights();
        if flights.get(&slot).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(&slot);
        }
    };
    // Another replica may be generating the same answer: wait for it
    // rather than ask the upstream twice. Only a request that will keep
    // its answer makes the others wait for it.
    let claim = if keep.write {
        tokio::select! {
            claim = shared.store.claim(&slot.0, keep.priority) => claim,
            () = flight.abandoned() => {
                forget(&shared);
                return;
            }
        }
    } else {
        Claim::Generate(ClaimGuard::default())
    };
    // Held until the answer is kept (or will not be): then the others go.
    let _claim = match claim {
        Claim::Generate(guard) => guard,
        Claim::Wait(done) => {
            tokio::select! {
                () = done => {}
                () = flight.abandoned() => {
                    forget(&shared);
                    return;
                }
            }
            // Only what the other replica just kept: an older entry
            // found instead (it gave up) is not this request's answer.
            let found = shared.store.get(&slot.0).found().await;
            if let Some(entry) = found.filter(|e| Instant::now() < e.fresh_until) {
                metrics::counter!(CACHE_COALESCED_TOTAL).increment(1);
                serve(&flight, &entry.answer, slot.1, keep.include_usage);
                forget(&shared);
                return;
            }
            // It gave up, or went away: generate it here.
            ClaimGuard::default()
        }
    };
    let result = tokio::select! {
        result = inner.oneshot(request) => result.map_err(Into::into),
        () = flight.abandoned() => {
            forget(&shared);
            return;
        }
    };
    let response = match result {
        Ok(response) => response,
        Err(error) => {
            forget(&shared);
            flight.failed(error);
            return;
        }
    };
    let (mut parts, body) = response.into_parts();
    // This layer's header says what this layer did (an upstream that is
    // itself a Corral says its own).
    parts.headers.remove(X_CORRAL_CACHE);
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = parts.status;
    flight.headers(status, parts.headers);
    let mut collected = (keep.write && status == StatusCode::OK).then(Vec::new);
    let mut body = std::pin::pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = flight.abandoned() => {
                forget(&shared);
                return;
            }
        };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if let Some(buffer) = collected.as_mut() {
                        if buffer.len() + data.len() <= shared.config.max_entry_bytes {
                            buffer.extend_from_slice(&data);
                        } else {
                            collected = None;
                        }
                    }
                    flight.chunk(data);
                }
            }
            Some(Err(error)) => {
                let error: BoxError = error.into();
                forget(&shared);
                flight.end(Some(error.to_string()));
                return;
            }
            None => break,
        }
    }
    // Keep the answer before telling the readers it ended, so a client
    // that asks again the moment it has read it finds it.
    if let Some(bytes) = collected {
        if let Some(answer) = Answer::capture(keep.endpoint, &content_type, &bytes) {
            let now = Instant::now();
            shared.store.insert(
                slot.0,
                Entry {
                    answer,
                    fresh_until: now + keep.ttl,
                    stale_until: now + keep.ttl + shared.config.stale_for,
                },
            );
        }
    }
    forget(&shared);
    flight.end(None);
}

/// An answer another replica generated, into the flight as if it came
/// from the upstream.
fn serve(flight: &Flight, answer: &Answer, stream: bool, include_usage: bool) {
    let (content_type, frames) = answer.render(stream, include_usage);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(X_CORRAL_CACHE, http::HeaderValue::from_static("coalesced"));
    flight.headers(StatusCode::OK, headers);
    for frame in frames {
        flight.chunk(frame);
    }
    flight.end(None);
}
