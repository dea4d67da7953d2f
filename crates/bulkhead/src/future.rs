use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use corral_core::{BoxError, WatchBody};
use http::Response;
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::compartment::Slot;
use crate::error::CompartmentFull;

type Wait = Pin<Box<dyn Future<Output = Result<Slot, CompartmentFull>> + Send>>;

pin_project! {
    /// The response future of [`BulkheadService`](crate::BulkheadService).
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        state: State<S, F, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, R> {
        Waiting { wait: Wait, call: Option<(S, R)> },
        Calling { #[pin] future: F, slot: Option<Slot> },
        Refused { error: Option<BoxError> },
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    pub(crate) fn calling(future: F, slot: Option<Slot>) -> Self {
        Self {
            state: State::Calling { future, slot },
        }
    }

    pub(crate) fn waiting(wait: Wait, inner: S, request: R) -> Self {
        Self {
            state: State::Waiting {
                wait,
                call: Some((inner, request)),
            },
        }
    }

    pub(crate) fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }
}

impl<S, F, R, B, E> Future for ResponseFuture<S, F, R>
where
    S: Service<R, Future = F, Response = Response<B>, Error = E>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting { wait, call } => {
                    let slot = ready!(wait.as_mut().poll(cx))?;
                    let Some((mut inner, request)) = call.take() else {
                        return Poll::Ready(Err("bulkhead future polled after completion".into()));
                    };
                    let future = inner.call(request);
                    this.state.set(State::Calling {
                        future,
                        slot: Some(slot),
                    });
                }
                StateProj::Calling { future, slot } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let slot = slot.take();
                    return Poll::Ready(Ok(WatchBody::response(response, slot)));
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "bulkhead future polled after completion".into())));
                }
            }
        }
    }
}
