//! The one place errors become answers, in the client's own API shape.
//!
//! Every Corral layer returns its refusal as a boxed error; here the
//! chain of sources is searched for a known refusal and answered in the
//! shape of the API the client called (Ollama's `{"error": "..."}`,
//! OpenAI's, Anthropic's), with `X-Corral-Reason` and, when known,
//! `Retry-After`; anything unrecognised is a 500 `unexpected`, logged. A
//! body that breaks mid-stream is ended in its own framing (see
//! [`Rendered`]).
//!
//! [`RespondLayer`] puts this at the top of any tower stack (an axum or
//! tonic service, a client): it turns the stack's errors into answers and
//! has `Error = Infallible`, as hyper and axum want. The `corral` proxy
//! uses the same functions, around its metrics.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::respond::RespondLayer;
//! use corral_core::{BoxError, UpstreamFailed};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let service = ServiceBuilder::new()
//!     .layer(RespondLayer::new())
//!     .service(service_fn(|_request: http::Request<String>| async {
//!         Err::<http::Response<String>, BoxError>(Box::new(UpstreamFailed::new(
//!             "http://ollama:11434", true, "connection refused",
//!         )))
//!     }));
//! let request = http::Request::post("/v1/chat/completions").body(String::new()).unwrap();
//! let answer = service.oneshot(request).await.unwrap();
//! assert_eq!(answer.status(), 502);
//! assert_eq!(answer.headers()["x-corral-reason"], "upstream_unreachable");
//! # }
//! ```

mod render;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

pub use render::{Framing, Rendered};

use crate::{
    as_refusal, find_refusal, headers, ApiFamily, BoxBody, BoxError, Endpoint, ErrorBody,
    RefusalCast, RequestMeta, Timeout, UpstreamFailed,
};

/// The refusals core itself defines: the upstream unreachable or broken
/// (502), too slow (504). Each layer crate exports its own `REFUSALS`.
pub const CORE_REFUSALS: &[RefusalCast] = &[as_refusal::<UpstreamFailed>, as_refusal::<Timeout>];

/// The answer to `err` for a request of `family`: the first refusal in
/// its chain that `casts` recognise, with its status, `X-Corral-Reason`,
/// headers and `Retry-After` (whole seconds, rounded up, at least 1);
/// else a 500 `unexpected`, logged.
///
/// ```
/// use corral_core::respond::{error_response, CORE_REFUSALS};
/// use corral_core::{ApiFamily, BoxError, Timeout, TimeoutKind};
///
/// let err: BoxError = Box::new(Timeout::new(TimeoutKind::Total, std::time::Duration::from_secs(9)));
/// let answer = error_response(&err, ApiFamily::Anthropic, CORE_REFUSALS);
/// assert_eq!(answer.status(), 504);
/// assert_eq!(answer.headers()["x-corral-reason"], "upstream_timeout");
/// ```
pub fn error_response(
    err: &BoxError,
    family: ApiFamily,
    casts: &[RefusalCast],
) -> Response<BoxBody> {
    match find_refusal(&**err, casts) {
        Some(refusal) => refusal_response(refusal, family),
        None => match crate::classify_error(&**err) {
            // A client's own error (a plain hyper or reqwest client) that
            // says the upstream could not be reached or broke off.
            crate::Outcome::Failure(failure) => {
                let failed = UpstreamFailed::new(
                    "the upstream",
                    matches!(failure, crate::Failure::Connect),
                    root_cause(&**err),
                );
                refusal_response(&failed, family)
            }
            _ => {
                tracing::error!(error = %err, "unexpected error in the stack");
                unexpected(format!("unexpected error in corral: {err}"), family)
            }
        },
    }
}

/// The answer to `refusal`.
fn refusal_response(refusal: &dyn crate::Refusal, family: ApiFamily) -> Response<BoxBody> {
    let body = ErrorBody::new(refusal.status(), refusal.to_string()).with_code(refusal.reason());
    let mut response = error_answer(&body, family);
    response.headers_mut().insert(
        headers::X_CORRAL_REASON,
        HeaderValue::from_static(refusal.reason()),
    );
    for (name, value) in refusal.headers() {
        response.headers_mut().insert(name, value);
    }
    if let Some(wait) = refusal.retry_after() {
        // Whole seconds, rounded up: "0" would invite a stampede.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        // The same to the millisecond, for a client that can do better
        // than whole seconds.
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        response
            .headers_mut()
            .insert(headers::X_CORRAL_RETRY_AFTER_MS, HeaderValue::from(ms));
        response
            .headers_mut()
            .insert(headers::RETRY_AFTER_MS, HeaderValue::from(ms));
    }
    response
}

/// The last source of `err`: the message that says what happened.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A 500 for what no refusal explains: a bug, logged by the caller.
pub fn unexpected(message: String, family: ApiFamily) -> Response<BoxBody> {
    let body = ErrorBody::new(StatusCode::INTERNAL_SERVER_ERROR, message).with_code("unexpected");
    let mut response = error_answer(&body, family);
    response.headers_mut().insert(
        headers::X_CORRAL_REASON,
        HeaderValue::from_static("unexpected"),
    );
    response
}

/// `body` as a JSON answer in `family`'s shape.
pub fn error_answer(body: &ErrorBody, family: ApiFamily) -> Response<BoxBody> {
    let mut response = Response::new(crate::full(body.to_bytes(family)));
    *response.status_mut() = body.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// The API a request belongs to: from its [`RequestMeta`] when a layer
/// gave it one, else from its method and path.
fn family_of<B>(request: &Request<B>) -> ApiFamily {
    match request.extensions().get::<RequestMeta>() {
        Some(meta) => meta.endpoint.family(),
        None => Endpoint::from_request(request.method(), request.uri().path()).family(),
    }
}

/// Turns the errors of the stack below into answers in the client's
/// shape, and ends a body that breaks mid-stream in its own framing.
#[derive(Clone, Debug)]
pub struct RespondLayer {
    casts: Arc<[RefusalCast]>,
}

impl Default for RespondLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RespondLayer {
    /// Recognising core's refusals ([`CORE_REFUSALS`]); add each layer
    /// crate's with [`RespondLayer::with_refusals`].
    pub fn new() -> Self {
        Self {
            casts: CORE_REFUSALS.into(),
        }
    }

    /// Also recognising `casts` (a layer crate's `REFUSALS`).
    pub fn with_refusals(self, casts: &[RefusalCast]) -> Self {
        let mut all: Vec<RefusalCast> = self.casts.to_vec();
        for cast in casts {
            if !all.iter().any(|c| std::ptr::fn_addr_eq(*c, *cast)) {
                all.push(*cast);
            }
        }
        Self { casts: all.into() }
    }
}

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Respond<S> {
        Respond {
            inner,
            casts: self.casts.clone(),
        }
    }
}

/// The service of [`RespondLayer`].
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
    casts: Arc<[RefusalCast]>,
}

impl<S> Respond<S> {
    crate::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Respond<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = RespondFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner service that cannot take requests any more is
        // answered per request, in `call`.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        RespondFuture {
            family: family_of(&request),
            casts: self.casts.clone(),
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// The response future of [`Respond`].
    pub struct RespondFuture<F> {
        #[pin]
        inner: F,
        family: ApiFamily,
        casts: Arc<[RefusalCast]>,
    }
}

impl<F, ResBody, E> Future for RespondFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(Ok(match ready!(this.inner.poll(cx)) {
            Ok(response) => {
                let framing = Framing::of(response.headers(), *this.family);
                response.map(|body| {
                    Rendered::new(body.map_err(Into::into).boxed_unsync(), framing).boxed_unsync()
                })
            }
            Err(err) => error_response(&err.into(), *this.family, this.casts),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[derive(Debug)]
    struct Slow;
    impl std::fmt::Display for Slow {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wait a little")
        }
    }
    impl std::error::Error for Slow {}
    impl crate::Refusal for Slow {
        fn status(&self) -> StatusCode {
            StatusCode::TOO_MANY_REQUESTS
        }
        fn reason(&self) -> &'static str {
            "rate_limited"
        }
        fn retry_after(&self) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_millis(1200))
        }
    }

    #[tokio::test]
    async fn a_refusal_gets_its_status_reason_and_a_rounded_up_retry_after() {
        let err: BoxError = Box::new(Slow);
        let response = error_response(&err, ApiFamily::OpenAi, &[as_refusal::<Slow>]);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["x-corral-retry-after-ms"], "1200");
        assert_eq!(
            response.headers()["retry-after-ms"],
            "1200",
            "as the OpenAI SDKs read it"
        );
        assert_eq!(response.headers()[headers::X_CORRAL_REASON], "rate_limited");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["message"], "wait a little");
        assert_eq!(json["error"]["code"], "rate_limited");
    }

    #[test]
    fn a_plain_clients_connection_error_is_the_upstreams_502() {
        #[derive(Debug)]
        struct ClientError(std::io::Error);
        impl std::fmt::Display for ClientError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for ClientError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err: BoxError = Box::new(ClientError(refused));
        let response = error_response(&err, ApiFamily::Ollama, CORE_REFUSALS);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            response.headers()[headers::X_CORRAL_REASON],
            "upstream_unreachable"
        );
    }

    #[tokio::test]
    async fn an_unknown_error_is_a_500_that_says_so() {
        let err: BoxError = "boom".into();
        let response = error_response(&err, ApiFamily::Ollama, CORE_REFUSALS);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()[headers::X_CORRAL_REASON], "unexpected");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("boom"));
    }
}
