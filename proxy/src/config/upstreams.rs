//! `[[upstreams]]`: several Ollama servers behind one queue.
//!
//! ```toml
//! [[upstreams]]
//! name = "gpu-a"                       # default: the URL's host:port
//! url = "http://10.0.0.5:11434"
//! capacity = 4                         # its OLLAMA_NUM_PARALLEL
//! model_capacity = { "llama3:70b" = 1 }
//! models = ["llama3*", "qwen2.5:7b"]   # may serve; absent: every model
//! max_loaded_models = 1                # its OLLAMA_MAX_LOADED_MODELS
//! weight = 2.0
//! labels = { zone = "a" }
//! ```
//!
//! Connection settings (timeouts, pool, CA file, probe interval) are the
//! `[upstream]` section's, shared by all.

use std::collections::{BTreeMap, HashSet};

use corral_core::ConfigError;
use serde::Deserialize;

use super::DEFAULT_CAPACITY_PER_MODEL;
use crate::upstream_url::UpstreamUrl;

/// How many requests of one loaded model an upstream runs at once.
#[derive(Debug, Clone, PartialEq)]
pub enum Capacity {
    /// As its operator set `OLLAMA_NUM_PARALLEL`.
    Fixed(usize),
    /// Found by measuring, per model (the `corral-adaptive` crate).
    Auto,
}

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(usize),
            Word(String),
        }
        match Written::deserialize(deserializer) {
            Ok(Written::Number(n)) => Ok(Capacity::Fixed(n)),
            Ok(Written::Word(w)) if w == "auto" => Ok(Capacity::Auto),
            _ => Err(serde::de::Error::custom(
                "expected a number of requests at once, or \"auto\"",
            )),
        }
    }
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity::Fixed(super::DEFAULT_CAPACITY_PER_MODEL)
    }
}

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamEntry {
    /// Its name in metrics, logs and the status; the URL's `host:port`
    /// when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The Ollama server, in any form `OLLAMA_HOST` takes.
    pub url: String,
    /// Requests of one loaded model it runs at once, or `"auto"`: found by
    /// measuring, per model.
    #[serde(default)]
    pub capacity: Capacity,
    /// Models with a capacity of their own.
    #[serde(default)]
    pub model_capacity: BTreeMap<String, usize>,
    /// The models it may serve (names, or prefixes ending in `*`); absent:
    /// every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// How many models it holds loaded at once; absent: no limit Corral
    /// keeps (Ollama evicts as its memory requires).
    #[serde(default)]
    pub max_loaded_models: Option<usize>,
    /// Its share of the requests relative to the others.
    #[serde(default = "one")]
    pub weight: f64,
    /// Free-form labels, shown in the status.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// With `capacity = "auto"`: how it is measured (`[upstreams.auto]`;
    /// the defaults suit Ollama).
    #[serde(default)]
    pub auto: Option<corral_adaptive::AdaptiveConfig>,
}

fn one() -> f64 {
    1.0
}

impl UpstreamEntry {
    /// Its name: as written, else the URL's `host:port`.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => UpstreamUrl::parse(&self.url)
                .map(|u| u.authority().to_string())
                .unwrap_or_else(|_| self.url.clone()),
        }
    }
}

impl super::Config {
    /// Where requests go, for the startup line: the upstream's address,
    /// or each upstream's name and address.
    pub fn upstreams_summary(&self) -> String {
        let fleet = self.fleet_entries();
        if fleet.is_empty() || self.upstreams.is_empty() {
            return crate::upstream_url::UpstreamUrl::parse(&self.upstream.url)
                .map(|u| u.to_string())
                .unwrap_or_default();
        }
        fleet
            .iter()
            .map(|e| format!("{}={}", e.display_name(), e.url))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The upstreams scheduled as a fleet: `[[upstreams]]`, or the one
    /// `[upstream]` when it says how many models it holds loaded; empty
    /// otherwise (one server, no residency).
    pub fn fleet_entries(&self) -> std::borrow::Cow<'_, [UpstreamEntry]> {
        if !self.upstreams.is_empty() || self.upstream.max_loaded_models.is_none() {
            return std::borrow::Cow::Borrowed(&self.upstreams);
        }
        let upstream = &self.upstream;
        std::borrow::Cow::Owned(vec![UpstreamEntry {
            name: None,
            url: upstream.url.clone(),
            capacity: Capacity::Fixed(upstream.capacity.unwrap_or(DEFAULT_CAPACITY_PER_MODEL)),
            model_capacity: upstream.model_capacity.clone(),
            models: Vec::new(),
            max_loaded_models: upstream.max_loaded_models,
            weight: 1.0,
            labels: Default::default(),
            auto: None,
        }])
    }
}

/// Checks every entry, and the names are distinct.
pub(crate) fn validate(entries: &[UpstreamEntry]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = |field: &str| format!("upstreams[{i}].{field}");
        UpstreamUrl::parse(&entry.url).map_err(|reason| ConfigError::new(key("url"), reason))?;
        match (&entry.capacity, &entry.auto) {
            (Capacity::Auto, Some(auto)) => auto
                .validate()
                .map_err(|e| e.within(format!("upstreams[{i}].auto")))?,
            (Capacity::Fixed(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("auto"),
                    "tunes capacity = \"auto\": set that, or leave this out",
                ))
            }
            _ => {}
        }
        if entry.capacity == Capacity::Fixed(0) {
            return Err(ConfigError::new(key("capacity"), "must be at least 1"));
        }
        if let Some((model, _)) = entry.model_capacity.iter().find(|(_, c)| **c == 0) {
            return Err(ConfigError::new(
                format!("{}.{model:?}", key("model_capacity")),
                "must be at least 1",
            ));
        }
        if entry.max_loaded_models == Some(0) {
            return Err(ConfigError::new(
                key("max_loaded_models"),
                "must be at least 1",
            ));
        }
        if !entry.weight.is_finite() || entry.weight <= 0.0 {
            return Err(ConfigError::new(key("weight"), "must be a number above 0"));
        }
        if let Some(model) = entry.models.iter().find(|m| m.trim().is_empty()) {
            return Err(ConfigError::new(
                key("models"),
                format!("{model:?}: a model name may not be empty"),
            ));
        }
        let name = entry.display_name();
        if name.is_empty() {
            return Err(ConfigError::new(key("name"), "may not be empty"));
        }
        if !names.insert(name.clone()) {
            return Err(ConfigError::new(
                key("name"),
                format!("{name:?} names two upstreams: give each its own name"),
            ));
        }
    }
    Ok(())
}

/// The line of `key` (`upstreams[i].field...`) in `text`: the field's
/// line in the `i`-th `[[upstreams]]` table, else that table's header.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let rest = key.strip_prefix("upstreams[")?;
    let (index, field) = rest.split_once(']')?;
    let index: usize = index.parse().ok()?;
    let field = field
        .trim_start_matches('.')
        .split(['.', '['])
        .next()
        .unwrap_or("");
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[upstreams]]"))
        .map(|(i, _)| i)
        .nth(index)?;
    let sub_table = format!("[upstreams.{field}]");
    for (offset, line) in lines[header + 1..].iter().enumerate() {
        let line = line.trim_start();
        if line.starts_with('[') {
            // Its own table (`[upstreams.auto]`) holds the key.
            if !field.is_empty() && line.starts_with(&sub_table) {
                return Some(header + 2 + offset);
            }
            break;
        }
        let names_field = !field.is_empty()
            && line
                .strip_prefix(field)
                .is_some_and(|r| r.trim_start().starts_with('='));
        if names_field {
            return Some(header + 2 + offset);
        }
    }
    Some(header + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::Config, crate::config::LoadError> {
        crate::Config::parse(text, std::path::Path::new("corral.toml"))
    }

    #[test]
    fn entries_are_read_with_their_defaults() {
        let config = parse(
            "[[upstreams]]\nurl = \"http://a:11434\"\n\n[[upstreams]]\nname = \"big\"\nurl = \"b:11434\"\ncapacity = 3\nmodels = [\"llama3*\"]\nmax_loaded_models = 1\nweight = 2.5\n",
        )
        .unwrap();
        let [a, b] = &config.upstreams[..] else {
            panic!("two upstreams");
        };
        assert_eq!(a.display_name(), "a:11434");
        assert_eq!(a.capacity, Capacity::Fixed(1));
        assert_eq!(a.weight, 1.0);
        assert_eq!(b.display_name(), "big");
        assert_eq!(b.capacity, Capacity::Fixed(3));
        assert_eq!(b.max_loaded_models, Some(1));
    }

    #[test]
    fn a_refusal_names_the_line_key_and_reason() {
        let cases = [
            (
                "[[upstreams]]\nurl = \"a\"\n[[upstreams]]\nurl = \"b\"\ncapacity = 0\n",
                Some(5),
                "upstreams[1].capacity",
                "at least 1",
            ),
            (
                "[[upstreams]]\nurl = \"a:1\"\n[[upstreams]]\nurl = \"http://a:1\"\n",
                Some(3),
                "upstreams[1].name",
                "names two upstreams",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\nweight = -1.0\n",
                Some(3),
                "upstreams[0].weight",
                "above 0",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\ncapacity = \"lots\"\n",
                Some(3),
                "upstreams[0].capacity",
                "\"auto\"",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\ncapacity = 2\n[upstreams.auto]\nmax = 8\n",
                Some(4),
                "upstreams[0].auto",
                "capacity = \"auto\"",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\ncapacity = \"auto\"\n[upstreams.auto]\nmin = 9\nmax = 8\n",
                Some(4),
                "upstreams[0].auto.max",
                "",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\nmax_loaded_models = 0\n",
                Some(3),
                "upstreams[0].max_loaded_models",
                "at least 1",
            ),
            (
                "[[upstreams]]\nurl = \"ftp://a\"\n",
                Some(2),
                "upstreams[0].url",
                "",
            ),
            (
                "[[upstreams]]\nurl = \"a\"\nmodel_capacity = { \"x\" = 0 }\n",
                Some(3),
                "upstreams[0].model_capacity.\"x\"",
                "at least 1",
            ),
        ];
        for (text, line, key, reason) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.key, key, "{text}");
            assert_eq!(error.line, line, "{text}");
            assert!(error.reason.contains(reason), "{text}: {}", error.reason);
        }
    }

    #[test]
    fn one_upstream_holding_few_models_is_a_fleet_of_one() {
        let config =
            parse("[upstream]\nurl = \"a:1\"\ncapacity = 3\nmax_loaded_models = 1\n").unwrap();
        let entries = config.fleet_entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].capacity, Capacity::Fixed(3));
        assert_eq!(entries[0].max_loaded_models, Some(1));
        assert!(parse("[upstream]\nurl = \"a:1\"\n")
            .unwrap()
            .fleet_entries()
            .is_empty());
        for (text, key) in [
            (
                "[upstream]\nmax_loaded_models = 0\n",
                "upstream.max_loaded_models",
            ),
            (
                "[upstream]\nmax_loaded_models = 1\n[[upstreams]]\nurl = \"a\"\n",
                "upstream.max_loaded_models",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().key, key, "{text}");
        }
    }

    #[test]
    fn upstreams_are_shared_through_redis() {
        let config = parse(
            "[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n[[upstreams]]\nurl = \"a\"\n[[upstreams]]\nurl = \"b\"\n",
        )
        .unwrap();
        assert_eq!(config.fleet_entries().len(), 2);
    }
}
