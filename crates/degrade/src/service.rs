use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use corral_core::{
    Body, BoxError, Degradation, Endpoint, EndpointKind, Level, Priority, RequestMeta,
};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::Service;

use crate::answers::default_answer;
use crate::controller::Controller;
use crate::error::Degraded;
use crate::metrics::DEGRADED_REQUESTS_TOTAL;

/// Says the answer was degraded, and at which level.
pub const X_CORRAL_DEGRADED: HeaderName = HeaderName::from_static("x-corral-degraded");
/// Says which model replaced the one asked for: `llama3->tinyllama`.
pub const X_CORRAL_MODEL_REWRITE: HeaderName = HeaderName::from_static("x-corral-model-rewrite");
/// `default` on an answer Corral wrote instead of the model (Critical),
/// so an agent can tell a canned reply from a generated one.
pub const X_CORRAL_ANSWER: HeaderName = HeaderName::from_static("x-corral-answer");
/// Says the generation was capped at this many tokens.
pub const X_CORRAL_TOKEN_CAP: HeaderName = HeaderName::from_static("x-corral-token-cap");

/// The answer's body: the upstream's, or a default written here.
pub type ResponseBody<B> = Either<B, Full<Bytes>>;

/// Degrades inference requests as the level says.
#[derive(Clone)]
pub struct DegradeService<S> {
    inner: S,
    controller: Arc<Controller>,
}

impl<S> DegradeService<S> {
    corral_core::define_inner_service_accessors!();
}

impl<S> std::fmt::Debug for DegradeService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DegradeService").finish()
    }
}

impl<S> DegradeService<S> {
    pub(crate) fn new(inner: S, controller: Arc<Controller>) -> Self {
        Self { inner, controller }
    }
}

/// What degradation did to a request, said in its answer's headers.
#[derive(Debug, Default, Clone)]
struct Changes {
    level: Option<Level>,
    cap: Option<u64>,
    rewrite: Option<String>,
}

fn generates(endpoint: Endpoint) -> bool {
    matches!(
        endpoint,
        Endpoint::Generate
            | Endpoint::Chat
            | Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::AnthropicMessages
            | Endpoint::OpenAiResponses
    )
}

impl<S, B> Service<Request<Body>> for DegradeService<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Some(meta) = RequestMeta::of(&request, "degrade").cloned() else {
            return ResponseFuture::calling(self.inner.call(request), Changes::default());
        };
        if meta.endpoint.kind() != EndpointKind::Inference {
            return ResponseFuture::calling(self.inner.call(request), Changes::default());
        }
        let config = &self.controller.config;
        let level = self.controller.level();
        request.extensions_mut().insert(Degradation {
            level,
            ttl_factor: match level {
                Level::Normal => 1.0,
                Level::L1 => config.l1_cache_ttl_factor,
                Level::L2 | Level::Critical => config.l2_cache_ttl_factor,
            },
            serve_stale: level >= Level::L2,
        });
        if level == Level::Normal
            || config
                .critical_classes
                .iter()
                .any(|c| c == meta.class.as_str())
        {
            return ResponseFuture::calling(self.inner.call(request), Changes::default());
        }

        let refuse = |what: &'static str| {
            metrics::counter!(DEGRADED_REQUESTS_TOTAL, "level" => level.as_str(), "action" => what)
                .increment(1);
            Degraded {
                level,
                priority: meta.priority,
                retry_after: config.retry_after,
            }
        };
        let above = |limit: u8| Priority::new(limit).is_ok_and(|p| p.is_higher_than(meta.priority));
        if level == Level::Critical && above(config.critical_keep_up_to) {
            let answer = config
                .defaults
                .get(meta.endpoint.as_str())
                .and_then(|text| default_answer(&meta, text));
            return match answer {
                Some(answer) => {
                    metrics::counter!(DEGRADED_REQUESTS_TOTAL, "level" => level.as_str(), "action" => "default")
                        .increment(1);
                    ResponseFuture::answered(
                        answer,
                        Changes {
                            level: Some(level),
                            ..Changes::default()
                        },
                    )
                }
                None => ResponseFuture::refused(refuse("refused").into()),
            };
        }
        if level >= Level::L2 && config.l2_refuse_above.is_some_and(above) {
            return ResponseFuture::refused(refuse("refused").into());
        }

        let mut changes = Changes {
            level: Some(level),
            ..Changes::default()
        };
        if generates(meta.endpoint) {
            if let Some(cap) = config.l1_max_tokens {
                if meta.generation.max_tokens.is_none_or(|asked| asked > cap) {
                    changes.cap = Some(cap);
                }
            }
            if level >= Level::L2 {
                let current = meta.model_str();
                let target = config.l2_models.get(current).or(config.l2_model.as_ref());
                if let Some(target) =
                    target.filter(|t| t.as_str() != current && !current.is_empty())
                {
                    changes.rewrite = Some(target.clone());
                }
            }
        }
        if changes.cap.is_some() || changes.rewrite.is_some() {
            if let Err(e) = rewrite(&mut request, &meta, &changes) {
                tracing::warn!(error = %e, "could not rewrite a degraded request: sent as it was");
                changes.cap = None;
                changes.rewrite = None;
            } else {
                let action = if changes.rewrite.is_some() {
                    "rewritten"
                } else {
                    "capped"
                };
                metrics::counter!(DEGRADED_REQUESTS_TOTAL, "level" => level.as_str(), "action" => action).increment(1);
            }
        }
        let rewrite_header = changes
            .rewrite
            .as_ref()
            .map(|to| format!("{}->{to}", meta.model_str()));
        let mut future = ResponseFuture::calling(self.inner.call(request), changes);
        future.rewrite_header = rewrite_header;
        future
    }
}

/// Applies the token cap and the model swap to the body and the metadata.
fn rewrite(
    request: &mut Request<Body>,
    meta: &RequestMeta,
    changes: &Changes,
) -> Result<(), BoxError> {
    let bytes = request
        .body()
        .buffered()
        .ok_or("the body is not buffered")?;
    let mut json: serde_json::Value = serde_json::from_slice(bytes)?;
    let object = json
        .as_object_mut()
        .ok_or("the body is not a JSON object")?;
    if let Some(model) = &changes.rewrite {
        object.insert("model".into(), serde_json::Value::String(model.clone()));
    }
    if let Some(cap) = changes.cap {
        match meta.endpoint.family() {
            corral_core::ApiFamily::Ollama => {
                let options = object
                    .entry("options")
                    .or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let Some(options) = options.as_object_mut() {
                    options.insert("num_predict".into(), cap.into());
                }
            }
            corral_core::ApiFamily::OpenAi => {
                object.insert("max_tokens".into(), cap.into());
                object.remove("max_completion_tokens");
            }
            corral_core::ApiFamily::Anthropic => {
                object.insert("max_tokens".into(), cap.into());
            }
            corral_core::ApiFamily::OpenAiResponses => {
                object.insert("max_output_tokens".into(), cap.into());
            }
        }
    }
    let body = Bytes::from(serde_json::to_vec(&json)?);
    let mut meta = meta.clone();
    if let Some(model) = &changes.rewrite {
        meta.model = Some(model.as_str().into());
    }
    if let Some(cap) = changes.cap {
        meta.generation.max_tokens = Some(cap);
    }
    meta.body_bytes = body.len();
    request.headers_mut().remove(http::header::CONTENT_LENGTH);
    *request.body_mut() = Body::from(body);
    request.extensions_mut().insert(meta);
    Ok(())
}

pin_project! {
    /// The response future of [`DegradeService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        changes: Changes,
        rewrite_header: Option<String>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Answered { answer: Option<Response<Bytes>> },
        Refused { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    fn calling(future: F, changes: Changes) -> Self {
        Self {
            state: State::Calling { future },
            changes,
            rewrite_header: None,
        }
    }

    fn answered(answer: Response<Bytes>, changes: Changes) -> Self {
        Self {
            state: State::Answered {
                answer: Some(answer),
            },
            changes,
            rewrite_header: None,
        }
    }

    fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
            changes: Changes::default(),
            rewrite_header: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.state.project() {
            StateProj::Calling { future } => ready!(future.poll(cx))
                .map_err(Into::into)?
                .map(Either::Left),
            StateProj::Answered { answer } => match answer.take() {
                Some(answer) => answer.map(|bytes| Either::Right(Full::new(bytes))),
                None => return Poll::Ready(Err("degrade future polled after completion".into())),
            },
            StateProj::Refused { error } => {
                return Poll::Ready(Err(error
                    .take()
                    .unwrap_or_else(|| "degrade future polled after completion".into())))
            }
        };
        let headers = response.headers_mut();
        if let Some(level) = this.changes.level {
            headers.insert(X_CORRAL_DEGRADED, HeaderValue::from_static(level.as_str()));
        }
        if let Some(cap) = this.changes.cap {
            headers.insert(X_CORRAL_TOKEN_CAP, HeaderValue::from(cap));
        }
        if let Some(value) = this
            .rewrite_header
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            headers.insert(X_CORRAL_MODEL_REWRITE, value);
        }
        Poll::Ready(Ok(response))
    }
}
