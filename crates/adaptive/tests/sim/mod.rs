//! The simulated server and Corral in front of it, in virtual time (see
//! `simulated.rs`).

#![allow(dead_code)] // not every test reads every field

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;

use corral_adaptive::{AdaptiveConfig, Controller, Sample};
use tokio::time::Instant;

pub(crate) const CLIENTS: usize = 131;
pub(crate) const MAX_QUEUE: usize = 512;
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// xorshift64*: enough randomness for jitter, and it repeats.
pub(crate) struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `1 ± spread`, uniformly.
    fn jitter(&mut self, spread: f64) -> f64 {
        1.0 + spread * (2.0 * self.unit() - 1.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Event {
    FirstToken(usize),
    End(usize),
    Tick,
    SetParallel(usize),
}

pub(crate) struct Request {
    dispatched: Duration,
    concurrency: usize,
    tokens: u64,
    per_token: Duration,
    first_byte: Option<Duration>,
    running: Option<usize>,
    reported_waiting: bool,
}

/// What a run saw, per phase of the server's parallelism.
#[derive(Debug, Default)]
pub(crate) struct Phase {
    pub(crate) parallel: usize,
    pub(crate) start: Duration,
    /// (time, limit) at each tick.
    pub(crate) limits: Vec<(Duration, usize)>,
    /// (time, requests waiting inside the server) at each dispatch.
    pub(crate) queued_at_dispatch: Vec<(Duration, usize)>,
}

impl Phase {
    /// When the limit came within ±1 of `parallel` for the rest of the
    /// phase, from the phase's start.
    pub(crate) fn settled_after(&self) -> Option<Duration> {
        let last_out = self
            .limits
            .iter()
            .rposition(|(_, l)| l.abs_diff(self.parallel) > 1);
        match last_out {
            None => Some(Duration::ZERO),
            Some(i) => self.limits.get(i + 1).map(|(t, _)| *t - self.start),
        }
    }

    /// Share of the ticks in the phase's last `span` at exactly `parallel`.
    pub(crate) fn share_at_parallel(&self, span: Duration) -> f64 {
        let end = self.limits.last().unwrap().0;
        let tail: Vec<_> = self
            .limits
            .iter()
            .filter(|(t, _)| *t + span >= end)
            .collect();
        tail.iter().filter(|(_, l)| *l == self.parallel).count() as f64 / tail.len() as f64
    }

    /// The most requests waiting inside the server at a dispatch at or
    /// after `from` (from the phase's start).
    pub(crate) fn most_queued_after(&self, from: Duration) -> usize {
        self.queued_at_dispatch
            .iter()
            .filter(|(t, _)| *t >= self.start + from)
            .map(|(_, q)| *q)
            .max()
            .unwrap_or(0)
    }
}

pub(crate) struct Sim {
    rng: Rng,
    now: Duration,
    epoch: Instant,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    seq: u64,
    requests: Vec<Request>,
    /// Corral's side.
    pub(crate) controller: Controller,
    in_flight: BTreeMap<usize, ()>,
    /// The server's side.
    pub(crate) parallel: usize,
    running: usize,
    queue: VecDeque<usize>,
    pub(crate) refused: usize,
    pub(crate) phases: Vec<Phase>,
    /// Requests at once beyond which the GPU is saturated: each token
    /// takes longer in proportion, so more at once add nothing.
    pub(crate) saturates_at: Option<f64>,
    /// Restarts kill the server's requests (their clients see them fail)
    /// and Corral tells the controller; else running answers finish in
    /// their slots and nothing is said.
    pub(crate) hard_restarts: bool,
}

impl Sim {
    pub(crate) fn new(config: AdaptiveConfig, parallel: usize, seed: u64) -> Self {
        let mut sim = Self {
            rng: Rng(seed),
            now: Duration::ZERO,
            epoch: Instant::now(),
            events: BinaryHeap::new(),
            seq: 0,
            requests: Vec::new(),
            controller: Controller::new(config).unwrap(),
            in_flight: BTreeMap::new(),
            parallel,
            running: 0,
            queue: VecDeque::new(),
            refused: 0,
            saturates_at: None,
            hard_restarts: false,
            phases: vec![Phase {
                parallel,
                ..Phase::default()
            }],
        };
        sim.at(Duration::ZERO, Event::Tick);
        sim
    }

    fn at(&mut self, when: Duration, event: Event) {
        self.seq += 1;
        self.events.push(Reverse((when, self.seq, event)));
    }

    fn instant(&self) -> Instant {
        self.epoch + self.now
    }

    fn phase(&mut self) -> &mut Phase {
        self.phases.last_mut().unwrap()
    }

    /// Runs until `until`, with the server's parallelism set to each
    /// `(when, parallel)` of `restarts`.
    pub(crate) fn run(&mut self, restarts: &[(Duration, usize)], until: Duration) {
        for &(when, parallel) in restarts {
            self.at(when, Event::SetParallel(parallel));
        }
        self.dispatch();
        while let Some(Reverse((when, _, event))) = self.events.pop() {
            if when > until {
                break;
            }
            self.now = when;
            match event {
                // Requests of a server that restarted since are gone.
                Event::FirstToken(id) | Event::End(id) if !self.in_flight.contains_key(&id) => {}
                Event::FirstToken(id) => self.first_token(id),
                Event::End(id) => self.end(id),
                Event::Tick => self.tick(),
                Event::SetParallel(parallel) => {
                    self.parallel = parallel;
                    let start = self.now;
                    self.phases.push(Phase {
                        parallel,
                        start,
                        ..Phase::default()
                    });
                    if self.hard_restarts {
                        self.in_flight.clear();
                        self.queue.clear();
                        self.running = 0;
                        self.controller.restarted();
                        self.dispatch();
                    }
                    self.serve_queue();
                }
            }
        }
    }

    /// Corral lets clients in while fewer than the limit are in flight.
    fn dispatch(&mut self) {
        while self.in_flight.len() < self.controller.limit().min(CLIENTS) {
            let id = self.requests.len();
            let concurrency = self.in_flight.len() + 1;
            self.in_flight.insert(id, ());
            self.requests.push(Request {
                dispatched: self.now,
                concurrency,
                tokens: 0,
                per_token: Duration::ZERO,
                first_byte: None,
                running: None,
                reported_waiting: false,
            });
            // It arrives at the server.
            if self.running < self.parallel {
                self.running += 1;
                self.start(id);
            } else if self.queue.len() < MAX_QUEUE {
                self.queue.push_back(id);
            } else {
                self.refused += 1;
                self.in_flight.remove(&id);
            }
            let (now, queued) = (self.now, self.queue.len());
            self.phase().queued_at_dispatch.push((now, queued));
        }
    }

    /// Request `id` has a slot (counted in `running`): prompt, then tokens.
    fn start(&mut self, id: usize) {
        let others = (self.running - 1) as f64;
        let ttft =
            Duration::from_millis(200).mul_f64((1.0 + 0.03 * others) * self.rng.jitter(0.15));
        let tokens = 60 + (self.rng.unit() * 80.0) as u64;
        let slowdown = match self.saturates_at {
            Some(at) => (self.running as f64 / at).max(1.0),
            None => 1.0 + 0.04 * others,
        };
        let per_token = Duration::from_millis(25).mul_f64(slowdown * self.rng.jitter(0.05));
        let request = &mut self.requests[id];
        request.tokens = tokens;
        request.per_token = per_token;
        self.at(self.now + ttft, Event::FirstToken(id));
    }

    fn first_token(&mut self, id: usize) {
        self.requests[id].first_byte = Some(self.now);
        let streaming = self.streaming();
        self.requests[id].running = Some(streaming);
        let request = &self.requests[id];
        let end = self.now + request.per_token * request.tokens as u32;
        self.at(end, Event::End(id));
    }

    /// Corral's requests past their first byte.
    fn streaming(&self) -> usize {
        self.in_flight
            .keys()
            .filter(|id| self.requests[**id].first_byte.is_some())
            .count()
    }

    fn end(&mut self, id: usize) {
        self.running -= 1;
        self.serve_queue();
        self.in_flight.remove(&id);
        let r = &self.requests[id];
        let sample = Sample::streamed(
            r.concurrency,
            self.epoch + r.dispatched,
            self.epoch + r.first_byte.unwrap(),
        )
        .with_running(r.running.unwrap())
        .with_generation(r.tokens, r.per_token * r.tokens as u32);
        let now = self.instant();
        let d = self.controller.on_sample(&sample, now);
        if std::env::var_os("SIM_TRACE").is_some() {
            println!(
                "{:?} end {sample:?} -> {d:?} base {:?}",
                self.now,
                self.controller.baseline_ttft()
            );
        }
        self.dispatch();
    }

    fn serve_queue(&mut self) {
        while self.running < self.parallel {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            self.running += 1;
            self.start(next);
        }
    }

    fn tick(&mut self) {
        if let Some(overdue) = self.controller.overdue_after() {
            let late: Vec<usize> = self
                .in_flight
                .keys()
                .copied()
                .filter(|id| {
                    let r = &self.requests[*id];
                    r.first_byte.is_none()
                        && !r.reported_waiting
                        && self.now - r.dispatched > overdue
                })
                .collect();
            for id in late {
                let streaming = self.streaming();
                let r = &mut self.requests[id];
                r.reported_waiting = true;
                let sample =
                    Sample::waiting(r.concurrency, self.now - r.dispatched).with_running(streaming);
                let now = self.instant();
                let d = self.controller.on_sample(&sample, now);
                if std::env::var_os("SIM_TRACE").is_some() {
                    println!("{:?} waiting {sample:?} -> {d:?}", self.now);
                }
            }
        }
        let (now, limit) = (self.now, self.controller.limit());
        self.phase().limits.push((now, limit));
        self.dispatch();
        self.at(self.now + TICK, Event::Tick);
    }
}
