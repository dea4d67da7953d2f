//! One run of the bench: start the targets, take every step with the
//! targets in turn, check what the answers say, render the report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{fetch, BoxError, Call};
use crate::idle::{idle, IdleResult};
use crate::load::{closed_loop, open_loop};
use crate::procs::{nofile_limits, TempDir};
use crate::render::Render;
use crate::report::Step;
use crate::stream::{streams, StreamResult};
use crate::targets::{start_all, Kind, Setup, Target};
use crate::Args;

/// The small request: 8 tokens, whole. No `temperature: 0` and no `seed`,
/// so it is not deterministic and Corral's cache never keeps it.
pub(crate) const SMALL: &str =
    r#"{"model":"llama3","prompt":"hi","stream":false,"options":{"num_predict":8}}"#;
/// The stream: 200 NDJSON token lines and a final one.
pub(crate) const STREAM: &str =
    r#"{"model":"llama3","prompt":"hi","stream":true,"options":{"num_predict":200}}"#;

/// What to run, from the flags and --quick.
pub(crate) struct Plan {
    /// Fixed rates, requests/s.
    pub(crate) rates: Vec<f64>,
    /// Each target's turn at each step.
    pub(crate) duration: Duration,
    /// Closed-loop warm-up per target before the first step.
    pub(crate) warm_up: Duration,
    /// Idle connections per proxy asked for.
    pub(crate) idle: usize,
    /// Streams per target.
    pub(crate) streams: usize,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let (rates, duration, idle, streams) = if args.quick {
            (vec![200.0, 500.0], Duration::from_secs(2), 1000, 40)
        } else {
            (
                vec![1000.0, 2500.0, 5000.0],
                Duration::from_secs(10),
                10_000,
                400,
            )
        };
        Self {
            rates: args.rates.clone().unwrap_or(rates),
            duration: args.duration.unwrap_or(duration),
            warm_up: if args.quick {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            },
            idle: args.idle_connections.unwrap_or(idle),
            streams: args.streams.unwrap_or(streams),
        }
    }
}

/// nginx from the flag, PATH or /usr/sbin.
fn find_nginx(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = flag {
        return Some(path.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/local/nginx/sbin"),
        ])
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// `program flag` first line of output (stdout or, for nginx, stderr).
fn version(program: &Path, flag: &str) -> String {
    match std::process::Command::new(program).arg(flag).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("{} ({e})", program.display()),
    }
}

/// Runs every step and returns the report.
pub(crate) async fn run(args: Args, command: String) -> Result<String, BoxError> {
    let plan = Plan::new(&args);
    let bin_dir = bin_dir_of(&args)?;
    let config = args.config.clone().unwrap_or_else(|| {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/corral.toml"
        ));
        std::fs::canonicalize(&path).unwrap_or(path)
    });
    let survey = Survey::of(&args, &plan);
    let dir = TempDir::new()?;
    // Declared after `dir`, so dropped before it: nginx's stop needs its pid file.
    let targets = start_all(&Setup {
        bin_dir: &bin_dir,
        nginx: survey.nginx.as_deref(),
        nginx_workers: &args.nginx_workers,
        config: &config,
        full_capacity: args.full_capacity,
        corral_log: &args.corral_log,
        nofile: survey.nofile.1,
        dir: dir.path(),
    })
    .await?;
    eprintln!(
        "overhead: {} targets up, logs in {}",
        targets.len(),
        dir.path().display()
    );
    let mut start_rss = Vec::new();
    for t in &targets {
        start_rss.push(t.rss_kib()?);
    }
    for t in &targets {
        closed_loop(t.addr, &Call::generate(t.addr, SMALL), plan.warm_up, 8)
            .await
            .map_err(|e| failed(t, "warm-up", e))?;
    }
    let steps = load_steps(&targets, &plan, &args).await?;
    let streamed = stream_steps(&targets, steps.len(), &plan, &args).await?;
    let idled = idle_steps(&targets, start_rss, survey.idle_n).await?;
    let metrics = match targets.iter().find(|t| t.kind == Kind::CorralFull) {
        Some(t) => fetch(t.addr, "/metrics")
            .await
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
        None => String::new(),
    };
    let render = Render {
        args: &args,
        plan: &plan,
        command,
        versions: versions(&bin_dir, survey.nginx.as_deref()),
        notes: survey.notes,
        nofile: survey.nofile,
        idle_n: survey.idle_n,
        config: &config,
    };
    Ok(render.report(&targets, &steps, &streamed, &idled, &metrics))
}

/// Where the three binaries are (this one's folder unless told), once
/// they are all there.
fn bin_dir_of(args: &Args) -> Result<PathBuf, BoxError> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("this binary has no directory")?
            .to_path_buf(),
    };
    for name in ["corral", "corral-mock-ollama", "bare-proxy"] {
        if !bin_dir.join(name).is_file() {
            return Err(format!(
                "no {name} in {}: build with `cargo build --release -p corral-proxy -p corral-mock-ollama -p corral-benches --bins` (benches/run-overhead does)",
                bin_dir.display()
            )
            .into());
        }
    }
    Ok(bin_dir)
}

/// What this machine allows: nginx or not, the open-files limits and so
/// the idle connections, and the notes saying what was left out.
struct Survey {
    nginx: Option<PathBuf>,
    nofile: (u64, u64),
    idle_n: usize,
    notes: Vec<String>,
}

impl Survey {
    fn of(args: &Args, plan: &Plan) -> Self {
        let nginx = if args.no_nginx {
            None
        } else {
            find_nginx(args.nginx.as_deref())
        };
        let mut notes = Vec::new();
        if nginx.is_none() {
            notes.push(
                "nginx was not found: it is left out (benches/run-overhead installs it)."
                    .to_string(),
            );
        }
        let (soft, hard) = nofile_limits();
        let idle_n = plan
            .idle
            .min(usize::try_from(soft.saturating_sub(1000)).unwrap_or(usize::MAX));
        if idle_n < plan.idle {
            notes.push(format!(
                "The open-files limit ({soft}) allowed {idle_n} idle connections, not {}.",
                plan.idle
            ));
        }
        Self {
            nginx,
            nofile: (soft, hard),
            idle_n,
            notes,
        }
    }
}

/// Each rate, then saturation, on every target in turn (the first one
/// rotating from step to step).
async fn load_steps(targets: &[Target], plan: &Plan, args: &Args) -> Result<Vec<Step>, BoxError> {
    let mut steps = Vec::new();
    let schedule: Vec<Option<f64>> = plan.rates.iter().copied().map(Some).chain([None]).collect();
    for (i, rate) in schedule.into_iter().enumerate() {
        let mut results = Vec::new();
        for (idx, t) in rotated(targets, i) {
            eprintln!(
                "overhead: {} at {}",
                t.kind.name(),
                rate.map_or("saturation".into(), |r| format!("{r}/s"))
            );
            let call = Call::generate(t.addr, SMALL);
            let r = match rate {
                Some(rate) => open_loop(t.addr, &call, rate, plan.duration, args.connections).await,
                None => {
                    closed_loop(t.addr, &call, plan.duration, args.saturation_connections).await
                }
            }
            .map_err(|e| failed(t, "load step", e))?;
            results.push((idx, t.kind, r));
            // Let the step's connections close before the next target's turn.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        results.sort_by_key(|(idx, ..)| *idx);
        steps.push(Step {
            rate,
            results: results.into_iter().map(|(_, k, r)| (k, r)).collect(),
        });
    }
    Ok(steps)
}

/// Long streams through every target.
async fn stream_steps(
    targets: &[Target],
    turn: usize,
    plan: &Plan,
    args: &Args,
) -> Result<Vec<(Kind, StreamResult)>, BoxError> {
    let mut streamed: Vec<(usize, Kind, StreamResult)> = Vec::new();
    for (idx, t) in rotated(targets, turn) {
        eprintln!("overhead: {} streams", t.kind.name());
        let r = streams(
            t.addr,
            &Call::generate(t.addr, STREAM),
            plan.streams,
            args.stream_concurrency,
        )
        .await
        .map_err(|e| failed(t, "streams", e))?;
        streamed.push((idx, t.kind, r));
    }
    streamed.sort_by_key(|(idx, ..)| *idx);
    Ok(streamed.into_iter().map(|(_, k, r)| (k, r)).collect())
}

/// Idle connections held open on every proxy: what they cost in memory.
async fn idle_steps(
    targets: &[Target],
    start_rss: Vec<u64>,
    idle_n: usize,
) -> Result<Vec<(Kind, IdleResult)>, BoxError> {
    let mut idled: Vec<(Kind, IdleResult)> = Vec::new();
    let proxies = targets
        .iter()
        .zip(start_rss)
        .filter(|(t, _)| t.kind != Kind::Direct);
    for (t, start_kib) in proxies {
        eprintln!("overhead: {} with {idle_n} idle connections", t.kind.name());
        let call = Call::generate(t.addr, SMALL);
        let r = idle(t.addr, &call, idle_n, start_kib, || t.rss_kib())
            .await
            .map_err(|e| failed(t, "idle step", e))?;
        idled.push((t.kind, r));
    }
    Ok(idled)
}

/// The versions of what ran, for the report.
fn versions(bin_dir: &Path, nginx: Option<&Path>) -> Vec<String> {
    let mut versions = vec![
        version(&bin_dir.join("corral"), "--version"),
        version(&bin_dir.join("corral-mock-ollama"), "--version"),
    ];
    if let Some(nginx) = nginx {
        versions.push(version(nginx, "-v"));
    }
    versions.push(version(Path::new("rustc"), "--version"));
    versions
}

/// `e` with the target it happened to, whether that still runs, and its log.
fn failed(t: &Target, what: &str, e: BoxError) -> BoxError {
    format!("{} {what}: {e}\n{}", t.kind.name(), t.diagnose()).into()
}

/// The targets with their index, starting at `shift` (mod the count) so
/// no target always goes first.
fn rotated(targets: &[Target], shift: usize) -> impl Iterator<Item = (usize, &Target)> {
    let n = targets.len();
    (0..n).map(move |j| {
        let idx = (shift + j) % n;
        (idx, &targets[idx])
    })
}
