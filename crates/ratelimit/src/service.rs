use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{Body, BoxError, EndpointKind, RequestMeta};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::ResponseBody;
use crate::headers::{RATELIMIT, RATELIMIT_POLICY};
use crate::plan::{Passed, Plan};

/// Charges each inference request to its agent's and class's quotas;
/// refuses with [`RateLimited`](crate::RateLimited) when one is spent.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    plan: Arc<Plan>,
}

impl<S> std::fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService").finish()
    }
}

impl<S> RateLimitService<S> {
    pub(crate) fn new(inner: S, plan: Arc<Plan>) -> Self {
        Self { inner, plan }
    }
}

impl<S, B> Service<Request<Body>> for RateLimitService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let charged = request
            .extensions()
            .get::<RequestMeta>()
            .filter(|meta| meta.endpoint.kind() == EndpointKind::Inference)
            .and_then(|meta| self.plan.charge(meta));
        match charged {
            Some(Err(limited)) => ResponseFuture {
                state: State::Refused {
                    error: Some(limited.into()),
                },
            },
            Some(Ok(passed)) => ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(request),
                    passed: Some(passed),
                },
            },
            None => ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(request),
                    passed: None,
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F, passed: Option<Passed> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { future, passed } => {
                let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                let settle = match passed.take() {
                    Some(passed) => {
                        response
                            .headers_mut()
                            .insert(RATELIMIT_POLICY, passed.policy);
                        if let Some(standing) = passed.standing {
                            response.headers_mut().insert(RATELIMIT, standing);
                        }
                        passed.settle
                    }
                    None => None,
                };
                Poll::Ready(Ok(response.map(|body| ResponseBody::new(body, settle))))
            }
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "rate limit future polled after completion".into()))),
        }
    }
}
