//! The fleet scenario (issue 18): two simulated Ollama servers that each
//! hold one model loaded at a time (`OLLAMA_MAX_LOADED_MODELS=1`) and take
//! 1.5 s to load one, three models, and the 131-agent herd asking for all
//! three. It runs the same work
//!
//! - through Corral over both servers (`[[upstreams]]`, each
//!   `max_loaded_models = 1`): one priority queue, work grouped by model;
//! - round robin across the two: straight to the servers, the client
//!   alternating per request, as a naive balancer does (each server then
//!   queues and swaps models itself);
//! - through Corral over one such server, the priority-1 baseline: as one
//!   `[[upstreams]]` entry with `max_loaded_models = 1` (the same grouping
//!   as over two); and, on request, as the one-server form `[upstream]`,
//!   which has no way to be told the server holds one model.
//!
//! and counts what each costs the servers: model loads, requests that
//! waited inside them, the wall time, and priority-1 latency.
//!
//! The agents are the closed herd's (10, 20, 60 and 41 at priorities 1,
//! 3, 5 and 9, asking with `X-Priority`), each keeping to one model (the
//! agents in turn: the first model, the second, the third), each sending a
//! few non-streamed generations one after another with no think time, all
//! starting at once against servers with nothing loaded.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use corral_benches::fleet::{self, Setup, Variant};
//!
//! let setup = Setup::default();
//! let corral = fleet::run(&setup, Variant::Corral).await?;
//! let naive = fleet::run(&setup, Variant::RoundRobin).await?;
//! println!("{} loads against {}", corral.loads(), naive.loads());
//! # Ok(()) }
//! ```

mod drive;
pub mod report;

use std::time::Duration;

use corral_mock_ollama::{MockConfig, MockOllama, Stats};
use tokio::time::Instant;

use crate::herd::{percentile, Error};

/// How the fleet reaches the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Corral over two servers, each an `[[upstreams]]` entry with
    /// `max_loaded_models = 1`.
    Corral,
    /// Straight to the two servers, alternating per request.
    RoundRobin,
    /// Corral over one server as one `[[upstreams]]` entry with
    /// `max_loaded_models = 1`: grouped by model as over two. The
    /// priority-1 baseline.
    OneServer,
    /// Corral over one server as `[upstream]` with its capacity: the
    /// one-server form, which knows nothing of what is loaded (it cannot
    /// be told the server holds one model), so it sends every model at
    /// once and the server swaps on almost every request.
    OneServerPlain,
}

impl Variant {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Corral => "corral, two servers",
            Self::RoundRobin => "round robin, two servers",
            Self::OneServer => "corral, one server",
            Self::OneServerPlain => "corral, one server as `[upstream]`",
        }
    }

    /// How many simulated servers it runs.
    pub fn servers(self) -> usize {
        match self {
            Self::Corral | Self::RoundRobin => 2,
            Self::OneServer | Self::OneServerPlain => 1,
        }
    }
}

/// What the scenario is made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Agents per priority.
    pub agents: Vec<(u8, usize)>,
    /// The models; agent `i` (counted over the whole fleet) asks for
    /// model `i % models.len()`.
    pub models: Vec<String>,
    /// Requests each agent sends, one after another.
    pub requests: u64,
    /// Each server's parallelism per loaded model (`OLLAMA_NUM_PARALLEL`),
    /// and Corral's capacity for it.
    pub parallel: usize,
    /// Models each server keeps loaded (`OLLAMA_MAX_LOADED_MODELS`).
    pub max_loaded_models: usize,
    /// How long a server takes to load a model.
    pub load_time: Duration,
    /// A server's time to first token.
    pub ttft: Duration,
    /// Its tokens per second per generation.
    pub tokens_per_sec: f64,
    /// Tokens each request asks for (`num_predict`).
    pub tokens: u32,
    /// The priority layer's `aging`.
    pub aging: Duration,
    /// Each request gives up after this long.
    pub deadline: Duration,
    /// What Corral takes a model load to cost (the margin a request must
    /// outwait the work it would displace by), set on the fleet with
    /// `Fleet::set_load_cost`: no config key sets it yet. `None`: the
    /// fleet's own, [`corral_fleet::DEFAULT_LOAD_COST`] (2 s).
    pub load_cost: Option<Duration>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            agents: vec![(1, 10), (3, 20), (5, 60), (9, 41)],
            models: vec!["llama3".into(), "qwen2.5".into(), "mistral".into()],
            requests: 2,
            parallel: 4,
            max_loaded_models: 1,
            load_time: Duration::from_millis(1500),
            // The herd's upstream: 100 ms to the first token, 100 tokens/s.
            ttft: Duration::from_millis(100),
            tokens_per_sec: 100.0,
            tokens: 20,
            aging: Duration::from_secs(30),
            deadline: Duration::from_secs(120),
            load_cost: None,
        }
    }
}

impl Setup {
    /// How long one request holds a slot once its model is loaded.
    pub fn service_time(&self) -> Duration {
        let rest = f64::from(self.tokens.saturating_sub(1)) / self.tokens_per_sec.max(1e-9);
        self.ttft + Duration::from_secs_f64(rest)
    }

    /// Every agent's priority and model, in fleet order.
    pub fn fleet(&self) -> Vec<(u8, usize)> {
        let models = self.models.len().max(1);
        self.agents
            .iter()
            .flat_map(|(priority, n)| std::iter::repeat_n(*priority, *n))
            .enumerate()
            .map(|(i, priority)| (priority, i % models))
            .collect()
    }

    /// Requests the whole fleet sends.
    pub fn total_requests(&self) -> usize {
        self.fleet().len() * usize::try_from(self.requests).unwrap_or(usize::MAX)
    }

    fn server(&self) -> MockConfig {
        MockConfig {
            parallel: self.parallel,
            // Ollama's queue is bounded; a bound no run reaches, so what
            // waited inside shows as `peak_queued`, not as refusals.
            max_queue: 100_000,
            ttft: self.ttft,
            tokens_per_sec: self.tokens_per_sec,
            // Answers as long as `num_predict` asks.
            tokens: 1 << 16,
            load_time: self.load_time,
            max_loaded_models: self.max_loaded_models,
            models: self.models.clone(),
            log_capacity: 0,
            ..MockConfig::default()
        }
    }

    /// Corral's config for `variant` over `servers`: the priority layer
    /// alone (with its `aging`), so what differs is where requests go.
    pub fn corral_config(&self, variant: Variant, servers: &[String]) -> String {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[[layers]]\nkind = \"priority\"\naging = \"{}\"\n\n",
            humantime::format_duration(self.aging)
        );
        match variant {
            Variant::OneServerPlain => {
                let url = servers.first().map_or("", String::as_str);
                // One pool of `parallel` for every model: the server runs
                // one model at a time.
                text.push_str(&format!(
                    "[upstream]\nurl = \"{url}\"\ncapacity = {}\n",
                    self.parallel
                ));
            }
            _ => {
                for (i, url) in servers.iter().enumerate() {
                    text.push_str(&format!(
                        "[[upstreams]]\nname = \"gpu-{i}\"\nurl = \"{url}\"\ncapacity = {}\nmax_loaded_models = {}\n\n",
                        self.parallel, self.max_loaded_models
                    ));
                }
            }
        }
        text
    }
}

/// One request as the agent saw it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The agent's priority.
    pub priority: u8,
    /// The model asked for, an index into [`Setup::models`].
    pub model: usize,
    /// From sending to the end of the answer.
    pub latency: Duration,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// Everything one run saw.
#[derive(Debug, Clone)]
pub struct Run {
    /// How the fleet reached the servers.
    pub variant: Variant,
    /// Every request.
    pub records: Vec<Record>,
    /// What each server saw, in order.
    pub servers: Vec<Stats>,
    /// From the first request to the last answer.
    pub wall: Duration,
}

impl Run {
    /// Model loads, all servers together.
    pub fn loads(&self) -> u64 {
        self.servers.iter().map(|s| s.model_loads).sum()
    }

    /// The most requests that waited inside each server at once.
    pub fn peak_queued(&self) -> Vec<u64> {
        self.servers.iter().map(|s| s.peak_queued).collect()
    }

    /// Requests that got no answer.
    pub fn errors(&self) -> usize {
        self.records.iter().filter(|r| r.error.is_some()).count()
    }

    /// The p50 and p99 (nearest rank) of `priority`'s answered requests.
    pub fn latency(&self, priority: u8) -> (Option<Duration>, Option<Duration>) {
        let mut latencies: Vec<Duration> = self
            .records
            .iter()
            .filter(|r| r.priority == priority && r.error.is_none())
            .map(|r| r.latency)
            .collect();
        (
            percentile(&mut latencies, 50.0),
            percentile(&mut latencies, 99.0),
        )
    }
}

/// Runs the fleet once as `variant` says, against fresh servers with
/// nothing loaded.
pub async fn run(setup: &Setup, variant: Variant) -> Result<Run, Error> {
    let mut servers = Vec::new();
    for _ in 0..variant.servers() {
        servers.push(MockOllama::start(setup.server()).await?);
    }
    let urls: Vec<String> = servers.iter().map(MockOllama::url).collect();
    let corral = match variant {
        Variant::RoundRobin => None,
        _ => {
            let text = setup.corral_config(variant, &urls);
            let config = corral::Config::parse(&text, std::path::Path::new("fleet.toml"))?;
            let stack = corral::stack::build(&config, None)?;
            if let (Some(cost), Some(fleet)) = (setup.load_cost, stack.upstream().fleet()) {
                fleet.set_load_cost(cost);
            }
            Some(corral::Running::start_stack(&config, &stack).await?)
        }
    };
    let bases = match &corral {
        Some(corral) => vec![corral.url()],
        None => urls,
    };
    let started = Instant::now();
    let records = drive::run(setup, bases).await;
    let wall = started.elapsed();
    if let Some(corral) = corral {
        corral.shutdown().await;
    }
    Ok(Run {
        variant,
        records,
        servers: servers.iter().map(MockOllama::stats).collect(),
        wall,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_setup_is_the_issues_scenario() {
        let setup = Setup::default();
        let fleet = setup.fleet();
        assert_eq!(fleet.len(), 131);
        assert_eq!(setup.total_requests(), 262);
        assert_eq!(setup.service_time(), Duration::from_millis(290));
        // Priority 1 asks for every model, and so does every priority.
        for priority in [1, 3, 5, 9] {
            let mut models: Vec<usize> = fleet
                .iter()
                .filter(|(p, _)| *p == priority)
                .map(|(_, m)| *m)
                .collect();
            models.sort_unstable();
            models.dedup();
            assert_eq!(models, [0, 1, 2], "priority {priority}");
        }
    }

    #[test]
    fn configs_parse_with_each_servers_limit() {
        let setup = Setup::default();
        let two = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".into(),
        ];
        let path = std::path::Path::new("fleet.toml");
        let corral = corral::Config::parse(&setup.corral_config(Variant::Corral, &two), path)
            .expect("parses");
        assert_eq!(corral.upstreams.len(), 2);
        assert!(corral
            .upstreams
            .iter()
            .all(|u| u.max_loaded_models == Some(1)));
        let plain = corral::Config::parse(
            &setup.corral_config(Variant::OneServerPlain, &two[..1]),
            path,
        )
        .expect("parses");
        assert!(plain.upstreams.is_empty());
        assert_eq!(plain.upstream.capacity, Some(4));
        let one = corral::Config::parse(&setup.corral_config(Variant::OneServer, &two[..1]), path)
            .expect("parses");
        assert_eq!(one.upstreams.len(), 1);
    }
}
