//! The closed-loop mixed-priority herd: a fixed amount of work, as fast
//! as the upstream can take it. 131 agents at priorities 1, 3, 5 and 9
//! (the design fleet's proportions: 10, 20, 60 and 41) each send a few
//! non-streamed generations one after another with no think time, all
//! starting at once, against a simulated Ollama of capacity 4 where each
//! request holds a slot 40 ms. The wall time says what a scheduler costs
//! in throughput, the priority-1 latency what it buys, and the upstream's
//! busy slots over time where the difference goes.
//!
//! The agents are unknown to Corral (its default class) and ask for their
//! priority with `X-Priority`, as agents that choose their own do: the
//! shipped classes' bulkheads and quotas are sized for the design fleet's
//! pace, not for a burst of work.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use corral_benches::herd::closed::{self, Variant};
//!
//! let options = closed::options(&closed::Setup::default());
//! let shipped = closed::run(&options, Variant::Shipped).await?;
//! let bare = closed::run(&options, Variant::NoReserve).await?;
//! println!("{:?} against {:?}", shipped.wall, bare.wall);
//! # Ok(()) }
//! ```

pub mod report;

use std::path::PathBuf;
use std::time::Duration;

use super::{run_edited, Class, Error, Mode, Options, RunResult};

/// How the fleet reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Through Corral with the config as shipped.
    Shipped,
    /// As shipped with the reserve strict (`lend_within = "0s"`): what
    /// the reserve did before it was lent.
    Strict,
    /// As shipped without the priority layer's `reserve`.
    NoReserve,
    /// Straight to the upstream (its own FIFO queue).
    Direct,
}

impl Variant {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shipped => "corral, as shipped",
            Self::Strict => "corral, strict reserve",
            Self::NoReserve => "corral, no reserve",
            Self::Direct => "direct",
        }
    }

    fn mode(self) -> Mode {
        match self {
            Self::Direct => Mode::Direct,
            _ => Mode::Corral,
        }
    }

    /// Changes the loaded config as this variant says.
    pub fn edit(self, config: &mut corral::Config) {
        for layer in config
            .layers
            .iter_mut()
            .flatten()
            .filter(|l| l.kind == "priority")
        {
            match self {
                Self::Shipped | Self::Direct => {}
                Self::NoReserve => {
                    layer.options.remove("reserve");
                }
                Self::Strict => {
                    if let Some(toml::Value::Table(reserve)) = layer.options.get_mut("reserve") {
                        reserve.insert("lend_within".into(), toml::Value::String("0s".into()));
                    }
                }
            }
        }
    }
}

/// What the closed herd is made of.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Agents per priority.
    pub agents: Vec<(u8, usize)>,
    /// Requests each agent sends, one after another.
    pub requests: u64,
    /// The upstream's parallelism (and Corral's capacity).
    pub capacity: usize,
    /// The simulated Ollama's time to first token.
    pub ttft: Duration,
    /// Its tokens per second.
    pub tokens_per_sec: f64,
    /// Tokens each request asks for (`num_predict`).
    pub tokens: u32,
    /// How often the upstream's busy slots are read.
    pub sample_every: Duration,
    /// Corral's config.
    pub config: PathBuf,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            agents: vec![(1, 10), (3, 20), (5, 60), (9, 41)],
            requests: 3,
            capacity: 4,
            // 20 ms + 2 more tokens at 100/s: 40 ms a request.
            ttft: Duration::from_millis(20),
            tokens_per_sec: 100.0,
            tokens: 3,
            sample_every: Duration::from_millis(10),
            config: Options::default().config,
        }
    }
}

impl Setup {
    /// How long one request holds an upstream slot.
    pub fn service_time(&self) -> Duration {
        let rest = f64::from(self.tokens.saturating_sub(1)) / self.tokens_per_sec.max(1e-9);
        self.ttft + Duration::from_secs_f64(rest)
    }

    /// The least wall time the work can take: every slot busy throughout.
    pub fn ideal(&self) -> Duration {
        let requests =
            self.agents.iter().map(|(_, n)| *n).sum::<usize>() as f64 * self.requests as f64;
        self.service_time()
            .mul_f64(requests / self.capacity.max(1) as f64)
    }
}

/// The fleet: one class per priority, unknown to Corral, asking its
/// priority; whole non-streamed generations, no think time.
pub fn fleet(setup: &Setup) -> Vec<Class> {
    setup
        .agents
        .iter()
        .map(|(priority, agents)| Class {
            name: NAMES[usize::from(priority.saturating_sub(1)).min(NAMES.len() - 1)],
            priority: *priority,
            agents: *agents,
            think: Duration::ZERO,
            deadline: Duration::from_secs(60),
            chat: 0.0,
            generate: 1.0,
            repeated: 0.0,
            tokens: setup.tokens,
            asks_priority: true,
        })
        .collect()
}

const NAMES: [&str; 10] = ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10"];

/// The runner's options for `setup`: a fresh simulated Ollama per run,
/// no model loads, the busy slots sampled.
pub fn options(setup: &Setup) -> Options {
    Options {
        // A bound, not the length: the run ends when the work is done.
        duration: Duration::from_secs(60),
        grace: Duration::from_secs(10),
        fleet: fleet(setup),
        config: setup.config.clone(),
        capacity: setup.capacity,
        upstream_queue: 4096,
        ttft: setup.ttft,
        tokens_per_sec: setup.tokens_per_sec,
        load_time: Duration::ZERO,
        requests_per_agent: Some(setup.requests),
        stampede: Duration::ZERO,
        sample_every: Some(setup.sample_every),
        ..Options::default()
    }
}

/// Runs the closed herd once as `variant` says.
pub async fn run(options: &Options, variant: Variant) -> Result<RunResult, Error> {
    run_edited(options, variant.mode(), &|config| variant.edit(config)).await
}

/// The priority layer's `reserve` in `config`, as written there.
pub fn reserve_line(config: &corral::Config) -> Option<String> {
    config
        .layers()
        .iter()
        .find(|l| l.kind == "priority")
        .and_then(|l| l.options.get("reserve"))
        .map(|reserve| format!("reserve = {reserve}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_setup_is_the_issues_herd() {
        let setup = Setup::default();
        assert_eq!(setup.agents.iter().map(|(_, n)| n).sum::<usize>(), 131);
        assert_eq!(setup.service_time(), Duration::from_millis(40));
        assert_eq!(setup.ideal(), Duration::from_millis(3930));
        assert!(fleet(&setup).iter().all(|c| c.asks_priority));
    }

    #[test]
    fn variants_edit_only_the_reserve() {
        let path = Options::default().config;
        let shipped = corral::Config::load(&path).unwrap();
        let edited = |variant: Variant| {
            let mut config = shipped.clone();
            variant.edit(&mut config);
            reserve_line(&config)
        };
        let line = edited(Variant::Shipped).expect("the shipped config has a reserve");
        assert_eq!(edited(Variant::Direct).as_deref(), Some(line.as_str()));
        assert_eq!(edited(Variant::NoReserve), None);
        assert!(edited(Variant::Strict)
            .unwrap()
            .contains("lend_within = \"0s\""));
    }
}
