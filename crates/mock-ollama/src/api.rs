//! The router: Ollama's paths, the OpenAI-compatible paths (with the
//! Responses API), the Anthropic-compatible `/v1/messages`, and the
//! `/mock/*` control paths.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::json;

use crate::embed::{self, EmbedCall};
use crate::faults::Faults;
use crate::infer;
use crate::manage;
use crate::respond::{self, BoxBody, HeadersGuard, Recorded};
use crate::shapes::Call;
use crate::state::State;
use crate::stats::lock;

pub(crate) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    if request.uri().path().starts_with("/mock/") {
        return Ok(control(&state, request));
    }
    let (parts, body) = request.into_parts();
    let record = state
        .counters
        .record_arrival(state.config.log_capacity, &parts);
    let mut guard = HeadersGuard {
        record: record.clone(),
        state: state.clone(),
        armed: true,
    };
    let response = route(&state, parts, body, &record).await;
    guard.armed = false;
    Ok(Recorded::wrap(response, record, state))
}

async fn route(
    state: &Arc<State>,
    parts: http::request::Parts,
    body: Incoming,
    record: &Arc<std::sync::Mutex<crate::RecordedRequest>>,
) -> Response<BoxBody> {
    let faults = match parts.headers.get("x-mock-fault").map(|v| v.to_str()) {
        None => Faults::default(),
        Some(Ok(value)) => match Faults::parse(value) {
            Ok(faults) => faults,
            Err(e) => return respond::ollama_error(StatusCode::BAD_REQUEST, &e),
        },
        Some(Err(_)) => {
            return respond::ollama_error(StatusCode::BAD_REQUEST, "X-Mock-Fault is not text")
        }
    };
    let mut faults = faults;
    faults.request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let slow = faults.slow_headers.unwrap_or(state.config.slow_headers);
    if !slow.is_zero() {
        if faults.slow_headers.is_some() {
            state
                .counters
                .faults_injected
                .fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(slow).await;
    }

    let path = parts.uri.path();
    let method = &parts.method;
    if let Some(digest) = path.strip_prefix("/api/blobs/") {
        if method == Method::POST {
            let (response, len) = manage::upload_blob(state, digest, body).await;
            lock(record).body_len = len;
            return response;
        }
        if method == Method::HEAD {
            return manage::has_blob(state, digest);
        }
    }
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return respond::ollama_error(StatusCode::BAD_REQUEST, &format!("reading body: {e}"))
        }
    };
    lock(record).set_body(&bytes);

    match (method.clone(), path) {
        (Method::GET, "/") => respond::text(StatusCode::OK, "Ollama is running"),
        (Method::HEAD, "/") => {
            let mut response = respond::empty(StatusCode::OK);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("17"));
            response
        }
        (Method::GET, "/api/version") => manage::version(),
        (Method::GET, "/api/tags") => manage::tags(state),
        (Method::GET, "/api/ps") => manage::ps(state),
        (Method::POST, "/api/show") => manage::show(state, &bytes),
        (Method::POST, "/api/generate") => {
            infer::generate(state, Call::Generate, &bytes, faults).await
        }
        (Method::POST, "/api/chat") => infer::generate(state, Call::Chat, &bytes, faults).await,
        (Method::POST, "/api/embed") => embed::embed(state, EmbedCall::Embed, &bytes, faults).await,
        (Method::POST, "/api/embeddings") => {
            embed::embed(state, EmbedCall::Embeddings, &bytes, faults).await
        }
        (Method::POST, "/api/pull") => manage::pull(state, &bytes),
        (Method::POST, "/api/push") => manage::push(state, &bytes),
        (Method::POST, "/api/create") => manage::create(state, &bytes),
        (Method::POST, "/api/copy") => manage::copy(state, &bytes),
        (Method::DELETE, "/api/delete") => manage::delete(state, &bytes),
        (Method::POST, "/v1/chat/completions") => {
            infer::generate(state, Call::OpenAiChat, &bytes, faults).await
        }
        (Method::POST, "/v1/completions") => {
            infer::generate(state, Call::OpenAiCompletion, &bytes, faults).await
        }
        (Method::POST, "/v1/messages") => {
            infer::generate(state, Call::Anthropic, &bytes, faults).await
        }
        (Method::POST, "/v1/responses") => {
            infer::generate(state, Call::Responses, &bytes, faults).await
        }
        (Method::POST, "/v1/embeddings") => {
            embed::embed(state, EmbedCall::OpenAi, &bytes, faults).await
        }
        (Method::GET, "/v1/models") => manage::openai_models(state),
        (Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            manage::openai_model_one(state, &p["/v1/models/".len()..])
        }
        _ => respond::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `/mock/stats`, `/mock/requests`, `/mock/reset`, `/mock/release?n=N`.
fn control(state: &State, request: Request<Incoming>) -> Response<BoxBody> {
    match (request.method().clone(), request.uri().path()) {
        (Method::GET, "/mock/stats") => respond::json(
            StatusCode::OK,
            &serde_json::to_value(state.counters.snapshot()).unwrap_or_default(),
        ),
        (Method::GET, "/mock/requests") => respond::json(
            StatusCode::OK,
            &serde_json::to_value(state.counters.log()).unwrap_or_default(),
        ),
        (Method::POST, "/mock/reset") => {
            state.counters.reset();
            respond::json(StatusCode::OK, &json!({"status": "reset"}))
        }
        (Method::POST, "/mock/release") => {
            let n = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1usize);
            state.release.add_permits(n);
            respond::json(StatusCode::OK, &json!({"released": n}))
        }
        _ => respond::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}
