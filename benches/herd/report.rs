//! The scenario's tables, in Markdown.

use std::fmt::Write as _;
use std::time::Duration;

use super::record::{summarise, ClassSummary, Outcome};
use super::{Baseline, Mode, Options, RunResult};

/// The whole report: per class, the upstream, Corral's counters, and the
/// design's targets.
pub fn markdown(options: &Options, baseline: &Baseline, runs: &[RunResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", setup(options));
    out.push_str(&per_class(options, runs));
    out.push_str(&upstream(options, runs));
    if let Some(corral) = runs.iter().find_map(|r| r.corral.as_ref()) {
        let _ = writeln!(out, "\n### Corral's counters (through Corral)\n");
        let lookups = corral.cache_hits + corral.cache_misses;
        let ratio = if lookups > 0.0 {
            corral.cache_hits / lookups * 100.0
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "- cache: {} hits, {} misses ({ratio:.0} % hit ratio), {} coalesced into a call in flight",
            corral.cache_hits, corral.cache_misses, corral.coalesced
        );
        let _ = writeln!(out, "- embeddings merged into batches: {}", corral.batched);
        let _ = writeln!(out, "- retries: {}", corral.retries);
        let _ = writeln!(
            out,
            "- reserved permits lent to a lower priority: {}",
            corral.reserve_lent
        );
        if corral.state_errors > 0.0 {
            let _ = writeln!(
                out,
                "- Redis commands that failed or outlasted `redis_timeout`: {} (each one served from the replica's own state)",
                corral.state_errors
            );
        }
        let _ = writeln!(
            out,
            "- degraded requests: {}; level at the end: {}",
            join(corral.degraded.iter().map(|(k, v)| (k.as_str(), *v as u64))),
            corral.degradation_level
        );
        let _ = writeln!(
            out,
            "- refusals: {}",
            join(corral.refusals.iter().map(|(k, v)| (k.as_str(), *v as u64)))
        );
    }
    out.push_str(&targets(options, baseline, runs));
    out
}

fn setup(options: &Options) -> String {
    let agents: usize = options.fleet.iter().map(|c| c.agents).sum();
    let fleet = options
        .fleet
        .iter()
        .map(|c| format!("{} {} (priority {})", c.agents, c.name, c.priority))
        .collect::<Vec<_>>()
        .join(", ");
    let upstream = match &options.upstream {
        Some(url) => format!("{url} ({:?} API), capacity {}", options.api, options.capacity),
        None => format!(
            "simulated Ollama: --parallel {}, --max-queue {}, time to first token {}, {} tokens/s ({} for tinyllama), model loads {}, {} models loaded at most",
            options.capacity,
            options.upstream_queue,
            fmt(options.ttft),
            options.tokens_per_sec,
            options.small_model_tokens_per_sec,
            fmt(options.load_time),
            options.max_loaded_models
        ),
    };
    format!(
        "- Fleet: {agents} agents: {fleet}; think time × {}; seed {}.\n- Each run: {} of requests, then {} for open ones to finish.\n- Upstream: {upstream}.\n- Corral: `{}` with capacity {} and the fleet's agents in their classes.",
        options.think_scale,
        options.seed,
        fmt(options.duration),
        fmt(options.grace),
        options.config.display(),
        options.capacity
    )
}

fn per_class(options: &Options, runs: &[RunResult]) -> String {
    let mut out = String::from(
        "\n### Per class\n\n| class | run | sent | answered | of which cached / degraded | default answers | refused | gave up at deadline | failed / unfinished | p50 | p99 | first token p50 / p99 | queued p99 | goodput /min |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    let summaries: Vec<(Mode, Vec<ClassSummary>)> = runs
        .iter()
        .map(|r| {
            (
                r.mode,
                summarise(&options.fleet, &r.records, options.duration),
            )
        })
        .collect();
    for (i, class) in options.fleet.iter().enumerate() {
        for (mode, summary) in &summaries {
            let s = &summary[i];
            let refused = if s.refused.is_empty() {
                "0".to_string()
            } else {
                format!(
                    "{} ({})",
                    s.refused_total(),
                    join(s.refused.iter().map(|(k, v)| (k.as_str(), *v)))
                )
            };
            let _ = writeln!(
                out,
                "| {} (p{}, {}) | {} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} | {} / {} | {} | {:.1} |",
                class.name,
                class.priority,
                class.agents,
                mode.as_str(),
                s.sent,
                s.answered,
                s.cached,
                s.degraded,
                s.default_answers,
                refused,
                s.timed_out,
                s.failed,
                s.unfinished,
                opt(s.p50),
                opt(s.p99),
                opt(s.ttft_p50),
                opt(s.ttft_p99),
                opt(s.queue_p99),
                s.goodput_per_min
            );
        }
    }
    out
}

fn upstream(options: &Options, runs: &[RunResult]) -> String {
    let mut out = String::from(
        "\n### The upstream\n\n| run | requests | peak in flight, per model (capacity each) | peak queued inside | 503 busy | model loads / switches | cancelled | wall time |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for run in runs {
        let seen_503 = run
            .records
            .iter()
            .filter(|r| r.outcome == Outcome::Refused("upstream_503".into()))
            .count();
        match &run.upstream {
            Some(stats) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} ({}) | {} | {} | {} / {} | {} | {} |",
                    run.mode.as_str(),
                    stats.requests,
                    join(
                        stats
                            .peak_in_flight_by_model
                            .iter()
                            .map(|(k, v)| (k.as_str(), *v))
                    ),
                    options.capacity,
                    stats.peak_queued,
                    stats.busy_rejections,
                    stats.model_loads,
                    stats.model_evictions,
                    stats.cancelled,
                    fmt(run.wall)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {} | n/a | n/a ({}) | n/a | {seen_503} seen by agents | n/a | n/a | {} |",
                    run.mode.as_str(),
                    options.capacity,
                    fmt(run.wall)
                );
            }
        }
    }
    out
}

fn targets(options: &Options, baseline: &Baseline, runs: &[RunResult]) -> String {
    let mut out = format!(
        "\n### The design's targets\n\nUnloaded (the priority-1 class alone, same agents and pace): p50 {}, p99 {}.\n\n| run | priority-1 p99 ≤ 1.5 × unloaded | the upstream never overloaded | no request lost (broken or unanswered) |\n| --- | --- | --- | --- |\n",
        fmt(baseline.p50),
        fmt(baseline.p99)
    );
    for run in runs {
        let summary = summarise(&options.fleet, &run.records, options.duration);
        let first = summary.first().cloned().unwrap_or_default();
        let ratio = first
            .p99
            .map(|p| p.as_secs_f64() / baseline.p99.as_secs_f64().max(1e-9));
        let latency = match ratio {
            Some(r) => format!(
                "{} ({r:.2}×, {} of {} answered) {}",
                opt(first.p99),
                first.answered,
                first.sent,
                mark(r <= 1.5 && first.answered == first.sent)
            ),
            None => "no answer".into(),
        };
        let capacity = match &run.upstream {
            Some(stats) => {
                let peak = stats
                    .peak_in_flight_by_model
                    .values()
                    .copied()
                    .max()
                    .unwrap_or(0);
                format!(
                    "at most {peak} per model (capacity {}), {} queued inside at the peak, {} answered 503 {}",
                    options.capacity,
                    stats.peak_queued,
                    stats.busy_rejections,
                    mark(peak as usize <= options.capacity && stats.peak_queued == 0 && stats.busy_rejections == 0)
                )
            }
            None => "not observable".into(),
        };
        let failed: u64 = summary.iter().map(|s| s.failed).sum();
        let waiting: u64 = summary.iter().map(|s| s.unfinished).sum();
        let _ = writeln!(
            out,
            "| {} | {latency} | {capacity} | {failed} failed, {waiting} still waiting at the end {} |",
            run.mode.as_str(),
            mark(failed == 0)
        );
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn join<'a>(items: impl Iterator<Item = (&'a str, u64)>) -> String {
    let parts: Vec<String> = items.map(|(k, v)| format!("{k} {v}")).collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), fmt)
}

/// `850 ms`, `12.3 s`.
pub(crate) fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Today, from the system clock (UTC).
pub fn date() -> String {
    corral_core::rfc3339_now()
        .split('T')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The CPU model and the number of cores, from /proc.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} × {model}")
}
