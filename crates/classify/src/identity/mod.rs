//! Who is asking: API keys, `X-Agent-Id`, classes and their priorities.

use std::collections::HashMap;

use corral_core::{headers, AgentId, ClassName, ConfigError, Priority};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::ClassifyConfig;
use crate::error::{InvalidRequest, Unauthenticated};

mod issued;
mod table;

pub use issued::{digest_from_hex, IssuedKey, IssuedKeys};

use table::{agent_of, classes_of, ClassTable};

/// A class, ready to use.
#[derive(Debug, Clone)]
pub(crate) struct Class {
    pub(crate) name: ClassName,
    pub(crate) priority: Priority,
    pub(crate) highest: Priority,
    pub(crate) lowest: Priority,
    pub(crate) private: bool,
    /// How long its requests stay worth serving when they say nothing.
    pub(crate) deadline: Option<std::time::Duration>,
    /// The time to the first token its requests aim for.
    pub(crate) ttft: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
struct Agent {
    id: AgentId,
    class: usize,
    has_key: bool,
    revoked: bool,
}

/// The agents and classes of a config, indexed for the request path.
///
/// Keys are held as SHA-256 digests: the table never keeps a key in the
/// clear, and looking a digest up reveals nothing useful through timing.
#[derive(Debug)]
pub(crate) struct Identities {
    classes: Vec<Class>,
    agents: Vec<Agent>,
    by_key: HashMap<[u8; 32], usize>,
    by_id: HashMap<String, usize>,
    default_class: usize,
    require_key: bool,
    anonymous: AgentId,
    /// Unknown keys already warned about (their digests), so each is
    /// logged once, not per request.
    unknown_keys: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// The keys issued at run time.
    issued: std::sync::Arc<IssuedKeys>,
}

/// Requests that sent an API key no agent has, while keys are optional
/// (they are served as keyless agents). A typo in an agent's key shows
/// here, not as a refusal.
pub const UNKNOWN_KEYS_TOTAL: &str = "corral_unknown_keys_total";

/// How many distinct unknown keys are remembered for warnings; past it,
/// they are only counted.
const MAX_UNKNOWN_KEYS_REMEMBERED: usize = 1024;

/// Who a request comes from.
pub(crate) struct Identity<'a> {
    pub(crate) agent: AgentId,
    pub(crate) class: &'a Class,
    pub(crate) authenticated: bool,
}

impl Identities {
    pub(crate) fn new(config: &ClassifyConfig) -> Result<Self, ConfigError> {
        Self::with_issued(config, std::sync::Arc::default())
    }

    /// The identities of `config`, and the keys `issued` at run time.
    pub(crate) fn with_issued(
        config: &ClassifyConfig,
        issued: std::sync::Arc<IssuedKeys>,
    ) -> Result<Self, ConfigError> {
        let ClassTable {
            classes,
            names,
            default_class,
        } = classes_of(config)?;
        if classes[default_class].private && !config.require_key {
            return Err(ConfigError::new(
                "default_class",
                format!(
                    "the default class {:?} is private, but agents without a key land in it: set require_key = true or make another class the default",
                    classes[default_class].name
                ),
            ));
        }
        let mut agents = Vec::with_capacity(config.agents.len());
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, entry) in config.agents.iter().enumerate() {
            let at = |key: &str| format!("agents[{i}].{key}");
            let class = match &entry.class {
                None => default_class,
                Some(name) => *names.get(name).ok_or_else(|| {
                    ConfigError::new(
                        at("class"),
                        format!("no [[classes]] entry is named {name:?}"),
                    )
                })?,
            };
            let (agent, key) = agent_of(entry, class, &classes[class], at)?;
            if by_id.insert(entry.id.clone(), agents.len()).is_some() {
                return Err(ConfigError::new(
                    at("id"),
                    format!("agent {:?} is listed twice", entry.id),
                ));
            }
            if key.is_some_and(|key| by_key.insert(key, agents.len()).is_some()) {
                return Err(ConfigError::new(
                    at("key"),
                    "another agent has the same key",
                ));
            }
            agents.push(agent);
        }
        Ok(Self {
            classes,
            agents,
            by_key,
            by_id,
            default_class,
            require_key: config.require_key,
            anonymous: AgentId::from("anonymous"),
            unknown_keys: Default::default(),
            issued,
        })
    }

    /// The agent and class a request comes from, by its key, else its
    /// `X-Agent-Id`, else anonymous.
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Identity<'_>, Unauthenticated> {
        if let Some(key) = bearer(headers) {
            let digest = digest(key);
            if let Some(&i) = self.by_key.get(&digest) {
                let agent = &self.agents[i];
                if agent.revoked {
                    return Err(Unauthenticated {
                        message: "this API key has been revoked",
                    });
                }
                return Ok(Identity {
                    agent: agent.id.clone(),
                    class: &self.classes[agent.class],
                    authenticated: true,
                });
            }
            if let Some(found) = self.by_issued_key(&digest) {
                return found;
            }
            // Clients send keys Corral does not know for reasons of their
            // own (the OpenAI SDKs insist on one): only refuse when keys
            // are required.
            if self.require_key {
                return Err(Unauthenticated {
                    message: "unknown API key",
                });
            }
            if !self.by_key.is_empty() || !self.issued.is_empty() {
                self.unknown_key(&digest);
            }
        } else if self.require_key {
            return Err(Unauthenticated {
                message: "an API key is required: send Authorization: Bearer <key>",
            });
        }
        let Some(claimed) = headers
            .get(headers::X_AGENT_ID)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(Identity {
                agent: self.anonymous.clone(),
                class: &self.classes[self.default_class],
                authenticated: false,
            });
        };
        let claimed = claimed.trim();
        match self.by_id.get(claimed) {
            Some(&i) if self.agents[i].revoked => Err(Unauthenticated {
                message: "this agent has been revoked",
            }),
            Some(&i) if self.agents[i].has_key => Err(Unauthenticated {
                message: "this agent id has an API key: send Authorization: Bearer <key>",
            }),
            Some(&i) => Ok(Identity {
                agent: self.agents[i].id.clone(),
                class: &self.classes[self.agents[i].class],
                authenticated: false,
            }),
            // An agent with a key issued at run time is not taken on its
            // word either.
            None if self.issued.names(claimed) => Err(Unauthenticated {
                message: "this agent id has an API key: send Authorization: Bearer <key>",
            }),
            None if claimed.is_empty() => Ok(Identity {
                agent: self.anonymous.clone(),
                class: &self.classes[self.default_class],
                authenticated: false,
            }),
            None => Ok(Identity {
                agent: AgentId::from(claimed),
                class: &self.classes[self.default_class],
                authenticated: false,
            }),
        }
    }

    /// The agent a request was already identified as, when it was
    /// accepted (an async job, run later without its key): its class as
    /// the config has it now; refused if it has been revoked since.
    pub(crate) fn vouched(
        &self,
        agent: &AgentId,
        authenticated: bool,
    ) -> Result<Identity<'_>, Unauthenticated> {
        match self.by_id.get(agent.as_str()) {
            Some(&i) if self.agents[i].revoked => Err(Unauthenticated {
                message: "this agent has been revoked",
            }),
            Some(&i) => Ok(Identity {
                agent: self.agents[i].id.clone(),
                class: &self.classes[self.agents[i].class],
                authenticated,
            }),
            // Accepted with a key issued at run time: still valid, or
            // revoked since.
            None if authenticated => match self.issued.class_of(agent.as_str()) {
                Some(class) => Ok(Identity {
                    agent: agent.clone(),
                    class: &self.classes[self.class_named(&class)],
                    authenticated,
                }),
                None => Err(Unauthenticated {
                    message: "the API key this was accepted with has been revoked",
                }),
            },
            // Keys became required since it was accepted without one.
            None if self.require_key => Err(Unauthenticated {
                message: "an API key is required: send Authorization: Bearer <key>",
            }),
            None => Ok(Identity {
                agent: agent.clone(),
                class: &self.classes[self.default_class],
                authenticated: false,
            }),
        }
    }

    /// A key no agent has, while some agents have keys: a typo in a
    /// client would silently make it anonymous. Counted, and warned about
    /// once per distinct key (its digest's start only: never the key).
    /// The agent a key issued at run time names, if `digest` is one:
    /// refused when it was revoked, or when the file revokes its agent
    /// (the file has the last word on its own agents).
    fn by_issued_key(&self, digest: &[u8; 32]) -> Option<Result<Identity<'_>, Unauthenticated>> {
        let found = match self.issued.find(digest)? {
            issued::Found::Revoked => Err(Unauthenticated {
                message: "this API key has been revoked",
            }),
            issued::Found::Valid(agent, _)
                if self
                    .by_id
                    .get(agent.as_str())
                    .is_some_and(|&i| self.agents[i].revoked) =>
            {
                Err(Unauthenticated {
                    message: "this agent has been revoked",
                })
            }
            issued::Found::Valid(agent, class) => Ok(Identity {
                agent,
                class: &self.classes[self.class_named(&class)],
                authenticated: true,
            }),
        };
        Some(found)
    }

    /// The index of the class named `name`; the default class when there
    /// is none by that name (a key issued for a class a reload removed).
    fn class_named(&self, name: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.name.as_str() == name)
            .unwrap_or(self.default_class)
    }

    fn unknown_key(&self, digest: &[u8; 32]) {
        metrics::counter!(UNKNOWN_KEYS_TOTAL).increment(1);
        let mut seen = corral_core::lock(&self.unknown_keys);
        if seen.len() < MAX_UNKNOWN_KEYS_REMEMBERED && seen.insert(*digest) {
            let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            tracing::warn!(
                key_sha256_prefix = %short,
                "a request sent an API key no agent has; served as a keyless agent (X-Agent-Id or anonymous) since keys are optional: check the client's key, or set require_key = true"
            );
        }
    }

    /// The classes, in config order, the default class last when built in.
    pub(crate) fn classes(&self) -> &[Class] {
        &self.classes
    }
}

impl Class {
    /// The priority a request gets: what it asks for with `X-Priority`,
    /// moved into the class's range, else the class's default.
    pub(crate) fn priority_for(&self, headers: &HeaderMap) -> Result<Priority, InvalidRequest> {
        match headers.get(headers::X_PRIORITY) {
            None => Ok(self.priority),
            Some(value) => {
                let asked: Priority = value
                    .to_str()
                    .map_err(|_| InvalidRequest {
                        message: "invalid X-Priority header: not text".into(),
                    })?
                    .parse()
                    .map_err(|e| InvalidRequest {
                        message: format!("invalid X-Priority header: {e}"),
                    })?;
                Ok(asked.clamp_to(self.highest, self.lowest))
            }
        }
    }
}

/// The request's API key: `Authorization: Bearer KEY` (Ollama's and
/// OpenAI's clients), else `x-api-key: KEY` (Anthropic's SDKs and Claude
/// Code with `ANTHROPIC_API_KEY`).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let authorization = || {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, key) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|k| !k.is_empty())
    };
    authorization().or_else(|| {
        headers
            .get("x-api-key")?
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

pub(crate) fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
