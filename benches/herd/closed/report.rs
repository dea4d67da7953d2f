//! The closed herd's report, in Markdown: wall time, latency by priority
//! and the upstream's busy slots over time, per variant, over every
//! round.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Setup, Variant};
use crate::herd::record::{percentile, summarise, Record};
use crate::herd::report::fmt;
use crate::herd::RunResult;

/// One bar of the busy-slot line.
const BAR: Duration = Duration::from_millis(100);
/// One column of the busy-slot table.
const COLUMN: Duration = Duration::from_millis(500);
/// The shipped stack's wall may exceed the one without a reserve by this
/// much (the issue's bound), and its priority-1 latency another's by as
/// much plus [`JITTER`].
const TOLERANCE: f64 = 0.05;
/// What one sitting on a shared machine cannot tell apart in a latency:
/// client, proxy and upstream share its cores, and a request that ends a
/// few milliseconds late ends in the next wave of the upstream's slots.
const JITTER: Duration = Duration::from_millis(10);

/// The runs of one variant, one per round.
#[derive(Debug, Clone)]
pub struct Rounds {
    /// How the fleet reached the upstream.
    pub variant: Variant,
    /// Each round's run.
    pub runs: Vec<RunResult>,
}

impl Rounds {
    /// The median wall time (nearest rank).
    pub fn wall(&self) -> Duration {
        let mut walls: Vec<Duration> = self.runs.iter().map(|r| r.wall).collect();
        percentile(&mut walls, 50.0).unwrap_or_default()
    }

    /// Every round's records.
    fn records(&self) -> Vec<Record> {
        self.runs.iter().flat_map(|r| r.records.clone()).collect()
    }

    /// Priority `class`'s p50 and p99 over every round's answers.
    pub fn latency(&self, setup: &Setup, class: usize) -> (Option<Duration>, Option<Duration>) {
        let fleet = super::fleet(setup);
        let summary = summarise(&fleet, &self.records(), Duration::from_secs(60));
        summary.get(class).map_or((None, None), |s| (s.p50, s.p99))
    }

    /// Priority `class`'s p99 in each round.
    pub fn p99_each(&self, setup: &Setup, class: usize) -> Vec<Duration> {
        let fleet = super::fleet(setup);
        self.runs
            .iter()
            .filter_map(|run| {
                let summary = summarise(&fleet, &run.records, Duration::from_secs(60));
                summary.get(class).and_then(|s| s.p99)
            })
            .collect()
    }

    /// The mean busy slots over the runs (each up to its wall time).
    pub fn mean_busy(&self) -> f64 {
        let samples: Vec<f64> = self
            .runs
            .iter()
            .flat_map(|r| r.busy.iter().filter(|(t, _)| *t <= r.wall))
            .map(|(_, n)| *n as f64)
            .collect();
        samples.iter().sum::<f64>() / samples.len().max(1) as f64
    }
}

/// The whole report; `reserve` is the shipped config's `reserve` line.
pub fn markdown(setup: &Setup, reserve: Option<&str>, results: &[Rounds]) -> String {
    let mut out = String::new();
    let agents: Vec<String> = setup
        .agents
        .iter()
        .map(|(p, n)| format!("{n} at priority {p}"))
        .collect();
    let total: usize = setup.agents.iter().map(|(_, n)| n).sum();
    let rounds = results.first().map_or(0, |r| r.runs.len());
    let _ = writeln!(
        out,
        "- Fleet: {total} agents ({}), unknown to Corral (its default class), each asking its priority with `X-Priority`; each sends {} non-streamed `/api/generate` one after another, no think time, all starting at once.\n- Upstream: simulated Ollama, `--parallel {}`, each request holds a slot {} (time to first token {} + {} tokens at {}/s); the ideal wall time (every slot busy throughout) is {}.\n- Corral: `{}` ({}), capacity {}.\n- {rounds} round(s), the variants in turn within each round; latency over all rounds' answers, busy slots read every {}.",
        agents.join(", "),
        setup.requests,
        setup.capacity,
        fmt(setup.service_time()),
        fmt(setup.ttft),
        setup.tokens,
        setup.tokens_per_sec,
        fmt(setup.ideal()),
        setup.config.display(),
        reserve.unwrap_or("no reserve"),
        setup.capacity,
        fmt(setup.sample_every),
    );
    walls(&mut out, setup, results);
    latency(&mut out, setup, results);
    busy(&mut out, setup, results);
    targets(&mut out, setup, results);
    out
}

fn walls(out: &mut String, setup: &Setup, results: &[Rounds]) {
    let bare = find(results, Variant::NoReserve).map(Rounds::wall);
    let _ = writeln!(
        out,
        "\n### Wall time\n\n| run | each round | median | ÷ no reserve | ÷ ideal | answered / sent | reserved permits lent | mean busy slots (of {}) |\n| --- | --- | --- | --- | --- | --- | --- | --- |",
        setup.capacity
    );
    for rounds in results {
        let each: Vec<String> = rounds.runs.iter().map(|r| fmt(r.wall)).collect();
        let wall = rounds.wall();
        let ratio = |of: Option<Duration>| {
            of.map_or("–".into(), |d| {
                format!("{:.2}", wall.as_secs_f64() / d.as_secs_f64().max(1e-9))
            })
        };
        let records = rounds.records();
        let answered = records.iter().filter(|r| r.outcome.is_answer()).count();
        let lent: Vec<String> = rounds
            .runs
            .iter()
            .filter_map(|r| r.corral.as_ref().map(|c| format!("{}", c.reserve_lent)))
            .collect();
        let mean = rounds.mean_busy();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {answered} / {} | {} | {mean:.2} ({:.0} %) |",
            rounds.variant.as_str(),
            each.join(", "),
            fmt(wall),
            ratio(bare),
            ratio(Some(setup.ideal())),
            records.len(),
            if lent.is_empty() {
                "–".into()
            } else {
                lent.join(", ")
            },
            mean / setup.capacity.max(1) as f64 * 100.0
        );
    }
}

fn latency(out: &mut String, setup: &Setup, results: &[Rounds]) {
    out.push_str("\n### Latency by priority\n\n| priority (agents) | run | p50, all rounds | p99, all rounds | p99 each round |\n| --- | --- | --- | --- | --- |\n");
    for (class, (priority, agents)) in setup.agents.iter().enumerate() {
        for rounds in results {
            let (p50, p99) = rounds.latency(setup, class);
            let each: Vec<String> = rounds.p99_each(setup, class).into_iter().map(fmt).collect();
            let _ = writeln!(
                out,
                "| {priority} ({agents}) | {} | {} | {} | {} |",
                rounds.variant.as_str(),
                opt(p50),
                opt(p99),
                each.join(", ")
            );
        }
    }
}

fn busy(out: &mut String, setup: &Setup, results: &[Rounds]) {
    let _ = writeln!(
        out,
        "\n### The upstream's busy slots over time (first round)\n\nOne bar per {}, its height the mean busy slots (full: all {}), until the last answer:\n\n```",
        fmt(BAR),
        setup.capacity
    );
    let width = results
        .iter()
        .map(|r| r.variant.as_str().len())
        .max()
        .unwrap_or(0);
    for rounds in results {
        let Some(run) = rounds.runs.first() else {
            continue;
        };
        let line: String = buckets(run, BAR)
            .iter()
            .map(|mean| bar(*mean, setup.capacity))
            .collect();
        let _ = writeln!(out, "{:width$}  {line}", rounds.variant.as_str());
    }
    out.push_str("```\n\nMean busy slots per half second:\n\n| run |");
    let columns = results
        .iter()
        .filter_map(|r| r.runs.first())
        .map(|run| buckets(run, COLUMN).len())
        .max()
        .unwrap_or(0);
    for i in 0..columns {
        let _ = write!(out, " {:.1} s |", (COLUMN * i as u32).as_secs_f64());
    }
    out.push_str("\n| --- |");
    out.push_str(&" --- |".repeat(columns));
    out.push('\n');
    for rounds in results {
        let Some(run) = rounds.runs.first() else {
            continue;
        };
        let _ = write!(out, "| {} |", rounds.variant.as_str());
        let cells = buckets(run, COLUMN);
        for i in 0..columns {
            match cells.get(i) {
                Some(mean) => {
                    let _ = write!(out, " {mean:.1} |");
                }
                None => out.push_str(" |"),
            }
        }
        out.push('\n');
    }
}

fn targets(out: &mut String, setup: &Setup, results: &[Rounds]) {
    let (Some(shipped), Some(bare)) = (
        find(results, Variant::Shipped),
        find(results, Variant::NoReserve),
    ) else {
        return;
    };
    let ratio = shipped.wall().as_secs_f64() / bare.wall().as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "\n### The issue's targets\n\n- Wall time as shipped within 5 % of no reserve: {} against {} (×{ratio:.3}) {}",
        fmt(shipped.wall()),
        fmt(bare.wall()),
        mark(ratio <= 1.0 + TOLERANCE)
    );
    let no_worse = |mine: Duration, theirs: Duration| {
        mine.as_secs_f64() <= theirs.as_secs_f64() * (1.0 + TOLERANCE) + JITTER.as_secs_f64()
    };
    let (p50, p99) = shipped.latency(setup, 0);
    for other in [Variant::NoReserve, Variant::Strict, Variant::Direct] {
        let Some(theirs) = find(results, other) else {
            continue;
        };
        let (Some(p50), Some(p99), (Some(their_p50), Some(their_p99))) =
            (p50, p99, theirs.latency(setup, 0))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "- Priority-{} latency as shipped no worse than {} (p50 and p99 over all rounds, each within 5 % + {}): p50 {} against {}, p99 {} against {} {}",
            setup.agents.first().map_or(1, |(p, _)| *p),
            other.as_str(),
            fmt(JITTER),
            fmt(p50),
            fmt(their_p50),
            fmt(p99),
            fmt(their_p99),
            mark(no_worse(p50, their_p50) && no_worse(p99, their_p99))
        );
    }
}

/// The mean busy slots of `run` per `width`, up to its wall time.
fn buckets(run: &RunResult, width: Duration) -> Vec<f64> {
    let slots = (run.wall.as_secs_f64() / width.as_secs_f64()).ceil() as usize;
    let mut sums = vec![(0.0, 0u32); slots.max(1)];
    for (at, busy) in run.busy.iter().filter(|(t, _)| *t <= run.wall) {
        let slot = ((at.as_secs_f64() / width.as_secs_f64()) as usize).min(sums.len() - 1);
        sums[slot].0 += *busy as f64;
        sums[slot].1 += 1;
    }
    sums.into_iter()
        .map(|(sum, n)| if n == 0 { 0.0 } else { sum / f64::from(n) })
        .collect()
}

fn bar(mean: f64, capacity: usize) -> char {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let level = (mean / capacity.max(1) as f64 * 8.0).round() as usize;
    BARS[level.min(8)]
}

fn find(results: &[Rounds], variant: Variant) -> Option<&Rounds> {
    results.iter().find(|r| r.variant == variant)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_buckets_read_busy_slots() {
        assert_eq!(bar(0.0, 4), ' ');
        assert_eq!(bar(2.0, 4), '▄');
        assert_eq!(bar(4.0, 4), '█');
        assert_eq!(bar(9.0, 4), '█');
        let run = RunResult {
            mode: crate::herd::Mode::Direct,
            records: Vec::new(),
            upstream: None,
            corral: None,
            wall: Duration::from_millis(200),
            busy: vec![
                (Duration::from_millis(0), 4),
                (Duration::from_millis(50), 2),
                (Duration::from_millis(150), 1),
                (Duration::from_millis(250), 4),
            ],
        };
        assert_eq!(buckets(&run, Duration::from_millis(100)), [3.0, 1.0]);
    }
}
