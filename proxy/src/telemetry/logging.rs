//! Log lines: `tracing` to stderr, for people or for machines.

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people: one coloured line per event.
    Text,
    /// For machines: one JSON object per line, span fields included.
    Json,
}

/// Log lines not yet written; dropping it writes them (keep it until
/// the process ends).
#[must_use = "log lines still queued are written when this is dropped"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard").finish_non_exhaustive()
    }
}

/// Installs the log subscriber: `RUST_LOG` filters (default `info`).
///
/// Lines are formatted on the request's task and written by a thread of
/// their own, in batches: tracing-appender's non-blocking writer queues
/// each line, and its thread writes what is queued into a buffer flushed
/// when the queue is empty. Written from the request's task, the access
/// line was a `write(2)` to stderr per request on a worker thread. The
/// queue holds 128,000 lines; past that, a request waits to queue its
/// line rather than lose it (`lossy(false)`), as it waited for the write
/// before.
pub fn init_logging(format: LogFormat) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal: escape codes are noise in
    // a journal or a file, and writing them around every field name of
    // every request's span took ~40 % of the span's cost.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("corral-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let result = match format {
        LogFormat::Text => builder.fmt_fields(crate::fields::PlainFields).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    // Already installed (tests start several proxies in one process):
    // the writer made here is not used, nor its thread kept.
    LogGuard(result.is_ok().then_some(guard))
}
