//! Events as the log holds them in memory.
//!
//! A `serde_json::Value` object costs a B-tree node (~600 bytes) plus an
//! allocation per key and per string, about 1 KiB for a request event: a
//! full log of 100,000 would hold ~100 MiB. Here the request id and a
//! flat object (scalars only, which is what every request event carries)
//! are packed into one byte string, ~130 bytes, and unpacked to the very
//! same `Value` on replay: numbers keep their exact `u64`/`i64`/`f64`, so
//! nothing is lost to a text round trip. Anything else (nested data from
//! the bus, rare) is kept as it came.

use corral_core::EventValue;
use serde_json::{Map, Value};

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const UNSIGNED: u8 = 3;
const SIGNED: u8 = 4;
const FLOAT: u8 = 5;
const STRING: u8 = 6;

/// An event's request id and data.
pub(crate) struct Packed {
    /// The request id's length plus one (0: none) as LEB128, its bytes,
    /// then the flat data when `other` is `None`: the number of fields,
    /// and each field's name and tagged value.
    bytes: Box<[u8]>,
    /// Data that is not a flat object, as it came.
    other: Option<Box<Value>>,
}

impl Packed {
    /// Packs `data`, as [`EventSink::record`](corral_core::EventSink::record)
    /// gets it.
    pub(crate) fn new(request_id: Option<&str>, data: &Value) -> Self {
        let (bytes, other) = packed(request_id, |bytes| match data {
            Value::Object(map) if map.values().all(is_scalar) => {
                put_u64(bytes, map.len() as u64);
                for (name, value) in map {
                    put_field(bytes, name, scalar(value));
                }
                None
            }
            _ => Some(Box::new(data.clone())),
        });
        Self { bytes, other }
    }

    /// Packs the object of `fields` without building it: what
    /// `new(request_id, &json!({...fields}))` packs.
    pub(crate) fn fields(request_id: &str, fields: &[(&'static str, EventValue<'_>)]) -> Self {
        let (bytes, ()) = packed(Some(request_id), |bytes| {
            put_u64(bytes, fields.len() as u64);
            for (name, value) in fields {
                put_field(bytes, name, *value);
            }
        });
        Self { bytes, other: None }
    }

    /// The request id, when the event has one.
    pub(crate) fn request_id(&self) -> Option<&str> {
        let mut reader = Reader(&self.bytes);
        reader.request_id()
    }

    /// The data, as it was recorded.
    pub(crate) fn data(&self) -> Value {
        if let Some(other) = &self.other {
            return (**other).clone();
        }
        let mut reader = Reader(&self.bytes);
        let _ = reader.request_id();
        reader.object().unwrap_or(Value::Null)
    }
}

/// The request id, then what `rest` writes, packed in a scratch buffer
/// kept per thread and boxed at their exact size: a `Vec` made with room
/// for 128 and shrunk by `into_boxed_slice` was a reallocation per event
/// (~390 instructions under callgrind; a request records three or four).
fn packed<T>(request_id: Option<&str>, rest: impl FnOnce(&mut Vec<u8>) -> T) -> (Box<[u8]>, T) {
    thread_local! {
        static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    }
    // Taken out and put back, never borrowed: an event recorded from a
    // `Drop` while the thread's locals are torn down, or while another is
    // packed, packs into a `Vec` of its own.
    let mut bytes = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    bytes.clear();
    match request_id {
        Some(id) => {
            put_u64(&mut bytes, id.len() as u64 + 1);
            bytes.extend_from_slice(id.as_bytes());
        }
        None => put_u64(&mut bytes, 0),
    }
    let other = rest(&mut bytes);
    let packed = Box::from(bytes.as_slice());
    // An event of rare size does not keep its room for the thread's life.
    if bytes.capacity() <= 4096 {
        let _ = SCRATCH.try_with(|scratch| scratch.set(bytes));
    }
    (packed, other)
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

/// A scalar `Value` as an [`EventValue`]: numbers as `serde_json` holds
/// them (`u64` when it fits, then `i64`, then `f64`).
pub(crate) fn scalar(value: &Value) -> EventValue<'_> {
    match value {
        Value::Bool(b) => EventValue::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => EventValue::U64(u),
            (None, Some(i)) => EventValue::I64(i),
            (None, None) => EventValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => EventValue::Str(s),
        // Arrays and objects are never packed (see `is_scalar`).
        Value::Null | Value::Array(_) | Value::Object(_) => EventValue::Null,
    }
}

/// Lengths and counts as LEB128: one byte for anything under 128.
fn put_u64(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A field, tagged so that it unpacks to the `Value` `json!` makes of it.
fn put_field(out: &mut Vec<u8>, name: &str, value: EventValue<'_>) {
    put_str(out, name);
    match value {
        EventValue::Null => out.push(NULL),
        EventValue::Bool(false) => out.push(FALSE),
        EventValue::Bool(true) => out.push(TRUE),
        EventValue::U64(n) => {
            out.push(UNSIGNED);
            put_u64(out, n);
        }
        // `json!` holds a non-negative i64 as a u64.
        EventValue::I64(n) => match u64::try_from(n) {
            Ok(n) => {
                out.push(UNSIGNED);
                put_u64(out, n);
            }
            Err(_) => {
                out.push(SIGNED);
                out.extend_from_slice(&n.to_le_bytes());
            }
        },
        // And a float that is not finite as null.
        EventValue::F64(x) if !x.is_finite() => out.push(NULL),
        EventValue::F64(x) => {
            out.push(FLOAT);
            out.extend_from_slice(&x.to_le_bytes());
        }
        EventValue::Str(s) => {
            out.push(STRING);
            put_str(out, s);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn eight(&mut self) -> Option<[u8; 8]> {
        self.take(8)?.try_into().ok()
    }

    fn request_id(&mut self) -> Option<&'a str> {
        let n = self.len()?.checked_sub(1)?;
        std::str::from_utf8(self.take(n)?).ok()
    }

    /// A field's name and value, as [`put_field`] wrote them.
    fn field(&mut self) -> Option<(&'a str, EventValue<'a>)> {
        let key = self.str()?;
        let value = match self.byte()? {
            NULL => EventValue::Null,
            FALSE => EventValue::Bool(false),
            TRUE => EventValue::Bool(true),
            UNSIGNED => EventValue::U64(self.u64()?),
            SIGNED => EventValue::I64(i64::from_le_bytes(self.eight()?)),
            FLOAT => EventValue::F64(f64::from_le_bytes(self.eight()?)),
            STRING => EventValue::Str(self.str()?),
            _ => return None,
        };
        Some((key, value))
    }

    fn object(&mut self) -> Option<Value> {
        let entries = self.len()?;
        let mut map = Map::new();
        for _ in 0..entries {
            let (key, value) = self.field()?;
            map.insert(key.to_string(), value.to_json());
        }
        Some(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_data_comes_back_exactly_with_its_request_id() {
        let data = json!({
            "endpoint": "generate", "model": "llama3", "priority": 5, "class": "default",
            "received_at": 1795645877.9998765, "big": u64::MAX, "negative": -3,
            "none": null, "yes": true, "no": false, "unicode": "é✓", "": ""
        });
        let packed = Packed::new(Some("0123456789abcdef0123456789abcdef"), &data);
        assert!(packed.other.is_none());
        assert_eq!(
            packed.request_id(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(packed.data(), data);
        assert!(packed.bytes.len() < 200, "{}", packed.bytes.len());
    }

    #[test]
    fn fields_pack_as_the_object_json_makes_of_them() {
        let model: Option<&str> = None;
        // In the order of the names, as a `Map` keeps them.
        let fields = [
            ("delta", EventValue::I64(-7)),
            ("endpoint", EventValue::from("generate")),
            ("model", model.into()),
            ("nan", EventValue::F64(f64::NAN)),
            ("none", EventValue::Null),
            ("priority", EventValue::from(Some(5u8))),
            ("received_at", EventValue::F64(1795645877.9998765)),
            ("tokens", EventValue::I64(7)),
            ("yes", EventValue::Bool(true)),
        ];
        let expected = json!({
            "delta": -7, "endpoint": "generate", "model": null, "nan": null, "none": null,
            "priority": 5, "received_at": 1795645877.9998765, "tokens": 7, "yes": true
        });
        let packed = Packed::fields("r-1", &fields);
        assert_eq!(packed.data(), expected);
        assert_eq!(packed.request_id(), Some("r-1"));
        assert_eq!(
            packed.bytes,
            Packed::new(Some("r-1"), &expected).bytes,
            "the same bytes whichever way the event came"
        );
    }

    #[test]
    fn no_request_id_and_an_empty_id_differ() {
        assert_eq!(Packed::new(None, &json!({})).request_id(), None);
        assert_eq!(Packed::new(Some(""), &json!({})).request_id(), Some(""));
    }

    #[test]
    fn other_data_is_kept_as_it_came() {
        for data in [
            json!({"to": "open", "detail": {"failures": 5}}),
            json!([1, 2]),
            json!("text"),
            Value::Null,
        ] {
            let packed = Packed::new(Some("r"), &data);
            assert_eq!(packed.data(), data);
            assert_eq!(packed.request_id(), Some("r"));
        }
    }

    #[test]
    fn long_strings_take_longer_lengths() {
        let long = "x".repeat(100_000);
        let data = json!({ "reason": long });
        assert_eq!(Packed::new(Some(&long), &data).data(), data);
    }
}
