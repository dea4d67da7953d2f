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

/// How a flight ended, for its readers.
enum Landing {
    /// Everyone left: nobody to tell.
    Abandoned,
    /// The call failed before its answer's head.
    Failed(BoxError),
    /// The answer ended: whole, or broken mid-stream with this message.
    Ended(Option<String>),
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
    let landing = carry(&shared, &flight, &slot, inner, request, keep).await;
    // No one joins a flight that is landing: a request arriving now
    // starts its own (or finds the answer kept).
    let mut flights = shared.flights();
    if flights.get(&slot).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
        flights.remove(&slot);
    }
    drop(flights);
    match landing {
        Landing::Abandoned => {}
        Landing::Failed(error) => flight.failed(error),
        Landing::Ended(broken) => flight.end(broken),
    }
}

/// The flight's work up to its end: claim the answer, call, relay and
/// keep.
async fn carry<S, B>(
    shared: &Shared,
    flight: &Flight,
    slot: &(Key, bool),
    inner: S,
    request: Request<Body>,
    keep: Keep,
) -> Landing
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Held until the answer is kept (or will not be): then the other
    // replicas waiting for it go.
    let _claim = match claim(shared, flight, slot, &keep).await {
        Ok(guard) => guard,
        Err(landing) => return landing,
    };
    let response = match unless_abandoned(flight, inner.oneshot(request)).await {
        None => return Landing::Abandoned,
        Some(Err(error)) => return Landing::Failed(error.into()),
        Some(Ok(response)) => response,
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
    let keeping = keep.write && parts.status == StatusCode::OK;
    flight.headers(parts.status, parts.headers);
    let collected = match relay(flight, body, keeping, shared.config.max_entry_bytes).await {
        Ok(collected) => collected,
        Err(landing) => return landing,
    };
    // Keep the answer before telling the readers it ended, so a client
    // that asks again the moment it has read it finds it.
    if let Some(answer) = collected.and_then(|b| Answer::capture(keep.endpoint, &content_type, &b))
    {
        let now = Instant::now();
        let entry = Entry {
            answer,
            fresh_until: now + keep.ttl,
            stale_until: now + keep.ttl + shared.config.stale_for,
        };
        shared.store.insert(slot.0, entry);
    }
    Landing::Ended(None)
}

/// Whether to generate the answer here, holding the claim on it. Another
/// replica may be generating the same answer: then wait for it rather
/// than ask the upstream twice, and serve what it kept. Only a request
/// that will keep its answer makes the others wait for it.
async fn claim(
    shared: &Shared,
    flight: &Flight,
    slot: &(Key, bool),
    keep: &Keep,
) -> Result<ClaimGuard, Landing> {
    if !keep.write {
        return Ok(ClaimGuard::default());
    }
    let claim = unless_abandoned(flight, shared.store.claim(&slot.0, keep.priority))
        .await
        .ok_or(Landing::Abandoned)?;
    let done = match claim {
        Claim::Generate(guard) => return Ok(guard),
        Claim::Wait(done) => done,
    };
    unless_abandoned(flight, done)
        .await
        .ok_or(Landing::Abandoned)?;
    // Only what the other replica just kept: an older entry found instead
    // (it gave up) is not this request's answer.
    let found = shared.store.get(&slot.0).found().await;
    if let Some(entry) = found.filter(|e| Instant::now() < e.fresh_until) {
        metrics::counter!(CACHE_COALESCED_TOTAL).increment(1);
        serve(flight, &entry.answer, slot.1, keep.include_usage);
        return Err(Landing::Ended(None));
    }
    // It gave up, or went away: generate it here.
    Ok(ClaimGuard::default())
}

/// Relays the body's frames into the flight; gives back its bytes when
/// `collect` and it fits in `max_bytes`.
async fn relay<B>(
    flight: &Flight,
    body: B,
    collect: bool,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, Landing>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut collected = collect.then(Vec::new);
    let mut body = std::pin::pin!(body);
    loop {
        let frame = unless_abandoned(flight, body.frame())
            .await
            .ok_or(Landing::Abandoned)?;
        let data = match frame {
            None => return Ok(collected),
            Some(Err(error)) => return Err(Landing::Ended(Some(error.into().to_string()))),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if let Some(buffer) = collected.as_mut() {
            if buffer.len() + data.len() <= max_bytes {
                buffer.extend_from_slice(&data);
            } else {
                collected = None;
            }
        }
        flight.chunk(data);
    }
}

/// `work`'s output, or `None` once every reader left.
async fn unless_abandoned<F: std::future::Future>(flight: &Flight, work: F) -> Option<F::Output> {
    tokio::select! {
        output = work => Some(output),
        () = flight.abandoned() => None,
    }
}

/// An answer another replica generated, into the flight as if it came
/// from the upstream (its end is told once the flight is forgotten).
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
}
