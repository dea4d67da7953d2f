use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{BoxError, EndpointKind, Priority, RequestMeta};
use http::Request;
use tower::Service;

use crate::future::ResponseFuture;
use crate::gate::{Decision, Gate};

/// Refuses inference requests the queue has no room for, lowest
/// priorities first; lets the rest through.
#[derive(Debug)]
pub struct ShedService<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> ShedService<S> {
    corral_core::define_inner_service_accessors!();
}

impl<S: Clone> Clone for ShedService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<S> ShedService<S> {
    pub(crate) fn from_gate(inner: S, gate: Arc<Gate>) -> Self {
        Self { inner, gate }
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
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(self.gate.clone(), inner, request, priority, agent)
            }
        }
    }
}
