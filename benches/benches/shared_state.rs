//! What sharing state through Redis costs one request: a permit from the
//! shared scheduler (enqueue and grant in one Lua script; release sent
//! without waiting), and a quota check (one Lua script), each against a
//! `redis-server` of the bench's own on loopback (or `REDIS_URL`), next to
//! the same through the in-memory state.

#![allow(missing_docs)] // criterion_group! makes an undocumented pub fn.

use std::time::Duration;

use corral_core::{Priority, RedisState};
use corral_priority::{PriorityConfig, Scheduler, Ticket};
use corral_ratelimit::{Check, Checked, MemoryStore, Quota, RateStore, RedisRates};
use criterion::{criterion_group, criterion_main, Criterion};

fn ticket() -> Ticket {
    Ticket {
        agent: "bench".into(),
        priority: Priority::new(5).expect("1..=10"),
        weight: 1.0,
        cost: 300.0,
        bytes: 256,
        deadline: None,
    }
}

/// A server of the bench's own, killed when dropped.
struct Server(Option<std::process::Child>, String);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server() -> Server {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Server(None, url);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/test installs it)");
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        // No runtime yet, and a process has no event to wait on.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(10));
    }
    Server(Some(child), format!("redis://127.0.0.1:{port}"))
}

fn shared_state(c: &mut Criterion) {
    let server = redis_server();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let prefix = format!("corral-bench-{}:", std::process::id());
    let state =
        RedisState::new(&server.1, &prefix, "bench", Duration::from_secs(1)).expect("a Redis URL");
    let config = PriorityConfig {
        capacity: 64,
        ..PriorityConfig::default()
    };
    let (shared, local) = runtime.block_on(async {
        (
            Scheduler::shared(&config, state.clone(), Duration::from_secs(10)).expect("config"),
            Scheduler::new(&config).expect("config"),
        )
    });

    let mut group = c.benchmark_group("permit_uncontended");
    group.bench_function("memory", |b| {
        b.to_async(&runtime).iter(|| async {
            drop(local.acquire(ticket(), None).await.expect("granted"));
        });
    });
    group.bench_function("redis", |b| {
        b.to_async(&runtime).iter(|| async {
            drop(shared.acquire(ticket(), None).await.expect("granted"));
        });
    });
    group.finish();

    let quota = Quota {
        limit: u64::MAX / 4,
        period: Duration::from_secs(60),
        burst: u64::MAX / 4,
    };
    let checks = [
        Check {
            key: "agent:bench:requests".into(),
            quota,
            cost: 1,
        },
        Check {
            key: "class:bench:requests".into(),
            quota,
            cost: 1,
        },
    ];
    let memory = MemoryStore::new();
    let redis = RedisRates::new(state);
    let mut group = c.benchmark_group("quota_check_agent_and_class");
    group.bench_function("memory", |b| b.iter(|| memory.decide(&checks)));
    group.bench_function("redis", |b| {
        b.to_async(&runtime).iter(|| async {
            match redis.check(&checks) {
                Checked::Now(verdict) => verdict,
                Checked::Later(verdict) => verdict.await,
            }
        });
    });
    group.finish();
    drop(server);
}

criterion_group!(benches, shared_state);
criterion_main!(benches);
