use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use corral_core::{Body, BoxError, Degradation, EndpointKind, Level, RequestMeta};
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower::Service;

use crate::answers::default_answer;
use crate::controller::Controller;
use crate::error::Degraded;
use crate::metrics::DEGRADED_REQUESTS_TOTAL;
use crate::treatment::{let_in_at, treatment, Treatment};

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

corral_core::layer_service! {
    /// Degrades inference requests as the level says.
    pub struct DegradeService<S> {
        controller: Arc<Controller>,
    }
    debug()
}

/// What degradation did to a request, said in its answer's headers.
#[derive(Debug, Default, Clone)]
struct Changes {
    level: Option<Level>,
    cap: Option<u64>,
    rewrite: Option<String>,
    /// The model was swapped for its time-to-first-token objective.
    ttft: bool,
}

/// Counts what degradation did to a request.
fn count(level: Level, action: &'static str) {
    metrics::counter!(DEGRADED_REQUESTS_TOTAL, "level" => level.as_str(), "action" => action)
        .increment(1);
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
        let send = match treatment(config, level, &meta) {
            Treatment::Untouched => {
                let Some(model) = self.ttft_fallback(&meta) else {
                    return ResponseFuture::calling(self.inner.call(request), Changes::default());
                };
                let changes = Changes {
                    rewrite: Some(model.to_string()),
                    ttft: true,
                    ..Changes::default()
                };
                return self.send(request, &meta, changes, level);
            }
            Treatment::Answer(text) => match default_answer(&meta, text) {
                Some(answer) => {
                    count(level, "default");
                    let changes = Changes {
                        level: Some(level),
                        ..Changes::default()
                    };
                    return ResponseFuture::answered(answer, changes);
                }
                None => None,
            },
            Treatment::Refuse => None,
            Treatment::Send { cap, model } => Some((cap, model)),
        };
        let Some((cap, model)) = send else {
            count(level, "refused");
            let refused = Degraded {
                level,
                priority: meta.priority,
                retry_after: self.controller.retry_after(let_in_at(config, level, &meta)),
            };
            return ResponseFuture::refused(refused.into());
        };
        let ttft = model.is_none().then(|| self.ttft_fallback(&meta)).flatten();
        let changes = Changes {
            level: Some(level),
            cap,
            rewrite: model.or(ttft).map(str::to_string),
            ttft: ttft.is_some(),
        };
        self.send(request, &meta, changes, level)
    }
}

impl<S> DegradeService<S> {
    /// The smaller model this request should run on for its
    /// time-to-first-token objective, as the scheduler's estimates say.
    fn ttft_fallback(&self, meta: &RequestMeta) -> Option<&str> {
        let load = self.controller.load.get()?;
        crate::ttft::ttft_fallback(&self.controller.config, meta, load.as_ref())
    }

    /// Sends `request` with `changes` made to its body, counted and said in
    /// the answer's headers.
    fn send<B>(
        &mut self,
        mut request: Request<Body>,
        meta: &RequestMeta,
        mut changes: Changes,
        level: Level,
    ) -> ResponseFuture<S::Future>
    where
        S: Service<Request<Body>, Response = Response<B>>,
    {
        if changes.cap.is_some() || changes.rewrite.is_some() {
            if let Err(e) = rewrite(&mut request, meta, &changes) {
                tracing::warn!(error = %e, "could not rewrite a degraded request: sent as it was");
                changes.cap = None;
                changes.rewrite = None;
                changes.ttft = false;
            } else {
                let action = match (&changes.rewrite, changes.ttft) {
                    (Some(_), true) => "ttft_rewritten",
                    (Some(_), false) => "rewritten",
                    (None, _) => "capped",
                };
                count(level, action);
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
        // A model moved for its time to first token says so, whatever the
        // level (a cap at L1 says itself in X-Corral-Token-Cap).
        if this.changes.ttft {
            headers.insert(
                X_CORRAL_DEGRADED,
                HeaderValue::from_static(crate::ttft::TTFT_MARK),
            );
        } else if let Some(level) = this.changes.level {
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
