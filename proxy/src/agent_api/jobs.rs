//! `/corral/jobs` and `Prefer: respond-async`: requests answered later.

use std::net::SocketAddr;

use corral_classify::Caller;
use corral_core::{Body, BoxBody};
use http::{Request, Response, StatusCode};

use crate::config::Config;
use crate::front::Proxying;
use crate::stack::Stack;

/// The jobs' endpoints.
#[derive(Clone)]
pub(crate) struct JobsApi {
    _proxying: Proxying,
}

/// Whether `request` is an inference call that asks to be answered later
/// (`Prefer: respond-async`, RFC 7240).
pub(crate) fn asks_async<B>(_request: &Request<B>) -> bool {
    false
}

impl JobsApi {
    pub(crate) fn new(_stack: &Stack, _config: &Config, proxying: Proxying) -> Self {
        Self {
            _proxying: proxying,
        }
    }

    pub(crate) async fn handle(
        &self,
        _request: Request<Body>,
        _caller: Caller,
        _peer: SocketAddr,
    ) -> Response<BoxBody> {
        super::refuse(StatusCode::NOT_FOUND, "jobs are not built yet")
    }

    pub(crate) async fn submit_call(
        &self,
        _request: Request<Body>,
        _caller: Caller,
        _peer: SocketAddr,
    ) -> Response<BoxBody> {
        super::refuse(StatusCode::NOT_FOUND, "jobs are not built yet")
    }
}
