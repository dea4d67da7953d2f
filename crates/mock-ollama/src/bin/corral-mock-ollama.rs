//! `corral-mock-ollama`: the simulated Ollama as a server process.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use corral_mock_ollama::{MockConfig, MockOllama};

/// A simulated Ollama server for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "corral-mock-ollama", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11434")]
    listen: SocketAddr,
    /// Requests generating at once per model (OLLAMA_NUM_PARALLEL).
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests that may wait for a slot before 503 "server busy" (OLLAMA_MAX_QUEUE).
    #[arg(long, default_value_t = 512)]
    max_queue: usize,
    /// Milliseconds from getting a slot to the first token.
    #[arg(long, default_value_t = 20)]
    ttft_ms: u64,
    /// Generated tokens per second per request.
    #[arg(long, default_value_t = 200.0)]
    tps: f64,
    /// Tokens per second of one model, as MODEL=TPS; repeatable
    /// (`--model-tps tinyllama=800`).
    #[arg(long, value_parser = parse_model_tps)]
    model_tps: Vec<(String, f64)>,
    /// Tokens in an answer that sets no num_predict.
    #[arg(long, default_value_t = 24)]
    tokens: usize,
    /// Milliseconds to load a model that is not loaded.
    #[arg(long, default_value_t = 0)]
    load_ms: u64,
    /// Models kept loaded at once (OLLAMA_MAX_LOADED_MODELS).
    #[arg(long, default_value_t = 3)]
    max_loaded_models: usize,
    /// The models the server has, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "llama3,tinyllama,nomic-embed-text"
    )]
    models: Vec<String>,
    /// Length of embedding vectors.
    #[arg(long, default_value_t = 16)]
    embedding_dim: usize,
    /// Share of inference requests answered 500 (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of streams that stall halfway (0..1).
    #[arg(long, default_value_t = 0.0)]
    stall_rate: f64,
    /// Milliseconds a stall lasts.
    #[arg(long, default_value_t = 3_600_000)]
    stall_ms: u64,
    /// Share of streams whose connection drops halfway (0..1).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Milliseconds before any response's headers.
    #[arg(long, default_value_t = 0)]
    slow_headers_ms: u64,
    /// Seed of the fault dice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    for (name, rate) in [
        ("error-rate", args.error_rate),
        ("stall-rate", args.stall_rate),
        ("drop-rate", args.drop_rate),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            eprintln!("corral-mock-ollama: --{name} must be between 0 and 1, not {rate}");
            std::process::exit(2);
        }
    }
    let config = MockConfig {
        parallel: args.parallel,
        max_queue: args.max_queue,
        ttft: Duration::from_millis(args.ttft_ms),
        tokens_per_sec: args.tps,
        tokens: args.tokens,
        load_time: Duration::from_millis(args.load_ms),
        max_loaded_models: args.max_loaded_models,
        models: args.models,
        embedding_dim: args.embedding_dim,
        error_rate: args.error_rate,
        stall_rate: args.stall_rate,
        stall: Duration::from_millis(args.stall_ms),
        drop_rate: args.drop_rate,
        slow_headers: Duration::from_millis(args.slow_headers_ms),
        seed: args.seed,
        model_tokens_per_sec: args.model_tps.into_iter().collect(),
        ..MockConfig::default()
    };
    let mock = MockOllama::bind(args.listen, config).await?;
    tracing::info!(addr = %mock.addr(), "simulated Ollama listening");
    tokio::select! {
        _ = mock_wait(mock) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn parse_model_tps(value: &str) -> Result<(String, f64), String> {
    let (model, tps) = value
        .split_once('=')
        .ok_or_else(|| format!("expected MODEL=TPS, not {value:?}"))?;
    let tps: f64 = tps
        .parse()
        .map_err(|_| format!("{tps:?} is not a number of tokens per second"))?;
    if model.is_empty() || !tps.is_finite() || tps <= 0.0 {
        return Err(format!(
            "expected MODEL=TPS with TPS above 0, not {value:?}"
        ));
    }
    Ok((model.to_string(), tps))
}

async fn mock_wait(mock: MockOllama) {
    mock.wait().await;
}
