//! Reading what matters out of an Ollama or OpenAI request body, once.

use std::borrow::Cow;
use std::sync::Arc;

use corral_core::{Endpoint, EndpointKind, GenerationParams};
use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

use crate::error::InvalidRequest;

/// What the body says about cost and routing.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct BodyFacts {
    pub(crate) model: Option<Arc<str>>,
    pub(crate) stream: Option<bool>,
    pub(crate) generation: GenerationParams,
}

/// The fields Corral reads; every other field is skipped without being
/// built, so parsing costs one pass over the bytes and almost no
/// allocation.
#[derive(Deserialize)]
struct View<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    /// The older name of `model` in show, delete, pull, push, create.
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    /// Copy names its model `source`.
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    #[serde(default, deserialize_with = "lenient_number")]
    max_tokens: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    max_completion_tokens: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    seed: Option<f64>,
}

#[derive(Deserialize)]
struct Options {
    #[serde(default, deserialize_with = "lenient_number")]
    num_predict: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    seed: Option<f64>,
}

/// A number, or `None` for anything else: Corral reads options to plan,
/// not to validate them; the upstream judges them as it always has.
fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Number(f64),
        Other(IgnoredAny),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::Number(n) => Some(n),
        Lenient::Other(_) => None,
    })
}

/// Reads `body` of a request to `endpoint`.
///
/// Inference bodies must be a JSON object naming a model, as Ollama
/// requires: anything else is refused here with the reason, before it
/// takes a place in any queue. Other JSON bodies are read for the model
/// name only, and forwarded whatever they hold.
pub(crate) fn read(endpoint: Endpoint, body: &[u8]) -> Result<BodyFacts, InvalidRequest> {
    let strict = endpoint.kind() == EndpointKind::Inference;
    match parse(body) {
        Ok(view) => {
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
    serde_json::from_slice::<View<'_>>(body).map_err(|e| {
        if e.is_data() && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            "invalid request body: expected a JSON object".to_string()
        } else {
            format!("invalid JSON in request body: {e}")
        }
    })
}

fn facts(view: View<'_>) -> BodyFacts {
    let model = [view.model, view.name, view.source]
        .into_iter()
        .flatten()
        .find(|m| !m.is_empty())
        .map(|m| Arc::<str>::from(m.as_ref()));
    let options = view.options.unwrap_or(Options {
        num_predict: None,
        temperature: None,
        seed: None,
    });
    // Ollama's num_predict: -1 is unbounded, -2 fills the context.
    let max_tokens = options
        .num_predict
        .or(view.max_tokens)
        .or(view.max_completion_tokens)
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
mod tests {
    use super::*;

    #[test]
    fn an_ollama_generate_body_gives_model_stream_and_options() {
        let body = br#"{"model":"llama3","prompt":"why?","stream":false,"options":{"num_predict":64,"temperature":0,"seed":7,"num_ctx":4096}}"#;
        let facts = read(Endpoint::Generate, body).unwrap();
        assert_eq!(facts.model.as_deref(), Some("llama3"));
        assert_eq!(facts.stream, Some(false));
        assert_eq!(
            facts.generation,
            GenerationParams {
                max_tokens: Some(64),
                temperature: Some(0.0),
                seed: Some(7)
            }
        );
    }

    #[test]
    fn an_openai_body_gives_max_tokens_temperature_and_seed() {
        let body = br#"{"model":"llama3","messages":[{"role":"user","content":"hi"}],"max_tokens":12,"temperature":0.2,"seed":1,"stream":true}"#;
        let facts = read(Endpoint::OpenAiChat, body).unwrap();
        assert_eq!(facts.generation.max_tokens, Some(12));
        assert_eq!(facts.generation.temperature, Some(0.2));
        assert_eq!(facts.generation.seed, Some(1));
        assert_eq!(facts.stream, Some(true));
    }

    #[test]
    fn unbounded_num_predict_means_no_cap() {
        let facts = read(
            Endpoint::Chat,
            br#"{"model":"m","options":{"num_predict":-1}}"#,
        )
        .unwrap();
        assert_eq!(facts.generation.max_tokens, None);
    }

    #[test]
    fn options_of_odd_types_are_left_to_the_upstream() {
        let facts = read(
            Endpoint::Chat,
            br#"{"model":"m","options":{"temperature":"hot","seed":[1]}}"#,
        )
        .unwrap();
        assert_eq!(facts.generation, GenerationParams::default());
    }

    #[test]
    fn malformed_json_on_an_inference_endpoint_says_where() {
        let err = read(Endpoint::Generate, br#"{"model":"llama3","prompt":"#).unwrap_err();
        assert!(
            err.message.starts_with("invalid JSON in request body"),
            "{}",
            err.message
        );
        assert!(err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        let err = read(Endpoint::Embed, b"[1,2]").unwrap_err();
        assert_eq!(err.message, "invalid request body: expected a JSON object");
    }

    #[test]
    fn a_model_of_the_wrong_type_is_refused() {
        let err = read(Endpoint::Chat, br#"{"model":5}"#).unwrap_err();
        assert!(err.message.contains("expected a string"), "{}", err.message);
    }

    #[test]
    fn an_inference_body_without_model_is_refused_like_ollama() {
        assert_eq!(
            read(Endpoint::Chat, br#"{"messages":[]}"#)
                .unwrap_err()
                .message,
            "model is required"
        );
        assert_eq!(
            read(Endpoint::Chat, b"  ").unwrap_err().message,
            "missing request body"
        );
    }

    #[test]
    fn management_bodies_are_read_leniently_and_accept_the_older_name() {
        assert_eq!(
            read(Endpoint::Show, br#"{"name":"llama3"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("llama3")
        );
        assert_eq!(
            read(Endpoint::Copy, br#"{"source":"a","destination":"b"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("a")
        );
        assert_eq!(
            read(Endpoint::Pull, b"not json").unwrap(),
            BodyFacts::default()
        );
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let facts = read(Endpoint::Chat, br#"{"model":"ll\u0061ma3"}"#).unwrap();
        assert_eq!(facts.model.as_deref(), Some("llama3"));
    }
}
