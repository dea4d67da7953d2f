//! What a body may hold at most, and the keys Ollama would read another
//! way than serde: the checks `read` makes before it parses.

use std::borrow::Cow;

use serde::de::IgnoredAny;

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
pub(super) fn key_differing_by_case(text: &str) -> Option<(String, &'static str)> {
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
pub(super) fn nests_deeper_than(body: &[u8], max: usize) -> bool {
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
