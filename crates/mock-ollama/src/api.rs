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
    let faults = match faults_of(&parts.headers) {
        Ok(faults) => faults,
        Err(response) => return response,
    };
    hold_headers(state, &faults).await;
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
    if method == Method::POST {
        if let Some(call) = inference(path) {
            return infer::generate(state, call, &bytes, faults).await;
        }
        if let Some(call) = embedding(path) {
            return embed::embed(state, call, &bytes, faults).await;
        }
    }
    the_rest(state, method, path, &bytes)
}

/// The faults a request asks for (`X-Mock-Fault`), with the test's name
/// for it (`X-Mock-Id`: a proxy keeps its own request id to itself).
fn faults_of(headers: &http::HeaderMap) -> Result<Faults, Response<BoxBody>> {
    let mut faults = match headers.get("x-mock-fault").map(|v| v.to_str()) {
        None => Faults::default(),
        Some(Ok(value)) => {
            Faults::parse(value).map_err(|e| respond::ollama_error(StatusCode::BAD_REQUEST, &e))?
        }
        Some(Err(_)) => {
            return Err(respond::ollama_error(
                StatusCode::BAD_REQUEST,
                "X-Mock-Fault is not text",
            ))
        }
    };
    faults.mock_id = headers
        .get("x-mock-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok(faults)
}

/// Waits before the headers as the request's fault or the server's
/// setting says (a fault asked for is counted).
async fn hold_headers(state: &State, faults: &Faults) {
    let slow = faults.slow_headers.unwrap_or(state.config.slow_headers);
    if slow.is_zero() {
        return;
    }
    if faults.slow_headers.is_some() {
        state
            .counters
            .faults_injected
            .fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(slow).await;
}

/// The generating endpoints (POST).
fn inference(path: &str) -> Option<Call> {
    Some(match path {
        "/api/generate" => Call::Generate,
        "/api/chat" => Call::Chat,
        "/v1/chat/completions" => Call::OpenAiChat,
        "/v1/completions" => Call::OpenAiCompletion,
        "/v1/messages" => Call::Anthropic,
        "/v1/responses" => Call::Responses,
        _ => return None,
    })
}

/// The embedding endpoints (POST).
fn embedding(path: &str) -> Option<EmbedCall> {
    Some(match path {
        "/api/embed" => EmbedCall::Embed,
        "/api/embeddings" => EmbedCall::Embeddings,
        "/v1/embeddings" => EmbedCall::OpenAi,
        _ => return None,
    })
}

/// Everything but generating and embedding: the root, models, blobs'
/// neighbours, OpenAI's model list.
fn the_rest(state: &Arc<State>, method: &Method, path: &str, bytes: &[u8]) -> Response<BoxBody> {
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
        (Method::POST, "/api/show") => manage::show(state, bytes),
        (Method::POST, "/api/pull") => manage::pull(state, bytes),
        (Method::POST, "/api/push") => manage::push(state, bytes),
        (Method::POST, "/api/create") => manage::create(state, bytes),
        (Method::POST, "/api/copy") => manage::copy(state, bytes),
        (Method::DELETE, "/api/delete") => manage::delete(state, bytes),
        (Method::GET, "/v1/models") => manage::openai_models(state),
        (Method::GET, p) if p.starts_with("/v1/models/") && p.len() > "/v1/models/".len() => {
            manage::openai_model_one(state, &p["/v1/models/".len()..])
        }
        _ => respond::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `/mock/stats`, `/mock/requests`, `/mock/reset`, `/mock/release?n=N`,
/// `/mock/parallel?n=N`.
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
            let n = query_n(&request).unwrap_or(1);
            state.release.add_permits(n);
            respond::json(StatusCode::OK, &json!({"released": n}))
        }
        (Method::POST, "/mock/parallel") => {
            let Some(n) = query_n(&request) else {
                return respond::text(StatusCode::BAD_REQUEST, "n=N is required");
            };
            state.set_parallel(n);
            respond::json(StatusCode::OK, &json!({"parallel": state.parallel()}))
        }
        _ => respond::text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// The `n` of `?n=N`.
fn query_n(request: &Request<Incoming>) -> Option<usize> {
    request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("n=")))
        .and_then(|n| n.parse().ok())
}
