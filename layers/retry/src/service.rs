use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_core::{
    classify_error, classify_status, AttemptTimedOut, Body, BoxError, Failure, Outcome,
    RequestMeta, Timeout, TimeoutKind,
};
use http::{header, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use crate::body::ResponseBody;
use crate::config::RetryConfig;
use crate::decide::{decide, Attempted, Decision, Plan};
use crate::metrics::{
    FALLBACKS_TOTAL, RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL, TIMEOUTS_TOTAL,
};

/// Says which model the answer came from when it was not the one asked
/// for: `X-Corral-Fallback: llama3->tinyllama`.
pub const X_CORRAL_FALLBACK: http::HeaderName = http::HeaderName::from_static("x-corral-fallback");

/// What every clone of the service shares: the settings, the retry
/// budget and where events go.
pub(crate) struct RetryState {
    pub(crate) config: RetryConfig,
    pub(crate) budget: TpsBudget,
    pub(crate) events: Option<Arc<dyn corral_core::EventSink>>,
}

corral_core::layer_service! {
    /// Retries what is safe to retry, within a budget, and bounds attempts
    /// and streams in time.
    pub struct RetryService<S> {
        shared: Arc<RetryState>,
    }
    debug(config: shared.config)
}

/// The response future of [`RetryService`]: the attempts, boxed.
pub type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, BoxError>> + Send>>;

impl<S, B> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = corral_core::take_ready(&mut self.inner);
        Box::pin(attempts(self.shared.clone(), inner, request))
    }
}

/// What the last attempt left.
enum Last<B> {
    Answer(Response<B>),
    Error(BoxError),
}

/// Sends the request, then again while [`decide`] says so and the
/// deadline and the budget allow.
async fn attempts<S, B>(
    shared: Arc<RetryState>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response<ResponseBody<B>>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    let config = &shared.config;
    let meta = RequestMeta::of(&request, "retry").cloned();
    let plan = Plan::new(config, meta.as_ref(), Instant::now());
    // What can be sent again: a buffered body. A streamed upload cannot.
    let replay = plan.retryable.then(|| request.body().try_clone()).flatten();
    shared.budget.deposit();

    let (parts, body) = request.into_parts();
    let mut first_body = Some(body);
    let mut fallbacks = config.fallback_models.iter().peekable();
    let mut model: Option<&String> = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let body = match first_body.take() {
            Some(body) => body,
            None => replayed(replay.as_ref(), model)?,
        };
        let timed_out = AttemptTimedOut::default();
        let request = attempt_request(&parts, body, model, &timed_out);
        let call = inner.ready().await.map_err(Into::into)?.call(request);
        let result = within(call, plan.attempt_limit(Instant::now()), config, &timed_out).await;

        let (failure, last, retry_after) = match judge(result) {
            Judged::Good(response) => {
                let original = meta.as_ref().and_then(|m| m.model.as_deref());
                return Ok(answered(
                    response, config, &plan, original, model, timed_out,
                ));
            }
            Judged::Failed(failure, last, retry_after) => (failure, last, retry_after),
            Judged::NotUpstreams(err) => return Err(err),
        };

        let attempted = Attempted {
            failure,
            attempt,
            retry_after,
            next_fallback: fallbacks.peek().map(|m| m.as_str()),
            replayable: replay.is_some(),
            rerun_slow: plan.rerun_slow,
        };
        let Decision::Retry { wait, fallback } = decide(config, &attempted) else {
            return give_up(last, config);
        };
        let wait = wait.draw();
        if plan.deadline.is_some_and(|d| Instant::now() + wait >= d) {
            // A retry that cannot finish before the deadline is not
            // started.
            return give_up(last, config);
        }
        if !shared.budget.withdraw() {
            metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).increment(1);
            tracing::debug!("retry budget spent: not retrying");
            return give_up(last, config);
        }
        if fallback.is_some() {
            model = fallbacks.next();
            attempt = 0;
        }
        record_retry(&shared, meta.as_ref(), &attempted, wait, model, fallback);
        drop(last);
        tokio::time::sleep(wait).await;
    }
}

/// What an attempt came to.
enum Judged<B> {
    /// An answer to give back.
    Good(Response<B>),
    /// A failure of the upstream's, what it left, and the `Retry-After`
    /// it asked for.
    Failed(Failure, Last<B>, Option<Duration>),
    /// An error that is no failure of the upstream's: it goes back as it
    /// is.
    NotUpstreams(BoxError),
}

fn judge<B>(result: Result<Response<B>, BoxError>) -> Judged<B> {
    match result {
        Ok(response) => match classify_status(response.status()) {
            Outcome::Failure(failure) => {
                let after = retry_after(&response);
                Judged::Failed(failure, Last::Answer(response), after)
            }
            _ => Judged::Good(response),
        },
        Err(err) => match classify_error(&*err) {
            Outcome::Failure(failure) => Judged::Failed(failure, Last::Error(err), None),
            _ => Judged::NotUpstreams(err),
        },
    }
}

/// The body to send again: the client's, or with `model` in it for a
/// fallback.
fn replayed(replay: Option<&Body>, model: Option<&String>) -> Result<Body, BoxError> {
    Ok(match replay {
        Some(bytes) => match (model, bytes.buffered()) {
            (Some(model), Some(json)) => Body::from(with_model(json, model)?),
            _ => bytes.try_clone().unwrap_or_default(),
        },
        None => unreachable_body(),
    })
}

/// One attempt's request: the client's head with `body`, naming the
/// fallback `model` when there is one, marked so the layers below can
/// tell this layer's timeout from a client that left.
fn attempt_request(
    parts: &http::request::Parts,
    body: Body,
    model: Option<&String>,
    timed_out: &AttemptTimedOut,
) -> Request<Body> {
    let mut request = Request::from_parts(parts.clone(), body);
    if let Some(model) = model {
        // The body was rewritten for the fallback model: its length is no
        // longer the client's (hyper would trust the header).
        request.headers_mut().remove(header::CONTENT_LENGTH);
        if let Some(meta) = request.extensions_mut().get_mut::<RequestMeta>() {
            meta.model = Some(model.as_str().into());
        }
    }
    request.extensions_mut().insert(timed_out.clone());
    request
}

/// Waits for the attempt's answer within `limit`; past it, a [`Timeout`]
/// naming the limit the operator set.
async fn within<F, B, E>(
    call: F,
    limit: Option<(Duration, TimeoutKind)>,
    config: &RetryConfig,
    timed_out: &AttemptTimedOut,
) -> Result<Response<B>, BoxError>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    let Some((limit, kind)) = limit else {
        return call.await.map_err(Into::into);
    };
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => {
            // Mark before the attempt is dropped, so a breaker below
            // counts a timeout, not a client that left.
            timed_out.set();
            let (label, limit) = match kind {
                TimeoutKind::Total => ("total", config.total_timeout.unwrap_or(limit)),
                _ => ("first_byte", limit),
            };
            metrics::counter!(TIMEOUTS_TOTAL, "kind" => label).increment(1);
            Err(Box::new(Timeout::new(kind, limit)))
        }
    }
}

/// A good answer, its stream bounded by the idle and total timeouts, and
/// saying which model it came from when it fell back.
fn answered<B>(
    mut response: Response<B>,
    config: &RetryConfig,
    plan: &Plan,
    original: Option<&str>,
    model: Option<&String>,
    timed_out: AttemptTimedOut,
) -> Response<ResponseBody<B>> {
    if let (Some(model), Some(original)) = (model, original) {
        if let Ok(value) = HeaderValue::from_str(&format!("{original}->{model}")) {
            response.headers_mut().insert(X_CORRAL_FALLBACK, value);
        }
    }
    let total = plan.total_deadline.zip(config.total_timeout);
    let (parts, body) = response.into_parts();
    let body = ResponseBody::new(body, config.idle_timeout, total).marking(timed_out);
    Response::from_parts(parts, body)
}

/// Counts the retry about to be made, and tells the event log.
fn record_retry(
    shared: &RetryState,
    meta: Option<&RequestMeta>,
    attempted: &Attempted<'_>,
    wait: Duration,
    model: Option<&String>,
    fallback: Option<&str>,
) {
    let reason = attempted.failure.as_str();
    metrics::counter!(RETRIES_TOTAL, "reason" => reason).increment(1);
    if let Some(fallback) = fallback {
        metrics::counter!(FALLBACKS_TOTAL, "model" => fallback.to_string()).increment(1);
        tracing::info!(model = %fallback, "attempts failed with overload: falling back");
    }
    if let (Some(events), Some(meta)) = (&shared.events, meta) {
        let next = if fallback.is_some() {
            1
        } else {
            attempted.attempt + 1
        };
        events.record(
            corral_core::NewEvent::new(
                "retry",
                serde_json::json!({
                    "reason": reason,
                    "attempt": next,
                    "wait_ms": wait.as_millis() as u64,
                    "model": model.map_or(meta.model_str(), |m| m.as_str()),
                }),
            )
            .about(meta.agent.as_str(), meta.request_id.as_str()),
        );
    }
}

/// Gives back what the last attempt left: its answer (with the stream
/// timeouts) or its error.
fn give_up<B>(last: Last<B>, config: &RetryConfig) -> Result<Response<ResponseBody<B>>, BoxError> {
    match last {
        Last::Answer(response) => {
            let (parts, body) = response.into_parts();
            let body = ResponseBody::new(body, config.idle_timeout, None);
            Ok(Response::from_parts(parts, body))
        }
        Last::Error(err) => Err(err),
    }
}

/// The upstream's `Retry-After`, in seconds.
fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The request body with its `model` replaced.
fn with_model(json: &bytes::Bytes, model: &str) -> Result<bytes::Bytes, BoxError> {
    let mut value: serde_json::Value = serde_json::from_slice(json)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("model".into(), serde_json::Value::String(model.to_string()));
    }
    Ok(bytes::Bytes::from(serde_json::to_vec(&value)?))
}

/// Never reached: without a replayable body there is no second attempt.
fn unreachable_body() -> Body {
    Body::empty()
}
