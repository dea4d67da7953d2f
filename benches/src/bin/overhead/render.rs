//! The whole report: the run's context (machine, date, command,
//! versions, how each target was started, the choices that shape the
//! numbers), the tables, the checks that the numbers measure forwarding
//! (no refusal, no cache hit, no degradation), and the design's targets.

use std::fmt::Write as _;
use std::path::Path;
use std::time::SystemTime;

use crate::client::Tally;
use crate::idle::IdleResult;
use crate::report::{self, added_at, Step};
use crate::run::{Plan, SMALL, STREAM};
use crate::stream::StreamResult;
use crate::targets::{Kind, Target};
use crate::Args;

/// Everything the report says besides the tables' data.
pub(crate) struct Render<'a> {
    /// The flags.
    pub(crate) args: &'a Args,
    /// What ran.
    pub(crate) plan: &'a Plan,
    /// The command line as typed.
    pub(crate) command: String,
    /// `--version` of each program.
    pub(crate) versions: Vec<String>,
    /// Anything the run had to change or leave out.
    pub(crate) notes: Vec<String>,
    /// The open-files limits (soft, hard).
    pub(crate) nofile: (u64, u64),
    /// Idle connections actually held per proxy.
    pub(crate) idle_n: usize,
    /// The full stack's config file.
    pub(crate) config: &'a Path,
}

/// The sum of the samples of `metric` (all label sets) in a Prometheus
/// text page: `0` when the page has no sample of it (a labelled counter
/// has none until first counted), `n/a` when there is no page.
fn metric_sum(page: &str, metric: &str) -> String {
    if page.is_empty() {
        return "n/a".into();
    }
    let sum: f64 = page
        .lines()
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // An empty sum is -0.0; adding 0.0 makes it print as 0.
    format!("{}", sum + 0.0)
}

/// `met` or `MISSED`.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**MISSED**"
    }
}

impl Render<'_> {
    /// The markdown report.
    pub(crate) fn report(
        &self,
        targets: &[Target],
        steps: &[Step],
        streamed: &[(Kind, StreamResult)],
        idled: &[(Kind, IdleResult)],
        metrics: &str,
    ) -> String {
        let mut out = String::from("# Proxy overhead (`overhead`)\n\n");
        let date = humantime::format_rfc3339_seconds(SystemTime::now());
        let _ = writeln!(out, "- Date: {date}");
        let _ = writeln!(out, "- Machine: {}", report::machine());
        let _ = writeln!(out, "- Command: `{}`", self.command);
        let _ = writeln!(out, "- Versions: {}", self.versions.join("; "));
        let _ = writeln!(
            out,
            "- Steps: {} per target per step, targets in turn (who goes first rotates); {} connections at fixed rates, {} at saturation; open files {} soft / {} hard.",
            humantime::format_duration(self.plan.duration),
            self.args.connections,
            self.args.saturation_connections,
            self.nofile.0,
            self.nofile.1,
        );
        let _ = writeln!(out, "- Small request: `POST /api/generate` `{SMALL}`");
        let _ = writeln!(out, "- Stream: `POST /api/generate` `{STREAM}`\n");

        out.push_str("## Targets\n\nEach a separate process on 127.0.0.1, every proxy in front of the same simulated Ollama.\n\n| target | command |\n| --- | --- |\n");
        for t in targets {
            let _ = writeln!(out, "| {} | `{}` |", t.kind.name(), t.command);
        }
        out.push_str(&self.setup_notes());

        out.push_str("\n## Small requests at fixed rates\n\nLatency from each request's intended send time (open loop: a slow answer delays the requests behind it, and that counts). \"Added\" is the target's percentile minus direct's at the same step. \"Pacer late\" is the generator's own lateness, the same for every target.\n");
        for step in steps.iter().filter(|s| s.rate.is_some()) {
            let _ = writeln!(
                out,
                "\n### {}\n",
                report::step_title(step, self.args.connections)
            );
            out.push_str(&report::rate_table(step));
        }
        out.push_str("\n### Added latency against the floor and nginx\n\n");
        out.push_str(&report::ratio_table(steps));
        if let Some(step) = steps.iter().find(|s| s.rate.is_none()) {
            let _ = writeln!(
                out,
                "\n## Throughput at saturation\n\n{}\n",
                report::step_title(step, self.args.saturation_connections)
            );
            out.push_str(&report::saturation_table(step));
        }
        let short: Vec<&str> = streamed
            .iter()
            .filter(|(_, r)| r.streams > 0 && (r.lines.0 != 201 || r.lines.1 != 201))
            .map(|(k, _)| k.name())
            .collect();
        let _ = writeln!(
            out,
            "\n## Streams of 200 chunks\n\n{} streams per target, {} at a time. TTFB: send to first body byte. Per chunk: (last byte − first byte) / (lines − 1), averaged over streams.\n",
            self.plan.streams, self.args.stream_concurrency
        );
        out.push_str(&report::stream_table(streamed));
        if !short.is_empty() {
            let _ = writeln!(
                out,
                "\n**Streams of other than 201 lines (200 tokens and the final line) from: {}.**",
                short.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "\n## Idle keep-alive connections\n\n{} connections per proxy, each answered once (through to the upstream) then left idle; resident memory (VmRSS, nginx's master and workers summed) once started, after the load steps with no client connected, then with the connections held.\n",
            self.idle_n
        );
        out.push_str(&report::idle_table(idled));
        out.push_str(&self.checks(steps, streamed, metrics));
        out.push_str(&self.targets_met(steps));
        out
    }

    /// How the targets were set up, and why.
    fn setup_notes(&self) -> String {
        let mut out = String::from("\nChoices that shape the numbers:\n\n");
        let notes = [
            "The simulated Ollama answers at once (`--ttft-ms 0 --tps inf`, 1024 slots, never queues): what remains is HTTP and the proxies. It keeps its built-in log of the last 1000 requests (the binary has no flag to turn it off); every target pays it alike.".to_string(),
            format!("nginx: `worker_processes {}`: corral and the bare proxy run one tokio worker thread per core, so nginx gets one worker per core too (one worker would cap it at one core and make it a weak floor for \"above nginx\"). Keep-alive upstream (`keepalive 256`), `proxy_http_version 1.1`, `Connection \"\"`, `proxy_buffering off`, `access_log off`, `keepalive_requests` raised so no connection is closed mid-step.", self.args.nginx_workers),
            format!("corral runs with `RUST_LOG={}` (the default turns off the per-request access line, as nginx has `access_log off`; the request's span is still made).", self.args.corral_log),
            format!("The full stack is `{}` with `--capacity {}`: the file's `capacity = 4` describes a GPU that runs 4 at once, while this upstream runs 1024. With 4, requests the upstream could run wait in Corral's queue, and at saturation the queue raises degradation's load ((in flight + waiting) / (capacity × 4)) until it degrades answers (a 10 s saturation step with `--full-capacity 4` degraded half of them), which is no longer forwarding. Every other layer runs as the file sets it.", self.config.display(), self.args.full_capacity),
            "Client, proxies and upstream share the machine's cores, as in the design's \"on 2 cores\".".to_string(),
        ];
        for note in notes.iter().chain(&self.notes) {
            let _ = writeln!(out, "- {note}");
        }
        out
    }

    /// Proof that the numbers are forwarding: no refusals, no cache hits,
    /// no degradation.
    fn checks(&self, steps: &[Step], streamed: &[(Kind, StreamResult)], metrics: &str) -> String {
        let mut out = String::from("\n## Checks\n\n| target | answers | non-2xx | errors | reconnects | degraded | X-Corral-Cache |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
        let mut kinds: Vec<Kind> = Vec::new();
        for (k, _) in steps.iter().flat_map(|s| &s.results) {
            if !kinds.contains(k) {
                kinds.push(*k);
            }
        }
        let mut full = Tally::default();
        for kind in kinds {
            let mut tally = Tally::default();
            for (k, r) in steps.iter().flat_map(|s| &s.results) {
                if *k == kind {
                    tally.merge(&r.tally);
                }
            }
            for (k, r) in streamed {
                if *k == kind {
                    tally.merge(&r.tally);
                }
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                tally.ok + tally.non_2xx,
                tally.non_2xx,
                tally.errors,
                tally.reconnects,
                tally.degraded,
                tally.cache_summary(),
            );
            if kind == Kind::CorralFull {
                full = tally;
            }
        }
        let answers = full.ok + full.non_2xx;
        let bypass = full.cache.get("bypass").copied().unwrap_or(0);
        let cached = ["hit", "stale", "coalesced", "miss"]
            .iter()
            .map(|v| full.cache.get(*v).copied().unwrap_or(0))
            .sum::<u64>();
        let _ = writeln!(
            out,
            "\n- Cache: {bypass} of the full stack's {answers} answers say `X-Corral-Cache: bypass` and {cached} say hit, stale, coalesced or miss: {}. Its metrics agree: corral_cache_hits_total {}, corral_cache_misses_total {}, corral_cache_coalesced_total {}.",
            if bypass == answers && cached == 0 { "the requests (no `temperature: 0`, no `seed`) were never cached" } else { "**some answers went through the cache: the full stack's figures are not pure forwarding**" },
            metric_sum(metrics, "corral_cache_hits_total"),
            metric_sum(metrics, "corral_cache_misses_total"),
            metric_sum(metrics, "corral_cache_coalesced_total"),
        );
        let _ = writeln!(
            out,
            "- Refusals and degradation: the full stack answered {} non-2xx and {} with `X-Corral-Degraded`{}; corral_refusals_total {}, corral_degraded_requests_total {}. The requests carry no agent id, so they are in the `default` class with no quota.",
            full.non_2xx,
            full.degraded,
            if full.non_2xx + full.degraded > 0 { " (**its figures include refused or degraded answers**)" } else { "" },
            metric_sum(metrics, "corral_refusals_total"),
            metric_sum(metrics, "corral_degraded_requests_total"),
        );
        out
    }

    /// The design's performance targets, met or missed.
    fn targets_met(&self, steps: &[Step]) -> String {
        let mut out = String::from("\n## The design's targets\n\n");
        match steps
            .iter()
            .find(|s| s.rate.is_some_and(|r| (r - 5000.0).abs() < 1.0))
        {
            Some(step) => {
                for kind in [Kind::CorralFull, Kind::CorralDefault, Kind::CorralNone] {
                    let p50 = added_at(step, kind, 0.5).unwrap_or(f64::NAN);
                    let p99 = added_at(step, kind, 0.99).unwrap_or(f64::NAN);
                    let _ = writeln!(
                        out,
                        "- {} at 5,000 requests/s: added median {} (≤ 50 µs: {}), added p99 {} (≤ 0.5 ms: {}).",
                        kind.name(),
                        report::added(p50),
                        verdict(p50 <= 50_000.0),
                        report::added(p99),
                        verdict(p99 <= 500_000.0),
                    );
                }
            }
            None => out.push_str(
                "- Added latency at 5,000 requests/s: not measured (5000 is not in --rates).\n",
            ),
        }
        if let Some(step) = steps.iter().find(|s| s.rate.is_none()) {
            let tput = |k: Kind| {
                step.results
                    .iter()
                    .find(|(kk, _)| *kk == k)
                    .map(|(_, r)| r.throughput())
            };
            if let (Some(full), Some(bare)) = (tput(Kind::CorralFull), tput(Kind::Bare)) {
                let _ = writeln!(
                    out,
                    "- Full-stack throughput {full:.0}/s = ×{:.2} the bare proxy's {bare:.0}/s (≥ ×0.8: {}).",
                    full / bare,
                    verdict(full >= 0.8 * bare)
                );
                match tput(Kind::Nginx) {
                    Some(nginx) => {
                        let _ = writeln!(
                            out,
                            "- Full-stack throughput above nginx's {nginx:.0}/s: {}.",
                            verdict(full > nginx)
                        );
                    }
                    None => out.push_str("- Above nginx: not measured (no nginx).\n"),
                }
            }
        }
        out
    }
}
