//! `herd`: the 131-agent scenario, straight to the upstream and then
//! through Corral, as a per-class table (and an SVG chart).
//!
//! ```sh
//! cargo run --release -p corral-benches --bin herd -- --duration 30s
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral_benches::herd::{self, Api, Mode, Options};

/// The 131-agent scenario.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// How long agents keep asking, per run.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long open requests may finish after that.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// The runs, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,corral"
    )]
    modes: Vec<Mode>,
    /// Multiplies every think time: 0.5 is a fleet twice as busy.
    #[arg(long, default_value_t = 1.0)]
    think_scale: f64,
    /// The seed of every agent's choices.
    #[arg(long, default_value_t = 131)]
    seed: u64,
    /// A real upstream (Ollama or OpenAI-compatible) instead of the
    /// simulated Ollama.
    #[arg(long)]
    upstream: Option<String>,
    /// The API the agents speak.
    #[arg(long, value_enum, default_value = "ollama")]
    api: Api,
    /// The generation model.
    #[arg(long, default_value = "llama3")]
    model: String,
    /// The embedding model.
    #[arg(long, default_value = "nomic-embed-text")]
    embed_model: String,
    /// Corral's config; the fleet's agents are added to its classes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/corral.toml"))]
    config: PathBuf,
    /// The upstream's parallelism (the simulated Ollama's --parallel and
    /// Corral's capacity).
    #[arg(long, default_value_t = 4)]
    capacity: usize,
    /// The simulated Ollama's queue bound (OLLAMA_MAX_QUEUE).
    #[arg(long, default_value_t = 512)]
    upstream_queue: usize,
    /// The simulated Ollama's time to first token.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    ttft: Duration,
    /// The simulated Ollama's tokens per second per generation.
    #[arg(long, default_value_t = 100.0)]
    tps: f64,
    /// The simulated Ollama's tokens per second for tinyllama, the
    /// degraded fallback model.
    #[arg(long, default_value_t = 500.0)]
    small_tps: f64,
    /// The simulated Ollama's model load time.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    load_time: Duration,
    /// Models the simulated Ollama keeps loaded at once.
    #[arg(long, default_value_t = 3)]
    max_loaded_models: usize,
    /// Write the report (Markdown) here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every request (JSON lines: run, class, kind, times,
    /// outcome) here.
    #[arg(long)]
    records: Option<PathBuf>,
    /// Write the chart (SVG) here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    corral_benches::run_main("herd", scenario(args))
}

async fn scenario(args: Args) -> Result<(), herd::Error> {
    let options = Options {
        duration: args.duration,
        grace: args.grace,
        think_scale: args.think_scale,
        seed: args.seed,
        upstream: args.upstream.clone(),
        api: args.api,
        model: args.model.clone(),
        embed_model: args.embed_model.clone(),
        config: args.config.clone(),
        capacity: args.capacity,
        upstream_queue: args.upstream_queue,
        ttft: args.ttft,
        tokens_per_sec: args.tps,
        small_model_tokens_per_sec: args.small_tps,
        load_time: args.load_time,
        max_loaded_models: args.max_loaded_models,
        ..Options::default()
    };
    eprintln!("herd: priority 1 alone, to know its unloaded latency...");
    let baseline = herd::unloaded(&options).await?;
    let mut runs = Vec::new();
    for mode in &args.modes {
        eprintln!(
            "herd: {} run, {} + {} grace...",
            mode.as_str(),
            humantime::format_duration(options.duration),
            humantime::format_duration(options.grace)
        );
        runs.push(herd::run(&options, *mode).await?);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = format!(
        "## The 131-agent scenario\n\n- Date: {}\n- Machine: {}\n- Command: `{command}`\n{}",
        herd::report::date(),
        herd::report::machine(),
        herd::report::markdown(&options, &baseline, &runs)
    );
    println!("{report}");
    if let Some(path) = &args.out {
        std::fs::write(path, &report).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.records {
        let mut lines = String::new();
        for run in &runs {
            for record in &run.records {
                lines.push_str(
                    &record
                        .to_json(&options.fleet, run.mode.as_str())
                        .to_string(),
                );
                lines.push('\n');
            }
        }
        std::fs::write(path, lines).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, herd::svg(&options, &runs)?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("herd: chart written to {}", path.display());
    }
    Ok(())
}
