use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{BoxError, EndpointKind, RequestMeta, WatchBody};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::{Correction, ResponseBody};
use crate::gcra::{Checked, Verdict};
use crate::headers::{RATELIMIT, RATELIMIT_POLICY};
use crate::plan::{Passed, Plan, Prepared};

/// Charges each inference request to its agent's and class's quotas;
/// refuses with [`RateLimited`](crate::RateLimited) when one is spent.
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    plan: Arc<Plan>,
}

impl<S> RateLimitService<S> {
    corral_core::define_inner_service_accessors!();
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

impl<S, B, ReqBody> Service<Request<ReqBody>> for RateLimitService<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let prepared = RequestMeta::of(&request, "ratelimit")
            .filter(|meta| meta.endpoint.kind() == EndpointKind::Inference)
            .and_then(|meta| self.plan.prepare(meta));
        let Some(prepared) = prepared else {
            return ResponseFuture::calling(self.inner.call(request), None);
        };
        match self.plan.check(&prepared) {
            Checked::Now(verdict) => match self.plan.conclude(&prepared, verdict) {
                Ok(passed) => ResponseFuture::calling(self.inner.call(request), Some(passed)),
                Err(limited) => ResponseFuture {
                    state: State::Refused {
                        error: Some(limited.into()),
                    },
                },
            },
            Checked::Later(verdict) => {
                // The verdict comes from Redis: the ready service waits
                // with the request, a clone takes its place here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Checking {
                        verdict,
                        pending: Some(Pending {
                            inner,
                            request,
                            prepared,
                            plan: self.plan.clone(),
                        }),
                    },
                }
            }
        }
    }
}

struct Pending<S, R> {
    inner: S,
    request: R,
    prepared: Prepared,
    plan: Arc<Plan>,
}

pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        state: State<S, F, R>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, F, R> {
        Checking {
            verdict: Pin<Box<dyn Future<Output = Verdict> + Send>>,
            pending: Option<Pending<S, R>>,
        },
        Calling { #[pin] future: F, passed: Option<Passed> },
        Refused { error: Option<BoxError> },
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    fn calling(future: F, passed: Option<Passed>) -> Self {
        Self {
            state: State::Calling { future, passed },
        }
    }
}

impl<S, F, R, B, E> Future for ResponseFuture<S, F, R>
where
    S: Service<R, Future = F>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let StateProj::Checking { verdict, pending } = self.as_mut().project().state.project() {
            let verdict = ready!(verdict.as_mut().poll(cx));
            let Some(Pending {
                mut inner,
                request,
                prepared,
                plan,
            }) = pending.take()
            else {
                return Poll::Ready(Err("rate limit future polled after completion".into()));
            };
            let next = match plan.conclude(&prepared, verdict) {
                Ok(passed) => State::Calling {
                    future: inner.call(request),
                    passed: Some(passed),
                },
                Err(limited) => State::Refused {
                    error: Some(limited.into()),
                },
            };
            self.as_mut().project().state.set(next);
        }
        match self.project().state.project() {
            StateProj::Checking { .. } => {
                Poll::Ready(Err("rate limit future polled after completion".into()))
            }
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
                Poll::Ready(Ok(WatchBody::response(
                    response,
                    settle.map(Correction::new),
                )))
            }
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "rate limit future polled after completion".into()))),
        }
    }
}
