use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use corral_core::{Body, BoxError, RequestMeta};
use http::Request;
use http_body_util::combinators::Collect;
use http_body_util::{LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::{BodyReadFailed, BodyTimedOut, BodyTooLarge};
use crate::parse::Bounds;
use crate::service::complete;

/// The bounds a body is read within.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    pub(crate) limit: usize,
    pub(crate) bounds: Bounds,
    pub(crate) timeout: std::time::Duration,
}

pin_project! {
    /// The response future of [`Classify`](crate::Classify): reads the body
    /// (when it must), then calls the inner service.
    pub struct ResponseFuture<S, F> {
        #[pin]
        state: State<S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Reading {
            #[pin]
            collect: Collect<Limited<Body>>,
            // A slow sender is cut off: it would hold this task, and the
            // connection, for as long as it liked.
            #[pin]
            deadline: tokio::time::Sleep,
            reading: Reading,
            head: Option<(http::request::Parts, RequestMeta, S)>,
        },
        Calling {
            #[pin]
            future: F,
        },
        Refused {
            error: Option<BoxError>,
        },
    }
}

impl<S, F> ResponseFuture<S, F> {
    pub(crate) fn reading(
        collect: Collect<Limited<Body>>,
        reading: Reading,
        parts: http::request::Parts,
        meta: RequestMeta,
        inner: S,
    ) -> Self {
        Self {
            state: State::Reading {
                collect,
                deadline: tokio::time::sleep(reading.timeout),
                reading,
                head: Some((parts, meta, inner)),
            },
        }
    }

    pub(crate) fn calling(future: F) -> Self {
        Self {
            state: State::Calling { future },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<S, F, T, E> Future for ResponseFuture<S, F>
where
    S: Service<Request<Body>, Future = F, Response = T, Error = E>,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Reading {
                    collect,
                    deadline,
                    reading,
                    head,
                } => {
                    let collected = match collect.poll(cx) {
                        Poll::Ready(collected) => collected,
                        Poll::Pending => {
                            ready!(deadline.poll(cx));
                            head.take();
                            return Poll::Ready(Err(BodyTimedOut {
                                after: reading.timeout,
                            }
                            .into()));
                        }
                    };
                    let Some((parts, meta, mut inner)) = head.take() else {
                        return Poll::Ready(Err("classify polled after completion".into()));
                    };
                    let bytes = match collected {
                        Ok(collected) => collected.to_bytes(),
                        Err(e) if e.is::<LengthLimitError>() => {
                            return Poll::Ready(Err(BodyTooLarge {
                                limit: reading.limit,
                            }
                            .into()))
                        }
                        Err(source) => return Poll::Ready(Err(BodyReadFailed { source }.into())),
                    };
                    let request = match complete(parts, meta, bytes, reading.bounds) {
                        Ok(request) => request,
                        Err(refusal) => return Poll::Ready(Err(refusal)),
                    };
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "classify polled after completion".into())));
                }
            }
        }
    }
}
