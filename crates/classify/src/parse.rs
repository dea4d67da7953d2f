//! Reading what matters out of an Ollama or OpenAI request body, once.

use std::sync::Arc;

use corral_core::{Endpoint, EndpointKind, GenerationParams};

use crate::error::InvalidRequest;

mod bounds;
mod view;

use bounds::nests_deeper_than;
pub(crate) use bounds::Bounds;
use view::View;

/// What the body says about cost and routing.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BodyFacts {
    pub(crate) model: Option<Arc<str>>,
    pub(crate) stream: Option<bool>,
    pub(crate) generation: GenerationParams,
}

/// Reads `body` of a request to `endpoint`.
///
/// Inference bodies must be a JSON object naming a model, as Ollama
/// requires: anything else is refused here with the reason, before it
/// takes a place in any queue. Other JSON bodies are read for the model
/// name only, and forwarded whatever they hold.
pub(crate) fn read(
    endpoint: Endpoint,
    bounds: Bounds,
    body: &[u8],
) -> Result<BodyFacts, InvalidRequest> {
    let strict = endpoint.kind() == EndpointKind::Inference;
    if nests_deeper_than(body, bounds.max_json_depth) {
        return Err(InvalidRequest {
            message: format!(
                "invalid request body: JSON nested deeper than {} levels (server.max_json_depth)",
                bounds.max_json_depth
            ),
        });
    }
    match parse(body) {
        Ok(view) => {
            if let Some(n) = view.messages.filter(|n| *n > bounds.max_messages) {
                return Err(InvalidRequest {
                    message: format!(
                        "invalid request body: {n} messages, more than the limit of {} (server.max_messages)",
                        bounds.max_messages
                    ),
                });
            }
            let facts = facts(view);
            if strict && facts.model.is_none() {
                return Err(InvalidRequest {
                    message: "model is required".into(),
                });
            }
            Ok(facts)
        }
        Err(_) if !strict => Ok(BodyFacts::default()),
        Err(message) => Err(InvalidRequest { message }),
    }
}

fn parse(body: &[u8]) -> Result<View<'_>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing request body".into());
    }
    // Ollama's parser would quietly turn bad bytes into U+FFFD: say so
    // here instead, before the request takes a place in line.
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "invalid request body: not UTF-8 (bad byte at {})",
            e.valid_up_to()
        )
    })?;
    let view = serde_json::from_str::<View<'_>>(text).map_err(|e| {
        if e.is_data() && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            "invalid request body: expected a JSON object".to_string()
        } else {
            format!("invalid JSON in request body: {e}")
        }
    })?;
    if let Some((key, field)) = &view.differing_by_case {
        return Err(format!(
            "invalid request body: the key {key:?} differs from {field:?} only by case, and Ollama would read it as {field:?}; send {field:?}"
        ));
    }
    Ok(view)
}

fn facts(view: View<'_>) -> BodyFacts {
    let model = [view.model, view.name, view.source]
        .into_iter()
        .flatten()
        .find(|m| !m.is_empty())
        .map(|m| Arc::<str>::from(m.as_ref()));
    let options = view.options.unwrap_or_default();
    // Ollama's num_predict: -1 is unbounded, -2 fills the context.
    let max_tokens = options
        .num_predict
        .or(view.max_tokens)
        .or(view.max_completion_tokens)
        .or(view.max_output_tokens)
        .filter(|n| *n >= 0.0)
        .map(|n| n as u64);
    BodyFacts {
        model,
        stream: view.stream,
        generation: GenerationParams {
            max_tokens,
            temperature: options.temperature.or(view.temperature),
            seed: options.seed.or(view.seed).map(|s| s as i64),
        },
    }
}

#[cfg(test)]
mod tests;
