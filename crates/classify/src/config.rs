use corral_core::ConfigError;
use serde::Deserialize;

/// The largest request body `classify` reads into memory unless told
/// otherwise: 32 MiB, room for a few base64 images in a chat request.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// How deeply a request body's JSON may nest unless told otherwise.
/// Real requests nest a few levels (a JSON schema in `format` or a tool
/// a dozen); thousands of `[` are an attack on whoever parses them next.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 100;

/// The most `messages` a chat request may carry unless told otherwise.
pub const DEFAULT_MAX_MESSAGES: usize = 4096;

/// How long a client may take to send a body that is read into memory
/// unless told otherwise: a slow sender cannot hold a task (and, behind
/// it, a place in line) forever.
pub const DEFAULT_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The class of agents no `[[agents]]` entry names.
pub const DEFAULT_CLASS: &str = "default";

/// The priority of a class that sets none.
pub const DEFAULT_PRIORITY: u8 = 5;

/// What `classify` needs to know: the body bound, who the agents are and
/// what their classes allow.
///
/// In the proxy these come from `[server] max_request_bytes`, `[identity]`,
/// `[[classes]]` and `[[agents]]`.
///
/// ```
/// use corral_classify::ClassifyConfig;
///
/// let config: ClassifyConfig = toml::from_str(r#"
///     require_key = true
///     [[classes]]
///     name = "opus"
///     priority = 3
///     priorities = [2, 5]
///     [[agents]]
///     id = "planner"
///     key = "sk-planner"
///     class = "opus"
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    /// The largest request body read into memory, in bytes; a larger one
    /// is refused with 413 before it is read.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// How deeply the body's JSON may nest (arrays and objects); deeper
    /// is refused with 400.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// The most `messages` a chat request may carry; more is refused with
    /// 400.
    #[serde(default = "default_max_messages")]
    pub max_messages: usize,
    /// How long the whole body may take to arrive; slower is refused with
    /// 408.
    #[serde(default = "default_body_read_timeout", with = "humantime_serde")]
    pub body_read_timeout: std::time::Duration,
    /// Whether every request must carry a known API key
    /// (`Authorization: Bearer KEY`); without one it gets 401.
    #[serde(default)]
    pub require_key: bool,
    /// The class of agents that no `[[agents]]` entry names.
    #[serde(default = "default_class")]
    pub default_class: String,
    /// The classes. A class named like `default_class` replaces the
    /// built-in one (priority 5, any priority 1..=10 on request).
    #[serde(default)]
    pub classes: Vec<ClassConfig>,
    /// The agents Corral knows by key or by id.
    #[serde(default)]
    pub agents: Vec<AgentConfig>,
}

/// One class of agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The class's name, as `[[agents]]` refer to it.
    pub name: String,
    /// The priority of its requests when they ask for none, 1..=10.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// The highest and lowest priority its agents may ask for with
    /// `X-Priority`, as `[highest, lowest]`; a request outside is moved
    /// to the nearest end.
    #[serde(default = "full_range")]
    pub priorities: [u8; 2],
    /// Its agents' answers are theirs alone: a cache keeps them apart per
    /// agent whatever its `namespace` (see [`RequestMeta::private`]).
    ///
    /// [`RequestMeta::private`]: corral_core::RequestMeta::private
    #[serde(default)]
    pub private: bool,
    /// How long its requests stay worth serving when they send no
    /// `X-Deadline-Ms`: a request that cannot be served within it is
    /// refused at arrival rather than after waiting in vain.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<std::time::Duration>,
    /// The time to the first token its requests aim for when they send
    /// no `X-Corral-Ttft-Ms`: with the degrade layer's `ttft_fallback`,
    /// a request the queue would keep longer runs on a smaller model.
    #[serde(default, with = "humantime_serde")]
    pub ttft: Option<std::time::Duration>,
}

/// One agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's id, shown in logs and used for fair share.
    pub id: String,
    /// Its API key. An agent with a key is recognised by that key only: a
    /// request that names it with `X-Agent-Id` without the key is refused.
    /// Prefer `key_sha256`, `key_env` or `key_file`, which keep the key
    /// out of the config file.
    #[serde(default)]
    pub key: Option<String>,
    /// The SHA-256 of its API key, hex (`corral hash-key` prints it).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// An environment variable that holds its API key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// A file that holds its API key (trailing whitespace ignored).
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The key no longer opens anything: 401 "revoked", and the agent's id
    /// cannot be claimed without it either.
    #[serde(default)]
    pub revoked: bool,
    /// Its class; the default class when unset.
    #[serde(default)]
    pub class: Option<String>,
}

impl AgentConfig {
    /// An agent `id` of `class` with no key.
    pub fn new(id: impl Into<String>, class: Option<String>) -> Self {
        Self {
            id: id.into(),
            key: None,
            key_sha256: None,
            key_env: None,
            key_file: None,
            revoked: false,
            class,
        }
    }

    /// The SHA-256 of its key, from whichever source gives it; `None`
    /// without one. `at` names a key in errors.
    pub(crate) fn key_digest(
        &self,
        at: impl Fn(&str) -> String,
    ) -> Result<Option<[u8; 32]>, ConfigError> {
        let given = [
            self.key.is_some(),
            self.key_sha256.is_some(),
            self.key_env.is_some(),
            self.key_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(ConfigError::new(
                at("key"),
                "give at most one of key, key_sha256, key_env, key_file",
            ));
        }
        let plain = |key: String, field: &str| {
            plain_key_digest(&key).map_err(|r| ConfigError::new(at(field), r))
        };
        if let Some(key) = &self.key {
            return plain(key.clone(), "key");
        }
        if let Some(var) = &self.key_env {
            return match std::env::var(var) {
                // A secret made from a file often ends with a newline.
                Ok(key) if !key.trim().is_empty() => plain(key.trim_end().to_string(), "key_env"),
                // Unset or empty: this agent is off, not the proxy (an
                // image started without the key still serves the others).
                // It still counts as keyed: its id cannot be claimed
                // without the key.
                _ => {
                    tracing::warn!(
                        agent = %self.id,
                        variable = %var,
                        "{var} is not set: agent {:?} is disabled until it is (its id cannot be claimed without its key)",
                        self.id
                    );
                    Ok(None)
                }
            };
        }
        if let Some(path) = &self.key_file {
            let key = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    at("key_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            return plain(key.trim_end().to_string(), "key_file");
        }
        if let Some(hex) = &self.key_sha256 {
            return parse_sha256(hex).map(Some).ok_or_else(|| {
                ConfigError::new(
                    at("key_sha256"),
                    "must be 64 hex digits: the SHA-256 of the key, as `corral hash-key` prints it",
                )
            });
        }
        Ok(None)
    }
}

/// The digest of a key given in the clear, or why it cannot serve.
fn plain_key_digest(key: &str) -> Result<Option<[u8; 32]>, &'static str> {
    if key.len() < 8 {
        return Err("must be at least 8 characters");
    }
    // A client's Bearer key arrives trimmed and cannot hold these: such a
    // key would never match.
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must hold no spaces or control characters");
    }
    Ok(Some(crate::identity::digest(key)))
}

/// A SHA-256 written as 64 hex digits, `sha256:` before it or not.
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().strip_prefix("sha256:").unwrap_or(hex.trim());
    // Hex digits only before slicing: a multibyte character would not
    // fall on the boundaries below.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(digest)
}

fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}

fn default_max_json_depth() -> usize {
    DEFAULT_MAX_JSON_DEPTH
}

fn default_max_messages() -> usize {
    DEFAULT_MAX_MESSAGES
}

fn default_body_read_timeout() -> std::time::Duration {
    DEFAULT_BODY_READ_TIMEOUT
}

fn default_class() -> String {
    DEFAULT_CLASS.to_string()
}

fn default_priority() -> u8 {
    DEFAULT_PRIORITY
}

fn full_range() -> [u8; 2] {
    [1, 10]
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_messages: DEFAULT_MAX_MESSAGES,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            require_key: false,
            default_class: default_class(),
            classes: Vec::new(),
            agents: Vec::new(),
        }
    }
}

impl ClassConfig {
    /// A class named `name` with the default priority and the full range.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            priority: DEFAULT_PRIORITY,
            priorities: full_range(),
            private: false,
            deadline: None,
            ttft: None,
        }
    }
}
