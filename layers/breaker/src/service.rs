use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{AttemptTimedOut, BoxError, RequestMeta};
use http::{Request, Response};
use tower::Service;

use crate::breakers::Breakers;
use crate::future::{Call, ResponseFuture};

corral_core::layer_service! {
    /// Fails fast while the upstream is failing; counts every call's outcome.
    pub struct BreakerService<S> {
        breakers: Arc<Breakers>,
        upstream: Arc<str>,
    }
    debug()
}

impl<S, B, ReqBody> Service<Request<ReqBody>> for BreakerService<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<crate::ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let key = match RequestMeta::of(&request, "breaker").and_then(|m| m.model.clone()) {
            Some(model) if self.breakers.config.per_model => {
                self.breakers.key_for(model, &self.upstream)
            }
            _ => self.upstream.clone(),
        };
        let admission = match self.breakers.admit(&key) {
            Ok(admission) => admission,
            Err(open) => return ResponseFuture::refused(open.into()),
        };
        let timed_out = request.extensions().get::<AttemptTimedOut>().cloned();
        let call = Call::new(self.breakers.clone(), key, admission, timed_out);
        ResponseFuture::calling(self.inner.call(request), call)
    }
}
