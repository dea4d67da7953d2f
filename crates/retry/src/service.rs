use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corral_core::{
    classify_error, classify_status, AttemptTimedOut, Body, BoxError, EndpointKind, Failure,
    Outcome, RequestMeta, Timeout, TimeoutKind,
};
use http::{header, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Service, ServiceExt};

use crate::body::ResponseBody;
use crate::config::RetryConfig;
use crate::metrics::{
    FALLBACKS_TOTAL, RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL, TIMEOUTS_TOTAL,
};

/// Says which model the answer came from when it was not the one asked
/// for: `X-Corral-Fallback: llama3->tinyllama`.
pub const X_CORRAL_FALLBACK: http::HeaderName = http::HeaderName::from_static("x-corral-fallback");

pub(crate) struct Shared {
    pub(crate) config: RetryConfig,
    pub(crate) budget: TpsBudget,
    pub(crate) events: Option<Arc<dyn corral_core::EventSink>>,
}

/// Retries what is safe to retry, within a budget, and bounds attempts
/// and streams in time.
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> RetryService<S> {
    corral_core::define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for RetryService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryService")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S> RetryService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
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
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(attempts(self.shared.clone(), inner, request))
    }
}

/// What the last attempt left.
enum Last<B> {
    Answer(Response<B>),
    Error(BoxError),
}

async fn attempts<S, B>(
    shared: Arc<Shared>,
    mut inner: S,
    request: Request<Body>,
) -> Result<Response<ResponseBody<B>>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    let config = &shared.config;
    let started = Instant::now();
    let meta = RequestMeta::of(&request, "retry").cloned();
    let total_deadline = config.total_timeout.map(|d| started + d);
    let deadline = match (meta.as_ref().and_then(|m| m.deadline), total_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let kind = meta.as_ref().map(|m| m.endpoint.kind());
    let retryable_kind = matches!(kind, Some(EndpointKind::Inference | EndpointKind::Metadata));
    // A generation that ran too long may have spent the GPU in full:
    // sending it again pays twice. Metadata reads cost nothing.
    let rerun_slow = config.rerun_timed_out || kind == Some(EndpointKind::Metadata);
    // Ollama sends no byte of a non-streamed generation before its last
    // token: a first-byte limit there would be a length limit. The total
    // timeout and the request's deadline bound it instead.
    let first_byte_timeout = match &meta {
        Some(m) if m.endpoint.kind() == EndpointKind::Inference && !m.stream => None,
        Some(m) if m.endpoint.kind() == EndpointKind::Metadata => config.metadata_timeout,
        _ => config.first_byte_timeout,
    };
    // What can be sent again: a buffered body. A streamed upload cannot.
    let replay = if retryable_kind {
        request.body().try_clone()
    } else {
        None
    };
    shared.budget.deposit();

    let (parts, body) = request.into_parts();
    let mut next_body = Some(body);
    let mut models = std::iter::once(None).chain(config.fallback_models.iter().map(Some));
    let mut model = models.next().flatten();
    let original_model = meta.as_ref().and_then(|m| m.model.clone());
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let body = match next_body.take() {
            Some(body) => body,
            None => match &replay {
                Some(bytes) => match (model, bytes.buffered()) {
                    (Some(model), Some(json)) => Body::from(with_model(json, model)?),
                    _ => bytes.try_clone().unwrap_or_default(),
                },
                None => unreachable_body(),
            },
        };
        let mut request = Request::from_parts(parts.clone(), body);
        if model.is_some() {
            // The body was rewritten for the fallback model: its length
            // is no longer the client's (hyper would trust the header).
            request.headers_mut().remove(header::CONTENT_LENGTH);
        }
        if let (Some(model), Some(meta)) =
            (model, request.extensions_mut().get_mut::<RequestMeta>())
        {
            meta.model = Some(model.as_str().into());
        }
        let timed_out = AttemptTimedOut::default();
        request.extensions_mut().insert(timed_out.clone());

        let call = inner.ready().await.map_err(Into::into)?.call(request);
        // The wait for headers is bounded by the first-byte timeout and
        // by what is left of the total timeout, whichever ends first.
        let left = total_deadline.map(|end| end.saturating_duration_since(Instant::now()));
        let limit = match (first_byte_timeout, left) {
            (Some(first), Some(left)) if left < first => Some((left, TimeoutKind::Total)),
            (Some(first), _) => Some((first, TimeoutKind::FirstByte)),
            (None, Some(left)) => Some((left, TimeoutKind::Total)),
            (None, None) => None,
        };
        let result = match limit {
            Some((limit, kind)) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => {
                    // Mark before the attempt is dropped, so a breaker
                    // below counts a timeout, not a client that left.
                    timed_out.set();
                    let label = match kind {
                        TimeoutKind::Total => "total",
                        _ => "first_byte",
                    };
                    metrics::counter!(TIMEOUTS_TOTAL, "kind" => label).increment(1);
                    let limit = match kind {
                        TimeoutKind::Total => config.total_timeout.unwrap_or(limit),
                        _ => limit,
                    };
                    Err(Box::new(Timeout::new(kind, limit)) as BoxError)
                }
            },
            None => call.await.map_err(Into::into),
        };

        let (failure, last, retry_after) = match result {
            Ok(response) => match classify_status(response.status()) {
                Outcome::Failure(failure) => {
                    let after = retry_after(&response);
                    (failure, Last::Answer(response), after)
                }
                _ => {
                    let idle = config.idle_timeout;
                    let total = total_deadline.zip(config.total_timeout);
                    let mut response = response;
                    if let (Some(model), Some(original)) = (model, &original_model) {
                        if let Ok(value) = HeaderValue::from_str(&format!("{original}->{model}")) {
                            response.headers_mut().insert(X_CORRAL_FALLBACK, value);
                        }
                    }
                    let (parts, body) = response.into_parts();
                    let body = ResponseBody::new(body, idle, total).marking(timed_out);
                    return Ok(Response::from_parts(parts, body));
                }
            },
            Err(err) => match classify_error(&*err) {
                Outcome::Failure(failure) => (failure, Last::Error(err), None),
                _ => return Err(err),
            },
        };

        if replay.is_none() || !may_retry(failure, rerun_slow) {
            return give_up(last, config);
        }
        let overload = matches!(failure, Failure::Status(503 | 504) | Failure::Timeout);
        let mut next_model = if attempt >= config.max_attempts {
            // Out of attempts on this model: on overload, go down the
            // fallback chain.
            match overload.then(|| models.next().flatten()).flatten() {
                Some(fallback) => {
                    metrics::counter!(FALLBACKS_TOTAL, "model" => fallback.clone()).increment(1);
                    tracing::info!(model = %fallback, "attempts failed with overload: falling back");
                    Some(Some(fallback))
                }
                None => return give_up(last, config),
            }
        } else {
            None
        };

        let wait = match retry_after {
            Some(asked) if config.honor_retry_after && asked > config.max_backoff => {
                // The upstream asks for longer than this layer would wait:
                // this model is done for now; the next in the fallback
                // chain may not be.
                if next_model.is_none() {
                    match overload.then(|| models.next().flatten()).flatten() {
                        Some(fallback) => {
                            metrics::counter!(FALLBACKS_TOTAL, "model" => fallback.clone())
                                .increment(1);
                            next_model = Some(Some(fallback));
                        }
                        None => return give_up(last, config),
                    }
                }
                config.backoff_ceiling(1).mul_f64(fastrand::f64())
            }
            Some(asked) if config.honor_retry_after => asked,
            _ => {
                let ceiling =
                    config.backoff_ceiling(if next_model.is_some() { 1 } else { attempt });
                ceiling.mul_f64(fastrand::f64())
            }
        };
        if deadline.is_some_and(|d| Instant::now() + wait >= d) {
            // A retry that cannot finish before the deadline is not
            // started.
            return give_up(last, config);
        }
        if !shared.budget.withdraw() {
            metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL).increment(1);
            tracing::debug!("retry budget spent: not retrying");
            return give_up(last, config);
        }
        metrics::counter!(RETRIES_TOTAL, "reason" => failure.as_str()).increment(1);
        if let (Some(events), Some(meta)) = (&shared.events, &meta) {
            events.record(
                corral_core::NewEvent::new(
                    "retry",
                    serde_json::json!({"reason": failure.as_str(), "attempt": attempt + 1, "wait_ms": wait.as_millis() as u64,
                                       "model": model.map_or(meta.model_str(), |m| m.as_str())}),
                )
                .about(meta.agent.as_str(), meta.request_id.as_str()),
            );
        }
        drop(last);
        tokio::time::sleep(wait).await;
        if let Some(fallback) = next_model {
            model = fallback;
            attempt = 0;
        }
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

/// Whether an attempt that failed so may be sent again: a refusal before
/// any work (unreachable, broken before an answer, 502, 503 busy) may; one
/// that took too long (a timeout, a gateway's 504) only when `rerun_slow`.
///
/// ```text
/// failure      rerun_slow=false  rerun_slow=true
/// connect      retry             retry
/// broken       retry             retry
/// 502, 503     retry             retry
/// 504, timeout give up           retry
/// 500, stream  give up           give up
/// ```
pub(crate) fn may_retry(failure: Failure, rerun_slow: bool) -> bool {
    match failure {
        Failure::Timeout | Failure::Status(504) => rerun_slow,
        other => other.is_retryable(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_work_are_retried_unless_slow_ones_may_run_again() {
        let table = [
            (Failure::Connect, true, true),
            (Failure::Broken, true, true),
            (Failure::Status(502), true, true),
            (Failure::Status(503), true, true),
            (Failure::Status(504), false, true),
            (Failure::Timeout, false, true),
            (Failure::Status(500), false, false),
            (Failure::Stream, false, false),
        ];
        for (failure, by_default, rerun_slow) in table {
            assert_eq!(may_retry(failure, false), by_default, "{failure:?}");
            assert_eq!(may_retry(failure, true), rerun_slow, "{failure:?}");
        }
    }
}
