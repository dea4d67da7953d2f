//! The predictable-waits scenario (issue 19): one simulated Ollama
//! server, requests of mixed lengths arriving at random (Poisson) at 1×,
//! 2× and 10× what the server can answer, each useless after its
//! deadline (`X-Deadline-Ms`). Corral refuses at arrival what its queue
//! cannot serve in time; a refused client asks again every
//! [`Setup::probe`] until it is let in, which measures when it would in
//! fact have been admitted against the `Retry-After` it was given.
//!
//! Measured per run: goodput (answers within their deadline per minute),
//! the estimated wait of each served request (`X-Corral-Queue-Eta-Ms`)
//! against its real wait (`X-Corral-Queue-Ms`), each refusal's
//! `Retry-After` (`X-Corral-Retry-After-Ms`) against the admission of its
//! retries, and the mean latency. Two variants: requests that say their
//! length (`num_predict`, so Corral serves shorter ones first) and
//! requests that do not (the simulated server still answers each at its
//! length, so Corral sees them all alike and serves them by arrival).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use corral_benches::waits::{self, Setup, Variant};
//!
//! let setup = Setup::default();
//! let run = waits::run(&setup, 2.0, Variant::Told).await?;
//! println!("{:.0} answers in time per minute", run.goodput());
//! # Ok(()) }
//! ```

mod drive;
pub mod report;

use std::time::Duration;

use corral_mock_ollama::{MockConfig, MockOllama};

use crate::herd::Error;

/// Whether requests say how long they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// `options.num_predict` set: Corral predicts each request's length.
    Told,
    /// No `num_predict`: Corral predicts them all alike (first come,
    /// first served); the server answers each at its length all the same.
    Untold,
}

impl Variant {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Told => "lengths told",
            Self::Untold => "lengths untold (by arrival)",
        }
    }
}

/// What the scenario is made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server's parallelism, and Corral's capacity.
    pub parallel: usize,
    /// Its time to first token.
    pub ttft: Duration,
    /// Its tokens per second per generation.
    pub tokens_per_sec: f64,
    /// Each request's length, drawn uniformly in this range (tokens).
    pub tokens: (u32, u32),
    /// Each request's deadline (`X-Deadline-Ms`).
    pub deadline: Duration,
    /// How long requests arrive.
    pub duration: Duration,
    /// How often a refused client asks again.
    pub probe: Duration,
    /// The random draws' seed.
    pub seed: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            parallel: 2,
            ttft: Duration::from_millis(50),
            tokens_per_sec: 200.0,
            tokens: (10, 390),
            deadline: Duration::from_secs(6),
            duration: Duration::from_secs(30),
            probe: Duration::from_millis(100),
            seed: 19,
        }
    }
}

impl Setup {
    /// The mean time one request holds a slot.
    pub fn mean_service(&self) -> Duration {
        let mean_tokens = f64::from(self.tokens.0 + self.tokens.1) / 2.0;
        self.ttft + Duration::from_secs_f64(mean_tokens / self.tokens_per_sec.max(1e-9))
    }

    /// Requests per second the server answers when always busy.
    pub fn capacity_rate(&self) -> f64 {
        self.parallel as f64 / self.mean_service().as_secs_f64()
    }

    fn server(&self) -> MockConfig {
        MockConfig {
            parallel: self.parallel,
            max_queue: 100_000,
            ttft: self.ttft,
            tokens_per_sec: self.tokens_per_sec,
            tokens: 1 << 16,
            log_capacity: 0,
            ..MockConfig::default()
        }
    }

    fn corral_config(&self, url: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{url}\"\ncapacity = {}\n\n[[layers]]\nkind = \"priority\"\n",
            self.parallel
        )
    }
}

/// One request as its client saw it.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Its length, in tokens.
    pub tokens: u32,
    /// From its first sending to the end of its answer (retries
    /// included); `None` if it got none.
    pub latency: Option<Duration>,
    /// It was answered within its deadline, counted from the sending
    /// that was let in.
    pub in_time: bool,
    /// Its wait for a permit, as the answer says (`X-Corral-Queue-Ms`).
    pub waited: Option<Duration>,
    /// Its estimated wait when it arrived (`X-Corral-Queue-Eta-Ms`).
    pub eta: Option<Duration>,
    /// If refused at first: the `Retry-After` given, and how long after
    /// that refusal a sending was in fact let in.
    pub retry: Option<(Duration, Option<Duration>)>,
}

/// Everything one run saw.
#[derive(Debug, Clone)]
pub struct Run {
    /// The offered load, as a multiple of what the server answers.
    pub load: f64,
    /// Whether lengths were told.
    pub variant: Variant,
    /// Every request.
    pub records: Vec<Record>,
    /// From the first arrival to the last answer.
    pub wall: Duration,
}

/// Runs `setup` at `load` × the server's rate, `variant`.
pub async fn run(setup: &Setup, load: f64, variant: Variant) -> Result<Run, Error> {
    let server = MockOllama::start(setup.server())
        .await
        .map_err(|e| format!("mock: {e}"))?;
    let text = setup.corral_config(&server.url());
    let config = corral::Config::parse(&text, std::path::Path::new("waits.toml"))
        .map_err(|e| format!("config: {e}"))?;
    let corral = corral::Running::start(&config)
        .await
        .map_err(|e| format!("corral: {e}"))?;
    let started = tokio::time::Instant::now();
    let records = drive::run(setup, load, variant, &corral.url()).await;
    Ok(Run {
        load,
        variant,
        records,
        wall: started.elapsed(),
    })
}

impl Run {
    /// Answers within their deadline, per minute of the run (from the
    /// first arrival to the last answer).
    pub fn goodput(&self) -> f64 {
        let in_time = self.records.iter().filter(|r| r.in_time).count();
        in_time as f64 * 60.0 / self.wall.as_secs_f64().max(1e-9)
    }

    /// The median relative error of served requests' estimated waits
    /// against their real ones, over those that waited at least 100 ms
    /// (below, a few milliseconds make a large ratio of nothing); and how
    /// many that is.
    pub fn eta_error(&self) -> (Option<f64>, usize) {
        let errors: Vec<f64> = self
            .records
            .iter()
            .filter_map(|r| Some((r.eta?, r.waited?)))
            .filter(|(_, waited)| *waited >= Duration::from_millis(100))
            .map(|(eta, waited)| relative(eta, waited))
            .collect();
        (median(errors.clone()), errors.len())
    }

    /// The median of served requests' estimated waits over their real
    /// ones (over those that waited at least 100 ms): below 1, the
    /// estimates run low.
    pub fn eta_bias(&self) -> Option<f64> {
        let ratios = self
            .records
            .iter()
            .filter_map(|r| Some((r.eta?, r.waited?)))
            .filter(|(_, waited)| *waited >= Duration::from_millis(100))
            .map(|(eta, waited)| eta.as_secs_f64() / waited.as_secs_f64())
            .collect();
        median(ratios)
    }

    /// The median relative error of refusals' `Retry-After` against when
    /// a retry was in fact let in (to within [`Setup::probe`]); and how
    /// many.
    pub fn retry_error(&self) -> (Option<f64>, usize) {
        let errors: Vec<f64> = self
            .records
            .iter()
            .filter_map(|r| {
                let (told, admitted) = r.retry?;
                Some((told, admitted?))
            })
            .filter(|(_, admitted)| *admitted >= Duration::from_millis(100))
            .map(|(told, admitted)| relative(told, admitted))
            .collect();
        (median(errors.clone()), errors.len())
    }

    /// Refused at first, then.
    pub fn refused(&self) -> usize {
        self.records.iter().filter(|r| r.retry.is_some()).count()
    }

    /// Whether `Retry-After` kept its promise: of the requests refused at
    /// first and let in later, the share answered within their deadline,
    /// the median of their wait in the queue once let in, and how many;
    /// and how many refused were never let in (their client gave up).
    pub fn after_refusal(&self) -> (Option<f64>, Option<Duration>, usize, usize) {
        let let_in: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| matches!(r.retry, Some((_, Some(_)))))
            .collect();
        let never = self
            .records
            .iter()
            .filter(|r| matches!(r.retry, Some((_, None))))
            .count();
        let in_time = let_in.iter().filter(|r| r.in_time).count();
        let share = (!let_in.is_empty()).then(|| in_time as f64 / let_in.len() as f64);
        let waits = let_in
            .iter()
            .filter_map(|r| r.waited)
            .map(|d| d.as_secs_f64())
            .collect();
        let wait = median(waits).map(Duration::from_secs_f64);
        (share, wait, let_in.len(), never)
    }

    /// The mean latency of the requests answered in time.
    pub fn mean_latency(&self) -> Option<Duration> {
        let served: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.in_time)
            .filter_map(|r| r.latency)
            .collect();
        let n = u32::try_from(served.len()).ok().filter(|n| *n > 0)?;
        Some(served.iter().sum::<Duration>() / n)
    }
}

fn relative(estimate: Duration, real: Duration) -> f64 {
    (estimate.as_secs_f64() - real.as_secs_f64()).abs() / real.as_secs_f64().max(1e-9)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}
