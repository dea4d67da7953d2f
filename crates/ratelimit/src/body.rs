use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use corral_core::Usage;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::plan::Settle;

pin_project! {
    /// The response body of a rate-limited request: reads the tokens the
    /// answer reports and corrects the token quotas when it ends.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        settle: Option<Settle>,
        usage: Usage,
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, settle: Option<Settle>) -> Self {
        Self {
            inner,
            settle,
            usage: Usage::default(),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .finish()
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
        if this.settle.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.usage.read(data.chunk());
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                    if let (Some(settle), Some(generated)) =
                        (this.settle.take(), this.usage.generated)
                    {
                        settle.settle(generated);
                    }
                }
                Poll::Pending => {}
            }
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
