//! `closed_herd`: the closed-loop mixed-priority herd (131 agents, 3
//! non-streamed requests each, priorities 1/3/5/9, capacity 4, 40 ms a
//! request) through Corral as shipped, with a strict reserve, without
//! the reserve, and straight to the upstream, in one sitting: wall time,
//! latency by priority, and the upstream's busy slots over time.
//!
//! ```sh
//! cargo run --release -p corral-benches --bin closed_herd
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral_benches::herd::closed::{self, report::Rounds, Setup, Variant};
use corral_benches::herd::{self, report};

/// The closed-loop mixed-priority herd.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The variants, run in turn within each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "shipped,strict,no-reserve,direct"
    )]
    modes: Vec<Variant>,
    /// How many times each variant runs.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests each agent sends, one after another.
    #[arg(long, default_value_t = 3)]
    requests: u64,
    /// The upstream's parallelism (and Corral's capacity).
    #[arg(long, default_value_t = 4)]
    capacity: usize,
    /// The simulated Ollama's time to first token.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    ttft: Duration,
    /// Its tokens per second.
    #[arg(long, default_value_t = 100.0)]
    tps: f64,
    /// Tokens each request asks for: with the defaults, 20 ms + 2 × 10 ms
    /// = 40 ms a request.
    #[arg(long, default_value_t = 3)]
    tokens: u32,
    /// How often the upstream's busy slots are read.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Corral's config (its agents are not added: they ask their
    /// priority in the default class).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/corral.toml"))]
    config: PathBuf,
    /// Write the report (Markdown) here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    corral_benches::run_main("closed_herd", scenario(args))
}

async fn scenario(args: Args) -> Result<(), herd::Error> {
    let setup = Setup {
        requests: args.requests,
        capacity: args.capacity,
        ttft: args.ttft,
        tokens_per_sec: args.tps,
        tokens: args.tokens,
        sample_every: args.sample,
        config: args.config.clone(),
        ..Setup::default()
    };
    let options = closed::options(&setup);
    let shipped = corral::Config::load(&setup.config)?;
    let reserve = closed::reserve_line(&shipped);
    let mut results: Vec<Rounds> = args
        .modes
        .iter()
        .map(|variant| Rounds {
            variant: *variant,
            runs: Vec::new(),
        })
        .collect();
    for round in 1..=args.rounds {
        for rounds in &mut results {
            let run = closed::run(&options, rounds.variant).await?;
            eprintln!(
                "closed_herd: round {round}, {}: {} ms",
                rounds.variant.as_str(),
                run.wall.as_millis()
            );
            rounds.runs.push(run);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let text = format!(
        "## The closed-loop mixed-priority herd\n\n- Date: {}\n- Machine: {}\n- Command: `{command}`\n{}",
        report::date(),
        report::machine(),
        closed::report::markdown(&setup, reserve.as_deref(), &results)
    );
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
