//! One breaker's state machine: closed, open, half open. Pure: time comes
//! in as an argument, effects go out as a transition.

use std::collections::VecDeque;
use std::time::Duration;

use corral_core::Outcome;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail fast until the instant given.
    Open {
        /// When probes may start.
        until: Instant,
    },
    /// A few probes go through; the rest fail fast.
    HalfOpen,
}

impl State {
    /// 0 closed, 1 half open, 2 open: the metric's value.
    pub fn as_number(&self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        }
    }

    /// `closed`, `half_open`, `open`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open { .. } => "open",
        }
    }
}

/// How a call was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// While closed.
    Normal,
    /// As a half-open probe.
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: Instant,
    failed: bool,
    slow: bool,
}

/// One breaker.
#[derive(Debug)]
pub struct Circuit {
    state: State,
    streak: u32,
    window: VecDeque<Call>,
    trips: u32,
    probes_out: usize,
    probes_passed: usize,
}

/// A change of state, for logs, metrics and the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: State,
    /// To.
    pub to: State,
}

impl Default for Circuit {
    fn default() -> Self {
        Self::new()
    }
}

impl Circuit {
    /// A closed breaker.
    pub fn new() -> Self {
        Self {
            state: State::Closed,
            streak: 0,
            window: VecDeque::new(),
            trips: 0,
            probes_out: 0,
            probes_passed: 0,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Lets a call through or says how long it stays shut; an open
    /// breaker whose time is up turns half open here.
    pub fn admit(
        &mut self,
        config: &BreakerConfig,
        now: Instant,
    ) -> (Result<Admission, Duration>, Option<Transition>) {
        let mut transition = None;
        if let State::Open { until } = self.state {
            if now < until {
                return (Err(until - now), None);
            }
            transition = self.go(State::HalfOpen);
            self.probes_out = 0;
            self.probes_passed = 0;
        }
        let admission = match self.state {
            State::Closed => Ok(Admission::Normal),
            State::HalfOpen if self.probes_out + self.probes_passed < config.half_open_probes => {
                self.probes_out += 1;
                Ok(Admission::Probe)
            }
            // Probes are out: the others wait for their verdict.
            State::HalfOpen => Err(Duration::from_secs(1)),
            State::Open { until } => Err(until.saturating_duration_since(now)),
        };
        (admission, transition)
    }

    /// Records how an admitted call ended.
    pub fn record(
        &mut self,
        config: &BreakerConfig,
        now: Instant,
        admission: Admission,
        outcome: Outcome,
        slow: bool,
    ) -> Option<Transition> {
        match (admission, self.state) {
            (Admission::Probe, State::HalfOpen) => {
                self.probes_out = self.probes_out.saturating_sub(1);
                match outcome {
                    Outcome::Ignored => None,
                    Outcome::Failure(_) => self.trip(config, now),
                    Outcome::Success => {
                        self.probes_passed += 1;
                        if self.probes_passed >= config.half_open_probes {
                            self.close()
                        } else {
                            None
                        }
                    }
                }
            }
            (Admission::Normal, State::Closed) => {
                let failed = match outcome {
                    Outcome::Ignored => return None,
                    Outcome::Failure(_) => true,
                    Outcome::Success => false,
                };
                self.streak = if failed { self.streak + 1 } else { 0 };
                self.window.push_back(Call {
                    at: now,
                    failed,
                    slow,
                });
                self.trim(config, now);
                if self.should_trip(config) {
                    self.trip(config, now)
                } else {
                    None
                }
            }
            // A call admitted before the state changed: its result says
            // nothing about the upstream now.
            _ => None,
        }
    }

    fn trim(&mut self, config: &BreakerConfig, now: Instant) {
        match config.window_time {
            Some(span) => {
                while self
                    .window
                    .front()
                    .is_some_and(|c| now.saturating_duration_since(c.at) > span)
                {
                    self.window.pop_front();
                }
            }
            None => {
                while self.window.len() > config.window_calls {
                    self.window.pop_front();
                }
            }
        }
    }

    fn should_trip(&self, config: &BreakerConfig) -> bool {
        if config
            .consecutive_failures
            .is_some_and(|n| self.streak >= n)
        {
            return true;
        }
        let calls = self.window.len();
        if calls < config.min_calls.max(1) {
            return false;
        }
        let share = |f: fn(&Call) -> bool| {
            self.window.iter().filter(|c| f(c)).count() as f64 / calls as f64
        };
        config
            .failure_rate
            .is_some_and(|rate| share(|c| c.failed) >= rate)
            || (config.slow_call_duration.is_some() && share(|c| c.slow) >= config.slow_call_rate)
    }

    fn trip(&mut self, config: &BreakerConfig, now: Instant) -> Option<Transition> {
        let factor = config
            .open_backoff
            .powi(i32::try_from(self.trips).unwrap_or(i32::MAX));
        let open_for = config.open_for.mul_f64(factor).min(config.max_open_for);
        self.trips += 1;
        self.streak = 0;
        self.window.clear();
        self.go(State::Open {
            until: now + open_for,
        })
    }

    /// Opens a closed breaker until `until` because another replica's
    /// opened: it fronts the same upstream. A breaker already open or
    /// probing keeps its own course.
    pub fn open_until(&mut self, until: Instant) -> Option<Transition> {
        if self.state != State::Closed {
            return None;
        }
        self.streak = 0;
        self.window.clear();
        self.go(State::Open { until })
    }

    fn close(&mut self) -> Option<Transition> {
        self.trips = 0;
        self.streak = 0;
        self.window.clear();
        self.go(State::Closed)
    }

    fn go(&mut self, to: State) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Transition { from, to })
    }
}
