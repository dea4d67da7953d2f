use std::sync::Arc;

use corral_core::ConfigError;
use tower::Layer;

use crate::config::AuthConfig;
use crate::guard::Guard;
use crate::replay::{MemoryReplay, ReplayStore};
use crate::service::AuthService;

/// Puts an [`AuthService`] in front of a service.
#[derive(Clone, Debug)]
pub struct AuthLayer {
    guard: Arc<Guard>,
}

impl AuthLayer {
    /// A layer for `config`, remembering request ids in memory. Secrets
    /// are read now: a missing variable or file is a start-up error.
    pub fn new(config: &AuthConfig) -> Result<Self, ConfigError> {
        crate::metrics::describe();
        let store = Arc::new(MemoryReplay::new(config.replay_memory));
        Ok(Self {
            guard: Arc::new(Guard::new(config, store, None)?),
        })
    }

    /// Checks the signature on a request `agent` makes to the proxy
    /// itself rather than through the stack (an async job's or a saga's
    /// submission), its `body` read whole: refused with
    /// [`SignatureRefused`](crate::SignatureRefused) as the layer would.
    /// The request is read now; the future left holds none of it.
    pub fn check_signature(
        &self,
        request: &http::Request<corral_core::Body>,
        agent: &str,
        body: &bytes::Bytes,
    ) -> impl std::future::Future<Output = Result<(), corral_core::BoxError>> + Send + 'static {
        self.guard.check_signature(request, agent, body)
    }

    /// The same, remembering request ids in `store` (shared by every
    /// replica when the store is).
    pub fn with_store(self, store: Arc<dyn ReplayStore>) -> Self {
        self.changing(|guard| guard.replay = store)
    }

    /// The same with a clock of its own (seconds since the Unix epoch), so
    /// tests can move time.
    pub fn with_clock(self, clock: fn() -> f64) -> Self {
        self.changing(|guard| guard.clock = clock)
    }

    /// The same with `change` made to the guard (a copy of it, when
    /// services already share it).
    fn changing(self, change: impl FnOnce(&mut Guard)) -> Self {
        let mut guard = Arc::unwrap_or_clone(self.guard);
        change(&mut guard);
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, self.guard.clone())
    }
}
