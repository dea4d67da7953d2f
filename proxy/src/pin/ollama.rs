//! Values as Ollama reads and writes them: `keep_alive` (its
//! `api.Duration`: seconds, or a Go duration string, negative for
//! forever) and Go's `time.ParseDuration`.

use crate::config::KeepAlive;

/// What a request asks for one option, read as Ollama reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Asked<T> {
    /// Nothing (absent, or `null`): the server's default.
    Absent,
    /// A value; `exact: false` when Ollama could not hold it as written
    /// (a number of seconds past Go's `time.Duration`).
    Value { value: T, exact: bool },
    /// A value Ollama refuses with a 400: left for it to refuse.
    Invalid,
}

/// A `keep_alive` value as Ollama's `api.Duration` reads it: seconds
/// (negative: forever), or a Go duration string (negative: forever).
pub(super) fn asked_keep_alive(raw: &[u8]) -> Asked<KeepAlive> {
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Null) => Asked::Absent,
        Ok(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(secs) if secs < 0.0 => Asked::Value {
                value: KeepAlive::Forever,
                exact: true,
            },
            // `time.Duration(t * float64(time.Second))` overflows past
            // about 292 years: as good as forever, written so.
            Some(secs) if secs * 1e9 >= i64::MAX as f64 => Asked::Value {
                value: KeepAlive::Forever,
                exact: false,
            },
            Some(secs) => Asked::Value {
                value: KeepAlive::For(std::time::Duration::from_secs_f64(secs)),
                exact: true,
            },
            None => Asked::Invalid,
        },
        Ok(serde_json::Value::String(text)) => match go_duration(&text) {
            Some(nanos) if nanos < 0 => Asked::Value {
                value: KeepAlive::Forever,
                exact: true,
            },
            Some(nanos) => Asked::Value {
                value: KeepAlive::For(std::time::Duration::from_nanos(nanos as u64)),
                exact: true,
            },
            None => Asked::Invalid,
        },
        _ => Asked::Invalid,
    }
}

/// `keep_alive` as Ollama takes it: whole seconds as a number, a finer
/// duration as Go's nanoseconds string, forever as `-1`.
pub(super) fn keep_alive_json(keep_alive: KeepAlive) -> Vec<u8> {
    match keep_alive {
        KeepAlive::Forever => b"-1".to_vec(),
        KeepAlive::For(d) if d.subsec_nanos() == 0 => d.as_secs().to_string().into_bytes(),
        KeepAlive::For(d) => format!("\"{}ns\"", d.as_nanos()).into_bytes(),
    }
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or
/// `0`; nanoseconds, `None` where Go returns an error.
pub(super) fn go_duration(text: &str) -> Option<i128> {
    const LIMIT: u128 = 1 << 63;
    let (negative, mut s) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if s == "0" {
        return Some(0);
    }
    if s.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, rest) = s.split_at(digits);
        s = rest;
        let mut fraction = "";
        if let Some(rest) = s.strip_prefix('.') {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            (fraction, s) = rest.split_at(digits);
            if whole.is_empty() && fraction.is_empty() {
                return None;
            }
        } else if whole.is_empty() {
            return None;
        }
        let unit_len = s
            .bytes()
            .take_while(|b| *b != b'.' && !b.is_ascii_digit())
            .count();
        let (unit, rest) = s.split_at(unit_len);
        s = rest;
        let unit: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        if whole > LIMIT {
            return None;
        }
        let mut value = whole.checked_mul(unit)?;
        if !fraction.is_empty() {
            let digits = fraction.len().min(30);
            let scaled: f64 = format!("0.{}", &fraction[..digits]).parse().ok()?;
            value += (scaled * unit as f64) as u128;
        }
        total = total.checked_add(value)?;
        if total > LIMIT {
            return None;
        }
    }
    if total == LIMIT && !negative {
        return None;
    }
    let total = total as i128;
    Some(if negative { -total } else { total })
}
