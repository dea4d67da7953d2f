//! The followers: identical requests that arrive while a leader's call is
//! running read its answer from the first frame instead of calling the
//! upstream again.

use bytes::Bytes;
use corral_core::{Body, BoxBody, BoxError};
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Service, ServiceExt};

use super::call::{HeadOutcome, Reader, ReaderBody};
use crate::service::{boxed, with_cache_header};

/// Waits for the coalesced call's headers; the response reading its
/// frames (the leader's own response, or a follower's).
pub(crate) async fn respond_from(
    mut reader: Reader,
) -> Result<Response<BoxBody>, (Option<BoxError>, Reader)> {
    let outcome = std::future::poll_fn(|cx| reader.poll_head(cx)).await;
    match outcome {
        HeadOutcome::Ready(status, headers) => {
            let mut response = Response::new(ReaderBody::new(reader).boxed_unsync());
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            Ok(response)
        }
        HeadOutcome::Failed(error) => Err((error, reader)),
    }
}

/// A follower: the leader's answer, or its own call if the leader's
/// failed.
pub(crate) async fn follow<S, B>(
    reader: Reader,
    inner: S,
    request: Request<Body>,
) -> Result<Response<BoxBody>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match respond_from(reader).await {
        Ok(response) => Ok(with_cache_header(response, "coalesced")),
        Err((_, reader)) => {
            drop(reader);
            inner.oneshot(request).await.map(boxed).map_err(Into::into)
        }
    }
}
