//! What every connection's requests go through before the stack: the
//! request id, the span, forwarding headers, admin paths, the answer to
//! errors, and the metrics and access log at the end of the body.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corral_core::{headers, Body, BoxBody, BoxError, Endpoint, RefusalCast, RequestId};
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{field::Empty, Instrument, Span};

use crate::admin::Admin;
use crate::hop::strip_hop_by_hop;
use crate::respond;
use crate::stack::{Stack, StackService};
use crate::telemetry::{
    status_label, REQUESTS_IN_FLIGHT, REQUESTS_TOTAL, REQUEST_DURATION_SECONDS,
};

/// The service a listener's connections call.
#[derive(Clone)]
pub struct Front {
    shared: Arc<Shared>,
}

struct Shared {
    stack: Option<StackService>,
    admin: Option<Admin>,
    refusals: Vec<RefusalCast>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("proxies", &self.shared.stack.is_some())
            .field("admin", &self.shared.admin.is_some())
            .finish()
    }
}

impl Front {
    /// Proxies through `stack`, answering admin paths too when `admin` is
    /// given.
    pub fn proxy(stack: &Stack, admin: Option<Admin>) -> Self {
        Self {
            shared: Arc::new(Shared {
                stack: Some(stack.service()),
                admin,
                refusals: stack.refusals().to_vec(),
            }),
        }
    }

    /// Answers admin paths only (a separate admin listener).
    pub fn admin_only(admin: Admin) -> Self {
        Self {
            shared: Arc::new(Shared {
                stack: None,
                admin: Some(admin),
                refusals: respond::BUILT_IN.to_vec(),
            }),
        }
    }

    /// Answers `request` from the client at `peer`. Never fails: errors
    /// become Ollama-shaped answers.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        if let Some(admin) = &shared.admin {
            if Admin::owns(request.uri().path()) || shared.stack.is_none() {
                return admin.handle(request).await;
            }
        }
        let Some(stack) = &shared.stack else {
            return respond::answer(
                &corral_core::ErrorBody::new(StatusCode::NOT_FOUND, "not found"),
                corral_core::ApiFamily::Ollama,
            );
        };

        let start = Instant::now();
        let endpoint = Endpoint::from_request(request.method(), request.uri().path());
        let (mut parts, body) = request.into_parts();
        let request_id = match parts
            .headers
            .get(headers::X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() && id.len() <= 200 => RequestId::from(id),
            _ => RequestId::generate(),
        };
        let request_id_header = HeaderValue::from_str(request_id.as_str()).ok();
        let span = tracing::info_span!(
            "request",
            request_id = request_id.as_str(),
            method = %parts.method,
            path = parts.uri.path(),
            endpoint = endpoint.as_str(),
            agent = Empty,
            class = Empty,
            priority = Empty,
            model = Empty,
            status = Empty,
            duration_ms = Empty,
        );
        let head_only = parts.method == Method::HEAD;

        strip_hop_by_hop(&mut parts.headers);
        if let Some(value) = &request_id_header {
            parts.headers.insert(headers::X_REQUEST_ID, value.clone());
        }
        forwarded_for(&mut parts.headers, peer);
        parts
            .headers
            .insert(headers::X_FORWARDED_PROTO, HeaderValue::from_static("http"));

        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            Body::streamed(body)
        };
        metrics::gauge!(REQUESTS_IN_FLIGHT).increment(1.0);
        // A panic in a layer answers this request with a 500 and is
        // logged; the connection and everyone else carry on.
        let result = AssertUnwindSafe(stack.clone().oneshot(Request::from_parts(parts, body)))
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let mut response = match result {
            Ok(Ok(response)) => response,
            Err(panic) => {
                let _entered = span.enter();
                respond::panic_response(panic, endpoint.family())
            }
            Ok(Err(err)) => {
                let _entered = span.enter();
                respond::error_response(&err, endpoint, &shared.refusals)
            }
        };
        if let Some(value) = request_id_header {
            response.headers_mut().insert(headers::X_REQUEST_ID, value);
        }
        let status = response.status();
        span.record("status", status.as_u16());
        let finish = Finish {
            start,
            endpoint,
            status,
            span,
        };
        if head_only {
            // hyper sends no body for HEAD and never polls it.
            finish.record("completed");
            return response;
        }
        response.map(|inner| Observed::new(inner, finish).boxed_unsync())
    }
}

/// Appends the client's address to `X-Forwarded-For`.
fn forwarded_for(headers: &mut http::HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let value = match headers
        .get(headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(headers::X_FORWARDED_FOR, value);
    }
}

/// What is recorded once a response ends.
struct Finish {
    start: Instant,
    endpoint: Endpoint,
    status: StatusCode,
    span: Span,
}

impl Finish {
    fn record(self, outcome: &'static str) {
        let elapsed = self.start.elapsed();
        let labels = [
            (
                "endpoint",
                metrics::SharedString::const_str(self.endpoint.as_str()),
            ),
            ("status", status_label(self.status)),
        ];
        metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
        metrics::histogram!(REQUEST_DURATION_SECONDS, &labels).record(elapsed.as_secs_f64());
        metrics::gauge!(REQUESTS_IN_FLIGHT).decrement(1.0);
        self.span.record("duration_ms", elapsed.as_secs_f64() * 1e3);
        tracing::info!(
            target: "corral::access",
            parent: &self.span,
            status = self.status.as_u16(),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            outcome,
            "request finished"
        );
    }
}

/// The response body, watched for its end: sent in full, broken, or
/// abandoned by the client.
struct Observed {
    inner: BoxBody,
    finish: Option<Finish>,
}

impl Observed {
    fn new(inner: BoxBody, finish: Finish) -> Self {
        let mut body = Self {
            inner,
            finish: Some(finish),
        };
        if http_body::Body::is_end_stream(&body.inner) {
            body.end("completed");
        }
        body
    }

    fn end(&mut self, outcome: &'static str) {
        if let Some(finish) = self.finish.take() {
            finish.record(outcome);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end("completed"),
            Poll::Ready(Some(Err(_))) => this.end("error"),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.end("completed"),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.end("cancelled");
    }
}
