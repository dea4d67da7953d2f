//! `[sagas]`: how sagas run.

use std::time::Duration;

use corral_core::ConfigError;
use serde::Deserialize;

/// The most steps a saga may have.
pub const DEFAULT_MAX_STEPS: usize = 32;
/// How long one HTTP call of a step may take.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an async step (`"async": true`) may wait for its job.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// How often an async step asks whether its job is done.
pub const DEFAULT_JOB_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// How long a runner's claim on a saga lasts unless renewed.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How often a replica looks for sagas whose owner died.
pub const DEFAULT_RESUME_INTERVAL: Duration = Duration::from_secs(2);
/// Attempts in all at one compensation before the saga is `failed`.
pub const DEFAULT_COMPENSATION_ATTEMPTS: u32 = 5;
/// The wait before the second attempt at a compensation; it doubles.
pub const DEFAULT_COMPENSATION_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between attempts at a compensation.
pub const DEFAULT_MAX_COMPENSATION_BACKOFF: Duration = Duration::from_secs(30);
/// The most sagas one replica drives at once.
pub const DEFAULT_MAX_RUNNING: usize = 256;
/// How long a finished saga's log is kept (for `GET`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// `[sagas]`: limits, timeouts, leases and retries.
///
/// ```
/// use corral_saga::SagaConfig;
///
/// let config: SagaConfig = toml::from_str(r#"
///     max_steps = 16
///     call_timeout = "30s"
///     lease_ttl = "5s"
///     compensation_attempts = 3
/// "#).unwrap();
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagaConfig {
    /// The most steps one saga may have (a longer definition is refused).
    pub max_steps: usize,
    /// How long one HTTP call of a step or compensation may take; a call
    /// that takes longer failed.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// How long an async step may wait for its job to end.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// How often an async step polls its job.
    #[serde(with = "humantime_serde")]
    pub job_poll_interval: Duration,
    /// How long a runner's claim on a saga lasts: it renews it every
    /// third of this while it runs; when the runner's replica dies, another
    /// replica takes the saga over this long after the last renewal.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often each replica looks for unfinished sagas nobody holds.
    #[serde(with = "humantime_serde")]
    pub resume_interval: Duration,
    /// Attempts in all at one compensation (1: no retry); when all fail,
    /// the saga ends `failed` and needs an operator.
    pub compensation_attempts: u32,
    /// The wait before the second attempt at a compensation, doubled
    /// for each further attempt.
    #[serde(with = "humantime_serde")]
    pub compensation_backoff: Duration,
    /// The longest wait between two attempts at a compensation.
    #[serde(with = "humantime_serde")]
    pub max_compensation_backoff: Duration,
    /// How long a finished saga's log stays readable (Redis only).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Whether steps may call loopback, private, link-local or metadata
    /// addresses (a `url`, or an agent's registered endpoint). Off: an
    /// agent could otherwise aim the proxy at its own network.
    pub allow_private_targets: bool,
    /// The most sagas this replica drives at once: a submission past it
    /// is refused (503, `Retry-After`), and the resumer takes over sagas
    /// only while there is room.
    pub max_running: usize,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            max_steps: DEFAULT_MAX_STEPS,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            job_poll_interval: DEFAULT_JOB_POLL_INTERVAL,
            lease_ttl: DEFAULT_LEASE_TTL,
            resume_interval: DEFAULT_RESUME_INTERVAL,
            compensation_attempts: DEFAULT_COMPENSATION_ATTEMPTS,
            compensation_backoff: DEFAULT_COMPENSATION_BACKOFF,
            max_compensation_backoff: DEFAULT_MAX_COMPENSATION_BACKOFF,
            retention: DEFAULT_RETENTION,
            allow_private_targets: false,
            max_running: DEFAULT_MAX_RUNNING,
        }
    }
}

impl SagaConfig {
    /// Names the first field out of range, and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("call_timeout", self.call_timeout),
            ("job_timeout", self.job_timeout),
            ("job_poll_interval", self.job_poll_interval),
            ("resume_interval", self.resume_interval),
            ("retention", self.retention),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than zero"));
            }
        }
        if self.max_running == 0 {
            return Err(ConfigError::new("max_running", "must be at least 1"));
        }
        if self.max_steps == 0 {
            return Err(ConfigError::new("max_steps", "must be at least 1"));
        }
        if self.lease_ttl < Duration::from_millis(30) {
            return Err(ConfigError::new("lease_ttl", "must be at least 30ms"));
        }
        if self.compensation_attempts == 0 {
            return Err(ConfigError::new(
                "compensation_attempts",
                "must be at least 1",
            ));
        }
        if self.max_compensation_backoff < self.compensation_backoff {
            return Err(ConfigError::new(
                "max_compensation_backoff",
                "must be at least compensation_backoff",
            ));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (from 1) at a compensation.
    pub fn compensation_wait(&self, attempt: u32) -> Duration {
        let doubled = self
            .compensation_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max_compensation_backoff)
    }
}
