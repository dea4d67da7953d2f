use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use corral_core::{AdmitThenCall, BoxError, EndpointKind, RequestMeta, WatchBody};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;

use crate::body::{Correction, ResponseBody};
use crate::error::RateLimited;
use crate::gcra::Checked;
use crate::headers::{RATELIMIT, RATELIMIT_POLICY};
use crate::plan::{Passed, Plan};

corral_core::layer_service! {
    /// Charges each inference request to its agent's and class's quotas;
    /// refuses with [`RateLimited`](crate::RateLimited) when one is spent.
    pub struct RateLimitService<S> {
        plan: Arc<Plan>,
    }
    debug()
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
            return ResponseFuture::new(AdmitThenCall::calling(self.inner.call(request), None));
        };
        match self.plan.check(&prepared) {
            Checked::Now(verdict) => match self.plan.conclude(&prepared, verdict) {
                Ok(passed) => ResponseFuture::new(AdmitThenCall::calling(
                    self.inner.call(request),
                    Some(passed),
                )),
                Err(limited) => ResponseFuture::new(AdmitThenCall::refused(limited.into())),
            },
            Checked::Later(verdict) => {
                // The verdict comes from Redis: the ready service waits
                // with the request.
                let inner = corral_core::take_ready(&mut self.inner);
                let plan = self.plan.clone();
                let verdict: Verdicting =
                    Box::pin(async move { plan.conclude(&prepared, verdict.await) });
                ResponseFuture::new(AdmitThenCall::admitting(verdict, inner, request))
            }
        }
    }
}

/// The store's verdict on a request, to come.
type Verdicting = Pin<Box<dyn Future<Output = Result<Passed, RateLimited>> + Send>>;

pin_project! {
    /// The response future of [`RateLimitService`]: waits for the quota's
    /// verdict (from Redis, when shared), then calls the inner service;
    /// the answer carries the quota's standing, and its body corrects the
    /// token charge when it ends.
    pub struct ResponseFuture<S, F, R> {
        #[pin]
        inner: AdmitThenCall<Verdicting, S, R, F, Passed>,
    }
}

impl<S, F, R> ResponseFuture<S, F, R> {
    fn new(inner: AdmitThenCall<Verdicting, S, R, F, Passed>) -> Self {
        Self { inner }
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (mut response, passed) = ready!(self.project().inner.poll(cx))?;
        let status = response.status();
        let settle = passed.and_then(|passed| {
            // A class with shadow budgets only has nothing to say.
            if !passed.policy.is_empty() {
                response
                    .headers_mut()
                    .insert(RATELIMIT_POLICY, passed.policy);
            }
            if let Some(standing) = passed.standing.filter(|s| !s.is_empty()) {
                response.headers_mut().insert(RATELIMIT, standing);
            }
            passed.settle
        });
        Poll::Ready(Ok(WatchBody::response(
            response,
            settle.map(|settle| Correction::new(settle, status)),
        )))
    }
}
