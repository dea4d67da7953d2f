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

/// The number of elements of a list, without building them; `None` for
/// anything else (Ollama judges the type).
fn count_of_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct Count;
    impl<'de> serde::de::Visitor<'de> for Count {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut n = 0;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(Some(n))
        }
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
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Count)
}

/// The top-level fields Corral reads.
const READ_FIELDS: [&str; 10] = [
    "model",
    "name",
    "source",
    "stream",
    "options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "seed",
    "messages",
];

/// A top-level key that is not one of [`READ_FIELDS`] but that Ollama
/// (Go's `encoding/json`, which matches keys without case) would read as
/// one, with that field: `{"model":"a","Model":"b"}` is model `b` to
/// Ollama and `a` to serde, so Corral would check and route one model
/// and Ollama run another.
fn key_differing_by_case(text: &str) -> Option<(String, &'static str)> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Option<(String, &'static str)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                map.next_value::<IgnoredAny>()?;
                if found.is_none() && !READ_FIELDS.contains(&key.as_ref()) {
                    let folded = corral_core::go_key_fold(&key);
                    if let Some(field) = READ_FIELDS.iter().find(|f| **f == folded) {
                        found = Some((key.into_owned(), *field));
                    }
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde::Deserializer::deserialize_map(&mut de, Keys)
        .ok()
        .flatten()
}

/// What a body may hold at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) max_json_depth: usize,
    pub(crate) max_messages: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_json_depth: crate::config::DEFAULT_MAX_JSON_DEPTH,
            max_messages: crate::config::DEFAULT_MAX_MESSAGES,
        }
    }
}

/// Whether `body`'s arrays and objects nest deeper than `max`. A scan of
/// the bytes: `serde_json` bounds its own recursion, but skips ignored
/// fields without one, and the body goes on to the upstream's parser.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
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
        let facts = read(Endpoint::Generate, Bounds::default(), body).unwrap();
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
        let facts = read(Endpoint::OpenAiChat, Bounds::default(), body).unwrap();
        assert_eq!(facts.generation.max_tokens, Some(12));
        assert_eq!(facts.generation.temperature, Some(0.2));
        assert_eq!(facts.generation.seed, Some(1));
        assert_eq!(facts.stream, Some(true));
    }

    #[test]
    fn unbounded_num_predict_means_no_cap() {
        let facts = read(
            Endpoint::Chat,
            Bounds::default(),
            br#"{"model":"m","options":{"num_predict":-1}}"#,
        )
        .unwrap();
        assert_eq!(facts.generation.max_tokens, None);
    }

    #[test]
    fn options_of_odd_types_are_left_to_the_upstream() {
        let facts = read(
            Endpoint::Chat,
            Bounds::default(),
            br#"{"model":"m","options":{"temperature":"hot","seed":[1]}}"#,
        )
        .unwrap();
        assert_eq!(facts.generation, GenerationParams::default());
    }

    #[test]
    fn malformed_json_on_an_inference_endpoint_says_where() {
        let err = read(
            Endpoint::Generate,
            Bounds::default(),
            br#"{"model":"llama3","prompt":"#,
        )
        .unwrap_err();
        assert!(
            err.message.starts_with("invalid JSON in request body"),
            "{}",
            err.message
        );
        assert!(err.message.contains("line 1"), "{}", err.message);
    }

    #[test]
    fn a_body_that_is_not_an_object_is_refused() {
        let err = read(Endpoint::Embed, Bounds::default(), b"[1,2]").unwrap_err();
        assert_eq!(err.message, "invalid request body: expected a JSON object");
    }

    #[test]
    fn a_model_of_the_wrong_type_is_refused() {
        let err = read(Endpoint::Chat, Bounds::default(), br#"{"model":5}"#).unwrap_err();
        assert!(err.message.contains("expected a string"), "{}", err.message);
    }

    #[test]
    fn an_inference_body_without_model_is_refused_like_ollama() {
        assert_eq!(
            read(Endpoint::Chat, Bounds::default(), br#"{"messages":[]}"#)
                .unwrap_err()
                .message,
            "model is required"
        );
        assert_eq!(
            read(Endpoint::Chat, Bounds::default(), b"  ")
                .unwrap_err()
                .message,
            "missing request body"
        );
    }

    #[test]
    fn management_bodies_are_read_leniently_and_accept_the_older_name() {
        assert_eq!(
            read(Endpoint::Show, Bounds::default(), br#"{"name":"llama3"}"#)
                .unwrap()
                .model
                .as_deref(),
            Some("llama3")
        );
        assert_eq!(
            read(
                Endpoint::Copy,
                Bounds::default(),
                br#"{"source":"a","destination":"b"}"#
            )
            .unwrap()
            .model
            .as_deref(),
            Some("a")
        );
        assert_eq!(
            read(Endpoint::Pull, Bounds::default(), b"not json").unwrap(),
            BodyFacts::default()
        );
    }

    #[test]
    fn hostile_bodies_are_refused_with_the_reason() {
        let refused = |body: &[u8]| {
            read(Endpoint::Chat, Bounds::default(), body)
                .unwrap_err()
                .message
        };
        assert!(refused(b"{\"model\":\"m\",\"prompt\":\"\xff\xfe\"}")
            .contains("not UTF-8 (bad byte at 23)"));
        assert!(refused(br#"{"model":"a","model":"b"}"#).contains("duplicate field `model`"));
        let deep = format!(
            r#"{{"model":"m","format":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(refused(deep.as_bytes()).contains("nested deeper than 100 levels"));
        // Brackets inside strings are text, not nesting.
        let text = format!(r#"{{"model":"m","prompt":"{}"}}"#, "[{\\\"".repeat(500));
        assert!(
            read(Endpoint::Chat, Bounds::default(), text.as_bytes()).is_ok(),
            "{text}"
        );
        let messages = format!(
            r#"{{"model":"m","messages":[{}]}}"#,
            [r#"{"role":"user","content":"x"}"#; 5].join(",")
        );
        let small = Bounds {
            max_json_depth: 100,
            max_messages: 4,
        };
        let err = read(Endpoint::Chat, small, messages.as_bytes())
            .unwrap_err()
            .message;
        assert!(
            err.contains("5 messages, more than the limit of 4"),
            "{err}"
        );
        assert!(read(Endpoint::Chat, Bounds::default(), messages.as_bytes()).is_ok());
        for body in [
            r#"{"model":"allowed","Model":"other"}"#,
            r#"{"MODEL":"other"}"#,
            "{\"model\":\"a\",\"mode\u{17f}l\":\"b\"}"
                .replace("mode\u{17f}l", "\u{17f}eed")
                .as_str(),
            r#"{"model":"m","Stream":true}"#,
        ] {
            let err = refused(body.as_bytes());
            assert!(err.contains("only by case"), "{body}: {err}");
        }
        // Case in values, or in keys Corral does not read, is Ollama's business.
        assert!(read(
            Endpoint::Chat,
            Bounds::default(),
            br#"{"model":"LLaMA3","Prompt":"x"}"#
        )
        .is_ok());
        let huge = br#"{"model":"m","options":{"num_predict":1e999}}"#;
        assert!(refused(huge).contains("invalid JSON"));
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let facts = read(
            Endpoint::Chat,
            Bounds::default(),
            br#"{"model":"ll\u0061ma3"}"#,
        )
        .unwrap();
        assert_eq!(facts.model.as_deref(), Some("llama3"));
    }
}
