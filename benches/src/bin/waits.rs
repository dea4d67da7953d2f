//! `waits`: requests of mixed lengths at 1×, 2× and 10× what one
//! simulated Ollama server answers, each with a deadline; goodput, the
//! estimated waits against the real ones, `Retry-After` against when a
//! retry was let in, and the mean latency with lengths told (shorter
//! first) and untold (by arrival) (issue 19).
//!
//! ```sh
//! cargo run --release -p corral-benches --bin waits
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use corral_benches::herd::{self, report};
use corral_benches::waits::{self, Setup, Variant};

/// The predictable-waits scenario.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Offered loads, as multiples of what the server answers.
    #[arg(long, value_delimiter = ',', default_value = "1,2,10")]
    loads: Vec<f64>,
    /// The variants, in turn.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "told,untold")]
    variants: Vec<Variant>,
    /// How long requests arrive.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Each request's deadline.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Write the report (Markdown) here too.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write every request's record here (CSV), to study the errors.
    #[arg(long)]
    records: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    corral_benches::run_main("waits", scenario(args))
}

async fn scenario(args: Args) -> Result<(), herd::Error> {
    let setup = Setup {
        duration: args.duration,
        deadline: args.deadline,
        ..Setup::default()
    };
    let mut runs = Vec::new();
    for variant in &args.variants {
        for load in &args.loads {
            let run = waits::run(&setup, *load, *variant).await?;
            eprintln!(
                "waits: {load}× {}: {} requests, {:.0} in time / min, ETA error {:?}, told / waited {:?}",
                variant.as_str(),
                run.records.len(),
                run.goodput(),
                run.eta_error(),
                run.eta_bias(),
            );
            runs.push(run);
        }
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let text = format!(
        "## Predictable waits (`waits`)\n\n- Date: {}\n- Machine: {}\n- Command: `{command}`\n{}",
        report::date(),
        report::machine(),
        waits::report::markdown(&setup, &runs)
    );
    println!("{text}");
    if let Some(path) = &args.records {
        std::fs::write(path, waits::report::csv(&runs))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.out {
        std::fs::write(path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
