use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{Body, BoxError};
use http::Request;
use pin_project_lite::pin_project;
use tower::Service;

use crate::guard::{Admission, Guard, Pending};

corral_core::layer_service! {
    /// Refuses requests their class may not make and signed requests that
    /// do not verify; lets the rest through unchanged.
    pub struct AuthService<S> {
        guard: Arc<Guard>,
    }
    debug(guard)
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let state = match self.guard.admit(request) {
            Admission::Now(request) => State::Calling {
                future: self.inner.call(request),
            },
            Admission::Refused(error) => State::Refused { error: Some(error) },
            Admission::Later(pending) => {
                // The ready service answers once the check is done.
                State::Checking {
                    pending,
                    inner: Some(corral_core::take_ready(&mut self.inner)),
                }
            }
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The response future of [`AuthService`].
    pub struct ResponseFuture<S, F> {
        #[pin]
        state: State<S, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F> {
        Checking { pending: Pending, inner: Option<S> },
        Calling { #[pin] future: F },
        Refused { error: Option<BoxError> },
    }
}

impl<S, F, R, E> Future for ResponseFuture<S, F>
where
    S: Service<Request<Body>, Future = F, Response = R, Error = E>,
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking { pending, inner } => {
                    let request = ready!(pending.as_mut().poll(cx))?;
                    let Some(mut inner) = inner.take() else {
                        return Poll::Ready(Err("auth future polled after completion".into()));
                    };
                    let future = inner.call(request);
                    this.state.set(State::Calling { future });
                }
                StateProj::Calling { future } => {
                    return Poll::Ready(ready!(future.poll(cx)).map_err(Into::into))
                }
                StateProj::Refused { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .unwrap_or_else(|| "auth future polled after completion".into())))
                }
            }
        }
    }
}
