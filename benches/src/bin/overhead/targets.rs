//! Starting the five targets: the upstream and the four ways in front of
//! it, each a separate process on its own port, all forwarding to the
//! same simulated Ollama.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::client::BoxError;
use crate::procs::{free_addr, nginx_conf, rss_kib, with_children, Proc};

/// The simulated Ollama's generation slots: far more than the bench ever
/// has in flight, so it never queues and never answers 503.
pub(crate) const MOCK_PARALLEL: usize = 1024;

/// Which target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The simulated Ollama itself: the baseline every proxy is held to.
    Direct,
    /// `bare-proxy`: the floor any hyper reverse proxy pays.
    Bare,
    /// nginx as a plain keep-alive reverse proxy.
    Nginx,
    /// `corral` with `layers = []`: classify only.
    CorralNone,
    /// `corral` with no `[[layers]]`: the protective default stack
    /// (shed, priority, retry, breaker).
    CorralDefault,
    /// `corral` with `deploy/corral.toml`'s whole stack.
    CorralFull,
}

impl Kind {
    /// Its name in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Bare => "bare hyper",
            Kind::Nginx => "nginx",
            Kind::CorralNone => "corral (no layers)",
            Kind::CorralDefault => "corral (default stack)",
            Kind::CorralFull => "corral (full stack)",
        }
    }
}

/// A running target.
pub(crate) struct Target {
    /// Which one.
    pub(crate) kind: Kind,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The command line it was started with, for the report.
    pub(crate) command: String,
    proc: Proc,
}

impl Target {
    /// Its processes: nginx's master and workers, or the one process.
    pub(crate) fn pids(&self) -> Vec<u32> {
        match self.kind {
            Kind::Nginx => with_children(self.proc.pid()),
            _ => vec![self.proc.pid()],
        }
    }

    /// Whether it still runs and the end of its log.
    pub(crate) fn diagnose(&self) -> String {
        self.proc.diagnose()
    }

    /// Resident memory of all its processes, in KiB.
    pub(crate) fn rss_kib(&self) -> Result<u64, BoxError> {
        rss_kib(&self.pids())
    }
}

/// Where the binaries and files the targets need are.
pub(crate) struct Setup<'a> {
    /// The directory holding `corral`, `corral-mock-ollama`, `bare-proxy`.
    pub(crate) bin_dir: &'a Path,
    /// nginx, or None to leave it out.
    pub(crate) nginx: Option<&'a Path>,
    /// `worker_processes` for nginx.
    pub(crate) nginx_workers: &'a str,
    /// The full stack's config file.
    pub(crate) config: &'a Path,
    /// `--capacity` for the full stack.
    pub(crate) full_capacity: usize,
    /// RUST_LOG for the corrals.
    pub(crate) corral_log: &'a str,
    /// The open-files limit, for nginx's workers.
    pub(crate) nofile: u64,
    /// The scratch directory.
    pub(crate) dir: &'a Path,
}

/// How to start one target.
struct Launch {
    kind: Kind,
    program: PathBuf,
    args: Vec<String>,
    /// Its `RUST_LOG`, if it logs.
    log: Option<String>,
    addr: SocketAddr,
    /// Run before the kill when the target drops.
    stop: Option<std::process::Command>,
}

/// Starts one target and waits until it answers `GET /api/version`
/// (which proxies reach through to the upstream).
async fn start(launch: Launch, dir: &Path) -> Result<Target, BoxError> {
    let Launch {
        kind,
        program,
        args,
        log,
        addr,
        stop,
    } = launch;
    let name = kind.name().replace([' ', '(', ')'], "");
    let env: Vec<(&str, &str)> = log.iter().map(|l| ("RUST_LOG", l.as_str())).collect();
    let mut proc = Proc::spawn(&name, &program, &args, &env, dir)?;
    if let Some(stop) = stop {
        proc.stop_with(stop);
    }
    proc.wait_ready(addr, "/api/version").await?;
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        }))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Target {
        kind,
        addr,
        command,
        proc,
    })
}

/// Starts every target, one after the other; the upstream first.
pub(crate) async fn start_all(setup: &Setup<'_>) -> Result<Vec<Target>, BoxError> {
    let mock_addr = free_addr()?;
    let up = mock_addr.to_string();
    let mut launches = vec![upstream(setup, mock_addr), bare(setup, &up)?];
    if let Some(nginx) = setup.nginx {
        launches.push(nginx_launch(setup, nginx, mock_addr)?);
    }
    launches.extend(corrals(setup, &up)?);
    let mut targets = Vec::new();
    for launch in launches {
        targets.push(start(launch, setup.dir).await?);
    }
    Ok(targets)
}

/// The simulated Ollama everything else forwards to, answering at once.
fn upstream(setup: &Setup<'_>, addr: SocketAddr) -> Launch {
    let args = vec![
        "--listen".into(),
        addr.to_string(),
        "--parallel".into(),
        MOCK_PARALLEL.to_string(),
        "--max-queue".into(),
        "100000".into(),
        "--ttft-ms".into(),
        "0".into(),
        "--tps".into(),
        "inf".into(),
        // The answer's length when num_predict does not cap it lower: the
        // stream's 200 tokens; the small request caps it at 8.
        "--tokens".into(),
        "200".into(),
    ];
    Launch {
        kind: Kind::Direct,
        program: setup.bin_dir.join("corral-mock-ollama"),
        args,
        log: Some("warn".into()),
        addr,
        stop: None,
    }
}

/// The bare hyper proxy.
fn bare(setup: &Setup<'_>, up: &str) -> Result<Launch, BoxError> {
    let addr = free_addr()?;
    Ok(Launch {
        kind: Kind::Bare,
        program: setup.bin_dir.join("bare-proxy"),
        args: proxy_args(addr, up),
        log: None,
        addr,
        stop: None,
    })
}

/// nginx with its config written into the scratch directory, stopped
/// with `-s stop` (so its pid file is still there).
fn nginx_launch(
    setup: &Setup<'_>,
    nginx: &Path,
    mock_addr: SocketAddr,
) -> Result<Launch, BoxError> {
    let addr = free_addr()?;
    let conf = setup.dir.join("nginx.conf");
    std::fs::write(
        &conf,
        nginx_conf(
            setup.dir,
            addr,
            mock_addr,
            setup.nginx_workers,
            setup.nofile,
        ),
    )?;
    let base: Vec<String> = vec![
        "-p".into(),
        setup.dir.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
        "-e".into(),
        setup.dir.join("error.log").display().to_string(),
    ];
    let mut args = base.clone();
    args.extend(["-g".into(), "daemon off;".into()]);
    let mut stop = std::process::Command::new(nginx);
    stop.args(&base).args(["-s", "stop"]);
    Ok(Launch {
        kind: Kind::Nginx,
        program: nginx.to_path_buf(),
        args,
        log: None,
        addr,
        stop: Some(stop),
    })
}

/// Corral with no layers, with the default stack, and with the full
/// stack of the shipped config.
fn corrals(setup: &Setup<'_>, up: &str) -> Result<Vec<Launch>, BoxError> {
    let capacity = setup.full_capacity.to_string();
    let corral = |kind, args, addr| Launch {
        kind,
        program: setup.bin_dir.join("corral"),
        args,
        log: Some(setup.corral_log.to_string()),
        addr,
        stop: None,
    };
    let mut launches = Vec::new();
    for (kind, file, layers) in [
        (
            Kind::CorralNone,
            "none.toml",
            Some(toml::Value::Array(Vec::new())),
        ),
        (Kind::CorralDefault, "default.toml", None),
    ] {
        let addr = free_addr()?;
        let mut args = vec![
            "--config".into(),
            unbounded(None, setup.dir, file, layers)?
                .display()
                .to_string(),
        ];
        args.extend(proxy_args(addr, up));
        if kind == Kind::CorralDefault {
            // As the full stack: the scheduler must not queue what this
            // upstream could run, so the bench measures the stack.
            args.extend(["--capacity".into(), capacity.clone()]);
        }
        launches.push(corral(kind, args, addr));
    }
    let addr = free_addr()?;
    let args = vec![
        "--config".into(),
        unbounded(Some(setup.config), setup.dir, "full.toml", None)?
            .display()
            .to_string(),
        "--listen".into(),
        addr.to_string(),
        "--upstream".into(),
        up.to_string(),
        "--capacity".into(),
        capacity,
    ];
    launches.push(corral(Kind::CorralFull, args, addr));
    Ok(launches)
}

/// `source` (or an empty config) with no bound on connections per client
/// address, written to `dir/name`: every connection of the bench comes
/// from 127.0.0.1, and the idle step holds thousands of them, as nginx
/// and the bare proxy allow.
fn unbounded(
    source: Option<&Path>,
    dir: &Path,
    name: &str,
    layers: Option<toml::Value>,
) -> Result<PathBuf, BoxError> {
    let mut config: toml::Table = match source {
        Some(path) => std::fs::read_to_string(path)?.parse()?,
        None => toml::Table::new(),
    };
    if let Some(layers) = layers {
        config.insert("layers".into(), layers);
    }
    let server = config
        .entry("server")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(server) = server {
        server.insert(
            "max_connections_per_address".into(),
            toml::Value::Integer(0),
        );
    }
    let path = dir.join(name);
    std::fs::write(&path, toml::to_string(&config)?)?;
    Ok(path)
}

/// `--listen ADDR --upstream UP`: what every proxy under test is told.
fn proxy_args(addr: std::net::SocketAddr, up: &str) -> Vec<String> {
    vec![
        "--listen".into(),
        addr.to_string(),
        "--upstream".into(),
        up.to_string(),
    ]
}
