//! `/corral/registry`: agents announce themselves; others find them.

use corral_classify::Caller;
use corral_core::{Body, BoxBody};
use http::{Request, Response, StatusCode};

use crate::config::Config;
use crate::stack::Stack;

/// The registry's endpoints.
#[derive(Clone)]
pub(crate) struct RegistryApi {}

impl RegistryApi {
    pub(crate) fn new(_stack: &Stack, _config: &Config) -> Self {
        Self {}
    }

    pub(crate) async fn handle(
        &self,
        _request: Request<Body>,
        _caller: Caller,
    ) -> Response<BoxBody> {
        super::refuse(StatusCode::NOT_FOUND, "the agent registry is not built yet")
    }
}
