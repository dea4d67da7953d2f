//! What the stack is made of: the request and response types, a built
//! layer (boxed, so the order can be chosen at run time), what a layer's
//! builder may use, and the handles the admin API drives. The registry
//! lists the kinds; the stack assembles them; both use these.

use bytes::Bytes;
use std::sync::Arc;

use corral_core::{Body, BoxBody, BoxError, Bus, ConfigError, LoadCell};
use http::Response;
use serde::de::DeserializeOwned;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::config::{Config, LayerConfig};

/// A request as it travels down the stack.
pub type HttpRequest = http::Request<Body>;
/// A response as it travels up the stack.
pub type HttpResponse = http::Response<BoxBody>;
/// The stack, boxed: its layers are chosen at run time.
pub type StackService = BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>;

/// `service` boxed as a [`StackService`] whose clones share it.
///
/// A boxed service's clone copies what it boxes, and a layer's service
/// holds the boxed rest of the stack: the stack cloned for a request,
/// and again by each layer that keeps its inner service for later
/// (`take_ready`), copied every layer below, sixteen boxes a request for
/// the default stack (~5,400 instructions of ~121,000 under callgrind).
/// Shared, a clone is a count: the layer's own service is cloned once,
/// when a clone is first asked whether it is ready, and that ready clone
/// takes the call, so readiness (a concurrency limit's, a closed
/// buffer's error) still reaches the layer above before it calls.
pub(crate) fn shared<S>(service: S) -> StackService
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(Shared {
        service: Arc::new(service),
        ready: None,
    })
}

/// A service behind an `Arc`, and the clone of it being made ready.
struct Shared<S> {
    service: Arc<S>,
    ready: Option<S>,
}

impl<S> Clone for Shared<S> {
    fn clone(&self) -> Self {
        Shared {
            service: Arc::clone(&self.service),
            ready: None,
        }
    }
}

impl<S> Service<HttpRequest> for Shared<S>
where
    S: Service<HttpRequest> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<S::Future, tower::util::Oneshot<S, HttpRequest>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let service = &self.service;
        let polled = self
            .ready
            .get_or_insert_with(|| S::clone(service))
            .poll_ready(cx);
        if let std::task::Poll::Ready(Err(_)) = polled {
            // A service that failed its readiness is done with: the next
            // poll starts from a fresh clone.
            self.ready = None;
        }
        polled
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        use futures_util::future::Either;
        match self.ready.take() {
            Some(mut ready) => Either::Left(ready.call(request)),
            // Called without being asked first, against tower's contract:
            // a clone is made ready in the call's future rather than
            // called unready.
            None => Either::Right(S::clone(&self.service).oneshot(request)),
        }
    }
}

/// What a layer builder may use besides its own options.
#[derive(Clone, Copy)]
pub struct BuildContext<'a> {
    /// The whole configuration: classes, agents, the upstream's capacity.
    pub config: &'a Config,
    /// Where the scheduler publishes its load for the layers around it.
    pub load: &'a LoadCell,
    /// Where layers announce state changes (backpressure, levels, breaker).
    pub bus: &'a Arc<dyn Bus>,
    /// Where layers leave the handles the admin API drives.
    pub controls: &'a Controls,
    /// Where layers record events.
    pub events: &'a Arc<dyn corral_core::EventSink>,
    /// The shared Redis, with `[state] backend = "redis"` (inside a
    /// runtime: `check-config` builds without it).
    pub state: Option<&'a corral_core::RedisState>,
    /// With `[[upstreams]]`: their permits, which the scheduler hands out.
    pub fleet: Option<&'a Arc<corral_fleet::Fleet>>,
}

/// Handles of the stack's layers that the admin API drives.
#[derive(Default)]
pub struct Controls {
    /// The degrade layer's controller, when the stack has one.
    pub degrade: std::sync::OnceLock<Arc<corral_degrade::Controller>>,
    /// The cache's store, when the stack has one.
    pub cache: std::sync::OnceLock<Arc<dyn corral_cache::CacheStore>>,
    /// The breakers, when the stack has them.
    pub breaker: std::sync::OnceLock<corral_breaker::BreakerLayer>,
    /// The scheduler, when the stack has one.
    pub scheduler: std::sync::OnceLock<Arc<corral_priority::Scheduler>>,
    /// The auth layer, when the stack has one: the agent API checks the
    /// signatures of what it accepts with it.
    pub auth: std::sync::OnceLock<corral_auth::AuthLayer>,
    /// The rate limiter's day and month budgets, when the stack has one.
    pub budgets: std::sync::OnceLock<corral_ratelimit::BudgetBook>,
    /// The agents' priorities set at run time (classify's, always there).
    pub priorities: std::sync::OnceLock<Arc<corral_classify::PriorityOverrides>>,
}

impl std::fmt::Debug for BuildContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("load", self.load)
            .finish()
    }
}

corral_core::impl_debug!(Controls {
    degrade: degrade.get().is_some(),
    cache: cache.get().is_some()
});

/// A built layer, ready to wrap the rest of the stack. Clones share the
/// layer and its state: a reload carries a layer over by cloning it.
#[derive(Clone)]
pub struct StackLayer {
    summary: String,
    wrap: Arc<dyn Fn(StackService) -> StackService + Send + Sync>,
}

corral_core::impl_debug!(StackLayer { summary });

impl StackLayer {
    /// Any tower layer over the stack's service, boxed so that layers can
    /// be ordered at run time; `summary` says how it was configured.
    ///
    /// Each request's stack is made ready from the top down before the
    /// request enters it: a layer that reserves something in `poll_ready`
    /// (tower's concurrency limit) holds it from then on, through the
    /// body's read and any queue below it, so it belongs above the
    /// scheduler, not below.
    pub fn new<L, S, B>(layer: L, summary: impl Into<String>) -> Self
    where
        L: Layer<StackService, Service = S> + Send + Sync + 'static,
        S: Service<HttpRequest, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            summary: summary.into(),
            wrap: Arc::new(move |inner| {
                shared(
                    layer
                        .layer(inner)
                        .map_response(|response: Response<B>| response.map(corral_core::boxed))
                        .map_err(Into::into),
                )
            }),
        }
    }

    /// How it was configured.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    pub(crate) fn wrap(&self, inner: StackService) -> StackService {
        (self.wrap)(inner)
    }
}

/// A layer's options, as its config type; errors name the option.
///
/// ```
/// use corral::{options, LayerConfig};
///
/// #[derive(Debug, serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct ShedConfig { max_queue: usize }
///
/// let mut table = toml::Table::new();
/// table.insert("max_queue".into(), toml::Value::String("lots".into()));
/// let layer = LayerConfig { kind: "shed".into(), options: table, line: None, key_lines: Vec::new() };
/// let err = options::<ShedConfig>(&layer).unwrap_err();
/// assert_eq!(err.key(), "max_queue");
/// ```
pub fn options<C: DeserializeOwned>(layer: &LayerConfig) -> Result<C, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(layer.options.clone())).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::new(
            if key == "." { String::new() } else { key },
            e.into_inner().message().to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use super::*;

    /// Counts its clones; each clone is ready only at its second poll and
    /// refuses a call before it is ready.
    struct Picky {
        clones: Arc<AtomicUsize>,
        polled: bool,
        ready: bool,
    }

    impl Clone for Picky {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Picky {
                clones: self.clones.clone(),
                polled: false,
                ready: false,
            }
        }
    }

    impl Service<HttpRequest> for Picky {
        type Response = HttpResponse;
        type Error = BoxError;
        type Future = std::future::Ready<Result<HttpResponse, BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if !self.polled {
                self.polled = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.ready = true;
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: HttpRequest) -> Self::Future {
            let answer = if std::mem::take(&mut self.ready) {
                Ok(Response::new(BoxBody::default()))
            } else {
                Err("called before it was ready".into())
            };
            std::future::ready(answer)
        }
    }

    #[tokio::test]
    async fn a_shared_service_is_cloned_by_count_and_made_ready_in_each_call() {
        let clones = Arc::new(AtomicUsize::new(0));
        let stack = shared(Picky {
            clones: clones.clone(),
            polled: false,
            ready: false,
        });
        let copies: Vec<StackService> = (0..3).map(|_| stack.clone()).collect();
        assert_eq!(clones.load(Ordering::SeqCst), 0, "a clone is a count");
        for copy in copies {
            let response = copy
                .oneshot(http::Request::new(Body::empty()))
                .await
                .expect("the call waited for its clone to be ready");
            assert_eq!(response.status(), 200);
        }
        assert_eq!(clones.load(Ordering::SeqCst), 3, "one clone per call");
    }

    /// A service whose readiness fails, as a closed buffer's does.
    #[derive(Clone)]
    struct Closed;

    impl Service<HttpRequest> for Closed {
        type Response = HttpResponse;
        type Error = BoxError;
        type Future = std::future::Ready<Result<HttpResponse, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err("closed".into()))
        }

        fn call(&mut self, _: HttpRequest) -> Self::Future {
            panic!("called though it said it was not ready")
        }
    }

    #[test]
    fn the_layer_above_sees_a_shared_services_readiness_before_it_calls() {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let clones = Arc::new(AtomicUsize::new(0));
        let mut picky = shared(Picky {
            clones: clones.clone(),
            polled: false,
            ready: false,
        });
        assert!(picky.poll_ready(&mut cx).is_pending());
        assert!(matches!(picky.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(clones.load(Ordering::SeqCst), 1, "one clone made ready");
        // What a layer does to keep the ready service for later.
        let taken = corral_core::take_ready(&mut picky);
        let answer = taken.oneshot(http::Request::new(Body::empty()));
        let answer = futures_util::FutureExt::now_or_never(answer).expect("ready already");
        assert_eq!(answer.expect("the ready clone took the call").status(), 200);

        let mut closed = shared(Closed);
        match closed.poll_ready(&mut cx) {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "closed"),
            other => panic!("readiness lost: {:?}", other.map(|r| r.is_ok())),
        }
    }
}
