use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use corral_core::Usage;

use crate::permit::Permit;

pin_project! {
    /// The response body of a scheduled request: holds its permit until
    /// the stream has been sent in full, broken or dropped, because the
    /// GPU is busy for the whole generation, not only until the headers.
    ///
    /// On the way it reads the token counts the answer reports
    /// (`prompt_eval_count`/`eval_count`, or OpenAI's `usage`) and settles
    /// the agent's fair-share counter with the real cost.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
        usage: Usage,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, permit: Option<Permit>) -> Self {
        Self {
            inner,
            permit,
            usage: Usage::default(),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.permit.is_none() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.usage.read(data.chunk());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => finish(this.permit, *this.usage),
            Poll::Pending => {}
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

/// Gives the permit back now, settled with what the answer reported.
fn finish(permit: &mut Option<Permit>, usage: Usage) {
    if let Some(mut permit) = permit.take() {
        if let Some(cost) = usage.cost() {
            permit.settle(cost);
        }
    }
}
