//! The design's fleet: classes of agents, what each sends, how often, and
//! how long an answer stays useful to it.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

/// What one request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A streamed chat (`/api/chat` or `/v1/chat/completions`).
    Chat,
    /// A whole generation (`/api/generate` or a non-streamed chat
    /// completion).
    Generate,
    /// One embedding (`/api/embed` or `/v1/embeddings`).
    Embed,
}

/// The API the agents speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// Ollama's native API.
    Ollama,
    /// The OpenAI-compatible API (Ollama's `/v1`, llama.cpp's server).
    Openai,
}

/// A class of agents: the design's names and priorities.
#[derive(Debug, Clone)]
pub struct Class {
    /// Its name, as in `deploy/corral.toml`'s `[[classes]]`.
    pub name: &'static str,
    /// Its priority there (1 highest).
    pub priority: u8,
    /// How many agents it has.
    pub agents: usize,
    /// Mean time an agent thinks between two requests (exponential).
    pub think: Duration,
    /// How long an answer stays useful: the agent gives up then, and
    /// says so in `X-Deadline-Ms`.
    pub deadline: Duration,
    /// Share of streamed chats.
    pub chat: f64,
    /// Share of whole generations; embeddings are the rest.
    pub generate: f64,
    /// Share of requests that repeat a deterministic prompt another agent
    /// of the class may also send (`temperature: 0`, a seed): what a
    /// cache can answer.
    pub repeated: f64,
    /// Tokens asked for (`num_predict` / `max_tokens`).
    pub tokens: u32,
    /// Whether its agents are unknown to Corral (the default class) and
    /// ask for `priority` with `X-Priority`, as agents that choose their
    /// own priority do; otherwise they are `[[agents]]` of the class
    /// named `name`.
    pub asks_priority: bool,
}

/// 131 agents: 10 critical system agents at priority 1, 20 opus at 3, 60
/// sonnet at 5 and 41 batch at 9, the origin document's fleet.
pub fn design_fleet() -> Vec<Class> {
    vec![
        Class {
            name: "system",
            priority: 1,
            agents: 10,
            think: Duration::from_secs(8),
            deadline: Duration::from_secs(15),
            chat: 1.0,
            generate: 0.0,
            repeated: 0.0,
            tokens: 48,
            asks_priority: false,
        },
        Class {
            name: "opus",
            priority: 3,
            agents: 20,
            think: Duration::from_secs(12),
            deadline: Duration::from_secs(60),
            chat: 0.8,
            generate: 0.2,
            repeated: 0.1,
            tokens: 128,
            asks_priority: false,
        },
        Class {
            name: "sonnet",
            priority: 5,
            agents: 60,
            think: Duration::from_secs(12),
            deadline: Duration::from_secs(60),
            chat: 0.5,
            generate: 0.3,
            repeated: 0.3,
            tokens: 96,
            asks_priority: false,
        },
        Class {
            name: "batch",
            priority: 9,
            agents: 41,
            think: Duration::from_secs(6),
            deadline: Duration::from_secs(120),
            chat: 0.0,
            generate: 0.5,
            repeated: 0.4,
            tokens: 128,
            asks_priority: false,
        },
    ]
}

/// Deterministic prompts shared by a class: few enough that repeats meet.
const REPEATED_PROMPTS: u32 = 8;

/// One request ready to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// What it is.
    pub kind: Kind,
    /// Its path.
    pub path: &'static str,
    /// Its JSON body.
    pub body: Bytes,
    /// Whether the answer streams.
    pub stream: bool,
}

impl Class {
    /// Picks the next request of agent `agent` (its `n`th) with `rng`.
    pub fn next_call(
        &self,
        rng: &mut fastrand::Rng,
        api: Api,
        models: (&str, &str),
        agent: &str,
        n: u64,
    ) -> Call {
        let roll = rng.f64();
        let kind = if roll < self.chat {
            Kind::Chat
        } else if roll < self.chat + self.generate {
            Kind::Generate
        } else {
            Kind::Embed
        };
        let repeated = rng.f64() < self.repeated;
        let prompt = if repeated {
            format!(
                "[{}] Summarise shared document {} in three bullet points.",
                self.name,
                rng.u32(0..REPEATED_PROMPTS)
            )
        } else {
            format!(
                "[{agent}] Step {n}: plan the next action for ticket {}.",
                rng.u32(..)
            )
        };
        let (model, embed_model) = models;
        let stream = kind == Kind::Chat;
        // Deterministic requests are what a cache may answer; the others
        // sample, as agents usually do.
        let sampling = if repeated {
            json!({"temperature": 0, "seed": 42})
        } else {
            json!({"temperature": 0.7})
        };
        let (path, body) = match (api, kind) {
            (Api::Ollama, Kind::Embed) => {
                ("/api/embed", json!({"model": embed_model, "input": prompt}))
            }
            (Api::Openai, Kind::Embed) => (
                "/v1/embeddings",
                json!({"model": embed_model, "input": prompt}),
            ),
            (Api::Ollama, Kind::Chat) => {
                let mut options = sampling;
                options["num_predict"] = json!(self.tokens);
                (
                    "/api/chat",
                    json!({"model": model, "stream": true, "options": options,
                    "messages": [{"role": "user", "content": prompt}]}),
                )
            }
            (Api::Ollama, Kind::Generate) => {
                let mut options = sampling;
                options["num_predict"] = json!(self.tokens);
                (
                    "/api/generate",
                    json!({"model": model, "stream": false, "prompt": prompt, "options": options}),
                )
            }
            (Api::Openai, Kind::Chat | Kind::Generate) => {
                let mut body = json!({"model": model, "stream": stream, "max_tokens": self.tokens,
                    "messages": [{"role": "user", "content": prompt}]});
                if let (Some(body), Some(sampling)) = (body.as_object_mut(), sampling.as_object()) {
                    body.extend(sampling.clone());
                }
                ("/v1/chat/completions", body)
            }
        };
        Call {
            kind,
            path,
            body: Bytes::from(body.to_string()),
            stream,
        }
    }
}

/// An exponential pause with mean `mean`: agents think for a while, then
/// ask, independently of each other.
pub(crate) fn think(rng: &mut fastrand::Rng, mean: Duration) -> Duration {
    let u = rng.f64().max(f64::MIN_POSITIVE);
    mean.mul_f64(-u.ln()).min(mean * 5)
}
