//! What every connection's requests go through before the stack: the
//! request id, the span, forwarding headers, admin paths, the answer to
//! errors, and the metrics and access log at the end of the body.
//!
//! The request id goes into the request's extensions (as
//! [`RequestId`]), where `classify` takes it without reading the header
//! again. tower-http's `SetRequestIdLayer` and `CatchPanicLayer` are not
//! used, by choice: the id here is the one the span, the access log and
//! the events already carry (tower-http's would be a second type holding
//! a `HeaderValue`), and `CatchPanicLayer`'s handler is given the panic
//! alone, not the request, so it could not answer in the client's own
//! API shape (an OpenAI client would get Ollama's error) nor take the
//! request out of the in-flight count; here the caught panic is answered
//! like any other error, by the one responder.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use corral_core::{
    headers, Body, BoxBody, BoxError, Endpoint, EventSink, MetaSlot, RefusalCast, RequestId,
    WatchBody,
};
use futures_util::FutureExt;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{field::Empty, Instrument};

use crate::admin::Admin;
use crate::agent_api::AgentApi;
use crate::forwarded::forwarding_headers;
use crate::observe::{InFlight, Observation, Unanswered, Watch};
use crate::respond;
use crate::stack::{Stack, StackService};
use corral_core::respond::{Framing, Rendered};

/// The service a listener's connections call.
#[derive(Clone)]
pub struct Front {
    shared: Arc<FrontState>,
}

/// What every clone of the front shares.
struct FrontState {
    proxying: Option<Proxying>,
    admin: Option<AdminSlot>,
    agents: Option<AgentApi>,
}

/// The admin API as the last reload built it: shared by the main
/// listener's front and the admin listener's.
pub(crate) type AdminSlot = Arc<arc_swap::ArcSwap<Admin>>;

fn slot(admin: Admin) -> AdminSlot {
    Arc::new(arc_swap::ArcSwap::from_pointee(admin))
}

corral_core::impl_debug!(Front {
    proxies: shared.proxying.is_some(),
    admin: shared.admin.is_some()
});

/// The way of a proxied request: the stack, its refusals' answers, the
/// observation at the end of the body. Async jobs take it too, so a job
/// is answered exactly as a live request would be. Clones share it, and
/// a reload switches every clone to the new stack at once: a request
/// takes the stack current when it arrives and keeps it to its end.
#[derive(Clone)]
pub(crate) struct Proxying {
    way: Arc<arc_swap::ArcSwap<Way>>,
}

struct Way {
    stack: StackService,
    refusals: Arc<[RefusalCast]>,
    events: Arc<dyn EventSink>,
    exporter: Option<Arc<crate::trace::Exporter>>,
}

impl Way {
    fn through(stack: &Stack) -> Self {
        Self {
            stack: stack.service(),
            refusals: stack.refusals().into(),
            events: stack.events().clone() as Arc<dyn EventSink>,
            exporter: stack.exporter().cloned(),
        }
    }
}

impl Proxying {
    /// The way through `stack`.
    pub(crate) fn new(stack: &Stack) -> Self {
        Self {
            way: Arc::new(arc_swap::ArcSwap::from_pointee(Way::through(stack))),
        }
    }

    /// From now on, through `stack`.
    pub(crate) fn switch(&self, stack: &Stack) {
        self.way.store(Arc::new(Way::through(stack)));
    }
}

impl Front {
    /// Proxies through `stack`, answering admin paths too when `admin` is
    /// given, and Corral's own agent endpoints (jobs, the registry,
    /// sagas).
    pub fn proxy(stack: &Stack, admin: Option<Admin>, agents: AgentApi) -> Self {
        Self::switchable(Proxying::new(stack), admin.map(slot), agents)
    }

    /// Answers admin paths only (a separate admin listener).
    pub fn admin_only(admin: Admin) -> Self {
        Self::admin_switchable(slot(admin))
    }

    /// [`Front::proxy`] through a way and an admin API a reload
    /// switches.
    pub(crate) fn switchable(
        proxying: Proxying,
        admin: Option<AdminSlot>,
        agents: AgentApi,
    ) -> Self {
        Self {
            shared: Arc::new(FrontState {
                proxying: Some(proxying),
                admin,
                agents: Some(agents),
            }),
        }
    }

    /// [`Front::admin_only`] with an admin API a reload switches.
    pub(crate) fn admin_switchable(admin: AdminSlot) -> Self {
        Self {
            shared: Arc::new(FrontState {
                proxying: None,
                admin: Some(admin),
                agents: None,
            }),
        }
    }

    /// Answers `request` from the client at `peer`. Never fails: errors
    /// become Ollama-shaped answers.
    pub async fn handle<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        if let Some(agents) = &shared.agents {
            if let Some(route) = agents.route(&request) {
                // Boxed: the agent API's future is two and a half times
                // the proxied path's (5,000 bytes against 2,000 in
                // `-Zprint-type-sizes`); inline, it made every proxied
                // request's future that large, copied whole at each move
                // (benches/RESULTS.md, "Third pass").
                return Box::pin(agents.handle(route, request, peer)).await;
            }
        }
        if let Some(admin) = &shared.admin {
            if Admin::owns(request.uri().path()) || shared.proxying.is_none() {
                let admin = admin.load_full();
                return admin.handle(request).await;
            }
        }
        let Some(proxying) = &shared.proxying else {
            return respond::answer(
                &corral_core::ErrorBody::new(StatusCode::NOT_FOUND, "not found"),
                corral_core::ApiFamily::Ollama,
            );
        };
        proxying.serve(request, peer).await
    }
}

impl Proxying {
    /// Answers `request` from `peer` through the stack. Never fails:
    /// errors become answers in the client's API shape.
    pub(crate) async fn serve<B>(&self, request: Request<B>, peer: SocketAddr) -> Response<BoxBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (response, framing) = self.serve_unrendered(request, peer).await;
        response.map(|body| Rendered::new(body, framing).boxed_unsync())
    }

    /// [`serve`](Self::serve), but a failure after the headers stays an
    /// error of the body, with the framing that would render it: an
    /// async job tells a broken answer from a whole one.
    pub(crate) async fn serve_unrendered<B>(
        &self,
        request: Request<B>,
        peer: SocketAddr,
    ) -> (Response<BoxBody>, Framing)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let way = self.way.load_full();
        let endpoint = Endpoint::from_request(request.method(), request.uri().path());
        let (mut parts, body) = request.into_parts();
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| request_id_of(&parts.headers));
        let request_id_header = HeaderValue::from_str(request_id.as_str()).ok();
        let trace = crate::trace::TraceContext::of(&parts.headers);
        let span = span_for(&parts, &request_id, endpoint, &trace);
        let head_only = parts.method == Method::HEAD;
        forwarding_headers(&mut parts.headers, request_id_header.as_ref(), peer);
        parts
            .headers
            .insert(crate::trace::TRACEPARENT, trace.header());
        let body = if body.is_end_stream() {
            Body::empty()
        } else {
            Body::streamed(body)
        };
        let slot = MetaSlot::default();
        parts.extensions.insert(slot.clone());
        parts.extensions.insert(request_id.clone());
        let request = Request::from_parts(parts, body);
        // Dropped with this future when the client leaves first.
        let unanswered = Unanswered::new(
            start,
            endpoint,
            span.clone(),
            (slot.clone(), request_id.clone()),
            way.events.clone(),
        );
        let (result, in_flight) = call_counted(&way.stack, request, &slot, endpoint)
            .instrument(span.clone())
            .await;
        unanswered.answered();
        let mut response = match result {
            Ok(Ok(response)) => response,
            Err(panic) => {
                let _entered = span.enter();
                respond::panic_response(panic, endpoint.family())
            }
            Ok(Err(err)) => {
                let _entered = span.enter();
                respond::error_response(&err, endpoint, &way.refusals)
            }
        };
        if let Some(value) = request_id_header {
            response.headers_mut().insert(headers::X_REQUEST_ID, value);
        }
        if crate::observe::access_logged() {
            span.record("status", response.status().as_u16());
        }
        let observation = Observation::at_headers(
            &response,
            start,
            endpoint,
            span,
            (slot.get().cloned(), in_flight),
            request_id,
            Some(way.events.clone()),
        );
        let observation = match &way.exporter {
            Some(exporter) => observation.traced(trace, exporter.clone()),
            None => observation,
        };
        let framing = Framing::of(response.headers(), endpoint.family());
        if head_only {
            // hyper sends no body for HEAD and never polls it.
            observation.finish_without_body();
            return (response, framing);
        }
        let response = WatchBody::response(response, Watch::new(observation));
        (response.map(|watched| watched.boxed_unsync()), framing)
    }
}

/// What the stack answered, or the panic it raised.
type Called = Result<Result<Response<BoxBody>, BoxError>, Box<dyn std::any::Any + Send>>;

/// Calls the stack, counting the request in flight as soon as classify
/// has named its class: a request waiting for a permit or generating a
/// whole answer is in flight long before its headers. A panic in a layer
/// is caught, to be answered with a 500 and logged; the connection and
/// everyone else carry on.
async fn call_counted(
    stack: &StackService,
    request: Request<Body>,
    slot: &MetaSlot,
    endpoint: Endpoint,
) -> (Called, InFlight) {
    let call = AssertUnwindSafe(stack.clone().oneshot(request)).catch_unwind();
    let mut in_flight = InFlight::default();
    let mut call = std::pin::pin!(call);
    let result = std::future::poll_fn(|cx| {
        let poll = std::future::Future::poll(call.as_mut(), cx);
        if !in_flight.counted() {
            if let Some(meta) = slot.get() {
                let handles = crate::telemetry::request_metrics(
                    endpoint,
                    Some(meta.class.as_str()),
                    meta.model.as_deref(),
                );
                in_flight.count(handles);
            }
        }
        poll
    })
    .await;
    (result, in_flight)
}

/// The client's `X-Request-Id` when it is usable, else a new one.
fn request_id_of(head: &http::HeaderMap) -> RequestId {
    match head
        .get(headers::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) if !id.is_empty() && id.len() <= 200 => RequestId::from(id),
        _ => RequestId::generate(),
    }
}

/// The request's span; the fields left empty are filled as the request
/// goes (classify names the agent, the end the status and duration).
///
/// Without the access line only the request id, the trace id (what ties
/// a line to its trace) and the endpoint are kept: a
/// field costs the fmt subscriber a formatting pass when the span is made
/// or recorded, whether or not a line is ever logged in it, and the other
/// fields are read by the access line alone (the rest of a request's
/// story is in its events, under the same id). Under load with no
/// access line, the ten-field span was ~4.7 % of the proxy's CPU
/// (`perf record`, `new_span` + `record` + `try_close`; benches/RESULTS.md,
/// "The changes, each measured").
fn span_for(
    parts: &http::request::Parts,
    request_id: &RequestId,
    endpoint: Endpoint,
    trace: &crate::trace::TraceContext,
) -> tracing::Span {
    if !crate::observe::access_logged() {
        return tracing::info_span!(
            "request",
            request_id = request_id.as_str(),
            trace_id = crate::trace::hex(&trace.trace_id).as_str(),
            endpoint = endpoint.as_str(),
        );
    }
    tracing::info_span!(
        "request",
        request_id = request_id.as_str(),
        trace_id = crate::trace::hex(&trace.trace_id).as_str(),
        method = parts.method.as_str(),
        path = parts.uri.path(),
        endpoint = endpoint.as_str(),
        agent = Empty,
        class = Empty,
        priority = Empty,
        model = Empty,
        status = Empty,
        duration_ms = Empty,
    )
}
