//! The controller driving real streaming requests to the simulated Ollama
//! of `corral-mock-ollama` over sockets, as the proxy would: dispatch
//! while fewer than the limit are in flight, time to first token at the
//! first NDJSON line, one sample per request at its end, a
//! `Sample::waiting` for one late past `overdue_after`.
//!
//! Time is tokio's paused clock: the mock's time to first token and
//! tokens are tokio sleeps, and the sockets are loopback, whose data is
//! ready when the runtime looks, so the clock only jumps when every task
//! waits on a timer. Two and a half virtual minutes take a few seconds.
//!
//! `MOCK_TRACE=1` prints each decision (with `--nocapture`).

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use corral_adaptive::{AdaptiveConfig, Controller, OllamaTimings, Sample};
use corral_mock_ollama::{MockConfig, MockOllama};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::time::Instant;

const CLIENTS: usize = 131;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// What a request task tells the driver.
enum Seen {
    FirstByte(usize, Instant),
    End {
        id: usize,
        at: Instant,
        tokens: u64,
        status: u16,
        /// The final message's timings.
        timings: OllamaTimings,
    },
}

/// One `/api/generate`, streamed or whole, reported as it goes.
async fn generate(
    client: HttpClient,
    url: String,
    stream: bool,
    id: usize,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let body = format!(r#"{{"model":"llama3","prompt":"why is the sky blue?","stream":{stream}}}"#);
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut first = true;
    let mut tokens = 0;
    let mut timings = OllamaTimings::default();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        if first {
            first = false;
            let _ = seen.send(Seen::FirstByte(id, Instant::now()));
        }
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let message: serde_json::Value = serde_json::from_slice(line).unwrap();
            if let Some(count) = message["eval_count"].as_u64() {
                tokens = count;
                timings = serde_json::from_value(message).unwrap();
            }
        }
    }
    let _ = seen.send(Seen::End {
        id,
        at: Instant::now(),
        tokens,
        status,
        timings,
    });
}

struct InFlight {
    dispatched: Instant,
    concurrency: usize,
    first_byte: Option<Instant>,
    running: Option<usize>,
    reported_late: bool,
}

/// Corral's side: the controller, what is in flight, the limit's history.
struct Driver {
    controller: Controller,
    client: HttpClient,
    url: String,
    stream: bool,
    seen_tx: mpsc::UnboundedSender<Seen>,
    seen: mpsc::UnboundedReceiver<Seen>,
    in_flight: HashMap<usize, InFlight>,
    next_id: usize,
    refused: usize,
}

impl Driver {
    fn new(mock: &MockOllama, stream: bool) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        Self {
            controller: Controller::new(AdaptiveConfig::default()).unwrap(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            url: format!("{}/api/generate", mock.url()),
            stream,
            seen_tx,
            seen,
            in_flight: HashMap::new(),
            next_id: 0,
            refused: 0,
        }
    }

    fn streaming(&self) -> usize {
        self.in_flight
            .values()
            .filter(|r| r.first_byte.is_some())
            .count()
    }

    fn dispatch(&mut self) {
        while self.in_flight.len() < self.controller.limit().min(CLIENTS) {
            let id = self.next_id;
            self.next_id += 1;
            self.in_flight.insert(
                id,
                InFlight {
                    dispatched: Instant::now(),
                    concurrency: self.in_flight.len() + 1,
                    first_byte: None,
                    running: None,
                    reported_late: false,
                },
            );
            tokio::spawn(generate(
                self.client.clone(),
                self.url.clone(),
                self.stream,
                id,
                self.seen_tx.clone(),
            ));
        }
    }

    /// Drives for `span`; the limit at each 100 ms tick.
    async fn run_for(&mut self, span: Duration) -> Vec<(Duration, usize)> {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut limits = Vec::new();
        self.dispatch();
        while start.elapsed() < span {
            tokio::select! {
                Some(seen) = self.seen.recv() => self.on_seen(seen),
                _ = tick.tick() => {
                    self.report_late();
                    limits.push((start.elapsed(), self.controller.limit()));
                }
            }
            self.dispatch();
        }
        limits
    }

    fn on_seen(&mut self, seen: Seen) {
        match seen {
            Seen::FirstByte(id, at) => {
                let running = self.streaming() + 1;
                let request = self.in_flight.get_mut(&id).unwrap();
                request.first_byte = Some(at);
                request.running = Some(running);
            }
            Seen::End {
                id,
                at,
                tokens,
                status,
                timings,
            } => {
                let request = self.in_flight.remove(&id).unwrap();
                if status != 200 {
                    self.refused += 1;
                    return;
                }
                let sample = if self.stream {
                    let first_byte = request.first_byte.unwrap();
                    Sample::streamed(request.concurrency, request.dispatched, first_byte)
                        .with_running(request.running.unwrap())
                        .with_generation(tokens, at - first_byte)
                } else {
                    // The headers came with the end: Ollama's timings say
                    // how long it generated.
                    Sample::whole(request.concurrency, at - request.dispatched, &timings)
                };
                let decision = self.controller.on_sample(&sample, at);
                if std::env::var_os("MOCK_TRACE").is_some() {
                    println!("{sample:?} -> {decision:?}");
                }
            }
        }
    }

    /// Streams only: a whole answer's first byte is its end.
    fn report_late(&mut self) {
        let Some(overdue) = self.controller.overdue_after().filter(|_| self.stream) else {
            return;
        };
        let now = Instant::now();
        let streaming = self.streaming();
        let late: Vec<usize> = self
            .in_flight
            .iter()
            .filter(|(_, r)| {
                r.first_byte.is_none() && !r.reported_late && now - r.dispatched > overdue
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let request = self.in_flight.get_mut(&id).unwrap();
            request.reported_late = true;
            let sample = Sample::waiting(request.concurrency, now - request.dispatched)
                .with_running(streaming);
            self.controller.on_sample(&sample, now);
        }
    }
}

/// When the limit came within ±1 of `parallel` for the rest of `limits`.
fn settled_after(limits: &[(Duration, usize)], parallel: usize) -> Option<Duration> {
    settled_within(limits, parallel - 1..=parallel + 1)
}

/// When the limit came within `band` for the rest of `limits`.
fn settled_within(
    limits: &[(Duration, usize)],
    band: std::ops::RangeInclusive<usize>,
) -> Option<Duration> {
    match limits.iter().rposition(|(_, l)| !band.contains(l)) {
        None => Some(Duration::ZERO),
        Some(i) => limits.get(i + 1).map(|(t, _)| *t),
    }
}

/// Share of the last `span` of `limits` at exactly `parallel`.
fn share_at(limits: &[(Duration, usize)], parallel: usize, span: Duration) -> f64 {
    let end = limits.last().unwrap().0;
    let tail: Vec<_> = limits.iter().filter(|(t, _)| *t + span >= end).collect();
    tail.iter().filter(|(_, l)| *l == parallel).count() as f64 / tail.len() as f64
}

#[tokio::test(start_paused = true)]
async fn against_the_mock_the_limit_settles_at_3_then_6_then_2_across_restarts_with_nothing_refused(
) {
    let mock = MockOllama::start(MockConfig {
        parallel: 3,
        ttft: Duration::from_millis(200),
        tokens_per_sec: 40.0,
        tokens: 60,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut driver = Driver::new(&mock, true);
    let phase = Duration::from_secs(75);

    let mut before = 3;
    for parallel in [3, 6, 2] {
        // Slots lost while answers run are waited for until the first
        // request is seen late (see the crate's limits); else a probe.
        let queue_bound = if parallel < before {
            before - parallel
        } else {
            1
        };
        before = parallel;
        mock.set_parallel(parallel);
        mock.reset();
        let limits = driver.run_for(phase).await;
        let stats = mock.stats();
        let settled = settled_after(&limits, parallel);
        let share = share_at(&limits, parallel, Duration::from_secs(15));
        println!(
            "P={parallel}: within ±1 after {settled:?}, {:.0} % at P in the last 15 s, {} requests, peak queued inside {}, peak in flight {}, baseline {:?}",
            share * 100.0,
            stats.requests,
            stats.peak_queued,
            stats.peak_in_flight,
            driver.controller.baseline_ttft(),
        );
        let settled = settled.expect("settles");
        assert!(
            settled <= Duration::from_secs(60),
            "P={parallel}: settled after {settled:?}"
        );
        assert!(share >= 0.5, "P={parallel}: at P {share}");
        assert_eq!(stats.busy_rejections, 0, "nothing refused by the server");
        assert_eq!(driver.refused, 0);
        assert!(
            stats.peak_queued as usize <= queue_bound,
            "P={parallel}: at most {queue_bound} waited inside, saw {}",
            stats.peak_queued
        );
    }
}

/// A whole answer's headers come at its end, so its time to first token
/// comes from Ollama's `eval_duration`, and without `running` the proof
/// that the limit was reached is the concurrency at dispatch. That counts
/// answers already out of their slot and on the wire: with answers ending
/// together (the mock's timings are exact) a probe can pass for proven
/// and go one further, two over the slots, before a queue is seen.
#[tokio::test(start_paused = true)]
async fn whole_answers_are_judged_by_ollamas_own_timings_and_settle_within_one_below_two_above() {
    let mock = MockOllama::start(MockConfig {
        parallel: 3,
        ttft: Duration::from_millis(200),
        tokens_per_sec: 40.0,
        tokens: 60,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let mut driver = Driver::new(&mock, false);
    for parallel in [3, 6] {
        mock.set_parallel(parallel);
        mock.reset();
        let limits = driver.run_for(Duration::from_secs(75)).await;
        let stats = mock.stats();
        let settled = settled_within(&limits, parallel - 1..=parallel + 2);
        let share = share_at(&limits, parallel, Duration::from_secs(15));
        println!(
            "whole answers, P={parallel}: within -1/+2 after {settled:?}, {:.0} % at P in the last 15 s, {} requests, peak queued inside {}, baseline {:?}",
            share * 100.0,
            stats.requests,
            stats.peak_queued,
            driver.controller.baseline_ttft(),
        );
        assert!(settled.expect("settles") <= Duration::from_secs(60));
        assert!(share >= 0.5, "P={parallel}: at P {share}");
        assert_eq!(stats.busy_rejections, 0);
        assert!(stats.peak_queued <= 2, "{}", stats.peak_queued);
    }
}
