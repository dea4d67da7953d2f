//! `[[classes]]`: what every layer knows of a class of agents.

use serde::Deserialize;

/// `[[classes]]`: one class of agents, as every layer knows it: what
/// `classify` reads of it ([`ClassEntry::classify`]) and what the other
/// layers do with it (weight, compartment, critical, quotas).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassEntry {
    /// Its name.
    pub name: String,
    /// The priority of its requests that ask for none, 1 (highest) to 10.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// `[highest, lowest]` priority its agents may ask for with
    /// `X-Priority`.
    #[serde(default = "full_range")]
    pub priorities: [u8; 2],
    /// Its fair-share weight (default 1): at one priority, an agent of a
    /// class of weight 2 gets twice the service of one of weight 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// The bulkhead compartment its requests run in (a compartment of the
    /// `bulkhead` layer), after the layer's own rules.
    #[serde(default)]
    pub compartment: Option<String>,
    /// Never degraded: the `degrade` layer neither rewrites nor refuses
    /// its requests.
    #[serde(default)]
    pub critical: bool,
    /// Its agents' answers are theirs alone: the `cache` layer keeps them
    /// apart per agent, whatever its `namespace`.
    #[serde(default)]
    pub private: bool,
    /// Without `X-Deadline-Ms`, how long its answers stay useful (`"30s"`):
    /// one the queue cannot serve in time is refused at arrival.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<std::time::Duration>,
    /// Without `X-Corral-Ttft-Ms`, the time to the first token its
    /// requests aim for (`"2s"`).
    #[serde(default, with = "humantime_serde")]
    pub ttft: Option<std::time::Duration>,
    /// A request that would wait past its time-to-first-token objective
    /// may run on the `degrade` layer's smaller model (`l2_models`, else
    /// `l2_model`) when that model's queue would meet it.
    #[serde(default)]
    pub ttft_fallback: bool,
    /// Its quotas, enforced by the `ratelimit` layer, e.g.
    /// `{ requests_per_minute = 10, tokens_per_minute = 20000 }`.
    #[serde(default)]
    pub rate_limit: Option<corral_ratelimit::Limits>,
}

impl ClassEntry {
    /// What `classify` reads of the class: name, priorities, privacy, deadline.
    pub fn classify(&self) -> corral_classify::ClassConfig {
        let mut class = corral_classify::ClassConfig::new(self.name.clone());
        class.priority = self.priority;
        class.priorities = self.priorities;
        class.private = self.private;
        class.deadline = self.deadline;
        class.ttft = self.ttft;
        class
    }
}

fn default_weight() -> f64 {
    1.0
}

fn default_priority() -> u8 {
    corral_classify::DEFAULT_PRIORITY
}

fn full_range() -> [u8; 2] {
    [1, 10]
}
