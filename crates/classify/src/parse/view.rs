//! The fields of a body Corral reads, in one pass over its JSON.
//!
//! Written by hand rather than derived: the same pass that reads the
//! fields finds a top-level key Ollama would read as one of them (Go's
//! `encoding/json` matches keys without case). The derived reader needed
//! a second parse of the body for that check: ~1,100 instructions of the
//! ~6,000 classify's read took for a small `POST /api/generate` under
//! callgrind (`benches/RESULTS.md`, "Fifth pass").

use std::borrow::Cow;

use serde::de::{Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The top-level fields Corral reads; every other field is skipped
/// without being built, so reading costs one pass over the bytes and
/// almost no allocation.
#[derive(Default)]
pub(super) struct View<'a> {
    pub(super) model: Option<Cow<'a, str>>,
    /// The older name of `model` in show, delete, pull, push, create.
    pub(super) name: Option<Cow<'a, str>>,
    /// Copy names its model `source`.
    pub(super) source: Option<Cow<'a, str>>,
    pub(super) stream: Option<bool>,
    pub(super) options: Option<Options>,
    pub(super) max_tokens: Option<f64>,
    pub(super) max_completion_tokens: Option<f64>,
    /// The Responses API's bound on generated tokens.
    pub(super) max_output_tokens: Option<f64>,
    pub(super) temperature: Option<f64>,
    pub(super) seed: Option<f64>,
    /// How many chat messages, when it is a list (counted, not built).
    pub(super) messages: Option<usize>,
    /// The first key that is none of the fields above but differs from
    /// one only by case, with that field: `{"model":"a","Model":"b"}` is
    /// model `b` to Ollama and `a` here, so Corral would check and route
    /// one model and Ollama run another.
    pub(super) differing_by_case: Option<(String, &'static str)>,
}

#[derive(Deserialize, Default)]
pub(super) struct Options {
    #[serde(default, deserialize_with = "lenient_number")]
    pub(super) num_predict: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    pub(super) temperature: Option<f64>,
    #[serde(default, deserialize_with = "lenient_number")]
    pub(super) seed: Option<f64>,
}

/// The names of [`View`]'s fields, in the order of `FIELDS`' bits.
const FIELDS: [&str; 11] = [
    "model",
    "name",
    "source",
    "stream",
    "options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "temperature",
    "seed",
    "messages",
];

impl<'de> Deserialize<'de> for View<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ViewVisitor)
    }
}

struct ViewVisitor;

impl<'de> Visitor<'de> for ViewVisitor {
    type Value = View<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<View<'de>, A::Error> {
        let mut view = View::default();
        let mut seen = 0u16;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let Some(i) = FIELDS.iter().position(|f| *f == key) else {
                map.next_value::<IgnoredAny>()?;
                if view.differing_by_case.is_none() {
                    if let Some(field) = FIELDS.iter().find(|f| folds_to(&key, f)) {
                        view.differing_by_case = Some((key.into_owned(), field));
                    }
                }
                continue;
            };
            // As serde's derived readers do: a field twice is refused,
            // since Ollama and Corral could each read another one.
            if seen & (1 << i) != 0 {
                return Err(A::Error::duplicate_field(FIELDS[i]));
            }
            seen |= 1 << i;
            match i {
                0 => view.model = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                1 => view.name = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                2 => view.source = map.next_value::<Option<Text<'de>>>()?.map(|t| t.0),
                3 => view.stream = map.next_value()?,
                4 => view.options = map.next_value()?,
                5 => view.max_tokens = map.next_value::<Lenient>()?.0,
                6 => view.max_completion_tokens = map.next_value::<Lenient>()?.0,
                7 => view.max_output_tokens = map.next_value::<Lenient>()?.0,
                8 => view.temperature = map.next_value::<Lenient>()?.0,
                9 => view.seed = map.next_value::<Lenient>()?.0,
                _ => view.messages = map.next_value::<Counted>()?.0,
            }
        }
        Ok(view)
    }
}

/// Whether Go's `encoding/json` would match `key` to `field` (all ASCII
/// lower case): ASCII letters without case, and `ſ` and the Kelvin sign
/// as `s` and `k` (Go's simple folding), without building the folded key.
fn folds_to(key: &str, field: &str) -> bool {
    let mut field = field.bytes();
    for c in key.chars() {
        let folded = match c {
            '\u{17f}' => b's',
            '\u{212a}' => b'k',
            c if c.is_ascii() => (c as u8).to_ascii_lowercase(),
            _ => return false,
        };
        if field.next() != Some(folded) {
            return false;
        }
    }
    field.next().is_none()
}

/// A string, borrowed from the body unless it has escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Of;
        impl<'de> Visitor<'de> for Of {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Of)
    }
}

/// [`lenient_number`] as a value to read.
struct Lenient(Option<f64>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_number(d).map(Lenient)
    }
}

/// [`count_of_list`] as a value to read.
struct Counted(Option<usize>);

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        count_of_list(d).map(Counted)
    }
}

/// A visitor's answer, `None`, to an object, a string, a boolean and
/// `null` (the object skipped without being built).
macro_rules! none_for_the_rest {
    () => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
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
    impl<'de> Visitor<'de> for Number {
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
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
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
    impl<'de> Visitor<'de> for Count {
        type Value = Option<usize>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
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
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<usize, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::folds_to;

    #[test]
    fn keys_fold_as_go_folds_them() {
        assert!(folds_to("MODEL", "model"));
        assert!(folds_to("Max_Output_Tokens", "max_output_tokens"));
        assert!(folds_to("\u{17f}eed", "seed"));
        assert!(folds_to("\u{212a}", "k"));
        assert!(!folds_to("mode", "model"));
        assert!(!folds_to("models", "model"));
        assert!(!folds_to("mödel", "model"));
    }
}
