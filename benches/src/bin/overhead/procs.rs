//! The targets as child processes: the simulated Ollama, the bare hyper
//! proxy, nginx and two `corral`s, each on its own loopback port, with
//! their logs in a scratch directory. Every child is killed when its
//! handle drops (`kill_on_drop`), so an error, a panic or Ctrl-C in the
//! bench leaves nothing running; nginx is first asked to stop (`-s
//! stop`), because killing only its master would orphan its workers.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::client::{fetch, BoxError};

/// A scratch directory removed when dropped (logs, nginx's files).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub(crate) fn new() -> std::io::Result<Self> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("corral-overhead-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port: bound, read and released (another process
/// could take it in between; on a quiet machine none does).
pub(crate) fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// How a child is stopped besides the kill on drop.
enum Stop {
    /// SIGKILL is enough (one process).
    Kill,
    /// Run this command first (nginx's `-s stop`, which takes its workers down).
    Command(std::process::Command),
}

/// A child process with its log file.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    stop: Stop,
}

impl Proc {
    /// Starts `program args` with `env`, its output in `dir/name.log`.
    pub(crate) fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        dir: &Path,
    ) -> Result<Self, BoxError> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            stop: Stop::Kill,
        })
    }

    /// Runs `command` before the kill when this drops.
    pub(crate) fn stop_with(&mut self, command: std::process::Command) {
        self.stop = Stop::Command(command);
    }

    /// The child's process id (0 once it has been reaped).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Whether it still runs and the end of its log, to explain a failure
    /// (an exited child stays a zombie until reaped: state `Z`).
    pub(crate) fn diagnose(&self) -> String {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let alive = pid != 0 && !matches!(fields.first(), None | Some(&"Z") | Some(&"X"));
        // Field 52 of stat (the 50th after the name) is a zombie's wait status.
        let code = fields.get(49).and_then(|c| c.parse::<i32>().ok());
        let status = match (alive, code) {
            (true, _) => "still running".to_string(),
            (false, Some(code)) if code & 0x7f != 0 => {
                format!("was killed by signal {}", code & 0x7f)
            }
            (false, Some(code)) => format!("has exited with status {}", (code >> 8) & 0xff),
            (false, None) => "has exited".to_string(),
        };
        let log = self.log_tail();
        format!("{} (pid {pid}) {status}; its log ends:\n{log}", self.name)
    }

    /// The last lines of its log, to explain a failure.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr/path` answers 200 (the target is up and reaches
    /// its upstream), failing with the log if the child exits or 15 s pass.
    pub(crate) async fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &'static str,
    ) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(
                    format!("{} exited ({status}):\n{}", self.name, self.log_tail()).into(),
                );
            }
            if let Ok((200, _)) = fetch(addr, path).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(
                    format!("{} not ready on {addr}:\n{}", self.name, self.log_tail()).into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    // Drop cannot await: a blocking wait of at most 3 s for nginx's
    // master to take its workers down, then the kill on drop.
    #[allow(clippy::disallowed_methods)]
    fn drop(&mut self) {
        if let Stop::Command(command) = &mut self.stop {
            let _ = command.stdout(Stdio::null()).stderr(Stdio::null()).status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // kill_on_drop sends SIGKILL if it still runs.
    }
}

/// Resident memory of `pids` summed, in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib(pids: &[u32]) -> Result<u64, BoxError> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .ok_or_else(|| format!("no VmRSS for process {pid}"))?;
        total += kib;
    }
    Ok(total)
}

/// `pid` and its children (nginx's master and workers), from the parent
/// pid field of every /proc/N/stat.
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{n}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: the
        // fields after the last ')' are state, then the parent's pid.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            pids.push(n);
        }
    }
    pids
}

/// The hard limit on open files (`ulimit -Hn`), from /proc/self/limits.
pub(crate) fn nofile_limits() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("Max open files"));
    let nums: Vec<u64> = line
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match nums.as_slice() {
        [soft, hard, ..] => (*soft, *hard),
        _ => (1024, 1024),
    }
}

/// nginx.conf for a plain keep-alive reverse proxy from `listen` to
/// `upstream`, every path it writes inside `dir` so it runs unprivileged.
pub(crate) fn nginx_conf(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: &str,
    nofile: u64,
) -> String {
    let d = dir.display();
    format!(
        r#"# Generated by the corral overhead bench.
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    # Clients and upstream connections both count: room for the idle step.
    worker_connections {conns};
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    # Never close a client's keep-alive connection during the bench
    # (nginx's default closes it after 1000 requests).
    keepalive_timeout 300s;
    keepalive_requests 100000000;

    upstream ollama {{
        server {upstream};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}

    server {{
        listen {listen} backlog=4096;
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Streams go out chunk by chunk, as Corral forwards them.
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"#,
        conns = nofile.min(65_535),
    )
}
