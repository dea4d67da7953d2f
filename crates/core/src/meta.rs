use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::Endpoint;

macro_rules! shared_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(Arc::from(s))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

shared_name!(
    /// Who is asking: the agent an API key maps to, the `X-Agent-Id` it
    /// gave, or `anonymous`. Cheap to clone.
    AgentId
);
shared_name!(
    /// The class an agent belongs to (`opus`, `batch`, `default`), which
    /// carries its priorities, weight and limits. Cheap to clone.
    ClassName
);
shared_name!(
    /// The request's id: the client's `X-Request-Id`, or one Corral made.
    /// Cheap to clone.
    RequestId
);

impl RequestId {
    /// A new id, unique within this process and hard to guess across
    /// processes: a random per-process half and a mixed counter, 32 hex
    /// digits.
    ///
    /// ```
    /// let a = corral_core::RequestId::generate();
    /// let b = corral_core::RequestId::generate();
    /// assert_ne!(a, b);
    /// assert_eq!(a.as_str().len(), 32);
    /// ```
    pub fn generate() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};

        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let (seed, prefix) = process_seed();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Written digit by digit: `format!` was ~1,300 instructions of a
        // proxied request's ~85,000 (callgrind, benches/RESULTS.md).
        let mut id = [0u8; 32];
        id[..16].copy_from_slice(prefix.as_bytes());
        let mixed = splitmix64(seed ^ n);
        for (i, digit) in id[16..].iter_mut().enumerate() {
            let nibble = (mixed >> (60 - 4 * i)) & 0xf;
            *digit = b"0123456789abcdef"[nibble as usize];
        }
        Self::from(std::str::from_utf8(&id).unwrap_or_default())
    }

    /// Whether this process made the id ([`RequestId::generate`]) rather
    /// than the client sending it: a client that did not name its request
    /// cannot name it again when it comes back.
    ///
    /// ```
    /// use corral_core::RequestId;
    ///
    /// assert!(RequestId::generate().is_generated());
    /// assert!(!RequestId::from("client-42").is_generated());
    /// ```
    pub fn is_generated(&self) -> bool {
        self.0.len() == 32 && self.0.starts_with(process_seed().1)
    }
}

/// This process's random half of the ids it makes, and its hex digits.
fn process_seed() -> (u64, &'static str) {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;

    static SEED: OnceLock<(u64, String)> = OnceLock::new();
    let (seed, prefix) = SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        let seed = hasher.finish();
        (seed, format!("{seed:016x}"))
    });
    (*seed, prefix)
}

/// A bijective mix of a counter, so consecutive ids do not look
/// consecutive.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A request's priority, 1 (highest) to 10 (lowest), as in the design's
/// priority queue.
///
/// ```
/// use corral_core::Priority;
///
/// let urgent = Priority::new(1).unwrap();
/// let batch = Priority::new(9).unwrap();
/// assert!(urgent.is_higher_than(batch));
/// assert!(Priority::new(0).is_err());
/// assert_eq!("7".parse::<Priority>().unwrap().get(), 7);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Priority(u8);

/// A priority outside 1..=10, or not a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityError(String);

impl fmt::Display for PriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority must be a whole number from 1 (highest) to 10 (lowest), not {:?}",
            self.0
        )
    }
}

impl std::error::Error for PriorityError {}

impl Priority {
    /// The highest priority, 1.
    pub const HIGHEST: Priority = Priority(1);
    /// The lowest priority, 10.
    pub const LOWEST: Priority = Priority(10);
    /// The priority of a request that asks for none, in a class that sets
    /// none: 5.
    pub const DEFAULT: Priority = Priority(5);

    /// The priority `value`, if it is within 1..=10.
    pub fn new(value: u8) -> Result<Self, PriorityError> {
        if (1..=10).contains(&value) {
            Ok(Self(value))
        } else {
            Err(PriorityError(value.to_string()))
        }
    }

    /// The number, 1..=10.
    pub fn get(self) -> u8 {
        self.0
    }

    /// Whether `self` is served before `other` (a smaller number).
    pub fn is_higher_than(self, other: Priority) -> bool {
        self.0 < other.0
    }

    /// This priority, moved into `min..=max` (inclusive; `min` is the
    /// highest priority allowed, so the smaller number).
    pub fn clamp_to(self, min: Priority, max: Priority) -> Priority {
        Priority(self.0.clamp(min.0, max.0))
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Priority {
    type Err = PriorityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u8>()
            .ok()
            .and_then(|v| Priority::new(v).ok())
            .ok_or_else(|| PriorityError(s.to_string()))
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Priority::new(value)
    }
}

/// The generation options that decide cost and determinism, from Ollama's
/// `options` (`num_predict`, `temperature`, `seed`) or the OpenAI fields
/// (`max_tokens`, `temperature`, `seed`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationParams {
    /// The most tokens the answer may have (`num_predict` or `max_tokens`);
    /// `None` when unset or unbounded (Ollama's `-1`, `-2`).
    pub max_tokens: Option<u64>,
    /// The sampling temperature, when set.
    pub temperature: Option<f64>,
    /// The sampling seed, when set.
    pub seed: Option<i64>,
}

/// What `classify` learned about a request, in its extensions for every
/// layer below.
///
/// ```
/// use corral_core::{Endpoint, Priority, RequestMeta};
///
/// let meta = RequestMeta::new("req-1".into(), Endpoint::Chat)
///     .with_agent("planner-7".into(), "opus".into(), true)
///     .with_priority(Priority::new(2).unwrap())
///     .with_model(Some("llama3".into()));
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(meta);
///
/// // Any layer further down:
/// let meta = request.extensions().get::<RequestMeta>().unwrap();
/// assert_eq!(meta.agent.as_str(), "planner-7");
/// assert!(meta.stream, "chat streams unless asked not to");
/// ```
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request's id (the `X-Request-Id` the client sent or Corral made).
    pub request_id: RequestId,
    /// Who is asking.
    pub agent: AgentId,
    /// The agent's class.
    pub class: ClassName,
    /// Whether the agent proved who it is (an API key), rather than naming
    /// itself with `X-Agent-Id` or not at all.
    pub authenticated: bool,
    /// The priority the request is served with, within its class's range.
    pub priority: Priority,
    /// Which call it is.
    pub endpoint: Endpoint,
    /// The model it names, when it names one.
    pub model: Option<Arc<str>>,
    /// Whether the answer streams.
    pub stream: bool,
    /// When the request stops being worth answering (`X-Deadline-Ms`).
    pub deadline: Option<Instant>,
    /// The time to the first token it aims for (`X-Corral-Ttft-Ms`, or
    /// its class's `ttft`): an objective, not a deadline.
    pub ttft: Option<std::time::Duration>,
    /// When Corral received it.
    pub received_at: Instant,
    /// Cost and determinism options.
    pub generation: GenerationParams,
    /// The request body's size in bytes, a first estimate of prompt size.
    pub body_bytes: usize,
    /// The agent's class keeps its answers to itself: a cache must not
    /// serve them to another agent, nor serve this agent another's.
    pub private: bool,
}

impl RequestMeta {
    /// Metadata for request `request_id` to `endpoint`, received now, from
    /// the anonymous agent of the `default` class at the default priority.
    pub fn new(request_id: RequestId, endpoint: Endpoint) -> Self {
        Self {
            request_id,
            agent: AgentId::from("anonymous"),
            class: ClassName::from("default"),
            authenticated: false,
            priority: Priority::DEFAULT,
            endpoint,
            model: None,
            stream: endpoint.streams_by_default(),
            deadline: None,
            ttft: None,
            received_at: Instant::now(),
            generation: GenerationParams::default(),
            body_bytes: 0,
            private: false,
        }
    }

    /// The same, from `agent` of `class`.
    pub fn with_agent(mut self, agent: AgentId, class: ClassName, authenticated: bool) -> Self {
        self.agent = agent;
        self.class = class;
        self.authenticated = authenticated;
        self
    }

    /// The same, at `priority`.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// The same, naming `model`.
    pub fn with_model(mut self, model: Option<Arc<str>>) -> Self {
        self.model = model;
        self
    }

    /// The same, due by `deadline`.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// The model as text, or `""` when the request names none.
    pub fn model_str(&self) -> &str {
        self.model.as_deref().unwrap_or("")
    }

    /// Time left until the deadline, `None` without one, zero once passed.
    pub fn time_left(&self, now: Instant) -> Option<std::time::Duration> {
        self.deadline.map(|d| d.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests;

/// A place in a request's extensions where `classify` leaves a copy of
/// the [`RequestMeta`] it found, for whoever put the slot there before
/// the stack (the proxy's front, for its logs and metric labels, even
/// when a layer refuses the request).
///
/// ```
/// use corral_core::{Endpoint, MetaSlot, RequestMeta};
///
/// let slot = MetaSlot::default();
/// let kept = slot.clone();
/// slot.set(&RequestMeta::new("r1".into(), Endpoint::Chat));
/// assert_eq!(kept.get().unwrap().endpoint, Endpoint::Chat);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MetaSlot(Arc<std::sync::OnceLock<RequestMeta>>);

impl MetaSlot {
    /// Leaves a copy of `meta` (the first one set stays).
    pub fn set(&self, meta: &RequestMeta) {
        let _ = self.0.set(meta.clone());
    }

    /// What was left, if anything.
    pub fn get(&self) -> Option<&RequestMeta> {
        self.0.get()
    }
}
