use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{BoxError, EndpointKind, Priority, RequestMeta};
use http::Request;
use tower::Service;

use crate::future::ResponseFuture;
use crate::gate::{Decision, Gate};

corral_core::layer_service! {
    /// Refuses inference requests the queue has no room for, lowest
    /// priorities first; lets the rest through.
    #[derive(Debug)]
    pub struct ShedService<S> {
        gate: Arc<Gate>,
    }
}

impl<S, ReqBody> Service<Request<ReqBody>> for ShedService<S>
where
    S: Service<Request<ReqBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, S::Future, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(meta) = RequestMeta::of(&request, "shed") else {
            return ResponseFuture::passing(self.inner.call(request), None);
        };
        if meta.endpoint.kind() != EndpointKind::Inference {
            return ResponseFuture::passing(self.inner.call(request), None);
        }
        let (priority, agent): (Priority, _) = (meta.priority, meta.agent.clone());
        match self.gate.decide(priority, &agent) {
            Decision::Admit(admitted) => {
                ResponseFuture::passing(self.inner.call(request), Some(admitted))
            }
            Decision::Refuse(shed) => ResponseFuture::refused(shed.into()),
            Decision::WaitForSpace => {
                let inner = corral_core::take_ready(&mut self.inner);
                ResponseFuture::waiting(self.gate.clone(), inner, request, priority, agent)
            }
        }
    }
}
