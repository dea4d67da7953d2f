//! The `corral` command line: `serve` (the default), `check-config`,
//! `hash-key`, `health` and `keys new`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LoadError};
use crate::server::Server;
use crate::telemetry::{self, LogFormat};
use crate::upstream_url::UpstreamUrl;

pub mod health;
pub mod keys;

/// Keeps a herd of AI agents from trampling one Ollama server.
///
/// Point every agent's OLLAMA_HOST at corral (127.0.0.1:11435 by default)
/// and it forwards to Ollama with priorities, fair queuing, load shedding
/// and the rest of its layer stack.
#[derive(Debug, Parser)]
#[command(name = "corral", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (what `corral` alone does).
    Serve(ServeArgs),
    /// Check a config file and print the resolved layer stack.
    CheckConfig {
        /// The config file.
        path: PathBuf,
    },
    /// Print the SHA-256 of an API key, for `[[agents]] key_sha256`.
    ///
    /// Without KEY, the key is read from standard input (its trailing
    /// newline dropped), which keeps it out of the shell's history and
    /// the process list: `corral hash-key < key-file`.
    HashKey {
        /// The key; prefer standard input.
        key: Option<String>,
    },
    /// Exit 0 when a running corral answers its health probe, else 1.
    ///
    /// Asks /corral/healthz for 200 with "status":"ok" (with --ready,
    /// /corral/readyz for "status":"ready"); why it failed goes to
    /// stderr in one line. For container health checks: `corral health`.
    Health(HealthArgs),
    /// API keys for `[[agents]]`.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Clone, Args)]
struct HealthArgs {
    /// Where corral listens, in any form --listen takes (host, host:port,
    /// :port, http://host:port); an unspecified address (0.0.0.0, :port)
    /// is asked on loopback. With [admin] listen, give that address.
    /// [default: CORRAL_LISTEN when set, else 127.0.0.1:11435]
    #[arg(value_name = "URL", env = "CORRAL_LISTEN")]
    url: Option<String>,
    /// Ask /corral/readyz (the upstream answers too) instead of
    /// /corral/healthz (the process serves).
    #[arg(long)]
    ready: bool,
    /// How long the whole check may take [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print a fresh random API key (once: Corral keeps only its digest)
    /// and the `[[agents]]` entry holding its SHA-256.
    ///
    /// The key is the first line of the output: `corral keys new | head -n1`.
    New {
        /// The agent's id in the entry.
        #[arg(long, value_name = "NAME")]
        agent: Option<String>,
        /// The agent's class in the entry (the default class without it).
        #[arg(long, value_name = "CLASS")]
        class: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// The config file (TOML); without one, the defaults.
    #[arg(long, short = 'c', env = "CORRAL_CONFIG")]
    config: Option<PathBuf>,
    /// Listen on this address (overrides [server] listen), in any form
    /// OLLAMA_HOST takes: host, host:port, :port (every interface).
    #[arg(long, env = "CORRAL_LISTEN", value_parser = crate::listen::parse_listen)]
    listen: Option<SocketAddr>,
    /// The Ollama server: host, host:port, http://host:port or https://...
    /// (overrides [upstream] url).
    #[arg(long, env = "CORRAL_UPSTREAM")]
    upstream: Option<String>,
    /// Requests the upstream runs at once, its OLLAMA_NUM_PARALLEL
    /// (overrides [upstream] capacity).
    #[arg(long, env = "CORRAL_CAPACITY")]
    capacity: Option<usize>,
    /// Share state with the other replicas through this Redis
    /// (`redis://host:port/db`; sets [state] backend = "redis" and
    /// redis_url); prefer the variable when the URL holds a password.
    #[arg(long, env = "CORRAL_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// The admin token (overrides [admin] token); prefer the variable,
    /// which keeps it out of the process list.
    #[arg(long, env = "CORRAL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// How logs are written; RUST_LOG filters them.
    #[arg(long, env = "CORRAL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Reload the configuration whenever its file changes (checked every
    /// second). SIGHUP and `POST /corral/reload` reload it in any case.
    #[arg(long, env = "CORRAL_WATCH_CONFIG")]
    watch_config: bool,
}

impl Cli {
    /// Parses `args` (the program's name first) as the command line does,
    /// the environment variables included; the error is what `corral`
    /// would print. For tests of the commands deployment files run.
    ///
    /// ```
    /// use corral::cli::Cli;
    ///
    /// assert!(Cli::try_from_args(["corral", "health", "--ready"]).is_ok());
    /// assert!(Cli::try_from_args(["corral", "keys", "new", "--agent", "ops"]).is_ok());
    /// assert!(Cli::try_from_args(["corral", "heath"]).is_err());
    /// ```
    pub fn try_from_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args).map_err(|e| e.to_string())
    }
}

/// Runs the command line; the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CheckConfig { path }) => check_config(&path),
        Some(Command::HashKey { key }) => hash_key(key),
        Some(Command::Health(args)) => health::run(
            args.url.as_deref(),
            if args.ready {
                health::Probe::Ready
            } else {
                health::Probe::Alive
            },
            args.timeout.unwrap_or(health::DEFAULT_HEALTH_TIMEOUT),
        ),
        Some(Command::Keys(KeysCommand::New { agent, class })) => {
            keys::run_new(agent.as_deref(), class.as_deref())
        }
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::FAILURE;
        }
    };
    match crate::stack::build(&config, Some(path)) {
        Ok(stack) => {
            println!("{}: ok", path.display());
            print!("{}", crate::stack::describe(&config, &stack));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("corral: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(key) => key,
        None => {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                eprintln!("corral: cannot read the key from standard input: {e}");
                return ExitCode::FAILURE;
            }
            // As key_file and key_env are read.
            text.trim_end().to_string()
        }
    };
    // The same bound classify holds keys to at start.
    if key.len() < 8 {
        eprintln!("corral: a key must be at least 8 characters");
        return ExitCode::FAILURE;
    }
    println!("{}", corral_auth::key_digest(&key));
    ExitCode::SUCCESS
}

/// The config for `args`: the file (or defaults), then the environment
/// and flags over it (clap gives a flag precedence over its variable).
fn resolve(args: &ServeArgs) -> Result<Config, LoadError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let file = config
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::config::NO_FILE));
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(token) = &args.admin_token {
        config.admin.token = Some(token.clone());
    }
    if let Some(capacity) = args.capacity {
        config.upstream.capacity = Some(capacity);
        config.capacity_from = Some("--capacity / CORRAL_CAPACITY".into());
    }
    if let Some(url) = &args.redis_url {
        corral_auth::RedisReplay::check_url(url).map_err(|reason| LoadError {
            file: PathBuf::from("--redis-url/CORRAL_REDIS_URL"),
            line: None,
            key: String::new(),
            reason,
        })?;
        config.state.backend = crate::config::Backend::Redis;
        config.state.redis_url = Some(url.clone());
    }
    if let Some(upstream) = &args.upstream {
        UpstreamUrl::parse(upstream).map_err(|reason| LoadError {
            file: PathBuf::from("--upstream/CORRAL_UPSTREAM"),
            line: None,
            key: String::new(),
            reason,
        })?;
        config.upstream.url = upstream.clone();
    }
    config
        .validate()
        .and_then(|()| config.check_admin_exposure())
        .map_err(|e| LoadError::from_config(&file, e, None))?;
    Ok(config)
}

fn serve(args: ServeArgs) -> ExitCode {
    let _logs = telemetry::init_logging(args.log_format); // written out when dropped
    let config = match resolve(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("corral: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corral: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // Installed before the port answers, as the shutdown's: a SIGHUP
        // then reloads rather than kills.
        let hangups = hangups();
        let again = args.clone();
        let source: crate::reload::Source = std::sync::Arc::new(move || resolve(&again));
        let server = match Server::bind_with(&config, source).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("corral: {e}");
                return ExitCode::FAILURE;
            }
        };
        let layers: Vec<String> = config.layers().iter().map(|l| l.kind.clone()).collect();
        tracing::info!(
            listen = %server.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %server.admin_addr().map(|a| a.to_string()).unwrap_or_else(|| "main listener".into()),
            upstream = %config.upstreams_summary(),
            stack = %format!("classify, {}", if layers.is_empty() { "nothing else (layers = [])".to_string() } else { layers.join(", ") }),
            capacity = %config.capacity_summary(),
            state = %config.state.summary(),
            "corral is serving; point OLLAMA_HOST here"
        );
        let reloads = reload_triggers(&server, &args, hangups);
        server.run(shutdown).await;
        for trigger in reloads {
            trigger.abort();
        }
        ExitCode::SUCCESS
    })
}

/// The SIGHUP handler, where there are signals.
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "SIGHUP cannot reload: no handler"))
            .ok()
    }
    #[cfg(not(unix))]
    None
}

/// What reloads the configuration besides `POST /corral/reload`: SIGHUP,
/// and with `--watch-config` a change of the file.
fn reload_triggers(
    server: &Server,
    args: &ServeArgs,
    hangups: Hangups,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut triggers = Vec::new();
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        let reloader = server.reloader();
        triggers.push(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                if let Err(error) = reloader.reload().await {
                    tracing::error!(%error, "the configuration was not reloaded; the old one serves on");
                }
            }
        }));
    }
    #[cfg(not(unix))]
    let _ = hangups;
    match (&args.config, args.watch_config) {
        (Some(path), true) => triggers.push(tokio::spawn(crate::reload::watch_file(
            path.clone(),
            std::time::Duration::from_secs(1),
            server.reloader().handle(),
        ))),
        (None, true) => {
            tracing::warn!("--watch-config without --config: there is no file to watch")
        }
        _ => {}
    }
    triggers
}

/// SIGTERM or SIGINT. The handlers are installed now, before the
/// listener is bound: a signal that arrives as soon as the port answers
/// is a graceful stop, not the default action's kill.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("SIGTERM received"),
                        _ = int.recv() => tracing::info!("SIGINT received"),
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
