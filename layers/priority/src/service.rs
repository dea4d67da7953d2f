use std::sync::Arc;
use std::task::{Context, Poll};

use corral_core::{Endpoint, EndpointKind, RequestMeta};
use http::{Request, Response};
use tower::Service;

use crate::future::ResponseFuture;
use crate::layer::Scheduling;
use crate::lengths::Learning;
use crate::pool::Ticket;

corral_core::layer_service! {
    /// Runs inference requests only when the scheduler grants them an
    /// upstream permit; everything else passes straight through.
    ///
    /// Reads the request's [`RequestMeta`] (set by `classify`): agent,
    /// class, priority, deadline, model, size and `max_tokens`. A request
    /// without one is treated as priority 5 from an anonymous agent.
    #[derive(Debug)]
    pub struct PriorityService<S> {
        shared: Arc<Scheduling>,
    }
}

impl<S, B, ReqBody> Service<Request<ReqBody>> for PriorityService<S>
where
    ReqBody: http_body::Body,
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone,
    S::Error: Into<corral_core::BoxError>,
    B: http_body::Body,
{
    type Response = Response<crate::ResponseBody<B>>;
    type Error = corral_core::BoxError;
    type Future = ResponseFuture<S, S::Future, Request<ReqBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let endpoint = RequestMeta::of(&request, "priority")
            .map(|m| m.endpoint)
            .unwrap_or_else(|| Endpoint::from_request(request.method(), request.uri().path()));
        if endpoint.kind() != EndpointKind::Inference {
            // Only inference takes the GPU: metadata reads never queue
            // behind a generation.
            return ResponseFuture::passing(self.inner.call(request));
        }
        let (ticket, model) = self.shared.ticket(&request);
        if let Some(refusal) = self.shared.scheduler.refusal(model.as_deref()) {
            return ResponseFuture::refused(refusal);
        }
        // Its place in the waiting room is kept under the id its client
        // gave: one Corral made cannot be given again.
        let named = request
            .extensions()
            .get::<RequestMeta>()
            .map(|m| &m.request_id)
            .filter(|id| !id.is_generated());
        let admitted = match self
            .shared
            .scheduler
            .admit(&ticket, model.as_deref(), named)
        {
            Ok(admitted) => admitted,
            Err(refusal) => return ResponseFuture::refused(Box::new(refusal)),
        };
        let session = session_of(&request);
        let listing = request
            .extensions()
            .get::<RequestMeta>()
            .map(|m| (m.request_id.clone(), ticket.agent.clone(), ticket.priority));
        let mut acquire =
            self.shared
                .scheduler
                .acquire_admitted(ticket, model.as_deref(), session, admitted);
        if let Some((id, agent, priority)) = listing {
            self.shared
                .scheduler
                .list(&mut acquire, id, agent, priority);
        }
        let mut request = request;
        if let Some(route) = acquire.route() {
            // Read by the upstream client once the permit is granted.
            request.extensions_mut().insert(route.clone());
        }
        let learning = request
            .extensions()
            .get::<RequestMeta>()
            .filter(|m| generates(m.endpoint))
            .map(|m| self.shared.learning(m));
        let inner = corral_core::take_ready(&mut self.inner);
        ResponseFuture::waiting(acquire, inner, request, learning)
    }
}

impl Scheduling {
    /// What the scheduler needs to know about `request`.
    fn ticket<B: http_body::Body>(&self, request: &Request<B>) -> (Ticket, Option<Arc<str>>) {
        let Some(meta) = request.extensions().get::<RequestMeta>() else {
            // Without what classify read: the body's declared size.
            let bytes = usize::try_from(request.body().size_hint().lower()).unwrap_or(usize::MAX);
            return (
                Ticket {
                    agent: "anonymous".into(),
                    priority: corral_core::Priority::DEFAULT,
                    weight: 1.0,
                    cost: self.estimate(bytes, None, true),
                    bytes,
                    deadline: None,
                },
                None,
            );
        };
        (self.ticket_of(meta), meta.model.clone())
    }

    /// The ticket of a request `meta` describes.
    pub(crate) fn ticket_of(&self, meta: &RequestMeta) -> Ticket {
        let generates = generates(meta.endpoint);
        Ticket {
            agent: meta.agent.clone(),
            priority: meta.priority,
            weight: self
                .weights
                .get(meta.class.as_str())
                .copied()
                .unwrap_or(1.0),
            cost: self.estimate(meta.body_bytes, self.max_tokens(meta), generates),
            bytes: meta.body_bytes,
            deadline: meta.deadline,
        }
    }

    /// The tokens a request may generate: what it says (`num_predict`,
    /// `max_tokens`), else what its agent's answers from its model have
    /// generated lately, else `None` (the default).
    ///
    /// Before any answer from its model was seen: nothing, its prompt
    /// alone. A guess above what the answers turn out to generate would
    /// leave the requests queued before the first answer behind every
    /// request predicted after it (shorter-first), for up to an `aging`
    /// period; a guess below only lets them go first.
    fn max_tokens(&self, meta: &RequestMeta) -> Option<u64> {
        meta.generation.max_tokens.or_else(|| {
            let learned = self.lengths.predict(&meta.agent, meta.model.as_ref());
            Some(learned.map_or(0, |n| n.round() as u64))
        })
    }

    /// What a request's answer teaches the lengths, once it ends in full.
    fn learning(&self, meta: &RequestMeta) -> Learning {
        Learning {
            lengths: self.lengths.clone(),
            agent: meta.agent.clone(),
            model: meta.model.clone(),
            prompt: prompt_tokens(meta.body_bytes),
        }
    }

    /// Prompt tokens (about four bytes each) + 2 × the tokens it may
    /// generate.
    fn estimate(&self, body_bytes: usize, max_tokens: Option<u64>, generates: bool) -> f64 {
        let prompt = prompt_tokens(body_bytes);
        let generated = if generates {
            max_tokens.unwrap_or(self.default_generation_tokens) as f64
        } else {
            0.0
        };
        prompt + 2.0 * generated
    }
}

/// A prompt's tokens, as predicted from its body: about four bytes each.
fn prompt_tokens(body_bytes: usize) -> f64 {
    (body_bytes / 4).max(1) as f64
}

/// Whether `endpoint` generates tokens (embeddings do not).
fn generates(endpoint: Endpoint) -> bool {
    !matches!(
        endpoint,
        Endpoint::Embed | Endpoint::Embeddings | Endpoint::OpenAiEmbeddings
    )
}

/// The conversation `request` belongs to: its `X-Session-Id`, hashed with
/// its agent (two agents' sessions of one name are two conversations).
fn session_of<B>(request: &Request<B>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let id = request.headers().get(corral_core::headers::X_SESSION_ID)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    id.as_bytes().hash(&mut hasher);
    if let Some(meta) = request.extensions().get::<RequestMeta>() {
        meta.agent.as_str().hash(&mut hasher);
    }
    Some(hasher.finish())
}
