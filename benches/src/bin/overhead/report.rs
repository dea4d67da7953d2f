//! The markdown report: the machine, then one table per step, with each
//! proxy's latency added over calling the upstream directly and its
//! ratios to the bare floor and to nginx.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::idle::IdleResult;
use crate::load::StepResult;
use crate::stream::StreamResult;
use crate::targets::Kind;

/// One step of the load phase: every target's result at one rate (or at
/// saturation when `rate` is None).
pub(crate) struct Step {
    /// Requests per second asked for; None for the closed-loop step.
    pub(crate) rate: Option<f64>,
    /// Each target's result, in the targets' order.
    pub(crate) results: Vec<(Kind, StepResult)>,
}

/// The machine as /proc describes it: CPU model, cores, memory, kernel.
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    format!(
        "{model}, {cores} logical cores, {mem_gib:.1} GiB, {os}, Linux {}",
        kernel.trim()
    )
}

/// A latency in ns as µs or ms.
pub(crate) fn time(ns: f64) -> String {
    let us = ns / 1000.0;
    if us.abs() >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us.abs() >= 100.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.1} µs")
    }
}

/// A difference in ns with its sign.
pub(crate) fn added(ns: f64) -> String {
    if ns >= 0.0 {
        format!("+{}", time(ns))
    } else {
        format!("−{}", time(-ns))
    }
}

/// `a / b` as `×1.23`, or `n/a` unless both are positive (an added
/// latency at or below zero is noise, and a ratio to it means nothing).
fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("×{:.2}", a / b)
    } else {
        "n/a".into()
    }
}

/// The value at quantile `q`, in ns.
pub(crate) fn q(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

/// The step's result for `kind`.
fn find(step: &Step, kind: Kind) -> Option<&StepResult> {
    step.results
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, r)| r)
}

/// Latency added over direct at quantile `quantile` for `kind`.
pub(crate) fn added_at(step: &Step, kind: Kind, quantile: f64) -> Option<f64> {
    let direct = find(step, Kind::Direct)?;
    let r = find(step, kind)?;
    Some(q(&r.latency, quantile) - q(&direct.latency, quantile))
}

/// The step's heading.
pub(crate) fn step_title(step: &Step, conns: usize) -> String {
    match step.rate {
        Some(rate) => format!("{rate:.0} requests/s, open loop over {conns} connections"),
        None => format!("saturation: closed loop, {conns} connections"),
    }
}

/// One fixed-rate step's table.
pub(crate) fn rate_table(step: &Step) -> String {
    let mut out = String::from(
        "| target | answered/s | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | non-2xx | errors | pacer late p99 |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (kind, r) in &step.results {
        let add = |quant| match kind {
            Kind::Direct => "—".to_string(),
            _ => added_at(step, *kind, quant).map(added).unwrap_or_default(),
        };
        let late = r
            .pacer_late
            .as_ref()
            .map(|h| time(q(h, 0.99)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            r.throughput(),
            time(q(&r.latency, 0.5)),
            time(q(&r.latency, 0.99)),
            time(q(&r.latency, 0.999)),
            add(0.5),
            add(0.99),
            add(0.999),
            r.tally.non_2xx,
            r.tally.errors,
            late,
        );
    }
    out
}

/// Each proxy's added latency as a multiple of the bare floor's and of
/// nginx's, at every fixed rate.
pub(crate) fn ratio_table(steps: &[Step]) -> String {
    let mut out = String::from(
        "| rate | proxy | added p50 ÷ bare's | added p50 ÷ nginx's | added p99 ÷ bare's | added p99 ÷ nginx's |\n\
         | ---: | --- | ---: | ---: | ---: | ---: |\n",
    );
    for step in steps.iter().filter(|s| s.rate.is_some()) {
        for kind in [
            Kind::Nginx,
            Kind::CorralNone,
            Kind::CorralDefault,
            Kind::CorralFull,
        ] {
            let Some(mine50) = added_at(step, kind, 0.5) else {
                continue;
            };
            let mine99 = added_at(step, kind, 0.99).unwrap_or_default();
            let of = |k, quant| added_at(step, k, quant).unwrap_or(-1.0);
            let _ = writeln!(
                out,
                "| {:.0}/s | {} | {} | {} | {} | {} |",
                step.rate.unwrap_or_default(),
                kind.name(),
                ratio(mine50, of(Kind::Bare, 0.5)),
                ratio(mine50, of(Kind::Nginx, 0.5)),
                ratio(mine99, of(Kind::Bare, 0.99)),
                ratio(mine99, of(Kind::Nginx, 0.99)),
            );
        }
    }
    out
}

/// The saturation step's table: throughput and its ratios.
pub(crate) fn saturation_table(step: &Step) -> String {
    let tput = |k| find(step, k).map(StepResult::throughput).unwrap_or(-1.0);
    let mut out = String::from(
        "| target | answered/s | ÷ direct | ÷ bare | ÷ nginx | p50 | p99 | p99.9 | non-2xx | errors |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (kind, r) in &step.results {
        let t = r.throughput();
        let _ = writeln!(
            out,
            "| {} | {t:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            ratio(t, tput(Kind::Direct)),
            ratio(t, tput(Kind::Bare)),
            ratio(t, tput(Kind::Nginx)),
            time(q(&r.latency, 0.5)),
            time(q(&r.latency, 0.99)),
            time(q(&r.latency, 0.999)),
            r.tally.non_2xx,
            r.tally.errors,
        );
    }
    out
}

/// The streaming step's table.
pub(crate) fn stream_table(results: &[(Kind, StreamResult)]) -> String {
    let direct = results
        .iter()
        .find(|(k, _)| *k == Kind::Direct)
        .map(|(_, r)| r);
    let mut out = String::from(
        "| target | streams | lines/stream | TTFB p50 | TTFB p99 | added TTFB p50 | per chunk (mean) | added per chunk | whole stream p50 | non-2xx | errors |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (kind, r) in results {
        let (ttfb_add, chunk_add) = match (kind, direct) {
            (Kind::Direct, _) | (_, None) => ("—".to_string(), "—".to_string()),
            (_, Some(d)) => (
                added(q(&r.ttfb, 0.5) - q(&d.ttfb, 0.5)),
                added(r.per_chunk.mean() - d.per_chunk.mean()),
            ),
        };
        let lines = if r.lines.0 == r.lines.1 {
            r.lines.0.to_string()
        } else {
            format!("{}–{}", r.lines.0, r.lines.1)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {lines} | {} | {} | {ttfb_add} | {} | {chunk_add} | {} | {} | {} |",
            kind.name(),
            r.streams,
            time(q(&r.ttfb, 0.5)),
            time(q(&r.ttfb, 0.99)),
            time(r.per_chunk.mean()),
            time(q(&r.total, 0.5)),
            r.tally.non_2xx,
            r.tally.errors,
        );
    }
    out
}

/// The idle-connections table.
pub(crate) fn idle_table(results: &[(Kind, IdleResult)]) -> String {
    let mut out = String::from(
        "| proxy | RSS at start | RSS idle after load | RSS with the connections | connections held | failed | per connection |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (kind, r) in results {
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} | {:.1} KiB |",
            kind.name(),
            r.start_kib as f64 / 1024.0,
            r.before_kib as f64 / 1024.0,
            r.with_kib as f64 / 1024.0,
            r.opened,
            r.failed,
            r.per_connection() / 1024.0,
        );
    }
    out
}
