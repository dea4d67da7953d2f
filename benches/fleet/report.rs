//! The fleet scenario's report, in Markdown: what each run cost the
//! servers, latency by priority, and the targets.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Run, Setup, Variant};
use crate::herd::report::fmt;

/// Round robin must load models at least this many times more often.
pub const LOADS_RATIO: f64 = 5.0;
/// Priority-1 latency over two servers may exceed the one-server run's by
/// this share plus [`JITTER`] and still be within its bounds.
const TOLERANCE: f64 = 0.05;
/// What one sitting on a shared machine cannot tell apart in a latency.
const JITTER: Duration = Duration::from_millis(10);

/// The whole report.
pub fn markdown(setup: &Setup, runs: &[Run]) -> String {
    let mut out = String::new();
    let agents: Vec<String> = setup
        .agents
        .iter()
        .map(|(p, n)| format!("{n} at priority {p}"))
        .collect();
    let _ = writeln!(
        out,
        "- Fleet: {} agents ({}), asking their priority with `X-Priority`; agent *i* asks for model *i* mod {} ({}), each sends {} non-streamed `/api/generate` one after another, no think time, all starting at once: {} requests.\n- Servers: simulated Ollama, `parallel = {}` per loaded model, `max_loaded_models = {}`, a load takes {}, each request holds a slot {} (time to first token {} + {} tokens at {}/s); nothing loaded at the start.\n- Corral: the `priority` layer alone (`aging = \"{}\"`); over two servers two `[[upstreams]]` entries (`capacity = {}`, `max_loaded_models = {}`), over one server one such entry (or, as `one-server-plain`, `[upstream]` with `capacity = {}`); a load taken to cost {}. Round robin: the client sends each request to the next server in turn, straight.",
        setup.fleet().len(),
        agents.join(", "),
        setup.models.len(),
        setup.models.join(", "),
        setup.requests,
        setup.total_requests(),
        setup.parallel,
        setup.max_loaded_models,
        fmt(setup.load_time),
        fmt(setup.service_time()),
        fmt(setup.ttft),
        setup.tokens,
        setup.tokens_per_sec,
        humantime::format_duration(setup.aging),
        setup.parallel,
        setup.max_loaded_models,
        setup.parallel,
        match setup.load_cost {
            Some(cost) => format!("{} (set on the fleet: no config key yet)", fmt(cost)),
            None => format!(
                "{} (the fleet's default: no config key sets it)",
                fmt(corral_fleet::DEFAULT_LOAD_COST)
            ),
        },
    );
    table(&mut out, setup, runs);
    latency(&mut out, setup, runs);
    targets(&mut out, setup, runs);
    out
}

fn table(out: &mut String, setup: &Setup, runs: &[Run]) {
    let p1 = first_priority(setup);
    let _ = writeln!(
        out,
        "\n### Runs\n\n| run | model loads (each server) | peak queued inside (each server) | wall time | priority-{p1} p50 | priority-{p1} p99 | errors |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for run in runs {
        let each = |values: Vec<u64>| {
            values
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let (p50, p99) = run.latency(p1);
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} | {} | {} | {} / {} |",
            run.variant.as_str(),
            run.loads(),
            each(run.servers.iter().map(|s| s.model_loads).collect()),
            run.peak_queued()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            fmt(run.wall),
            opt(p50),
            opt(p99),
            run.errors(),
            run.records.len(),
        );
    }
}

fn latency(out: &mut String, setup: &Setup, runs: &[Run]) {
    out.push_str("\n### Latency by priority (p50 / p99)\n\n| priority (agents) |");
    for run in runs {
        let _ = write!(out, " {} |", run.variant.as_str());
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(runs.len()));
    out.push('\n');
    for (priority, agents) in &setup.agents {
        let _ = write!(out, "| {priority} ({agents}) |");
        for run in runs {
            let (p50, p99) = run.latency(*priority);
            let _ = write!(out, " {} / {} |", opt(p50), opt(p99));
        }
        out.push('\n');
    }
}

fn targets(out: &mut String, setup: &Setup, runs: &[Run]) {
    let Some(corral) = find(runs, Variant::Corral) else {
        return;
    };
    out.push_str("\n### The issue's targets\n\n");
    if let Some(naive) = find(runs, Variant::RoundRobin) {
        let ratio = loads_ratio(corral, naive);
        let _ = writeln!(
            out,
            "- Model loads at least {LOADS_RATIO}× fewer than round robin: {} against {} (×{ratio:.1}) {}",
            corral.loads(),
            naive.loads(),
            mark(ratio >= LOADS_RATIO)
        );
    }
    let p1 = first_priority(setup);
    for baseline in [Variant::OneServer, Variant::OneServerPlain] {
        let Some(one) = find(runs, baseline) else {
            continue;
        };
        let ((Some(p50), Some(p99)), (Some(their_p50), Some(their_p99))) =
            (corral.latency(p1), one.latency(p1))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "- Priority-{p1} latency within the bounds of {} (p50 and p99 each within 5 % + {}): p50 {} against {}, p99 {} against {} {}",
            baseline.as_str(),
            fmt(JITTER),
            fmt(p50),
            fmt(their_p50),
            fmt(p99),
            fmt(their_p99),
            mark(within(p50, their_p50) && within(p99, their_p99))
        );
    }
    let queued = corral.peak_queued();
    let _ = writeln!(
        out,
        "- Nothing queued inside either server through Corral: peak queued {} {}",
        queued
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        mark(queued.iter().all(|q| *q == 0))
    );
    let _ = writeln!(
        out,
        "- No errors through Corral: {} {}",
        corral.errors(),
        mark(corral.errors() == 0)
    );
}

/// How many times more model loads `naive` made than `corral`.
pub fn loads_ratio(corral: &Run, naive: &Run) -> f64 {
    naive.loads() as f64 / corral.loads().max(1) as f64
}

fn within(mine: Duration, theirs: Duration) -> bool {
    mine.as_secs_f64() <= theirs.as_secs_f64() * (1.0 + TOLERANCE) + JITTER.as_secs_f64()
}

fn first_priority(setup: &Setup) -> u8 {
    setup.agents.iter().map(|(p, _)| *p).min().unwrap_or(1)
}

fn find(runs: &[Run], variant: Variant) -> Option<&Run> {
    runs.iter().find(|r| r.variant == variant)
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✅"
    } else {
        "❌"
    }
}

fn opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".into(), fmt)
}
