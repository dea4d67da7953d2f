use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{BoxError, EndpointKind, RequestMeta};
use http::{Request, Response};
use tower::Service;

use crate::compartment::{enter, Compartments, Entry};
use crate::future::ResponseFuture;

corral_core::layer_service! {
    /// Confines requests to their compartment: at most its `max_concurrent`
    /// run at once, a bounded number wait a bounded time, the rest are
    /// refused with [`CompartmentFull`](crate::CompartmentFull).
    pub struct BulkheadService<S> {
        compartments: Arc<Compartments>,
    }
    debug()
}

impl<S, B, ReqBody> Service<Request<ReqBody>> for BulkheadService<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body,
{
    type Response = Response<crate::ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let compartment = RequestMeta::of(&request, "bulkhead").and_then(|meta| {
            let confined =
                self.compartments.all_endpoints || meta.endpoint.kind() == EndpointKind::Inference;
            confined.then(|| self.compartments.choose(meta)).flatten()
        });
        let Some(compartment) = compartment else {
            return ResponseFuture::calling(self.inner.call(request), None);
        };
        match enter(compartment) {
            Entry::Now(slot) => ResponseFuture::calling(self.inner.call(request), Some(slot)),
            Entry::Full(full) => ResponseFuture::refused(full.into()),
            Entry::Wait(wait) => {
                let inner = corral_core::take_ready(&mut self.inner);
                ResponseFuture::waiting(wait, inner, request)
            }
        }
    }
}
