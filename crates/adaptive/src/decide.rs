use crate::AdaptiveConfig;

/// What one sample says, with the controller's state: the input of
/// [`decide`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Signals {
    /// The limit now.
    pub limit: usize,
    /// Whether the sample's time to first token says it waited for a slot
    /// inside the server; `None` when there is nothing to judge (no time
    /// to first token, or the model loaded).
    pub queued: Option<bool>,
    /// Requests in flight when it was dispatched, itself included.
    pub concurrency: usize,
    /// Requests streaming at its first byte, itself included, if known.
    pub running: Option<usize>,
    /// The lowest concurrency lately seen to queue or to add nothing,
    /// while its probe interval lasts: no probing up to it.
    pub ceiling: Option<usize>,
    /// What the `limit`-th request adds to the server's tokens per second,
    /// as a share of one request's rate, when the rates at `limit` and
    /// `limit - 1` are both fresh.
    pub gain: Option<f64>,
}

/// What to do with the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep it.
    Hold,
    /// Probe one higher: the limit was reached with nothing queued.
    Raise(usize),
    /// Back off.
    Lower {
        /// The new limit.
        to: usize,
        /// Why.
        cause: Cause,
    },
}

/// Why the limit went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A request waited for a slot inside the server.
    Queued,
    /// The last request let in added less than `min_gain` of a request's
    /// tokens per second.
    NoGain,
}

/// The decision on one sample, as a pure function.
///
/// - **Queued** at concurrency `c`: the server has fewer than `c` slots,
///   and at least `running` (those streaming hold one each; one more may
///   be evaluating its prompt, not streaming yet). The limit goes down to
///   `min(c - 1, running + 1)` at once. A sample dispatched above the
///   limit is from before a back-off and changes nothing.
/// - **Clean**, with the limit reached (`running`, or else `concurrency`,
///   at least the limit): the limit is proven. If the last step added too
///   little throughput it goes back one; else it goes up one, unless that
///   reaches a ceiling still in its probe interval or `max`.
/// - Otherwise it holds: a sample below the limit says nothing of more.
///
/// ```
/// use corral_adaptive::{decide, AdaptiveConfig, Cause, Decision, Signals};
///
/// let config = AdaptiveConfig::default();
/// let clean_at_limit = Signals {
///     limit: 3, queued: Some(false), concurrency: 3, running: Some(3), ceiling: None, gain: None,
/// };
/// assert_eq!(decide(&clean_at_limit, &config), Decision::Raise(4));
/// let queued = Signals { limit: 4, queued: Some(true), concurrency: 4, ..clean_at_limit };
/// assert_eq!(decide(&queued, &config), Decision::Lower { to: 3, cause: Cause::Queued });
/// ```
pub fn decide(s: &Signals, config: &AdaptiveConfig) -> Decision {
    match s.queued {
        // Dispatched above the limit: from before a back-off, which it
        // caused or which went further; its `running` is old news.
        Some(true) if s.concurrency > s.limit => Decision::Hold,
        Some(true) => {
            let to = s
                .concurrency
                .saturating_sub(1)
                .min(s.running.map_or(usize::MAX, |r| r + 1))
                .max(config.min);
            if to < s.limit {
                Decision::Lower {
                    to,
                    cause: Cause::Queued,
                }
            } else {
                Decision::Hold
            }
        }
        Some(false) => {
            if s.running.unwrap_or(s.concurrency) < s.limit {
                return Decision::Hold;
            }
            if s.gain.is_some_and(|g| g < config.min_gain) && s.limit > config.min {
                return Decision::Lower {
                    to: s.limit - 1,
                    cause: Cause::NoGain,
                };
            }
            let next = s.limit + 1;
            if next > config.max || s.ceiling.is_some_and(|c| next >= c) {
                Decision::Hold
            } else {
                Decision::Raise(next)
            }
        }
        None => Decision::Hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(limit: usize) -> Signals {
        Signals {
            limit,
            queued: Some(false),
            concurrency: limit,
            running: Some(limit),
            ceiling: None,
            gain: None,
        }
    }

    #[test]
    fn decisions_as_a_table() {
        let config = AdaptiveConfig {
            min: 1,
            max: 8,
            min_gain: 0.2,
            ..AdaptiveConfig::default()
        };
        let lower = |to| Decision::Lower {
            to,
            cause: Cause::Queued,
        };
        let no_gain = |to| Decision::Lower {
            to,
            cause: Cause::NoGain,
        };
        #[rustfmt::skip]
        let table: &[(&str, Signals, Decision)] = &[
            ("clean at the limit probes one up", at(3), Decision::Raise(4)),
            ("clean below the limit says nothing", Signals { concurrency: 2, running: Some(2), ..at(3) }, Decision::Hold),
            ("dispatched at the limit but fewer streaming: not proven", Signals { running: Some(2), ..at(3) }, Decision::Hold),
            ("without running, concurrency proves", Signals { running: None, ..at(3) }, Decision::Raise(4)),
            ("a ceiling in its interval stops the probe", Signals { ceiling: Some(4), ..at(3) }, Decision::Hold),
            ("below the ceiling the climb goes on", Signals { ceiling: Some(6), ..at(3) }, Decision::Raise(4)),
            ("max stops the probe", at(8), Decision::Hold),
            ("enough gain probes on", Signals { gain: Some(0.8), ..at(3) }, Decision::Raise(4)),
            ("too little gain steps back", Signals { gain: Some(0.1), ..at(3) }, no_gain(2)),
            ("no step back below min", Signals { gain: Some(0.0), ..at(1) }, Decision::Raise(2)),
            ("queued at the probe: one below", Signals { queued: Some(true), concurrency: 4, running: Some(3), ..at(4) }, lower(3)),
            ("queued: down to those streaming and one", Signals { queued: Some(true), concurrency: 7, running: Some(2), ..at(7) }, lower(3)),
            ("queued without running: one below its concurrency", Signals { queued: Some(true), concurrency: 6, running: None, ..at(7) }, lower(5)),
            ("queued from an older, higher limit: hold", Signals { queued: Some(true), concurrency: 5, running: Some(1), ..at(3) }, Decision::Hold),
            ("queued below the limit: down to what it proves", Signals { queued: Some(true), concurrency: 5, running: Some(4), ..at(7) }, lower(4)),
            ("queued never goes below min", Signals { queued: Some(true), concurrency: 1, running: Some(0), ..at(2) }, lower(1)),
            ("queued at min: hold", Signals { queued: Some(true), concurrency: 1, running: Some(0), ..at(1) }, Decision::Hold),
            ("nothing to judge: hold", Signals { queued: None, ..at(3) }, Decision::Hold),
        ];
        for (name, signals, want) in table {
            assert_eq!(decide(signals, &config), *want, "{name}: {signals:?}");
        }
    }
}
