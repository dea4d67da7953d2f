//! The leader: the first of identical requests, whose upstream call runs
//! on its own task, reads the answer into the [`Coalesced`] call and keeps
//! it when complete; it stops early if every reader left.

use std::sync::Arc;

use bytes::Bytes;
use corral_core::{Body, BoxError};
use http::{header, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::call::Coalesced;
use crate::answer::Answer;
use crate::key::{Key, X_CORRAL_CACHE};
use crate::metrics::CACHE_COALESCED_TOTAL;
use crate::service::Cache;
use crate::store::{Claim, ClaimGuard, Entry};

/// What to keep once the answer is complete.
pub(crate) struct Keeping {
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

/// How a call ended, for its readers.
enum Ending {
    /// Everyone left: nobody to tell.
    Abandoned,
    /// The call failed before its answer's head.
    Failed(BoxError),
    /// The answer ended: whole, or broken mid-stream with this message.
    Ended(Option<String>),
}

/// The leader's upstream call: reads the answer into `call`, keeps it
/// when complete, and stops early if every reader left.
pub(crate) async fn lead<S, B>(
    shared: Arc<Cache>,
    call: Arc<Coalesced>,
    slot: (Key, bool),
    inner: S,
    request: Request<Body>,
    keep: Keeping,
) where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let ending = generate(&shared, &call, &slot, inner, request, keep).await;
    // No one joins a call that is ending: a request arriving now
    // starts its own (or finds the answer kept).
    let mut leaders = shared.leaders();
    if leaders.get(&slot).is_some_and(|f| Arc::ptr_eq(f, &call)) {
        leaders.remove(&slot);
    }
    drop(leaders);
    match ending {
        Ending::Abandoned => {}
        Ending::Failed(error) => call.failed(error),
        Ending::Ended(broken) => call.end(broken),
    }
}

/// The leader's work up to its end: claim the answer, call, relay and
/// keep.
async fn generate<S, B>(
    shared: &Cache,
    call: &Coalesced,
    slot: &(Key, bool),
    inner: S,
    request: Request<Body>,
    keep: Keeping,
) -> Ending
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // Held until the answer is kept (or will not be): then the other
    // replicas waiting for it go.
    let _claim = match claim(shared, call, slot, &keep).await {
        Ok(guard) => guard,
        Err(ending) => return ending,
    };
    let response = match unless_abandoned(call, inner.oneshot(request)).await {
        None => return Ending::Abandoned,
        Some(Err(error)) => return Ending::Failed(error.into()),
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
    call.headers(parts.status, parts.headers);
    let collected = match relay(call, body, keeping, shared.config.max_entry_bytes).await {
        Ok(collected) => collected,
        Err(ending) => return ending,
    };
    // Keeping the answer before telling the readers it ended, so a client
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
    Ending::Ended(None)
}

/// Whether to generate the answer here, holding the claim on it. Another
/// replica may be generating the same answer: then wait for it rather
/// than ask the upstream twice, and serve what it kept. Only a request
/// that will keep its answer makes the others wait for it.
async fn claim(
    shared: &Cache,
    call: &Coalesced,
    slot: &(Key, bool),
    keep: &Keeping,
) -> Result<ClaimGuard, Ending> {
    if !keep.write {
        return Ok(ClaimGuard::default());
    }
    let claim = unless_abandoned(call, shared.store.claim(&slot.0, keep.priority))
        .await
        .ok_or(Ending::Abandoned)?;
    let done = match claim {
        Claim::Generate(guard) => return Ok(guard),
        Claim::Wait(done) => done,
    };
    unless_abandoned(call, done)
        .await
        .ok_or(Ending::Abandoned)?;
    // Only what the other replica just kept: an older entry found instead
    // (it gave up) is not this request's answer.
    let found = shared.store.get(&slot.0).found().await;
    if let Some(entry) = found.filter(|e| Instant::now() < e.fresh_until) {
        metrics::counter!(CACHE_COALESCED_TOTAL).increment(1);
        serve(call, &entry.answer, slot.1, keep.include_usage);
        return Err(Ending::Ended(None));
    }
    // It gave up, or went away: generate it here.
    Ok(ClaimGuard::default())
}

/// Relays the body's frames into the coalesced call; gives back its bytes when
/// `collect` and it fits in `max_bytes`.
async fn relay<B>(
    call: &Coalesced,
    body: B,
    collect: bool,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, Ending>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut collected = collect.then(Vec::new);
    let mut body = std::pin::pin!(body);
    loop {
        let frame = unless_abandoned(call, body.frame())
            .await
            .ok_or(Ending::Abandoned)?;
        let data = match frame {
            None => return Ok(collected),
            Some(Err(error)) => return Err(Ending::Ended(Some(error.into().to_string()))),
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
        call.chunk(data);
    }
}

/// `work`'s output, or `None` once every reader left.
async fn unless_abandoned<F: std::future::Future>(call: &Coalesced, work: F) -> Option<F::Output> {
    tokio::select! {
        output = work => Some(output),
        () = call.abandoned() => None,
    }
}

/// An answer another replica generated, into the coalesced call as if it
/// came from the upstream (its end is told once the call is forgotten).
fn serve(call: &Coalesced, answer: &Answer, stream: bool, include_usage: bool) {
    let (content_type, frames) = answer.render(stream, include_usage);
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(X_CORRAL_CACHE, http::HeaderValue::from_static("coalesced"));
    call.headers(StatusCode::OK, headers);
    for frame in frames {
        call.chunk(frame);
    }
}
