//! The 131-agent scenario: the design's fleet against one upstream of
//! capacity 4, once straight to the upstream and once through Corral
//! with `deploy/corral.toml`, and what each agent class got.
//!
//! The upstream is a simulated Ollama in this process (`--parallel 4`, a
//! time to first token and a token rate), or any Ollama- or
//! OpenAI-compatible server given by URL. The fleet is closed-loop: each
//! agent thinks (exponential pauses), asks, reads the whole answer, and
//! honours `Retry-After`; it gives up at its class's deadline, which it
//! also sends as `X-Deadline-Ms`. The same seed gives the same requests
//! in both runs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use corral_benches::herd::{run, Mode, Options};
//!
//! let options = Options { duration: std::time::Duration::from_secs(30), ..Options::default() };
//! let baseline = corral_benches::herd::unloaded(&options).await?;
//! let direct = run(&options, Mode::Direct).await?;
//! let corral = run(&options, Mode::Corral).await?;
//! print!("{}", corral_benches::herd::report::markdown(&options, &baseline, &[direct, corral]));
//! # Ok(()) }
//! ```

mod chart;
pub mod closed;
mod drive;
mod fleet;
mod metrics;
mod record;
pub mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use corral_mock_ollama::{MockConfig, MockOllama, Stats};

pub use chart::svg;
pub use fleet::{design_fleet, Api, Class, Kind};
pub use metrics::CorralCounters;
pub use record::{percentile, summarise, ClassSummary, Outcome, Record};

/// Where the fleet sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Straight to the upstream.
    Direct,
    /// Through Corral.
    Corral,
    /// Through three Corral replicas sharing a Redis (`[state] backend =
    /// "redis"`; a `redis-server` of the run's own, or `REDIS_URL`), the
    /// agents spread over them.
    Replicas,
}

/// How many replicas [`Mode::Replicas`] runs.
pub const REPLICAS: usize = 3;

impl Mode {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Corral => "corral",
            Self::Replicas => "corral ×3, Redis",
        }
    }
}

/// How a scenario runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long agents keep asking.
    pub duration: Duration,
    /// How long open requests may finish after that.
    pub grace: Duration,
    /// The fleet.
    pub fleet: Vec<Class>,
    /// Multiplies every think time (below 1: a busier fleet).
    pub think_scale: f64,
    /// The seed of every agent's choices.
    pub seed: u64,
    /// An external upstream; `None` runs a simulated Ollama in process.
    pub upstream: Option<String>,
    /// The API the agents speak.
    pub api: Api,
    /// The generation model.
    pub model: String,
    /// The embedding model.
    pub embed_model: String,
    /// Corral's config (`deploy/corral.toml`); listen, upstream and
    /// capacity are set by the runner and the fleet's agents added.
    pub config: PathBuf,
    /// The upstream's parallelism per model: the simulated Ollama's
    /// `--parallel`, and Corral's `[upstream] capacity` (and the embedding
    /// model's `model_capacity`, unless the config sets one).
    pub capacity: usize,
    /// The simulated Ollama's queue bound before it answers 503
    /// (`OLLAMA_MAX_QUEUE`, 512 by default as in Ollama).
    pub upstream_queue: usize,
    /// The simulated Ollama's time to first token.
    pub ttft: Duration,
    /// The simulated Ollama's tokens per second, per generation.
    pub tokens_per_sec: f64,
    /// The simulated Ollama's tokens per second for `tinyllama`, the
    /// model degradation falls back to (a small model is faster).
    pub small_model_tokens_per_sec: f64,
    /// The simulated Ollama's model load time.
    pub load_time: Duration,
    /// Models the simulated Ollama keeps loaded at once.
    pub max_loaded_models: usize,
    /// Each agent stops after this many requests (a closed loop of a
    /// fixed amount of work); `None`: it asks until `duration` ends.
    pub requests_per_agent: Option<u64>,
    /// Agents start within this long of each other.
    pub stampede: Duration,
    /// Samples the simulated Ollama's busy slots this often during a run.
    pub sample_every: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(60),
            grace: Duration::from_secs(10),
            fleet: design_fleet(),
            think_scale: 1.0,
            seed: 131,
            upstream: None,
            api: Api::Ollama,
            model: "llama3".into(),
            embed_model: "nomic-embed-text".into(),
            config: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/corral.toml"
            )),
            capacity: 4,
            upstream_queue: 512,
            ttft: Duration::from_millis(100),
            tokens_per_sec: 100.0,
            small_model_tokens_per_sec: 500.0,
            load_time: Duration::from_millis(1500),
            max_loaded_models: 3,
            requests_per_agent: None,
            stampede: Duration::from_secs(2),
            sample_every: None,
        }
    }
}

/// Everything one run saw.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Direct or through Corral.
    pub mode: Mode,
    /// Every request, in the order sent.
    pub records: Vec<Record>,
    /// What the simulated Ollama saw (none for an external upstream).
    pub upstream: Option<Stats>,
    /// Corral's counters at the end (through Corral only).
    pub corral: Option<CorralCounters>,
    /// How long the run took, grace included.
    pub wall: Duration,
    /// The simulated Ollama's busy slots (all models) over the run, from
    /// its start, every [`Options::sample_every`].
    pub busy: Vec<(Duration, u64)>,
}

/// The error of a run that could not start.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The priority-1 class's latency with nothing else running: the scale
/// its loaded latency is judged against.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Runs the fleet once in `mode` against a fresh upstream.
pub async fn run(options: &Options, mode: Mode) -> Result<RunResult, Error> {
    run_edited(options, mode, &|_| {}).await
}

/// [`run`], with Corral's config changed by `edit` after it is loaded.
pub(crate) async fn run_edited(
    options: &Options,
    mode: Mode,
    edit: &dyn Fn(&mut corral::Config),
) -> Result<RunResult, Error> {
    let mock = start_mock(options).await?;
    let upstream = upstream_url(options, mock.as_ref());
    let redis = match mode {
        // A server of the run's own on a free port (or `REDIS_URL`'s).
        Mode::Replicas => Some(corral_e2e::Redis::start().await),
        _ => None,
    };
    let mut corral = Vec::new();
    match (mode, &redis) {
        (Mode::Direct, _) => {}
        (Mode::Corral, _) => {
            let mut config = corral_config(options, &upstream)?;
            edit(&mut config);
            corral.push(corral::Running::start(&config).await?)
        }
        (Mode::Replicas, Some(redis)) => {
            let mut config = corral_config(options, &upstream)?;
            edit(&mut config);
            config.state.backend = corral::config::Backend::Redis;
            config.state.redis_url = Some(redis.url.clone());
            config.state.key_prefix = format!("corral-herd-{}:", std::process::id());
            config.state.replicas = REPLICAS;
            for _ in 0..REPLICAS {
                corral.push(corral::Running::start(&config).await?);
            }
        }
        (Mode::Replicas, None) => return Err("no Redis for the replicas".into()),
    }
    drive::warm(&upstream, options).await;
    let bases = if corral.is_empty() {
        vec![upstream.clone()]
    } else {
        corral.iter().map(corral::Running::url).collect()
    };
    // Every stack in this process reports to one recorder: one reading
    // before and one after cover them all, and nothing of earlier runs.
    let before = match corral.first() {
        Some(first) => Some(metrics::scrape(&first.url()).await?),
        None => None,
    };
    let started = Instant::now();
    let fleet = drive::run(Arc::new(drive(options, bases, options.fleet.clone())));
    let (records, busy) = match (&mock, options.sample_every) {
        (Some(mock), Some(every)) => sampled(fleet, mock, every, started).await,
        _ => (fleet.await, Vec::new()),
    };
    let wall = started.elapsed();
    let counters = match (corral.first(), before) {
        (Some(first), Some(before)) => Some(metrics::scrape(&first.url()).await?.since(&before)),
        _ => None,
    };
    for replica in corral {
        replica.shutdown().await;
    }
    drop(redis);
    Ok(RunResult {
        mode,
        records,
        upstream: mock.map(|m| m.stats()),
        corral: counters,
        wall,
        busy,
    })
}

/// Runs `fleet` to its end, reading the upstream's busy slots every
/// `every` meanwhile.
async fn sampled(
    fleet: impl std::future::Future<Output = Vec<Record>>,
    mock: &MockOllama,
    every: Duration,
    started: Instant,
) -> (Vec<Record>, Vec<(Duration, u64)>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut busy = Vec::new();
    tokio::pin!(fleet);
    loop {
        tokio::select! {
            records = &mut fleet => return (records, busy),
            _ = ticks.tick() => busy.push((started.elapsed(), mock.stats().in_flight)),
        }
    }
}

/// The first class (priority 1) alone, all its agents as in the herd,
/// straight to a fresh upstream: its latency without the rest of the
/// fleet, which its latency in the herd is judged against.
pub async fn unloaded(options: &Options) -> Result<Baseline, Error> {
    let mock = start_mock(options).await?;
    let upstream = upstream_url(options, mock.as_ref());
    let class = options.fleet.first().ok_or("the fleet is empty")?.clone();
    drive::warm(&upstream, options).await;
    let records = drive::run(Arc::new(drive(options, vec![upstream], vec![class]))).await;
    let mut latencies: Vec<Duration> = records
        .iter()
        .filter(|r| r.outcome.is_answer())
        .map(|r| r.latency)
        .collect();
    let p50 = percentile(&mut latencies, 50.0).ok_or("no answer to the unloaded probe")?;
    let p99 = percentile(&mut latencies, 99.0).unwrap_or(p50);
    Ok(Baseline { p50, p99 })
}

fn drive(options: &Options, bases: Vec<String>, fleet: Vec<Class>) -> drive::Drive {
    drive::Drive {
        fleet,
        bases,
        api: options.api,
        model: options.model.clone(),
        embed_model: options.embed_model.clone(),
        duration: options.duration,
        grace: options.grace,
        seed: options.seed,
        think_scale: options.think_scale,
        requests: options.requests_per_agent,
        stampede: options.stampede,
    }
}

async fn start_mock(options: &Options) -> Result<Option<MockOllama>, Error> {
    if options.upstream.is_some() {
        return Ok(None);
    }
    let config = MockConfig {
        parallel: options.capacity,
        max_queue: options.upstream_queue,
        ttft: options.ttft,
        tokens_per_sec: options.tokens_per_sec,
        load_time: options.load_time,
        max_loaded_models: options.max_loaded_models,
        models: vec![
            options.model.clone(),
            "tinyllama".into(),
            options.embed_model.clone(),
        ],
        // Answers as long as `num_predict` asks: the fleet sets the length.
        tokens: 1 << 16,
        model_tokens_per_sec: [("tinyllama".to_string(), options.small_model_tokens_per_sec)]
            .into(),
        log_capacity: 0,
        ..MockConfig::default()
    };
    Ok(Some(MockOllama::start(config).await?))
}

fn upstream_url(options: &Options, mock: Option<&MockOllama>) -> String {
    match (mock, &options.upstream) {
        (Some(mock), _) => mock.url(),
        (None, Some(url)) => url.trim_end_matches('/').to_string(),
        (None, None) => unreachable!("start_mock runs a mock when no upstream is given"),
    }
}

/// `options.config` with the runner's listener, upstream and capacity,
/// and the fleet's agents in their classes.
fn corral_config(options: &Options, upstream: &str) -> Result<corral::Config, Error> {
    let mut config = corral::Config::load(&options.config)?;
    config.server.listen = "127.0.0.1:0".parse()?;
    config.upstream.url = upstream.to_string();
    config.upstream.capacity = Some(options.capacity);
    // Ollama runs OLLAMA_NUM_PARALLEL requests per loaded model: the
    // embedding model has slots of its own beside the chat model's.
    config
        .upstream
        .model_capacity
        .entry(options.embed_model.clone())
        .or_insert(options.capacity);
    // The default stack would probe /api/version; an OpenAI-only server
    // has none, which only marks it down in a gauge.
    // Agents that ask for their priority are in the default class.
    for class in options.fleet.iter().filter(|c| !c.asks_priority) {
        if !config.classes.iter().any(|c| c.name == class.name) {
            return Err(format!(
                "{}: no [[classes]] named {:?} for the fleet's agents",
                options.config.display(),
                class.name
            )
            .into());
        }
        for index in 0..class.agents {
            config.agents.push(corral::config::AgentConfig::new(
                format!("{}-{index:02}", class.name),
                Some(class.name.to_string()),
            ));
        }
    }
    config
        .validate()
        .map_err(|e| format!("{}: {e}", options.config.display()))?;
    Ok(config)
}
