//! `fleet`: two simulated Ollama servers that each hold one model loaded
//! (1.5 s a load), three models, the 131-agent herd asking for all three;
//! through Corral over both, round robin across them, and through Corral
//! over one server: model loads, requests queued inside the servers, wall
//! time, priority-1 latency and errors (issue 18).
//!
//! ```sh
//! cargo run --release -p corral-benches --bin fleet
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral_benches::fleet::{self, Setup, Variant};
use corral_benches::herd::{self, report};

/// The fleet scenario: several servers behind one queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The runs, in turn.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "corral,round-robin,one-server"
    )]
    modes: Vec<Variant>,
    /// Requests each agent sends, one after another.
    #[arg(long, default_value_t = 2)]
    requests: u64,
    /// Each server's parallelism per loaded model (and Corral's capacity
    /// for it).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// How long a server takes to load a model.
    #[arg(long, default_value = "1500ms", value_parser = humantime::parse_duration)]
    load_time: Duration,
    /// A server's time to first token.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    ttft: Duration,
    /// Its tokens per second.
    #[arg(long, default_value_t = 100.0)]
    tps: f64,
    /// Tokens each request asks for.
    #[arg(long, default_value_t = 20)]
    tokens: u32,
    /// What Corral takes a model load to cost, set on its fleet (no
    /// config key sets it yet); absent, the fleet's default (2 s).
    #[arg(long, value_parser = humantime::parse_duration)]
    load_cost: Option<Duration>,
    /// Write the report (Markdown) here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    corral_benches::run_main("fleet", scenario(args))
}

async fn scenario(args: Args) -> Result<(), herd::Error> {
    let setup = Setup {
        requests: args.requests,
        parallel: args.parallel,
        load_time: args.load_time,
        ttft: args.ttft,
        tokens_per_sec: args.tps,
        tokens: args.tokens,
        load_cost: args.load_cost,
        ..Setup::default()
    };
    let mut runs = Vec::new();
    for variant in &args.modes {
        let run = fleet::run(&setup, *variant).await?;
        eprintln!(
            "fleet: {}: {} ms, {} loads, peak queued {:?}, {} errors",
            variant.as_str(),
            run.wall.as_millis(),
            run.loads(),
            run.peak_queued(),
            run.errors()
        );
        runs.push(run);
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let text = format!(
        "## Several servers behind one queue (`fleet`)\n\n- Date: {}\n- Machine: {}\n- Command: `{command}`\n{}",
        report::date(),
        report::machine(),
        fleet::report::markdown(&setup, &runs)
    );
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
