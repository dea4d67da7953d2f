//! The sections of the file other than the classes, agents and layers:
//! `[server]`, `[upstream]`, `[admin]`, `[metrics]`, `[state]`,
//! `[identity]`, each with its defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_HEADERS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE, DEFAULT_READINESS_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE, DEFAULT_UPSTREAM, DEFAULT_WRITE_STALL_TIMEOUT,
};

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The address agents connect to (their `OLLAMA_HOST`), in any form
    /// `OLLAMA_HOST` takes (`:11435` is every interface).
    #[serde(deserialize_with = "crate::listen::serde_listen::deserialize")]
    pub listen: SocketAddr,
    /// The largest request body read into memory, in bytes (413 beyond).
    /// Blob uploads are streamed and not bounded by this.
    pub max_request_bytes: usize,
    /// How long in-flight requests and streams may run on after SIGTERM
    /// or SIGINT before their connections are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long a client may take to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send a body that is read into
    /// memory (JSON requests): slower is refused with 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long a client may leave its answer unread (the socket does not
    /// take a byte) before the connection is closed and whatever it held,
    /// an upstream permit included, is released.
    #[serde(with = "humantime_serde")]
    pub write_stall_timeout: Duration,
    /// The most bytes of request headers (431 beyond); at least 8192.
    pub max_header_bytes: usize,
    /// The most request headers (431 beyond).
    pub max_headers: usize,
    /// How deeply a request body's JSON may nest (400 beyond).
    pub max_json_depth: usize,
    /// The most `messages` in a chat request (400 beyond).
    pub max_messages: usize,
    /// The most connections one client (an IPv4 address, an IPv6 /64)
    /// may hold open; more are closed as they arrive. 0: no bound.
    pub max_connections_per_address: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 11435))),
            max_request_bytes: corral_classify::DEFAULT_MAX_REQUEST_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: corral_classify::DEFAULT_BODY_READ_TIMEOUT,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_json_depth: corral_classify::DEFAULT_MAX_JSON_DEPTH,
            max_messages: corral_classify::DEFAULT_MAX_MESSAGES,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The Ollama server, in any form `OLLAMA_HOST` takes: `host`,
    /// `host:port`, `:port`, `http://host:port`, `https://host`, with an
    /// optional path prefix.
    pub url: String,
    /// How long opening a connection may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// How many idle connections are kept.
    pub pool_max_idle: usize,
    /// A PEM file of CA certificates to trust for an `https` upstream, in
    /// addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// How long `/corral/readyz` waits for the upstream's answer.
    #[serde(with = "humantime_serde")]
    pub readiness_timeout: Duration,
    /// Requests the upstream runs at once, all models together: what its
    /// operator set as `OLLAMA_NUM_PARALLEL`. The `priority` layer hands
    /// out this many permits (`--capacity`/`CORRAL_CAPACITY` override
    /// it). Unset: Ollama's own default, one request at a time per model
    /// ([`DEFAULT_CAPACITY_PER_MODEL`](super::DEFAULT_CAPACITY_PER_MODEL)),
    /// each model its own pool.
    pub capacity: Option<usize>,
    /// Models with a capacity of their own (Ollama's parallelism is per
    /// loaded model), e.g. `{ "llama3:70b" = 1 }`; the others share
    /// `capacity`.
    pub model_capacity: std::collections::BTreeMap<String, usize>,
    /// How often the upstream is asked for its version, for the
    /// `corral_upstream_up` gauge (the first time after one interval).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// With `[[upstreams]]`: what loading a model takes on them. A request
    /// for a model loaded nowhere drains a busy server only if it has
    /// waited this much longer than the work there (at equal effective
    /// priority), and a second copy of a busy model is loaded only if its
    /// queue would take longer than this to clear.
    /// Unset: measured, from streams whose first token waited for their
    /// model to load (2 s until one has).
    #[serde(with = "humantime_serde")]
    pub model_load_time: Option<Duration>,
    /// How many models the server holds loaded at once (its
    /// `OLLAMA_MAX_LOADED_MODELS`, or what fits in its memory). Set, the
    /// one server is scheduled as a fleet of one: work is grouped by
    /// model, a busy model is never evicted, and `capacity` is per loaded
    /// model.
    pub max_loaded_models: Option<usize>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_UPSTREAM.to_string(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            ca_file: None,
            readiness_timeout: DEFAULT_READINESS_TIMEOUT,
            capacity: None,
            model_capacity: std::collections::BTreeMap::new(),
            probe_interval: Duration::from_secs(10),
            model_load_time: None,
            max_loaded_models: None,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// A separate address for `/corral/*` and `/metrics`; absent, they are
    /// served on the main listener.
    #[serde(
        default,
        deserialize_with = "crate::listen::serde_listen::option::deserialize"
    )]
    pub listen: Option<SocketAddr>,
    /// A bearer token every admin path but `healthz` and `readyz` asks
    /// for (`Authorization: Bearer <token>`); absent, they are open.
    /// `CORRAL_ADMIN_TOKEN` sets it without writing it in the file.
    #[serde(default)]
    pub token: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Label request counts by agent too (an unbounded label: only for
    /// a known, small fleet).
    pub per_agent_labels: bool,
    /// Distinct model names used as labels; the rest count as `other`.
    pub max_model_labels: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            per_agent_labels: false,
            max_model_labels: crate::telemetry::DEFAULT_MAX_MODEL_LABELS,
        }
    }
}

/// Where state shared by replicas lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this process only.
    #[default]
    Memory,
    /// In Redis, shared by every replica that names the same server and
    /// prefix: permits and queue, quotas, cache, bus, events, request ids.
    Redis,
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` or `redis`.
    pub backend: Backend,
    /// The Redis server (`redis://host:port/db`), with `backend = "redis"`.
    pub redis_url: Option<String>,
    /// How long a Redis command may take before this replica answers from
    /// its own memory instead.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Prepended to every key, so several deployments can share a server.
    pub key_prefix: String,
    /// How many replicas share the upstream, for the share of the
    /// capacity each takes while Redis is away before it has counted them.
    pub replicas: usize,
}

impl StateConfig {
    /// Where state lives, for `check-config` and the startup line.
    pub fn summary(&self) -> String {
        match (&self.backend, &self.redis_url) {
            (Backend::Redis, Some(url)) => format!(
                "redis at {}, key prefix {:?}: shared with every replica on it",
                crate::admin::without_credentials(url),
                self.key_prefix
            ),
            _ => "memory: this process only".to_string(),
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            redis_url: None,
            redis_timeout: Duration::from_millis(200),
            key_prefix: "corral:".to_string(),
            replicas: 1,
        }
    }
}

/// `[identity]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Refuse (401) every request without a known API key.
    pub require_key: bool,
    /// The class of agents no `[[agents]]` entry names.
    pub default_class: String,
    /// Where the API keys issued at run time (`POST /corral/keys`) are
    /// kept as digests, to survive a restart; with `[state] backend =
    /// "redis"` they are kept in Redis instead. Unset: in memory only.
    pub keys_file: Option<PathBuf>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            require_key: false,
            default_class: corral_classify::DEFAULT_CLASS.to_string(),
            keys_file: None,
        }
    }
}

/// `[traces]`: each request's span, exported to an OpenTelemetry
/// collector (with the `otlp` feature, which the default build has).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// The collector's OTLP/HTTP address (`http://127.0.0.1:4318`);
    /// unset: nothing is exported (`traceparent` is still continued).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` the spans carry.
    pub service_name: String,
}

impl Default for TracesConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "corral".to_string(),
        }
    }
}
