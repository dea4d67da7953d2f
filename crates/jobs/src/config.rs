//! `[jobs]`: how many jobs, how much of their answers, for how long.

use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// `[jobs]`: async requests.
///
/// ```
/// let config: corral_jobs::JobsConfig = toml::from_str(r#"
///     max_jobs = 500
///     result_ttl = "10m"
/// "#).unwrap();
/// assert_eq!(config.max_jobs, 500);
/// assert_eq!(config.result_ttl.as_secs(), 600);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Jobs held at once, queued, running or finished and not yet
    /// expired (in memory; with Redis, jobs not yet finished). Past it a
    /// submission is refused with 503 [`JobsRefused::Full`](crate::JobsRefused::Full).
    pub max_jobs: usize,
    /// Jobs one agent may hold not yet ended; past it its submissions
    /// are refused with 429 ([`JobsRefused::AgentFull`](crate::JobsRefused::AgentFull)),
    /// so one agent cannot fill the store for the others.
    pub max_jobs_per_agent: usize,
    /// Bytes of one job's answer, at most; a longer answer fails the job
    /// ("answer too large") rather than holding the memory.
    pub max_result_bytes: usize,
    /// Bytes of every answer held in memory together (memory backend):
    /// finished jobs are dropped oldest first to stay under it, and a
    /// submission is refused when running jobs alone fill it.
    pub max_total_bytes: usize,
    /// How long a finished job (and its answer) can be read.
    #[serde(with = "humantime_serde")]
    pub result_ttl: Duration,
    /// With Redis: a replica renews its claim on each job it runs every
    /// third of this; a job whose claim is this old is taken over by
    /// another replica and run again from the start.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// With Redis: jobs one replica runs at once. They wait in the
    /// priority queue like live requests, so this bounds memory, not the
    /// upstream's load.
    pub max_running: usize,
    /// With Redis: how often a replica looks for jobs when nobody told it
    /// of one (a submission on any replica wakes them all at once).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// The callback's signing secret (HMAC-SHA256, the auth layer's
    /// scheme), from this environment variable; without it callbacks are
    /// sent unsigned.
    pub callback_secret_env: Option<String>,
    /// Callbacks to loopback, private and link-local addresses are
    /// refused unless this is set (a job must not become a way to reach
    /// the proxy's own network).
    pub allow_private_callbacks: bool,
    /// Attempts at delivering one callback, with backoff between them.
    pub callback_attempts: u32,
    /// How long one callback attempt may take.
    #[serde(with = "humantime_serde")]
    pub callback_timeout: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_jobs: 10_000,
            max_jobs_per_agent: 1_000,
            max_result_bytes: 16 * 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            result_ttl: Duration::from_secs(3600),
            lease: Duration::from_secs(15),
            max_running: 1024,
            poll_interval: Duration::from_secs(1),
            callback_secret_env: None,
            allow_private_callbacks: false,
            callback_attempts: 5,
            callback_timeout: Duration::from_secs(10),
        }
    }
}

impl JobsConfig {
    /// The first value that cannot work, with its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_jobs", self.max_jobs),
            ("max_jobs_per_agent", self.max_jobs_per_agent),
            ("max_result_bytes", self.max_result_bytes),
            ("max_total_bytes", self.max_total_bytes),
            ("max_running", self.max_running),
            ("callback_attempts", self.callback_attempts as usize),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        if self.max_result_bytes > self.max_total_bytes {
            return Err(ConfigError::new(
                "max_result_bytes",
                "must not be more than max_total_bytes",
            ));
        }
        if self.lease < Duration::from_millis(300) {
            return Err(ConfigError::new(
                "lease",
                "must be at least 300ms: it is renewed every third of it",
            ));
        }
        if let Some(var) = &self.callback_secret_env {
            if std::env::var(var).map_or(true, |v| v.trim().is_empty()) {
                return Err(ConfigError::new(
                    "callback_secret_env",
                    format!("{var} is not set: callbacks would go unsigned (remove the key to send them unsigned)"),
                ));
            }
        }
        for (key, value) in [
            ("result_ttl", self.result_ttl),
            ("poll_interval", self.poll_interval),
            ("callback_timeout", self.callback_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        Ok(())
    }
}
