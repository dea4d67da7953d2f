//! What sharing state through Redis costs one request: a permit from the
//! shared scheduler (enqueue and grant in one Lua script; release sent
//! without waiting), and a quota check (one Lua script), each against a
//! `redis-server` of the bench's own on loopback (or `REDIS_URL`), next to
//! the same through the in-memory state.

#![allow(missing_docs)] // criterion_group! makes an undocumented pub fn.

use std::time::Duration;

use corral_core::{Priority, RedisState};
use corral_priority::{PriorityConfig, Scheduler, Ticket};
use corral_ratelimit::{Check, Checked, MemoryRates, Quota, RateStore, RedisRates};
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

fn shared_state(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(corral_e2e::Redis::start());
    let prefix = format!("corral-bench-{}:", std::process::id());
    let state = RedisState::new(&server.url, &prefix, "bench", Duration::from_secs(1))
        .expect("a Redis URL");
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
            limit: quota.into(),
            cost: 1,
        },
        Check {
            key: "class:bench:requests".into(),
            limit: quota.into(),
            cost: 1,
        },
    ];
    let memory = MemoryRates::new();
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
