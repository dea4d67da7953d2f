//! The streaming step: a fixed number of 200-token NDJSON streams per
//! target at a modest concurrency. Per stream it times the first body
//! byte and the rest of the stream, so the report can say what a proxy
//! adds before a stream starts and per chunk once it runs (a proxy that
//! buffered would show as a late first byte and bunched chunks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::client::{histogram, nanos, BoxError, Call, Conn, Tally};

/// What one target's streams did.
pub(crate) struct StreamResult {
    /// From the send to the first body byte, in ns.
    pub(crate) ttfb: Histogram<u64>,
    /// From the send to the end of the stream, in ns.
    pub(crate) total: Histogram<u64>,
    /// Per stream, (last byte − first byte) / (lines − 1): the mean time
    /// per chunk once the stream runs, in ns.
    pub(crate) per_chunk: Histogram<u64>,
    /// Streams read to their end with a 2xx status.
    pub(crate) streams: u64,
    /// The fewest and most NDJSON lines a stream had.
    pub(crate) lines: (u64, u64),
    /// Statuses, errors and Corral's headers.
    pub(crate) tally: Tally,
}

/// One stream's timings.
struct Timed {
    ttfb: u64,
    total: u64,
    per_chunk: u64,
    lines: u64,
}

/// Reads one stream of `call` on `conn`; None when it failed (counted).
async fn one(conn: &mut Conn, call: &Call, tally: &mut Tally) -> Option<Timed> {
    let sent = Instant::now();
    let response = match conn.send(call, tally).await {
        Ok(response) => response,
        Err(_) => {
            tally.errors += 1;
            return None;
        }
    };
    let success = response.status().is_success();
    let mut body = response.into_body();
    let mut first = None;
    let mut last = sent;
    let mut lines = 0u64;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            tally.errors += 1;
            return None;
        };
        if let Some(data) = frame.data_ref() {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    let first = first?;
    if !success {
        return None;
    }
    Some(Timed {
        ttfb: nanos(first - sent),
        total: nanos(last - sent),
        per_chunk: nanos(last - first) / lines.saturating_sub(1).max(1),
        lines,
    })
}

/// `count` streams of `call` to `addr`, `concurrency` at a time (each
/// worker runs its streams back to back on one keep-alive connection).
pub(crate) async fn streams(
    addr: SocketAddr,
    call: &Call,
    count: usize,
    concurrency: usize,
) -> Result<StreamResult, BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut conn = Conn::open(addr).await?;
        let call = call.clone();
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut timed = Vec::new();
            let mut tally = Tally::default();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                if let Some(t) = one(&mut conn, &call, &mut tally).await {
                    timed.push(t);
                }
            }
            (timed, tally)
        }));
    }
    let mut result = StreamResult {
        ttfb: histogram(),
        total: histogram(),
        per_chunk: histogram(),
        streams: 0,
        lines: (u64::MAX, 0),
        tally: Tally::default(),
    };
    for worker in workers {
        let (timed, tally) = worker.await?;
        result.tally.merge(&tally);
        for t in timed {
            result.ttfb.saturating_record(t.ttfb.max(1));
            result.total.saturating_record(t.total.max(1));
            result.per_chunk.saturating_record(t.per_chunk.max(1));
            result.streams += 1;
            result.lines = (result.lines.0.min(t.lines), result.lines.1.max(t.lines));
        }
    }
    if result.streams == 0 {
        result.lines = (0, 0);
    }
    Ok(result)
}
