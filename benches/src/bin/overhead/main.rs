//! `overhead`: what a proxy in front of Ollama costs, in one run.
//!
//! Five targets, each a separate process on loopback, all over the same
//! instant simulated Ollama: the upstream itself (`direct`), a bare hyper
//! pass-through (the floor), nginx as a keep-alive reverse proxy, `corral`
//! with no layers and `corral` with `deploy/corral.toml`'s full stack.
//! Every workload step visits the targets in turn (rotating who goes
//! first), so drift on a shared machine falls on all of them alike:
//! small requests at fixed rates (open loop, latency from the intended
//! send time) and at saturation (closed loop), 200-chunk streams, and
//! thousands of idle keep-alive connections per proxy for memory. The
//! report, in markdown, says what each proxy adds over calling the
//! upstream directly and checks the design's targets.

mod client;
mod idle;
mod load;
mod procs;
mod render;
mod report;
mod run;
mod stream;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Measures what a proxy adds over calling Ollama directly: the
/// simulated Ollama, a bare hyper proxy, nginx, and corral with no layers
/// and with deploy/corral.toml, each as its own process.
#[derive(Debug, Parser)]
#[command(name = "overhead")]
pub(crate) struct Args {
    /// A short smoke run: 2 s steps, 200 and 500 requests/s, 40 streams,
    /// 1,000 idle connections.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Fixed rates in requests/s, comma-separated (default 1000,2500,5000;
    /// with --quick 200,500). A saturation step follows them.
    #[arg(long, value_delimiter = ',')]
    pub(crate) rates: Option<Vec<f64>>,
    /// Length of each target's turn at each step (default 10s; --quick 2s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
    /// Idle keep-alive connections held per proxy (default 10000; --quick 1000).
    #[arg(long)]
    pub(crate) idle_connections: Option<usize>,
    /// Keep-alive connections of the fixed-rate steps.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Connections of the saturation (closed-loop) step.
    #[arg(long, default_value_t = 64)]
    pub(crate) saturation_connections: usize,
    /// Streams of 200 chunks per target (default 400; --quick 40).
    #[arg(long)]
    pub(crate) streams: Option<usize>,
    /// Streams running at once.
    #[arg(long, default_value_t = 8)]
    pub(crate) stream_concurrency: usize,
    /// `--capacity` for the full-stack corral. The default matches the
    /// simulated Ollama's 1024 slots; deploy/corral.toml's 4 (a GPU's
    /// OLLAMA_NUM_PARALLEL) would queue requests the upstream could run and,
    /// at saturation, make degradation rewrite answers.
    #[arg(long, default_value_t = targets::MOCK_PARALLEL)]
    pub(crate) full_capacity: usize,
    /// nginx's worker_processes. `auto` (one per core) because corral and
    /// the bare proxy run one tokio worker thread per core too.
    #[arg(long, default_value = "auto")]
    pub(crate) nginx_workers: String,
    /// RUST_LOG for both corrals. The default turns the per-request access
    /// line off, as nginx runs with `access_log off`.
    #[arg(long, default_value = "info,corral::access=off")]
    pub(crate) corral_log: String,
    /// The nginx binary (default: `nginx` on PATH, then /usr/sbin/nginx).
    #[arg(long)]
    pub(crate) nginx: Option<PathBuf>,
    /// Leave nginx out.
    #[arg(long)]
    pub(crate) no_nginx: bool,
    /// Where `corral`, `corral-mock-ollama` and `bare-proxy` are (default:
    /// this binary's directory, i.e. target/release).
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// The full stack's config (default: the workspace's deploy/corral.toml).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Also write the report to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // benches/run-overhead passes the command as typed, since it execs us.
    let command = std::env::var("OVERHEAD_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("overhead: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = args.out.clone();
    // On Ctrl-C or SIGTERM the bench future is dropped, and with it every
    // child process (kill_on_drop; nginx is told to stop first).
    let result = runtime.block_on(async move {
        tokio::select! {
            result = run::run(args, command) => result,
            signal = stopped() => Err(format!("stopped by {signal}").into()),
        }
    });
    drop(runtime);
    match result {
        Ok(report) => {
            print!("{report}");
            if let Some(path) = out {
                if let Err(e) = std::fs::write(&path, &report) {
                    eprintln!("overhead: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overhead: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn stopped() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
