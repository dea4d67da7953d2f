//! Embeddings: `/api/embed`, `/api/embeddings` and `/v1/embeddings`,
//! through the same checks and slots as generation.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::faults::Faults;
use crate::infer::{pause, precheck, slot_for};
use crate::respond::{self, BoxBody, ErrorShape};
use crate::state::State;
use crate::text;

/// `/api/embed`, `/api/embeddings` and `/v1/embeddings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbedCall {
    Embed,
    Embeddings,
    OpenAi,
}

pub(crate) async fn embed(
    state: &Arc<State>,
    call: EmbedCall,
    body: &[u8],
    faults: Faults,
) -> Response<BoxBody> {
    let started = Instant::now();
    let shape = if call == EmbedCall::OpenAi {
        ErrorShape::OpenAi
    } else {
        ErrorShape::Ollama
    };
    let (request, model) = match precheck(state, shape, body, &faults, |_| Ok(())) {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let field = if call == EmbedCall::Embeddings {
        "prompt"
    } else {
        "input"
    };
    let inputs: Vec<String> = match request.get(field) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect(),
        _ => Vec::new(),
    };
    let (slot, load) = match slot_for(state, &model, shape).await {
        Ok(ok) => ok,
        Err(response) => return response,
    };
    let ttft = faults.ttft.unwrap_or(state.config.ttft);
    pause(ttft).await;
    drop(slot);
    let dim = state.config.embedding_dim;
    let vectors: Vec<Vec<f32>> = inputs
        .iter()
        .map(|i| text::embedding(&model, i, dim))
        .collect();
    let prompt_tokens: u64 = inputs.iter().map(|i| text::count_tokens(i)).sum();
    let nanos = |d: Duration| d.as_nanos() as u64;
    let doc = match call {
        EmbedCall::Embed => json!({
            "model": model, "embeddings": vectors,
            "total_duration": nanos(started.elapsed()), "load_duration": nanos(load), "prompt_eval_count": prompt_tokens,
        }),
        EmbedCall::Embeddings => {
            json!({ "embedding": vectors.into_iter().next().unwrap_or_default() })
        }
        EmbedCall::OpenAi => json!({
            "object": "list",
            "data": vectors.into_iter().enumerate().map(|(i, v)| json!({"object": "embedding", "embedding": v, "index": i})).collect::<Vec<_>>(),
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }),
    };
    respond::json(StatusCode::OK, &doc)
}
