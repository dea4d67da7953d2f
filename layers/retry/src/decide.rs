//! The retry layer's decisions, apart from the driver that acts on them:
//! what limits bind a request's attempts, and what follows a failed one.

use std::time::Duration;

use corral_core::{EndpointKind, Failure, RequestMeta, TimeoutKind};
use tokio::time::Instant;

use crate::config::RetryConfig;

/// What a request's kind and deadline decide for all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// When the layer's `total_timeout` ends.
    pub(crate) total_deadline: Option<Instant>,
    /// The earlier of the request's own deadline and the total one: no
    /// retry starts that cannot end before it.
    pub(crate) deadline: Option<Instant>,
    /// How long one attempt may wait for its answer's head.
    pub(crate) first_byte_timeout: Option<Duration>,
    /// Whether the request may be sent at all a second time.
    pub(crate) retryable: bool,
    /// Whether an attempt that took too long may run again.
    pub(crate) rerun_slow: bool,
}

impl Plan {
    pub(crate) fn new(config: &RetryConfig, meta: Option<&RequestMeta>, now: Instant) -> Self {
        let total_deadline = config.total_timeout.map(|d| now + d);
        let deadline = match (meta.and_then(|m| m.deadline), total_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let kind = meta.map(|m| m.endpoint.kind());
        let streams = meta.is_some_and(|m| m.stream);
        // Ollama sends no byte of a non-streamed generation before its
        // last token: a first-byte limit there would be a length limit.
        // The total timeout and the request's deadline bound it instead.
        let first_byte_timeout = match kind {
            Some(EndpointKind::Inference) if !streams => None,
            Some(EndpointKind::Metadata) => config.metadata_timeout,
            _ => config.first_byte_timeout,
        };
        Self {
            total_deadline,
            deadline,
            first_byte_timeout,
            retryable: matches!(kind, Some(EndpointKind::Inference | EndpointKind::Metadata)),
            // A generation that ran too long may have spent the GPU in
            // full: sending it again pays twice. Metadata reads cost
            // nothing.
            rerun_slow: config.rerun_timed_out || kind == Some(EndpointKind::Metadata),
        }
    }

    /// How long the attempt starting `now` may wait for its head, and
    /// which limit ends it: the first-byte timeout or what is left of the
    /// total one, whichever ends first.
    pub(crate) fn attempt_limit(&self, now: Instant) -> Option<(Duration, TimeoutKind)> {
        let left = self
            .total_deadline
            .map(|end| end.saturating_duration_since(now));
        match (self.first_byte_timeout, left) {
            (Some(first), Some(left)) if left < first => Some((left, TimeoutKind::Total)),
            (Some(first), _) => Some((first, TimeoutKind::FirstByte)),
            (None, Some(left)) => Some((left, TimeoutKind::Total)),
            (None, None) => None,
        }
    }
}

/// What a failed attempt leaves to decide on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempted<'a> {
    /// How it failed.
    pub(crate) failure: Failure,
    /// Attempts so far on the current model, this one included.
    pub(crate) attempt: u32,
    /// The upstream's `Retry-After`, if it sent one.
    pub(crate) retry_after: Option<Duration>,
    /// The model next in the fallback chain, if one is left.
    pub(crate) next_fallback: Option<&'a str>,
    /// Whether the body can be sent again (a buffered one can).
    pub(crate) replayable: bool,
    /// From [`Plan::rerun_slow`].
    pub(crate) rerun_slow: bool,
}

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// What the upstream's `Retry-After` asked.
    Exactly(Duration),
    /// A random time up to this (full jitter).
    UpTo(Duration),
}

impl Wait {
    pub(crate) fn draw(self) -> Duration {
        match self {
            Self::Exactly(wait) => wait,
            Self::UpTo(ceiling) => ceiling.mul_f64(fastrand::f64()),
        }
    }
}

/// What follows a failed attempt, before the deadline and the budget
/// have their say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision<'a> {
    /// The failure goes back to the caller.
    GiveUp,
    /// Try again after the wait; on `fallback` when it is set (its
    /// attempts counted afresh), else on the same model.
    Retry {
        wait: Wait,
        fallback: Option<&'a str>,
    },
}

/// Decides what follows a failed attempt: give up when the failure or the
/// body forbids another; past the attempts on a model, go down the
/// fallback chain on overload; wait what the upstream asks, unless it asks
/// longer than `max_backoff` (then this model is done for now and the next
/// in the chain may not be), else a jittered exponential backoff.
pub(crate) fn decide<'a>(config: &RetryConfig, attempted: &Attempted<'a>) -> Decision<'a> {
    if !attempted.replayable || !may_retry(attempted.failure, attempted.rerun_slow) {
        return Decision::GiveUp;
    }
    let overload = matches!(
        attempted.failure,
        Failure::Status(503 | 504) | Failure::Timeout
    );
    let fall_back = overload.then_some(attempted.next_fallback).flatten();
    let mut fallback = None;
    if attempted.attempt >= config.max_attempts {
        match fall_back {
            Some(model) => fallback = Some(model),
            None => return Decision::GiveUp,
        }
    }
    let wait = match attempted.retry_after {
        Some(asked) if config.honor_retry_after && asked > config.max_backoff => {
            if fallback.is_none() {
                match fall_back {
                    Some(model) => fallback = Some(model),
                    None => return Decision::GiveUp,
                }
            }
            Wait::UpTo(config.backoff_ceiling(1))
        }
        Some(asked) if config.honor_retry_after => Wait::Exactly(asked),
        _ if fallback.is_some() => Wait::UpTo(config.backoff_ceiling(1)),
        _ => Wait::UpTo(config.backoff_ceiling(attempted.attempt)),
    };
    Decision::Retry { wait, fallback }
}

/// Whether an attempt that failed so may be sent again: a refusal before
/// any work (unreachable, broken before an answer, 502, 503 busy) may; one
/// that took too long (a timeout, a gateway's 504) only when `rerun_slow`.
///
/// ```text
/// failure      rerun_slow=false  rerun_slow=true
/// connect      retry             retry
/// broken       retry             retry
/// 502, 503     retry             retry
/// 504, timeout give up           retry
/// 500, stream  give up           give up
/// ```
pub(crate) fn may_retry(failure: Failure, rerun_slow: bool) -> bool {
    match failure {
        Failure::Timeout | Failure::Status(504) => rerun_slow,
        other => other.is_retryable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_before_work_are_retried_unless_slow_ones_may_run_again() {
        let table = [
            (Failure::Connect, true, true),
            (Failure::Broken, true, true),
            (Failure::Status(502), true, true),
            (Failure::Status(503), true, true),
            (Failure::Status(504), false, true),
            (Failure::Timeout, false, true),
            (Failure::Status(500), false, false),
            (Failure::Stream, false, false),
        ];
        for (failure, by_default, rerun_slow) in table {
            assert_eq!(may_retry(failure, false), by_default, "{failure:?}");
            assert_eq!(may_retry(failure, true), rerun_slow, "{failure:?}");
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_failure_leads_to_one_decision() {
        // initial 2 s, ×2, max 30 s, 3 attempts, Retry-After honoured.
        let config = RetryConfig::default();
        let up_to = |s| Decision::Retry {
            wait: Wait::UpTo(secs(s)),
            fallback: None,
        };
        let on_to_tiny = || Decision::Retry {
            wait: Wait::UpTo(secs(2)),
            fallback: Some("tiny"),
        };
        let attempted = |failure, attempt, retry_after, next_fallback| Attempted {
            failure,
            attempt,
            retry_after,
            next_fallback,
            replayable: true,
            rerun_slow: false,
        };
        let table: [(&str, Attempted<'_>, Decision<'_>); 12] = [
            (
                "first 503: up to the initial backoff",
                attempted(Failure::Status(503), 1, None, None),
                up_to(2),
            ),
            (
                "second 502: twice as long",
                attempted(Failure::Status(502), 2, None, None),
                up_to(4),
            ),
            (
                "a refused connection, like a busy answer",
                attempted(Failure::Connect, 1, None, Some("tiny")),
                up_to(2),
            ),
            (
                "out of attempts, nothing to fall back to",
                attempted(Failure::Status(503), 3, None, None),
                Decision::GiveUp,
            ),
            (
                "out of attempts on overload: the next model, waiting as for a first retry",
                attempted(Failure::Status(503), 3, None, Some("tiny")),
                on_to_tiny(),
            ),
            (
                "out of attempts on a bad gateway: no fallback (not overload)",
                attempted(Failure::Status(502), 3, None, Some("tiny")),
                Decision::GiveUp,
            ),
            (
                "Retry-After within max_backoff: exactly that",
                attempted(Failure::Status(503), 1, Some(secs(7)), None),
                Decision::Retry {
                    wait: Wait::Exactly(secs(7)),
                    fallback: None,
                },
            ),
            (
                "Retry-After past max_backoff, no fallback: the answer goes back",
                attempted(Failure::Status(503), 1, Some(secs(60)), None),
                Decision::GiveUp,
            ),
            (
                "Retry-After past max_backoff: this model is done, the next may not be",
                attempted(Failure::Status(503), 1, Some(secs(60)), Some("tiny")),
                on_to_tiny(),
            ),
            (
                "a server error is not sent again",
                attempted(Failure::Status(500), 1, None, Some("tiny")),
                Decision::GiveUp,
            ),
            (
                "a timeout is not run again by default",
                attempted(Failure::Timeout, 1, None, Some("tiny")),
                Decision::GiveUp,
            ),
            (
                "a stream broken after its head is never sent again",
                attempted(Failure::Stream, 1, None, None),
                Decision::GiveUp,
            ),
        ];
        for (case, attempted, expected) in table {
            assert_eq!(decide(&config, &attempted), expected, "{case}");
        }
    }

    #[test]
    fn what_the_body_and_the_config_allow() {
        let config = RetryConfig::default();
        let busy = Attempted {
            failure: Failure::Status(503),
            attempt: 1,
            retry_after: Some(secs(7)),
            next_fallback: None,
            replayable: false,
            rerun_slow: false,
        };
        assert_eq!(
            decide(&config, &busy),
            Decision::GiveUp,
            "a streamed upload cannot be sent again"
        );

        let ignoring = RetryConfig {
            honor_retry_after: false,
            ..RetryConfig::default()
        };
        let busy = Attempted {
            replayable: true,
            retry_after: Some(secs(60)),
            attempt: 5,
            ..busy
        };
        let many = RetryConfig {
            max_attempts: 10,
            ..ignoring
        };
        assert_eq!(
            decide(&many, &busy),
            Decision::Retry {
                wait: Wait::UpTo(secs(30)),
                fallback: None
            },
            "Retry-After ignored: the backoff, capped at max_backoff"
        );

        let slow = Attempted {
            failure: Failure::Timeout,
            attempt: 3,
            retry_after: None,
            next_fallback: Some("tiny"),
            replayable: true,
            rerun_slow: true,
        };
        assert_eq!(
            decide(&config, &slow),
            Decision::Retry {
                wait: Wait::UpTo(secs(2)),
                fallback: Some("tiny")
            },
            "with rerun_timed_out, a timeout is overload and falls back"
        );
    }

    #[test]
    fn a_wait_up_to_a_ceiling_is_drawn_below_it() {
        assert_eq!(Wait::Exactly(secs(7)).draw(), secs(7));
        for _ in 0..100 {
            assert!(Wait::UpTo(secs(2)).draw() <= secs(2));
        }
    }

    #[test]
    fn the_plan_follows_the_request_kind() {
        use corral_core::Endpoint;
        let now = Instant::now();
        let config = RetryConfig {
            total_timeout: Some(secs(100)),
            ..RetryConfig::default()
        };
        let meta = |endpoint, stream| {
            let mut meta = RequestMeta::new(corral_core::RequestId::generate(), endpoint);
            meta.stream = stream;
            meta
        };

        let unstreamed = Plan::new(&config, Some(&meta(Endpoint::Generate, false)), now);
        assert_eq!(unstreamed.first_byte_timeout, None);
        assert!(unstreamed.retryable && !unstreamed.rerun_slow);
        assert_eq!(unstreamed.deadline, Some(now + secs(100)));
        assert_eq!(
            unstreamed.attempt_limit(now + secs(40)),
            Some((secs(60), TimeoutKind::Total)),
            "a non-streamed generation is bound only by what is left of the total"
        );

        let streamed = Plan::new(&config, Some(&meta(Endpoint::Chat, true)), now);
        assert_eq!(
            streamed.attempt_limit(now),
            Some((secs(100), TimeoutKind::Total)),
            "the total ends before the 5 min first byte"
        );
        let long = RetryConfig {
            total_timeout: Some(secs(1000)),
            ..RetryConfig::default()
        };
        let streamed = Plan::new(&long, Some(&meta(Endpoint::Chat, true)), now);
        assert_eq!(
            streamed.attempt_limit(now),
            Some((secs(300), TimeoutKind::FirstByte))
        );

        let tags = Plan::new(&config, Some(&meta(Endpoint::Tags, false)), now);
        assert_eq!(tags.first_byte_timeout, Some(secs(30)));
        assert!(
            tags.retryable && tags.rerun_slow,
            "metadata reads are cheap"
        );

        let pull = Plan::new(&config, Some(&meta(Endpoint::Pull, true)), now);
        assert!(!pull.retryable, "a management call is not sent twice");

        let mut hurried = meta(Endpoint::Chat, true);
        hurried.deadline = Some(now + secs(5));
        let plan = Plan::new(&config, Some(&hurried), now);
        assert_eq!(plan.deadline, Some(now + secs(5)), "the earlier deadline");

        let bare = Plan::new(&RetryConfig::default(), None, now);
        assert!(!bare.retryable, "without meta, nothing is sent twice");
        assert_eq!(
            bare.attempt_limit(now),
            Some((secs(300), TimeoutKind::FirstByte))
        );
    }
}
