//! `[models."name"]`: load options pinned per model, so that one client
//! cannot make Ollama reload (or unload) a runner other clients share.
//!
//! Ollama keeps one runner per model and restarts it whenever a request
//! asks for other load-time options than the runner was started with: a
//! client that sends `options.num_ctx = 4096` to a model loaded with
//! 8192 costs every other client of that model a reload of seconds, and
//! the next client asking for 8192 another one (ollama#12783, #8903,
//! #9977, #10263). `keep_alive` does not reload, but it sets how long
//! the runner stays after the request: `keep_alive: 0` unloads the model
//! for everyone. Pinned here, the proxy writes the operator's value into
//! every request for the model (or clamps the client's).
//!
//! ```toml
//! [models."llama3:8b"]
//! num_ctx = 8192                           # every request gets this
//! keep_alive = "30m"                       # or seconds; -1 or "-1": forever
//!
//! [models."qwen3"]                         # = qwen3:latest
//! num_ctx = { min = 2048, max = 8192 }     # clamp what clients ask
//! keep_alive = { min = "5m", max = "1h" }  # absent in a request: left absent
//! ```
//!
//! ```
//! let text = "[models.\"llama3:8b\"]\nnum_ctx = { min = 4096, max = 2048 }\n";
//! let err = corral::Config::parse(text, std::path::Path::new("corral.toml")).unwrap_err();
//! assert_eq!(err.to_string(), "corral.toml:2: models.\"llama3:8b\".num_ctx.min: must be at most max (2048)");
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use corral_core::ConfigError;
use serde::{Deserialize, Deserializer};

/// `[models."name"]`: what every request for one model is held to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOptions {
    /// `options.num_ctx`, the context length the runner is loaded with:
    /// a number (every request gets it, whatever it asked) or
    /// `{ min, max }` (a client's value is moved into the range; a
    /// request without one is left without one). Absent: untouched.
    #[serde(default)]
    pub num_ctx: Option<Setting<u64>>,
    /// `keep_alive`, how long the runner stays loaded after the request:
    /// a duration (`"30m"`, `"1h 30m"`), seconds, or `-1`/`"-1"` for
    /// forever; or `{ min, max }` of those. Absent: untouched.
    #[serde(default)]
    pub keep_alive: Option<Setting<KeepAlive>>,
}

/// A pinned value, or the range a client's value is moved into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting<T> {
    /// Every request gets this value.
    Set(T),
    /// A client's value below `min` becomes `min`, above `max` becomes
    /// `max`; a request without a value keeps none (the server's default
    /// applies).
    Clamp {
        /// The least a client may ask; absent: no bound below.
        min: Option<T>,
        /// The most a client may ask; absent: no bound above.
        max: Option<T>,
    },
}

impl<T: Ord + Copy> Setting<T> {
    /// What a request asking for `asked` (`None`: nothing) is given:
    /// `None` leaves the request as it is.
    pub fn apply(&self, asked: Option<T>) -> Option<T> {
        match (*self, asked) {
            (Setting::Set(value), _) => Some(value),
            (Setting::Clamp { .. }, None) => None,
            (Setting::Clamp { min, max }, Some(asked)) => {
                let mut value = asked;
                if let Some(min) = min {
                    value = value.max(min);
                }
                if let Some(max) = max {
                    value = value.min(max);
                }
                Some(value)
            }
        }
    }
}

/// How long Ollama keeps a model loaded after a request.
///
/// Ordered as durations, with [`KeepAlive::Forever`] above all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepAlive {
    /// This long (zero: unloaded as soon as the request is done).
    For(Duration),
    /// Never unloaded for being idle (Ollama's negative `keep_alive`).
    Forever,
}

impl fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepAlive::For(d) => write!(f, "{}", humantime::format_duration(*d)),
            KeepAlive::Forever => f.write_str("-1 (forever)"),
        }
    }
}

/// The largest `num_ctx` accepted: Ollama reads it through a float into
/// a Go `int`; no model has a context near this.
const MAX_NUM_CTX: u64 = i32::MAX as u64;

/// The longest finite `keep_alive` Ollama can hold: a Go `time.Duration`
/// is an `int64` of nanoseconds (about 292 years).
const MAX_KEEP_ALIVE_NANOS: u128 = i64::MAX as u128;

impl KeepAlive {
    /// Reads a configured value: seconds, `-1`, or a duration string.
    fn parse(value: &toml::Value) -> Result<Self, String> {
        let too_long = || {
            "is longer than Ollama can hold (about 292 years); -1 keeps the model loaded forever"
                .to_string()
        };
        let seconds = |secs: f64| {
            if secs < 0.0 {
                Ok(KeepAlive::Forever)
            } else {
                Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| d.as_nanos() <= MAX_KEEP_ALIVE_NANOS)
                    .map(KeepAlive::For)
                    .ok_or_else(too_long)
            }
        };
        match value {
            toml::Value::Integer(n) => seconds(*n as f64),
            toml::Value::Float(x) if x.is_finite() => seconds(*x),
            toml::Value::String(text) => {
                let text = text.trim();
                if let Some(rest) = text.strip_prefix('-') {
                    let rest = rest.trim();
                    return if rest.parse::<f64>().is_ok() || humantime::parse_duration(rest).is_ok()
                    {
                        Ok(KeepAlive::Forever)
                    } else {
                        Err(format!("{text:?} is not a duration (\"30m\", \"1h 30m\"), seconds, or -1 for forever"))
                    };
                }
                if let Ok(secs) = text.parse::<f64>() {
                    return seconds(secs);
                }
                let d = humantime::parse_duration(text).map_err(|e| {
                    format!("{text:?} is not a duration (\"30m\", \"1h 30m\"), seconds, or -1 for forever: {e}")
                })?;
                if d.as_nanos() > MAX_KEEP_ALIVE_NANOS {
                    return Err(too_long());
                }
                Ok(KeepAlive::For(d))
            }
            other => Err(format!(
                "must be a duration (\"30m\"), seconds, or -1 for forever, not {}",
                other.type_str()
            )),
        }
    }
}

impl<'de> Deserialize<'de> for KeepAlive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        KeepAlive::parse(&value).map_err(serde::de::Error::custom)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Setting<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = toml::Value::deserialize(d)?;
        let one =
            |value: toml::Value| T::deserialize(value).map_err(|e| D::Error::custom(e.message()));
        match value {
            toml::Value::Table(mut table) => {
                let min = table.remove("min").map(&one).transpose()?;
                let max = table.remove("max").map(&one).transpose()?;
                if let Some(key) = table.keys().next() {
                    return Err(D::Error::custom(format!(
                        "unknown key `{key}`: a range has `min`, `max` or both"
                    )));
                }
                Ok(Setting::Clamp { min, max })
            }
            value => one(value).map(Setting::Set),
        }
    }
}

impl ModelOptions {
    /// Checks the bounds the types cannot: no empty or upside-down range,
    /// no zero context. Keys are relative to the model's table.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(num_ctx) = &self.num_ctx {
            let reason = format!("must be between 1 and {MAX_NUM_CTX}");
            check(num_ctx, "num_ctx", |n| *n == 0 || *n > MAX_NUM_CTX, &reason)?;
        }
        if let Some(keep_alive) = &self.keep_alive {
            check(keep_alive, "keep_alive", |_| false, "")?;
        }
        Ok(())
    }
}

/// Refuses a value that `bad` says is out of bounds (for `reason`), and
/// a range that is empty or upside down.
fn check<T: Ord + fmt::Display>(
    setting: &Setting<T>,
    key: &str,
    bad: impl Fn(&T) -> bool,
    reason: &str,
) -> Result<(), ConfigError> {
    match setting {
        Setting::Set(value) if bad(value) => Err(ConfigError::new(key, reason)),
        Setting::Set(_) => Ok(()),
        Setting::Clamp { min, max } => {
            for (bound, value) in [("min", min), ("max", max)] {
                if value.as_ref().is_some_and(&bad) {
                    return Err(ConfigError::new(format!("{key}.{bound}"), reason));
                }
            }
            match (min, max) {
                (None, None) => Err(ConfigError::new(
                    key,
                    "a range needs `min`, `max` or both (or give one value to pin it)",
                )),
                (Some(min), Some(max)) if min > max => Err(ConfigError::new(
                    format!("{key}.min"),
                    format!("must be at most max ({max})"),
                )),
                _ => Ok(()),
            }
        }
    }
}

/// The key of `name`'s table as the file would write it:
/// `models."llama3:8b"`.
fn table_key(name: &str) -> String {
    format!("models.{name:?}")
}

/// Checks every `[models."name"]`: its values, and that no two tables
/// name the same model (`llama3` and `llama3:latest`).
pub(crate) fn validate(models: &BTreeMap<String, ModelOptions>) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, options) in models {
        if name.trim().is_empty() {
            return Err(ConfigError::new(table_key(name), "names no model"));
        }
        options.validate().map_err(|e| e.within(table_key(name)))?;
        let canonical = corral_core::canonical_model(name);
        if let Some(other) = seen.insert(canonical.clone(), name) {
            return Err(ConfigError::new(
                table_key(name),
                format!(
                    "is the same model as {} (Ollama reads both as {canonical:?}): keep one",
                    table_key(other)
                ),
            ));
        }
    }
    Ok(())
}

/// The line of the file a refused `models."name".key[.min|.max]` was
/// written on: the key's line inside the model's table, else the table's
/// header; `None` for keys of other sections, or when neither is found.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let rest = key.strip_prefix("models.")?;
    // The name is written as Rust's Debug writes it: quoted, escaped.
    let (name, field) = quoted_prefix(rest)?;
    let field = field
        .trim_start_matches('.')
        .split('.')
        .next()
        .unwrap_or("");
    let headers = [
        format!("[models.{name:?}]"),
        format!("[models.'{name}']"),
        format!("[models.{name}]"),
    ];
    let mut header = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if header.is_none() {
            let compact: String = trimmed.split_whitespace().collect();
            if headers.iter().any(|h| compact.starts_with(h.as_str())) {
                header = Some(i + 1);
            }
            continue;
        }
        if trimmed.starts_with('[') {
            break;
        }
        if let Some((written, _)) = trimmed.split_once('=') {
            if !field.is_empty() && written.trim().trim_matches('"') == field {
                return Some(i + 1);
            }
        }
    }
    header
}

/// Splits `"name".rest` into the unescaped name and `.rest`.
fn quoted_prefix(text: &str) -> Option<(String, &str)> {
    let mut de = serde_json::Deserializer::from_str(text).into_iter::<String>();
    let name = de.next()?.ok()?;
    let end = de.byte_offset();
    Some((name, &text[end..]))
}

#[cfg(test)]
mod tests;
