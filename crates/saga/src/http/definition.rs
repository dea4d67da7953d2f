//! The definition agents submit: [`Definition`], its [`StepDefinition`]s
//! and their [`Call`]s, with their validation, the refusal of literal
//! private URLs, and the lenient reading of a stored definition.

use std::collections::{BTreeMap, BTreeSet};

use http::{HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Headers a step may not set: Corral sets them (the key, who the agent
/// is, the body's framing, async), or they would carry a secret into
/// the log.
const RESERVED_HEADERS: [&str; 7] = [
    "idempotency-key",
    "x-agent-id",
    "host",
    "content-length",
    "prefer",
    "authorization",
    "x-api-key",
];

/// A saga of HTTP calls, as agents submit it.
///
/// ```
/// use corral_saga::Definition;
///
/// let definition: Definition = serde_json::from_str(r#"{"steps": [
///     {"name": "reserve", "action": {"method": "POST", "url": "http://inventory:8080/reserve", "body": {"sku": 7}},
///      "compensation": {"method": "POST", "url": "http://inventory:8080/release"}},
///     {"name": "summarize", "action": {"path": "/api/chat", "body": {"model": "llama3", "messages": []}, "async": true}},
///     {"name": "notify", "action": {"agent": {"capability": "email"}, "path": "/send"}}
/// ]}"#).unwrap();
/// assert!(definition.validate(32).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The steps, in order.
    pub steps: Vec<StepDefinition>,
}

/// One step: a call and the call that undoes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// Its name, unique in the saga.
    pub name: String,
    /// What it does.
    pub action: Call,
    /// What undoes it; none: nothing to undo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensation: Option<Call>,
}

/// One HTTP call: a method, a target (`url`; `path` on Corral; or
/// `agent` + `path`), headers and a JSON body. It succeeded if it was
/// answered 2xx.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// The method; `POST` if unset.
    #[serde(default = "post")]
    pub method: String,
    /// An absolute `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A path (and query): on Corral itself, as the submitting agent,
    /// through the whole stack (in process with [`HttpSteps::set_local`](super::HttpSteps::set_local),
    /// else with `X-Agent-Id`); or on the agent found by `agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Send to an agent with this capability, found in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTarget>,
    /// Headers to send.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// For a `path` on Corral: send with `Prefer: respond-async` and wait
    /// for the job it becomes.
    #[serde(default, rename = "async", skip_serializing_if = "is_false")]
    pub respond_async: bool,
}

/// Which agent a call goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTarget {
    /// A capability it announced in the registry.
    pub capability: String,
}

fn post() -> String {
    "POST".into()
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Definition {
    /// Why the definition cannot run, naming the field; `max_steps` is
    /// the most steps allowed.
    pub fn validate(&self, max_steps: usize) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("steps: a saga needs at least one step".into());
        }
        if self.steps.len() > max_steps {
            return Err(format!(
                "steps: at most {max_steps} steps, got {}",
                self.steps.len()
            ));
        }
        let mut names = BTreeSet::new();
        for (i, step) in self.steps.iter().enumerate() {
            if step.name.trim().is_empty() || step.name.len() > 128 {
                return Err(format!("steps[{i}].name: 1 to 128 characters"));
            }
            if !names.insert(step.name.as_str()) {
                return Err(format!("steps[{i}].name: {:?} is used twice", step.name));
            }
            step.action
                .validate()
                .map_err(|e| format!("steps[{i}].action: {e}"))?;
            if let Some(compensation) = &step.compensation {
                compensation
                    .validate()
                    .map_err(|e| format!("steps[{i}].compensation: {e}"))?;
            }
        }
        Ok(())
    }
}

impl Definition {
    /// Refuses a `url` naming a loopback, private, link-local or
    /// metadata address literally, naming the step and field (names are
    /// checked once resolved, before each call); for submissions unless
    /// `[sagas] allow_private_targets`.
    pub fn refuse_private(&self) -> Result<(), String> {
        for (i, step) in self.steps.iter().enumerate() {
            let calls = [
                ("action", Some(&step.action)),
                ("compensation", step.compensation.as_ref()),
            ];
            for (field, call) in calls {
                let Some(url) = call.and_then(|c| c.url.as_deref()) else {
                    continue;
                };
                let host = url
                    .parse::<Uri>()
                    .ok()
                    .and_then(|u| u.host().map(str::to_string));
                if let Some(ip) = host.as_deref().and_then(corral_core::net::literal_private) {
                    return Err(format!(
                        "steps[{i}].{field}.url: {ip} is a private address (allow_private_targets is off)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// A stored definition read leniently: fields this version does not
    /// know (written by a newer replica during a rolling upgrade) are
    /// dropped instead of failing the saga. Submissions stay strict.
    pub fn from_stored(value: &Value) -> Result<Self, serde_json::Error> {
        let mut value = value.clone();
        if let Some(steps) = value.get_mut("steps").and_then(Value::as_array_mut) {
            for step in steps {
                keep(step, &["name", "action", "compensation"]);
                for field in ["action", "compensation"] {
                    if let Some(call) = step.get_mut(field) {
                        keep(call, CALL_FIELDS);
                        if let Some(agent) = call.get_mut("agent") {
                            keep(agent, &["capability"]);
                        }
                    }
                }
            }
        }
        keep(&mut value, &["steps"]);
        serde_json::from_value(value)
    }
}

/// A [`Call`]'s fields, as serialized.
const CALL_FIELDS: &[&str] = &["method", "url", "path", "agent", "headers", "body", "async"];

/// Drops the keys of `object` not in `known`.
fn keep(object: &mut Value, known: &[&str]) {
    if let Some(map) = object.as_object_mut() {
        map.retain(|key, _| known.contains(&key.as_str()));
    }
}

impl Call {
    fn validate(&self) -> Result<(), String> {
        Method::from_bytes(self.method.as_bytes())
            .map_err(|_| format!("method: {:?} is not an HTTP method", self.method))?;
        match (&self.url, &self.path, &self.agent) {
            (Some(url), None, None) => check_url(url)?,
            (None, Some(path), _) => check_path(path)?,
            (None, None, Some(_)) => return Err("agent: needs a path".into()),
            _ => return Err("give either url, or path (with agent or not)".into()),
        }
        if self.respond_async && (self.url.is_some() || self.agent.is_some()) {
            return Err("async: only for a path on Corral".into());
        }
        if let Some(agent) = &self.agent {
            if agent.capability.trim().is_empty() {
                return Err("agent.capability: empty".into());
            }
        }
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("headers: {name:?} is not a header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(format!("headers.{name}: set by Corral, not by a step"));
            }
            HeaderValue::from_str(value)
                .map_err(|_| format!("headers.{name}: not a header value"))?;
        }
        Ok(())
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: Uri = url.parse().map_err(|e| format!("url: {e}"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!("url: {url:?} is not an absolute http(s):// URL"));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path: {path:?} does not start with /"));
    }
    path.parse::<http::uri::PathAndQuery>()
        .map(drop)
        .map_err(|e| format!("path: {e}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(json: Value) -> Result<(), String> {
        let call: Call = serde_json::from_value(json).map_err(|e| e.to_string())?;
        call.validate()
    }

    #[test]
    fn calls_are_checked_field_by_field() {
        let table = [
            (json!({"url": "http://a:1/x"}), None),
            (json!({"path": "/api/chat", "async": true}), None),
            (
                json!({"agent": {"capability": "mail"}, "path": "/send"}),
                None,
            ),
            (json!({"url": "https://a/x"}), None),
            (json!({"url": "ftp://a/x"}), Some("url")),
            (
                json!({"path": "/x", "headers": {"Authorization": "Bearer k"}}),
                Some("headers.Authorization: set by Corral"),
            ),
            (
                json!({"path": "/x", "headers": {"idempotency-key": "k"}}),
                Some("set by Corral"),
            ),
            (json!({"url": "/x"}), Some("url")),
            (json!({"path": "x"}), Some("path")),
            (json!({}), Some("either url")),
            (
                json!({"url": "http://a/", "path": "/x"}),
                Some("either url"),
            ),
            (json!({"agent": {"capability": "m"}}), Some("needs a path")),
            (json!({"url": "http://a/", "async": true}), Some("async")),
            (json!({"path": "/x", "method": "GE T"}), Some("method")),
            (
                json!({"path": "/x", "headers": {"a b": "c"}}),
                Some("headers"),
            ),
            (json!({"path": "/x", "bogus": 1}), Some("unknown field")),
        ];
        for (json, expected) in table {
            let result = call(json.clone());
            match expected {
                None => assert_eq!(result, Ok(()), "{json}"),
                Some(part) => assert!(
                    result.as_ref().is_err_and(|e| e.contains(part)),
                    "{json}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn definitions_name_the_step_at_fault() {
        let step = |name: &str| StepDefinition {
            name: name.into(),
            action: serde_json::from_value(json!({"path": "/x"})).unwrap(),
            compensation: None,
        };
        let empty = Definition { steps: vec![] };
        assert!(empty.validate(4).unwrap_err().contains("at least one"));
        let twice = Definition {
            steps: vec![step("a"), step("a")],
        };
        assert!(twice.validate(4).unwrap_err().starts_with("steps[1].name"));
        let long = Definition {
            steps: vec![step("a"), step("b"), step("c")],
        };
        assert!(long.validate(2).unwrap_err().contains("at most 2"));
    }

    #[test]
    fn a_literal_private_url_is_refused_naming_the_step_and_field() {
        let definition: Definition = serde_json::from_value(json!({"steps": [
            {"name": "a", "action": {"url": "http://inventory.example/x"}},
            {"name": "b", "action": {"path": "/x"}, "compensation": {"url": "http://169.254.169.254/latest"}}
        ]}))
        .unwrap();
        let refused = definition.refuse_private().unwrap_err();
        assert!(
            refused.starts_with("steps[1].compensation.url: 169.254.169.254"),
            "{refused}"
        );
        let public: Definition = serde_json::from_value(
            json!({"steps": [{"name": "a", "action": {"url": "https://[2606:4700::1111]/x"}}]}),
        )
        .unwrap();
        assert_eq!(public.refuse_private(), Ok(()));
    }

    #[test]
    fn a_stored_definition_with_fields_this_version_does_not_know_is_read() {
        let stored = json!({"steps": [{"name": "a", "retries": 3,
            "action": {"path": "/x", "timeout": "5s", "agent": {"capability": "m", "zone": "eu"}}}],
            "labels": {}});
        assert!(
            serde_json::from_value::<Definition>(stored.clone()).is_err(),
            "submissions stay strict"
        );
        let read = Definition::from_stored(&stored).unwrap();
        assert_eq!(read.steps[0].action.agent.as_ref().unwrap().capability, "m");
    }
}
