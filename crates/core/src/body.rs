use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use crate::BoxError;

/// The response body every Corral layer returns: any body of [`Bytes`],
/// boxed, with a boxed error.
///
/// Layers that wrap a body (to hold a permit until the stream ends, to
/// watch for its end) box their wrapper again, so the stack's type does
/// not depend on the order of the layers.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

/// A [`BoxBody`] holding `bytes`, sent as one frame.
///
/// ```
/// use http_body::Body as _;
/// let body = corral_core::full("Ollama is running");
/// assert_eq!(body.size_hint().exact(), Some(17));
/// ```
pub fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `body` as a [`BoxBody`]: boxed, unless it already is one, which is
/// handed back as it is. A layer that hands on the body it was given
/// (and a stack that boxes each layer's answer) would otherwise add an
/// allocation per answer and an indirect call per frame for nothing.
///
/// ```
/// use http_body_util::BodyExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let again = corral_core::boxed(corral_core::full("boxed"));
/// let first = corral_core::boxed(http_body_util::Full::new(bytes::Bytes::from("plain")));
/// assert_eq!(again.collect().await.unwrap().to_bytes(), "boxed");
/// assert_eq!(first.collect().await.unwrap().to_bytes(), "plain");
/// # }
/// ```
pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(same) = any.downcast_mut::<Option<BoxBody>>().and_then(Option::take) {
        return same;
    }
    slot.map(|body| body.map_err(Into::into).boxed_unsync())
        .unwrap_or_default()
}

/// An empty [`BoxBody`].
///
/// ```
/// use http_body::Body as _;
/// assert!(corral_core::empty().is_end_stream());
/// ```
pub fn empty() -> BoxBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The request body that travels down a Corral stack.
///
/// The `classify` layer reads inference bodies once, bounded, and replaces
/// them with a buffered body; a retry layer replays those bytes with
/// [`Body::try_clone`] instead of reading the client again. Bodies Corral
/// must not hold in memory (blob uploads, unknown paths) stay streamed.
///
/// ```
/// use corral_core::Body;
///
/// let body = Body::from("{\"model\":\"llama3\"}");
/// assert_eq!(body.buffered().map(|b| b.len()), Some(18));
/// let replay = body.try_clone().expect("buffered bodies can be replayed");
/// assert_eq!(replay.buffered(), body.buffered());
/// ```
pub struct Body {
    kind: Kind,
}

enum Kind {
    Buffered(Bytes),
    Streamed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// A body with no bytes.
    pub fn empty() -> Self {
        Self::buffered_bytes(Bytes::new())
    }

    /// A body that is streamed through as it arrives.
    pub fn streamed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Streamed(body.map_err(Into::into).boxed_unsync()),
        }
    }

    fn buffered_bytes(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Buffered(bytes),
        }
    }

    /// The bytes of a buffered body; `None` for a streamed one.
    pub fn buffered(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Buffered(bytes) => Some(bytes),
            Kind::Streamed(_) => None,
        }
    }

    /// A copy of a buffered body, to send the same bytes again; `None` for
    /// a streamed body, which can be read only once.
    pub fn try_clone(&self) -> Option<Self> {
        self.buffered().cloned().map(Self::buffered_bytes)
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Self::buffered_bytes(bytes)
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Self::buffered_bytes(Bytes::from_static(text.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(text: String) -> Self {
        Self::buffered_bytes(Bytes::from(text))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Self::buffered_bytes(Bytes::from(bytes))
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Buffered(bytes) => f.debug_tuple("Body::Buffered").field(&bytes.len()).finish(),
            Kind::Streamed(_) => f.write_str("Body::Streamed"),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered(bytes) => {
                if bytes.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes)))))
                }
            }
            Kind::Streamed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered(bytes) => bytes.is_empty(),
            Kind::Streamed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Streamed(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_buffered_body_yields_its_bytes_once_and_then_ends() {
        let mut body = Body::from("hello");
        assert!(!http_body::Body::is_end_stream(&body));
        let collected = (&mut body).collect().await.expect("infallible").to_bytes();
        assert_eq!(collected, "hello");
        assert!(http_body::Body::is_end_stream(&body));
    }

    #[tokio::test]
    async fn a_streamed_body_cannot_be_cloned_but_passes_its_bytes_through() {
        let body = Body::streamed(Full::new(Bytes::from_static(b"blob")));
        assert!(body.try_clone().is_none());
        assert!(body.buffered().is_none());
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(collected, "blob");
    }
}
