//! Reading what matters out of an Ollama or OpenAI request body, once.

use std::borrow::Cow;
use std::sync::Arc;

use corral_core::{Endpoint, EndpointKind, GenerationParams};
use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

use crate::error::InvalidRequest;

mod bounds;

pub(crate) use bounds::Bounds;
use bounds::{key_differing_by_case, nests_deeper_than};

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
    /// The Responses API's bound on generated tokens.
    #[serde(default, deserialize_with = "lenient_number")]
    max_output_tokens: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    seed: Option<f64>,
    /// How many chat messages, when it is a list (counted, not built).
    #[serde(default, deserialize_with = "count_of_list")]
    messages: Option<usize>,
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

/// A visitor's answer, `None`, to an object, a string, a boolean and
/// `null` (the object skipped without being built).
macro_rules! none_for_the_rest {
    () => {
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// A number, or `None` for anything else: Corral reads options to plan,
/// not to validate them; the upstream judges them as it always has.
fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    // A visitor rather than an untagged enum: serde buffers an untagged
    // value whole before it tries a variant (~1,600 instructions a request
    // with one option, under callgrind).
    struct Number;
    impl<'de> serde::de::Visitor<'de> for Number {
        type Value = Option<f64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n as f64))
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n as f64))
        }
        fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(|_| None)
        }
        none_for_the_rest!();
    }
    d.deserialize_any(Number)
}

/// The number of elements of a list, without building them; `None` for
/// anything else (Ollama judges the type).
fn count_of_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            skip_seq(seq).map(Some)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        none_for_the_rest!();
    }
    d.deserialize_any(Count)
}

/// A list's elements skipped without being built: how many there were.
fn skip_seq<'de, A: serde::de::SeqAccess<'de>>(mut seq: A) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
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
    if let Some((key, field)) = key_differing_by_case(text) {
        return Err(format!(
            "invalid request body: the key {key:?} differs from {field:?} only by case, and Ollama would read it as {field:?}; send {field:?}"
        ));
    }
    serde_json::from_str::<View<'_>>(text).map_err(|e| {
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
