//! The upstream's response body on its way to the client: frame by
//! frame, and a failure mid-stream turned into the error line the
//! format has.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use corral_core::{stream_error_frame, ApiFamily, BoxError};
use http::{header, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::upstream::root_cause;

/// How a broken stream is ended for the client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// NDJSON: a last `{"error": ...}` line, as Ollama itself reports an
    /// error after a stream has started.
    Lines,
    /// SSE: a last `data: {"error": ...}` event.
    Events,
    /// Anything else: the connection is cut, so the client sees a broken
    /// body, never a clean-looking short one.
    Abort,
}

impl Framing {
    pub(crate) fn of<B>(response: &Response<B>, family: ApiFamily) -> Self {
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/x-ndjson") {
            Framing::Lines
        } else if content_type.starts_with("text/event-stream") && family == ApiFamily::OpenAi {
            Framing::Events
        } else {
            Framing::Abort
        }
    }
}

pin_project! {
    /// The upstream's body, frame by frame; a failure mid-stream becomes
    /// an error line where the format has one.
    pub(crate) struct PassThrough {
        #[pin]
        inner: Incoming,
        framing: Framing,
        ended: bool,
    }
}

impl PassThrough {
    pub(crate) fn new(inner: Incoming, framing: Framing) -> Self {
        Self {
            inner,
            framing,
            ended: false,
        }
    }
}

impl http_body::Body for PassThrough {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            None => Poll::Ready(None),
            Some(Err(e)) => {
                *this.ended = true;
                let message = format!("upstream stream broke: {}", root_cause(&e));
                tracing::warn!(error = %message, "upstream stream broke mid-response");
                Poll::Ready(Some(match this.framing {
                    Framing::Lines => {
                        Ok(Frame::data(stream_error_frame(ApiFamily::Ollama, &message)))
                    }
                    Framing::Events => {
                        Ok(Frame::data(stream_error_frame(ApiFamily::OpenAi, &message)))
                    }
                    Framing::Abort => Err(message.into()),
                }))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
