//! `/corral/sagas`: steps with their compensations, run by any replica.

use std::net::SocketAddr;

use corral_classify::Caller;
use corral_core::{Body, BoxBody};
use http::{Request, Response, StatusCode};

use crate::config::Config;
use crate::stack::Stack;

use super::registry::RegistryApi;

/// The sagas' endpoints.
#[derive(Clone)]
pub(crate) struct SagasApi {}

impl SagasApi {
    pub(crate) fn new(_stack: &Stack, _config: &Config, _registry: &RegistryApi) -> Self {
        Self {}
    }

    pub(crate) async fn handle(
        &self,
        _request: Request<Body>,
        _caller: Caller,
        _peer: SocketAddr,
    ) -> Response<BoxBody> {
        super::refuse(StatusCode::NOT_FOUND, "sagas are not built yet")
    }
}
