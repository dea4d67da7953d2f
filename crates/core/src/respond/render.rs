//! A body that broke mid-way, rendered for the client.
//!
//! Below the responder a broken stream is a typed error (`StreamBroke`, a
//! stall's `Timeout`, a shared answer that broke) that every layer
//! watching the body's end has counted as a failure. Here it becomes what
//! the client's format has for it: Ollama's last `{"error": ...}` NDJSON
//! line, an SSE error event (OpenAI's `data:` event, Anthropic's and the
//! Responses API's named `error` event), or, for anything else, a cut
//! connection, so a client never takes a broken answer for a short one.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use crate::{stream_error_frame, ApiFamily, BoxError};
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::{Frame, SizeHint};

/// How a broken stream is ended for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// An error line or event in the API's own shape, then the end.
    Frame(ApiFamily),
    /// The connection is cut: the client sees a broken body.
    Abort,
}

impl Framing {
    /// The framing of an answer with `headers` to a request of `family`.
    /// A body with a declared length is cut: an error line written into
    /// it would be truncated to fit, and read as a complete answer.
    pub fn of(headers: &HeaderMap, family: ApiFamily) -> Self {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Framing::Abort;
        }
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let ndjson = content_type.starts_with("application/x-ndjson");
        let sse = content_type.starts_with("text/event-stream");
        match family {
            ApiFamily::Ollama if ndjson => Framing::Frame(ApiFamily::Ollama),
            ApiFamily::OpenAi | ApiFamily::Anthropic | ApiFamily::OpenAiResponses if sse => {
                Framing::Frame(family)
            }
            _ => Framing::Abort,
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body with a mid-stream failure rendered in `framing`:
    /// a last error frame, then the end (or, with [`Framing::Abort`], the
    /// error, which makes the server cut the connection).
    pub struct Rendered<B> {
        #[pin]
        inner: B,
        framing: Framing,
        ended: bool,
    }
}

impl<B> Rendered<B> {
    /// `inner`, rendered in `framing`.
    pub fn new(inner: B, framing: Framing) -> Self {
        Self {
            inner,
            framing,
            ended: false,
        }
    }
}

impl<B> http_body::Body for Rendered<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError>,
{
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
            Some(Err(e)) => {
                *this.ended = true;
                Poll::Ready(Some(match this.framing {
                    Framing::Frame(family) => {
                        Ok(Frame::data(stream_error_frame(*family, &e.to_string())))
                    }
                    Framing::Abort => Err(e),
                }))
            }
            other => Poll::Ready(other),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
