//! A way in for a Rust service: give each request the [`RequestMeta`] the
//! layers read, without `corral-classify` (which parses Ollama's and
//! OpenAI's bodies).
//!
//! The layers act on what a request's `RequestMeta` says: who asks, at
//! what priority, for which model, until when. A request without one
//! passes through them unscheduled and unlimited; each layer that sees
//! one says so, counted in [`REQUESTS_WITHOUT_META_TOTAL`] by layer and
//! logged once, so a stack missing its way in is seen, not silent.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use corral_core::{Priority, RequestMeta, SetMetaLayer};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! // Read from the headers: the endpoint from the method and path,
//! // X-Agent-Id, X-Priority, X-Deadline-Ms, X-Request-Id.
//! let service = ServiceBuilder::new()
//!     .layer(SetMetaLayer::from_headers())
//!     .service(service_fn(|request: http::Request<String>| async move {
//!         let meta = request.extensions().get::<RequestMeta>().unwrap();
//!         Ok::<_, std::convert::Infallible>(format!("{} at {}", meta.agent, meta.priority))
//!     }));
//! let request = http::Request::post("/api/chat")
//!     .header("x-agent-id", "planner")
//!     .header("x-priority", "2")
//!     .body(String::new())
//!     .unwrap();
//! assert_eq!(service.oneshot(request).await.unwrap(), "planner at 2");
//!
//! // Or made by the service's own rule.
//! let layer = SetMetaLayer::new(|parts: &http::request::Parts| {
//!     RequestMeta::new("id-1".into(), corral_core::Endpoint::Chat)
//!         .with_priority(Priority::new(1).unwrap())
//!         .with_model(Some("llama3".into()))
//! });
//! # let _ = layer;
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::Request;
use tower::{Layer, Service};

use crate::{headers, AgentId, Endpoint, Priority, RequestId, RequestMeta};

/// Requests a layer let through untouched because they carried no
/// [`RequestMeta`], by layer.
pub const REQUESTS_WITHOUT_META_TOTAL: &str = "corral_requests_without_meta_total";

impl RequestMeta {
    /// `request`'s metadata, for `layer`; a request without it is counted
    /// in [`REQUESTS_WITHOUT_META_TOTAL`] and, the first time per layer,
    /// logged.
    ///
    /// ```
    /// use corral_core::RequestMeta;
    ///
    /// let bare = http::Request::new(());
    /// assert!(RequestMeta::of(&bare, "priority").is_none());
    /// ```
    pub fn of<'a, B>(request: &'a Request<B>, layer: &'static str) -> Option<&'a RequestMeta> {
        let meta = request.extensions().get::<RequestMeta>();
        if meta.is_none() {
            without_meta(layer);
        }
        meta
    }

    /// Metadata read from a request's head alone: the endpoint from its
    /// method and path, the agent from `X-Agent-Id` (else `anonymous`),
    /// the priority from `X-Priority` (1..10, else 5), a deadline from
    /// `X-Deadline-Ms`, the id from `X-Request-Id` (else a new one).
    /// Neither model nor token counts: a service that knows them sets
    /// them with [`RequestMeta::with_model`] and `generation`.
    ///
    /// ```
    /// use corral_core::{Endpoint, RequestMeta};
    ///
    /// let (parts, ()) = http::Request::post("/v1/messages")
    ///     .header("x-priority", "12")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// let meta = RequestMeta::from_parts(&parts);
    /// assert_eq!(meta.endpoint, Endpoint::AnthropicMessages);
    /// assert_eq!(meta.priority.get(), 5, "out of range: the default");
    /// assert_eq!(meta.agent.as_str(), "anonymous");
    /// ```
    pub fn from_parts(parts: &Parts) -> RequestMeta {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let id = header(headers::X_REQUEST_ID.as_str())
            .filter(|id| !id.is_empty() && id.len() <= 200)
            .map_or_else(RequestId::generate, RequestId::from);
        let endpoint = Endpoint::from_request(&parts.method, parts.uri.path());
        let mut meta = RequestMeta::new(id, endpoint);
        if let Some(agent) = header(headers::X_AGENT_ID.as_str()).map(str::trim) {
            if !agent.is_empty() {
                meta.agent = AgentId::from(agent);
            }
        }
        if let Some(priority) = header("x-priority")
            .and_then(|p| p.trim().parse::<u8>().ok())
            .and_then(|p| Priority::new(p).ok())
        {
            meta.priority = priority;
        }
        if let Some(ms) = header("x-deadline-ms").and_then(|d| d.trim().parse::<u64>().ok()) {
            meta.deadline = meta
                .received_at
                .checked_add(Duration::from_millis(ms.min(86_400_000)));
        }
        if let Some(ms) = header("x-corral-ttft-ms").and_then(|d| d.trim().parse::<u64>().ok()) {
            meta.ttft = Some(Duration::from_millis(ms));
        }
        meta
    }
}

/// Counts a request without metadata and logs it once per layer.
fn without_meta(layer: &'static str) {
    metrics::counter!(REQUESTS_WITHOUT_META_TOTAL, "layer" => layer).increment(1);
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.contains(&layer) {
        seen.push(layer);
        tracing::warn!(
            layer,
            "a request with no RequestMeta passed through the {layer} layer untouched: put corral-classify or corral_core::SetMetaLayer before it (counted in {REQUESTS_WITHOUT_META_TOTAL})"
        );
    }
}

/// Gives each request the [`RequestMeta`] a function makes of its head,
/// unless one is already there.
#[derive(Clone)]
pub struct SetMetaLayer<F> {
    make: Arc<F>,
}

impl<F> std::fmt::Debug for SetMetaLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetMetaLayer").finish_non_exhaustive()
    }
}

impl<F> SetMetaLayer<F>
where
    F: Fn(&Parts) -> RequestMeta,
{
    /// A layer whose requests get the metadata `make` gives.
    pub fn new(make: F) -> Self {
        Self {
            make: Arc::new(make),
        }
    }
}

impl SetMetaLayer<fn(&Parts) -> RequestMeta> {
    /// A layer whose requests get [`RequestMeta::from_parts`].
    pub fn from_headers() -> Self {
        Self::new(RequestMeta::from_parts)
    }
}

impl<S, F> Layer<S> for SetMetaLayer<F> {
    type Service = SetMeta<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        SetMeta {
            inner,
            make: self.make.clone(),
        }
    }
}

/// The service of [`SetMetaLayer`].
#[derive(Clone)]
pub struct SetMeta<S, F> {
    inner: S,
    make: Arc<F>,
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for SetMeta<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetMeta")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> SetMeta<S, F> {
    crate::define_inner_service_accessors!();
}

impl<S, F, B> Service<Request<B>> for SetMeta<S, F>
where
    S: Service<Request<B>>,
    F: Fn(&Parts) -> RequestMeta,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        if request.extensions().get::<RequestMeta>().is_some() {
            return self.inner.call(request);
        }
        let (mut parts, body) = request.into_parts();
        let meta = (self.make)(&parts);
        parts.extensions.insert(meta);
        self.inner.call(Request::from_parts(parts, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn a_request_without_meta_is_counted_by_the_layer_that_saw_it() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let bare = Request::new(());
            assert!(RequestMeta::of(&bare, "shed").is_none());
            assert!(RequestMeta::of(&bare, "shed").is_none());
            let mut with = Request::new(());
            with.extensions_mut()
                .insert(RequestMeta::new("r".into(), Endpoint::Chat));
            assert!(RequestMeta::of(&with, "shed").is_some());
        });
        let counted: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| match value {
                DebugValue::Counter(n) => Some((
                    key.key().labels().map(|l| l.value().to_string()).collect(),
                    n,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(counted, [("shed".to_string(), 2)]);
    }
}
