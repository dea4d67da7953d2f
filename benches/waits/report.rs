//! The predictable-waits scenario's report, in Markdown.

use std::fmt::Write;

use super::{Run, Setup};

fn percent(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{:.0} %", v * 100.0))
}

/// The setup, then one row per run, then the verdicts the issue asks for.
pub fn markdown(setup: &Setup, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "- Server: parallelism {}, {} ms to the first token, {} tokens/s; lengths {}–{} tokens: it answers {:.1} requests/s when always busy.",
        setup.parallel,
        setup.ttft.as_millis(),
        setup.tokens_per_sec,
        setup.tokens.0,
        setup.tokens.1,
        setup.capacity_rate()
    );
    let _ = writeln!(
        out,
        "- Requests arrive at random (Poisson, seed {}) for {} s, each with `X-Deadline-Ms: {}`; a refused client asks again every {} ms until let in.\n",
        setup.seed,
        setup.duration.as_secs(),
        setup.deadline.as_millis(),
        setup.probe.as_millis()
    );
    let _ = writeln!(
        out,
        "| load | lengths | requests | refused at first | answers in time / min | ETA error (median, n) | Retry-After error (median, n) | mean latency of those (from the first sending) | let in after a refusal: in time, median queue wait (n) | never let in |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for run in runs {
        let (eta, eta_n) = run.eta_error();
        let (retry, retry_n) = run.retry_error();
        let (kept, queue_wait, let_in, never) = run.after_refusal();
        let _ = writeln!(
            out,
            "| {}× | {} | {} | {} | {:.0} | {} ({eta_n}) | {} ({retry_n}) | {} | {}, {} ({let_in}) | {never} |",
            run.load,
            run.variant.as_str(),
            run.records.len(),
            run.refused(),
            run.goodput(),
            percent(eta),
            percent(retry),
            run.mean_latency()
                .map_or("–".to_string(), |d| format!("{} ms", d.as_millis())),
            percent(kept),
            queue_wait.map_or("–".to_string(), |d| format!("{} ms", d.as_millis())),
        );
    }
    out
}

/// Every request of every run, one line each (CSV with a header): what
/// the medians of [`markdown`] are made of.
pub fn csv(runs: &[Run]) -> String {
    let ms =
        |d: Option<std::time::Duration>| d.map_or(String::new(), |d| d.as_millis().to_string());
    let mut out = String::from(
        "load,variant,tokens,eta_ms,waited_ms,latency_ms,in_time,retry_after_ms,let_in_after_ms\n",
    );
    for run in runs {
        for r in &run.records {
            let _ = writeln!(
                out,
                "{},{:?},{},{},{},{},{},{},{}",
                run.load,
                run.variant,
                r.tokens,
                ms(r.eta),
                ms(r.waited),
                ms(r.latency),
                r.in_time,
                ms(r.retry.map(|(told, _)| told)),
                ms(r.retry.and_then(|(_, admitted)| admitted)),
            );
        }
    }
    out
}
