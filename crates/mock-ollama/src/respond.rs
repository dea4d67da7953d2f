//! Response builders in Ollama's shapes, and the body wrapper that records
//! what was sent.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use serde_json::{json, Value};

use crate::state::State;
use crate::stats::{lock, RecordedRequest};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// Ollama's answer when its queue is full (two spaces, as Ollama has it).
pub const BUSY_MESSAGE: &str = "server busy, please try again.  maximum pending requests exceeded";

pub(crate) fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty_body() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn json(status: StatusCode, value: &Value) -> Response<BoxBody> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(full(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

pub(crate) fn ollama_error(status: StatusCode, message: &str) -> Response<BoxBody> {
    json(status, &json!({ "error": message }))
}

/// Which family of paths an error answers for, which decides its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorShape {
    /// `{"error": "..."}`: Ollama's own paths.
    Ollama,
    /// `{"error": {"message", "type", "param", "code"}}`: `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`, `/v1/responses`.
    OpenAi,
    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`:
    /// `/v1/messages`.
    Anthropic,
}

impl ErrorShape {
    pub(crate) fn error(self, status: StatusCode, message: &str) -> Response<BoxBody> {
        match self {
            ErrorShape::Ollama => ollama_error(status, message),
            ErrorShape::OpenAi => openai_error(status, message),
            ErrorShape::Anthropic => anthropic_error(status, message),
        }
    }
}

pub(crate) fn openai_error(status: StatusCode, message: &str) -> Response<BoxBody> {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    json(
        status,
        &json!({ "error": { "message": message, "type": kind, "param": null, "code": null } }),
    )
}

/// The error body of Ollama's Anthropic-compatible path: the type by
/// status as Ollama's `anthropic.NewError` has it (503 is
/// `overloaded_error`), and a request id.
pub(crate) fn anthropic_error(status: StatusCode, message: &str) -> Response<BoxBody> {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    let request_id = format!("req_{:024x}", NEXT.fetch_add(1, Ordering::Relaxed));
    json(
        status,
        &json!({
            "type": "error",
            "error": { "type": kind, "message": message },
            "request_id": request_id,
        }),
    )
}

pub(crate) fn text(status: StatusCode, text: &'static str) -> Response<BoxBody> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub(crate) fn empty(status: StatusCode) -> Response<BoxBody> {
    let mut response = Response::new(empty_body());
    *response.status_mut() = status;
    response
}

pub(crate) fn streaming(content_type: &'static str, body: BoxBody) -> Response<BoxBody> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A response body that writes what it sends into the request's record
/// and counts how the answer ended: sent to its end, or abandoned by the
/// client.
pub(crate) struct Recorded {
    inner: BoxBody,
    record: Arc<Mutex<RecordedRequest>>,
    state: Arc<State>,
    ended: bool,
}

impl Recorded {
    pub(crate) fn wrap(
        response: Response<BoxBody>,
        record: Arc<Mutex<RecordedRequest>>,
        state: Arc<State>,
    ) -> Response<BoxBody> {
        lock(&record).status = response.status().as_u16();
        response.map(|inner| {
            let mut body = Recorded {
                inner,
                record,
                state,
                ended: false,
            };
            if body.inner.is_end_stream() {
                body.finish();
            }
            body.boxed_unsync()
        })
    }

    fn finish(&mut self) {
        if !self.ended {
            self.ended = true;
            lock(&self.record).completed = true;
            self.state.counters.completed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    lock(&this.record).push_response(data);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A fault broke the stream on purpose: neither completed
                // nor cancelled by the client.
                this.ended = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        if !self.ended {
            lock(&self.record).cancelled = true;
            self.state.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Counts a request whose client left before its headers were sent.
pub(crate) struct HeadersGuard {
    pub(crate) record: Arc<Mutex<RecordedRequest>>,
    pub(crate) state: Arc<State>,
    pub(crate) armed: bool,
}

impl Drop for HeadersGuard {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.record).cancelled = true;
            self.state.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Go's RFC 3339 with nanoseconds, as Ollama writes `created_at`.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
