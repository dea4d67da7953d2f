//! Generation: slots, model loads, time to first token, tokens per
//! second, streams in NDJSON and SSE, for every generating path (Ollama's,
//! OpenAI's, Anthropic's Messages, OpenAI's Responses). Embeddings are in
//! `embed.rs`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::faults::Faults;
use crate::respond::{self, BoxBody, BoxError, ErrorShape, BUSY_MESSAGE};
use crate::shapes::{max_tokens, prompt_of, Call, Generation};
use crate::state::{Slot, State};
use crate::text;

/// Checks shared by every inference call: JSON, model, the call's own
/// checks (`validate`, before the model is looked up, as Ollama's
/// compatibility middlewares run before its handlers), faults, overload.
pub(crate) fn precheck(
    state: &State,
    shape: ErrorShape,
    body: &[u8],
    faults: &Faults,
    validate: impl FnOnce(&Value) -> Result<(), String>,
) -> Result<(Value, String), Response<BoxBody>> {
    let faults = &faults.resolve(state);
    let error = |status, message: &str| shape.error(status, message);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(error(StatusCode::BAD_REQUEST, "missing request body"));
    }
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("invalid character in request body: {e}"),
        )
    })?;
    let Some(model) = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return Err(error(StatusCode::BAD_REQUEST, "model is required"));
    };
    let model = model.to_string();
    if let Err(message) = validate(&request) {
        return Err(error(StatusCode::BAD_REQUEST, &message));
    }
    if state.model(&model).is_none() {
        return Err(error(
            StatusCode::NOT_FOUND,
            &format!("model \"{model}\" not found, try pulling it first"),
        ));
    }
    if let Some(status) = faults.status {
        state
            .counters
            .faults_injected
            .fetch_add(1, Ordering::SeqCst);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status == StatusCode::SERVICE_UNAVAILABLE {
            BUSY_MESSAGE
        } else {
            "mock fault injected"
        };
        return Err(error(status, message));
    }
    if state.roll(state.config.error_rate) {
        state
            .counters
            .faults_injected
            .fetch_add(1, Ordering::SeqCst);
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "llama runner process has terminated: signal: killed",
        ));
    }
    Ok((request, model))
}

/// Takes a slot and waits out the model load; 503 when the queue is full.
pub(crate) async fn slot_for(
    state: &Arc<State>,
    model: &str,
    shape: ErrorShape,
) -> Result<(Slot, Duration), Response<BoxBody>> {
    let slot = state
        .acquire(model)
        .await
        .map_err(|_| shape.error(StatusCode::SERVICE_UNAVAILABLE, BUSY_MESSAGE))?;
    let load = state.ensure_loaded(model);
    if !load.is_zero() {
        // The request that started the load: leaving before it is done
        // gives it up (ollama#7408).
        let starter = load == state.config.load_time;
        let mut abort = crate::state::AbortLoad {
            state: starter.then(|| state.clone()),
            model,
        };
        sleep(load).await;
        abort.state = None;
    }
    Ok((slot, load))
}

/// Waits `d`, or not at all when it is zero: the timer's millisecond
/// grain would otherwise turn "instant" (a benchmark's infinite
/// tokens per second) into a millisecond a token.
pub(crate) async fn pause(d: Duration) {
    if !d.is_zero() {
        sleep(d).await;
    }
}

/// Every generating call: generate, chat, the two OpenAI completion
/// calls, Anthropic's Messages and OpenAI's Responses.
pub(crate) async fn generate(
    state: &Arc<State>,
    call: Call,
    body: &[u8],
    faults: Faults,
) -> Response<BoxBody> {
    let started = Instant::now();
    let shape = call.error_shape();
    let (request, model) = match precheck(state, shape, body, &faults, |r| call.validate(r)) {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    // An empty prompt or conversation only loads the model; the Responses
    // API still answers in its own shape, with no text.
    let only_loads = call.only_loads(&request);
    if only_loads && call != Call::Responses {
        return load_only(state, call, &request, &model).await;
    }
    let (slot, load) = if only_loads {
        let load = state.ensure_loaded(&model);
        pause(load).await;
        (None, load)
    } else {
        match slot_for(state, &model, shape).await {
            Ok((slot, load)) => (Some(slot), load),
            Err(response) => return response,
        }
    };
    let asked = Asked {
        call,
        request,
        model,
        started,
        load,
        only_loads,
    };
    let generation = plan(state, asked, &faults);
    pause(generation.ttft).await;
    state
        .counters
        .tokens_generated
        .fetch_add(generation.tokens as u64, Ordering::SeqCst);
    if !generation.stream() {
        pause(generation.interval * generation.tokens.saturating_sub(1) as u32).await;
        drop(slot);
        return respond::json(StatusCode::OK, &generation.whole());
    }
    stream_out(state, generation, slot, faults)
}

/// A generating request, read and seated.
struct Asked {
    call: Call,
    request: Value,
    model: String,
    started: Instant,
    load: Duration,
    only_loads: bool,
}

/// What the answer will be: how many tokens, how fast, after how long.
fn plan(state: &State, asked: Asked, faults: &Faults) -> Generation {
    let (call, only_loads) = (asked.call, asked.only_loads);
    let ttft = if only_loads {
        Duration::ZERO
    } else {
        faults.ttft.unwrap_or(state.config.ttft)
    };
    let tps = faults
        .tokens_per_sec
        .unwrap_or_else(|| state.config.tokens_per_sec_for(&asked.model))
        .max(0.001);
    let default_tokens = faults.tokens.unwrap_or(state.config.tokens);
    let (tokens, truncated) = match max_tokens(call, &asked.request) {
        _ if only_loads => (0, false),
        Some(n) if n >= 0 && (n as usize) < default_tokens => (n as usize, true),
        _ => (default_tokens, false),
    };
    let prompt = prompt_of(call, &asked.request);
    let id = state.next_id();
    Generation {
        call,
        model: asked.model,
        prompt_tokens: if only_loads {
            0
        } else {
            text::count_tokens(&prompt)
        },
        prompt,
        tokens,
        truncated,
        interval: Duration::from_secs_f64(1.0 / tps),
        started: asked.started,
        load: asked.load,
        ttft,
        id: match call {
            Call::OpenAiChat => format!("chatcmpl-{id}"),
            Call::Anthropic => format!("msg_{id:024x}"),
            Call::Responses => format!("resp_{id}"),
            _ => format!("cmpl-{id}"),
        },
        created: respond::unix_now(),
        include_usage: asked
            .request
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        request: asked.request,
    }
}

/// The answer as a stream, with the faults it asked for (and those the
/// server's rates roll) halfway through.
fn stream_out(
    state: &Arc<State>,
    generation: Generation,
    slot: Option<Slot>,
    mut faults: Faults,
) -> Response<BoxBody> {
    let half = generation.tokens / 2;
    if faults.drop_after.is_none() && state.roll(state.config.drop_rate) {
        faults.drop_after = Some(half);
    }
    if faults.stall_after.is_none() && state.roll(state.config.stall_rate) {
        faults.stall_after = Some(half);
    }
    let stall = faults.stall.unwrap_or(state.config.stall);
    let content_type = if generation.call.sse() {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    let stream = Stream {
        generation,
        state: state.clone(),
        slot,
        faults,
        stall,
        sent: 0,
        next_token: 0,
        pending: VecDeque::new(),
        ended: false,
        fault_done: false,
    };
    let body = StreamBody::new(futures_util::stream::unfold(stream, |mut s| async move {
        let frame = s.next().await?;
        Some((frame.map(Frame::data), s))
    }));
    respond::streaming(content_type, body.boxed_unsync())
}

/// An empty prompt loads the model (and `keep_alive: 0` unloads it).
async fn load_only(
    state: &Arc<State>,
    call: Call,
    request: &Value,
    model: &str,
) -> Response<BoxBody> {
    let unload = matches!(request.get("keep_alive"), Some(v) if v.as_f64() == Some(0.0) || v.as_str() == Some("0") || v.as_str() == Some("0s"));
    let reason = if unload {
        state.unload(model);
        "unload"
    } else {
        let load = state.ensure_loaded(model);
        sleep(load).await;
        "load"
    };
    let mut doc = serde_json::Map::new();
    doc.insert("model".into(), json!(model));
    doc.insert("created_at".into(), json!(respond::now_rfc3339()));
    if call == Call::Generate {
        doc.insert("response".into(), json!(""));
    } else {
        doc.insert(
            "message".into(),
            json!({"role": "assistant", "content": ""}),
        );
    }
    doc.insert("done".into(), json!(true));
    doc.insert("done_reason".into(), json!(reason));
    respond::json(StatusCode::OK, &Value::Object(doc))
}

/// A generation stream: the frames of each token (one, or with SSE events
/// more for the first) at the configured rate, then the final frames;
/// faults along the way, counted in frames.
struct Stream {
    generation: Generation,
    state: Arc<State>,
    slot: Option<Slot>,
    faults: Faults,
    stall: Duration,
    sent: usize,
    next_token: usize,
    /// Frames made and not yet sent.
    pending: VecDeque<Bytes>,
    /// Whether the final frames were made (and the slot freed).
    ended: bool,
    fault_done: bool,
}

/// Counts a paused stream while it waits, however the wait ends.
struct Paused<'a>(&'a State);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.counters.paused.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Stream {
    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        if !self.fault_done {
            if self.faults.drop_after == Some(self.sent) {
                self.fault_done = true;
                self.slot = None;
                self.state
                    .counters
                    .faults_injected
                    .fetch_add(1, Ordering::SeqCst);
                // Let the server write out the frames already made before
                // the break, so the client gets all N of them.
                tokio::task::yield_now().await;
                return Some(Err("mock fault: connection dropped".into()));
            }
            if self.faults.stall_after == Some(self.sent) {
                self.fault_done = true;
                self.state
                    .counters
                    .faults_injected
                    .fetch_add(1, Ordering::SeqCst);
                sleep(self.stall).await;
            }
            if self.faults.pause_after == Some(self.sent) {
                self.fault_done = true;
                self.state.counters.paused.fetch_add(1, Ordering::SeqCst);
                let _paused = Paused(&self.state);
                if let Ok(permit) = self.state.release.acquire().await {
                    permit.forget();
                }
            }
        }
        if self.pending.is_empty() {
            if self.next_token < self.generation.tokens {
                if self.next_token > 0 {
                    pause(self.generation.interval).await;
                }
                self.generation.frames(self.next_token, &mut self.pending);
                self.next_token += 1;
            } else if !self.ended {
                self.ended = true;
                self.slot = None;
                self.generation.tail(&mut self.pending);
            }
        }
        let frame = self.pending.pop_front()?;
        self.sent += 1;
        self.state
            .counters
            .chunks_sent
            .fetch_add(1, Ordering::SeqCst);
        Some(Ok(frame))
    }
}
