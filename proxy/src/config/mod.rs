//! The configuration file: plain data, defaults in named constants, and
//! errors that name the file, the key and the reason.
//!
//! ```toml
//! [server]
//! listen = "127.0.0.1:11435"
//! max_request_bytes = 33554432
//! shutdown_grace = "30s"
//!
//! [upstream]
//! url = "http://127.0.0.1:11434"
//!
//! [admin]
//! listen = "127.0.0.1:9464"   # absent: on the main listener
//!
//! [identity]
//! require_key = false
//!
//! [[classes]]
//! name = "opus"
//! priority = 3
//! priorities = [2, 5]
//!
//! [[agents]]
//! id = "planner"
//! key = "sk-planner-0123"
//! class = "opus"
//!
//! [[layers]]          # the stack below classify, outermost first
//! kind = "..."
//!
//! [models."llama3:8b"]  # load options pinned per model
//! num_ctx = 8192
//! keep_alive = "30m"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

mod checks;
mod classes;
mod layers;
mod models;
mod sections;
mod upstreams;

pub use classes::ClassEntry;
pub(crate) use layers::key_lines;
pub use layers::{LayerConfig, DEFAULT_LAYERS};
pub use models::{KeepAlive, ModelOptions, Setting};
pub use sections::{
    AdminConfig, Backend, IdentityConfig, MetricsConfig, ServerConfig, StateConfig, TracesConfig,
    UpstreamConfig,
};
pub use upstreams::{Capacity, UpstreamEntry};

/// Where the proxy listens unless told otherwise: next to Ollama's 11434.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:11435";
/// Where Ollama listens unless told otherwise.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:11434";
/// How long in-flight requests may run on after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a client may take to send its request headers.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of request headers a client may send.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most request headers a client may send.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// The most connections one client address may hold open at once: a
/// whole fleet on one host fits, one client cannot take every socket.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1024;
/// How long a client may leave an answer unread before it is cut off.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection to the upstream may take to open.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle upstream connection is kept for reuse.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How many idle upstream connections are kept.
pub const DEFAULT_POOL_MAX_IDLE: usize = 1024;
/// Requests one model runs at once when nothing says otherwise:
/// Ollama's default `OLLAMA_NUM_PARALLEL`.
pub const DEFAULT_CAPACITY_PER_MODEL: usize = 1;
/// How long `/corral/readyz` waits for the upstream.
pub const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The client-facing listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// The Ollama server Corral forwards to, and the connection settings
    /// every upstream shares.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Several Ollama servers behind one queue; when given, `[upstream]`
    /// keeps only the connection settings.
    #[serde(default)]
    pub upstreams: Vec<UpstreamEntry>,
    /// The admin endpoints (`/corral/*`, `/metrics`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// How agents are identified.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The classes of agents.
    #[serde(default)]
    pub classes: Vec<ClassEntry>,
    /// The agents Corral knows.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
    /// The layers below `classify`, outermost first: the order of the
    /// stack. Absent: the protective default ([`DEFAULT_LAYERS`]);
    /// `layers = []`: none, a bare pass-through.
    #[serde(default)]
    pub layers: Option<Vec<LayerConfig>>,
    /// The event log.
    #[serde(default)]
    pub events: corral_events::EventsConfig,
    /// What `/metrics` labels.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Where state shared by replicas lives.
    #[serde(default)]
    pub state: StateConfig,
    /// Async requests (`Prefer: respond-async`, `/corral/jobs`).
    #[serde(default)]
    pub jobs: corral_jobs::JobsConfig,
    /// The agent registry (`/corral/registry`).
    #[serde(default)]
    pub registry: corral_registry::RegistryConfig,
    /// Sagas (`/corral/sagas`).
    #[serde(default)]
    pub sagas: corral_saga::SagaConfig,
    /// Where each request's span is exported (W3C trace context, OTLP).
    #[serde(default)]
    pub traces: TracesConfig,
    /// Load options pinned per model (`[models."llama3:8b"]`), keyed by
    /// the name as written: `num_ctx` and `keep_alive` set or clamped in
    /// every request for the model.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, ModelOptions>,
    /// The file this came from, for messages; `None` for defaults.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The file as written, for `/corral/config`.
    #[serde(skip)]
    pub raw: Option<toml::Table>,
    /// When the file was read, in seconds since the Unix epoch: a reload
    /// another replica announced before then is already in it.
    #[serde(skip)]
    pub read_at: Option<f64>,
    /// Where `[upstream] capacity` came from, for the startup line and
    /// `check-config`: the file, or a flag or variable that overrode it.
    #[serde(skip)]
    pub capacity_from: Option<String>,
}

/// `[[agents]]`: one agent (id, optional key, optional class), as
/// `classify` reads it.
pub use corral_classify::AgentConfig;

/// A configuration that cannot be used: the file, the line when known,
/// the key and the reason.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// The file, or `<defaults>` when there is none.
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// The dotted key (`server.listen`, `layers[1].max_queue`).
    pub key: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// `err` found in `file`.
    pub fn from_config(file: &Path, err: ConfigError, line: Option<usize>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            key: err.key().to_string(),
            reason: err.reason().to_string(),
        }
    }
}

/// The name shown for a configuration that comes from no file.
pub const NO_FILE: &str = "<defaults>";

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let read_at = corral_core::unix_now_f64();
        let text = std::fs::read_to_string(path).map_err(|e| LoadError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        let mut config = Self::parse(&text, path)?;
        config.read_at = Some(read_at);
        Ok(config)
    }

    /// Parses `text`, which came from `file` (for messages).
    pub fn parse(text: &str, file: &Path) -> Result<Self, LoadError> {
        let deserializer = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            LoadError {
                file: file.to_path_buf(),
                line: inner.span().map(|span| line_of(text, span.start)),
                key: if key == "." { String::new() } else { key },
                reason: inner.message().to_string(),
            }
        })?;
        // Layer tables lose their position once parsed; find each one's
        // header again so an error in its options names its line.
        let mut headers = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with("[[layers]]"))
            .map(|(i, _)| i + 1);
        for layer in config.layers.iter_mut().flatten() {
            layer.line = headers.next();
            if let Some(line) = layer.line {
                layer.key_lines = key_lines(text, line);
            }
        }
        config.validate().map_err(|e| {
            let line = models::line_of(text, e.key())
                .or_else(|| upstreams::line_of(text, e.key()))
                .or_else(|| layers::section_line_of(text, e.key()));
            LoadError::from_config(file, e, line)
        })?;
        config.source = Some(file.to_path_buf());
        config.raw = text.parse::<toml::Table>().ok();
        if config.upstream.capacity.is_some() {
            config.capacity_from = Some(format!("[upstream] capacity in {}", file.display()));
        }
        Ok(config)
    }

    /// The layers of the stack below `classify`: those listed, or the
    /// default ones when none are.
    pub fn layers(&self) -> std::borrow::Cow<'_, [LayerConfig]> {
        match &self.layers {
            Some(layers) => std::borrow::Cow::Borrowed(layers),
            None => std::borrow::Cow::Owned(
                DEFAULT_LAYERS
                    .iter()
                    .map(|kind| LayerConfig {
                        kind: (*kind).to_string(),
                        options: toml::Table::new(),
                        line: None,
                        key_lines: Vec::new(),
                    })
                    .collect(),
            ),
        }
    }

    /// The capacity the scheduler uses, and what it means: `(permits,
    /// per model)`.
    pub fn capacity(&self) -> (usize, bool) {
        match self.upstream.capacity {
            Some(capacity) => (capacity, false),
            None => (DEFAULT_CAPACITY_PER_MODEL, true),
        }
    }

    /// One sentence on the capacity in use, where it came from and how to
    /// change it: for the startup line and `check-config`.
    pub fn capacity_summary(&self) -> String {
        let fleet = self.fleet_entries();
        if !fleet.is_empty() {
            let each: Vec<String> = fleet
                .iter()
                .map(|e| {
                    let capacity = match e.capacity {
                        Capacity::Fixed(n) => n.to_string(),
                        Capacity::Auto => "found by measuring".to_string(),
                    };
                    let loaded = e
                        .max_loaded_models
                        .map(|n| format!(", at most {n} model(s) loaded"))
                        .unwrap_or_default();
                    format!("{}: {capacity}{loaded}", e.display_name())
                })
                .collect();
            return format!("per loaded model on each upstream ({})", each.join("; "));
        }
        let own = &self.upstream.model_capacity;
        let (others, other) = if own.is_empty() {
            ("all models", "")
        } else {
            ("the other models", "other ")
        };
        let shared = match (&self.upstream.capacity, &self.capacity_from) {
            (Some(capacity), Some(from)) => {
                format!("{capacity} request(s) at once, {others} together (from {from})")
            }
            (Some(capacity), None) => {
                format!("{capacity} request(s) at once, {others} together")
            }
            (None, _) => format!(
                "{DEFAULT_CAPACITY_PER_MODEL} request at a time per {other}model, Ollama's default OLLAMA_NUM_PARALLEL; if the server runs more, say so with --capacity N, CORRAL_CAPACITY=N or [upstream] capacity = N"
            ),
        };
        if own.is_empty() {
            return shared;
        }
        // Each of these models has a pool of its own, beside the rest.
        let pools: Vec<String> = own
            .iter()
            .map(|(model, capacity)| format!("{model}: {capacity} at a time"))
            .collect();
        format!(
            "{} ([upstream] model_capacity, each in a pool of its own); {shared}",
            pools.join(", ")
        )
    }

    /// The config the `classify` layer is built from.
    pub fn classify(&self) -> corral_classify::ClassifyConfig {
        corral_classify::ClassifyConfig {
            max_request_bytes: self.server.max_request_bytes,
            max_json_depth: self.server.max_json_depth,
            max_messages: self.server.max_messages,
            body_read_timeout: self.server.body_read_timeout,
            require_key: self.identity.require_key,
            default_class: self.identity.default_class.clone(),
            classes: self.classes.iter().map(ClassEntry::classify).collect(),
            agents: self.agents.clone(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
