//! What an agent announces, and the checks it must pass.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// The longest agent id.
pub const MAX_AGENT_LEN: usize = 256;
/// How many capabilities one entry may list.
pub const MAX_CAPABILITIES: usize = 32;
/// The longest capability name; they are metric labels, so short.
pub const MAX_CAPABILITY_LEN: usize = 64;
/// How many models one entry may list.
pub const MAX_MODELS: usize = 64;
/// The longest model name.
pub const MAX_MODEL_LEN: usize = 256;
/// The longest endpoint URL.
pub const MAX_ENDPOINT_LEN: usize = 2048;
/// The most bytes of `metadata`, as JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

/// One agent's entry: what it can do, where to reach it, until when.
///
/// ```
/// use std::time::Duration;
/// use corral_registry::Entry;
///
/// let entry = Entry::new("summarizer-1", "http://summarizer.internal:8080", Duration::from_secs(30))
///     .with_capabilities(["summarize"])
///     .with_models(["llama3.2:3b"]);
/// assert_eq!(entry.capabilities, ["summarize"]);
/// assert!(entry.validate(Duration::from_secs(60)).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The agent, as the proxy identifies it.
    pub agent: String,
    /// When it joined, in seconds since the Unix epoch; kept across
    /// renewals, so a new value means it left (or expired) and came back.
    pub registered_at: f64,
    /// When it expires without a heartbeat, in seconds since the Unix
    /// epoch.
    pub expires_at: f64,
    /// How long each heartbeat (or `PUT`) keeps it alive.
    #[serde(rename = "ttl_secs", with = "secs_f64")]
    pub ttl: Duration,
    /// What it can do (`summarize`, `code-review`): what others look it
    /// up by.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The models it uses.
    #[serde(default)]
    pub models: Vec<String>,
    /// Where to reach it: an `http://` or `https://` URL.
    pub endpoint: String,
    /// Anything else it wants others to read, as it sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Whether the agent proved who it is (an API key) when it put this
    /// entry, rather than only claiming a name: readers choosing whom to
    /// send work to can prefer, or insist on, proven ones.
    #[serde(default)]
    pub authenticated: bool,
}

impl Entry {
    /// An entry for `agent` at `endpoint`, alive for `ttl` after each
    /// renewal, with no capabilities yet. The registry sets the times.
    pub fn new(agent: impl Into<String>, endpoint: impl Into<String>, ttl: Duration) -> Self {
        Self {
            agent: agent.into(),
            registered_at: 0.0,
            expires_at: 0.0,
            ttl,
            capabilities: Vec::new(),
            models: Vec::new(),
            endpoint: endpoint.into(),
            metadata: None,
            authenticated: false,
        }
    }

    /// The same, able to do `capabilities`.
    pub fn with_capabilities<S: Into<String>>(
        mut self,
        capabilities: impl IntoIterator<Item = S>,
    ) -> Self {
        self.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// The same, using `models`.
    pub fn with_models<S: Into<String>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models.into_iter().map(Into::into).collect();
        self
    }

    /// The same, carrying `metadata`.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The same, put by an agent that proved who it is (or not).
    pub fn with_authenticated(mut self, authenticated: bool) -> Self {
        self.authenticated = authenticated;
        self
    }

    /// Whether it lists `capability`.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }

    /// Checks what an agent sent against the limits, with a message for
    /// it on the first problem; a TTL above `max_ttl` is refused.
    pub fn validate(&self, max_ttl: Duration) -> Result<(), RegistryError> {
        let invalid = |message: String| Err(RegistryError::Invalid(message));
        if self.agent.is_empty() || self.agent.len() > MAX_AGENT_LEN {
            return invalid(format!("the agent id must be 1 to {MAX_AGENT_LEN} bytes"));
        }
        if self.ttl.is_zero() || self.ttl > max_ttl {
            return invalid(format!(
                "ttl_secs must be above 0 and at most {} (max_ttl)",
                max_ttl.as_secs_f64()
            ));
        }
        check_endpoint(&self.endpoint)?;
        check_names(
            "capabilities",
            &self.capabilities,
            MAX_CAPABILITIES,
            MAX_CAPABILITY_LEN,
        )?;
        check_names("models", &self.models, MAX_MODELS, MAX_MODEL_LEN)?;
        if let Some(metadata) = &self.metadata {
            let bytes = serde_json::to_vec(metadata).map_or(usize::MAX, |v| v.len());
            if bytes > MAX_METADATA_BYTES {
                return invalid(format!(
                    "metadata is {bytes} bytes as JSON, above {MAX_METADATA_BYTES}"
                ));
            }
        }
        Ok(())
    }
}

/// Only `http` and `https` with a host: the endpoint is for others to
/// call, and anything else (a path, `file:`) would be a trap for them.
fn check_endpoint(endpoint: &str) -> Result<(), RegistryError> {
    let refuse = |why: &str| {
        Err(RegistryError::Invalid(format!(
            "endpoint {endpoint:?} {why}: give an http:// or https:// URL with a host"
        )))
    };
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return refuse(&format!("is longer than {MAX_ENDPOINT_LEN} bytes"));
    }
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return refuse("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return refuse("has no http or https scheme");
    }
    if uri.host().is_none_or(str::is_empty) {
        return refuse("has no host");
    }
    Ok(())
}

/// Refuses an endpoint whose host is a private, loopback, link-local or
/// metadata address written out, or `localhost`: others (and the
/// proxy's sagas) call it, so it must not aim them into the proxy's own
/// network. Any other name is left alone: it is only known once
/// resolved, by whoever calls it.
pub(crate) fn check_public_endpoint(endpoint: &str) -> Result<(), RegistryError> {
    let host = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned));
    let host = host.unwrap_or_default().to_ascii_lowercase();
    let host = host.trim_end_matches('.'); // `localhost.` is the same name
                                           // `localhost` is loopback by definition (RFC 6761), not by lookup.
    let loopback_name = host == "localhost" || host.ends_with(".localhost");
    let private = corral_core::net::literal_private(host).map(|ip| ip.to_string());
    match private.or(loopback_name.then(|| host.to_string())) {
        Some(address) => Err(RegistryError::Invalid(format!(
            "endpoint {endpoint:?}: {address} is a loopback, private or link-local address; [registry] allow_private_endpoints allows it"
        ))),
        None => Ok(()),
    }
}

/// Names are short, printable and without spaces: they become metric
/// labels and query values.
fn check_names(
    field: &str,
    names: &[String],
    max_count: usize,
    max_len: usize,
) -> Result<(), RegistryError> {
    if names.len() > max_count {
        return Err(RegistryError::Invalid(format!(
            "{field} lists {} names, more than {max_count}",
            names.len()
        )));
    }
    for name in names {
        let printable = name.chars().all(|c| !c.is_control() && !c.is_whitespace());
        if name.is_empty() || name.len() > max_len || !printable {
            return Err(RegistryError::Invalid(format!(
                "{field}: {name:?} must be 1 to {max_len} bytes without spaces or control characters"
            )));
        }
    }
    Ok(())
}

/// A [`Duration`] as a number of seconds (`ttl_secs`).
mod secs_f64 {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Duration,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(value.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(deserializer)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
