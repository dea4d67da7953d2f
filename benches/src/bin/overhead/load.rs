//! Fixed-rate (open-loop) and saturation (closed-loop) steps.
//!
//! Open loop: a pacer on its own OS thread releases requests at their
//! intended send times whatever the target does (it never waits for an
//! answer), and workers, one per keep-alive connection, take them in
//! order. A request's latency runs from its intended send time, so time
//! spent waiting for a free connection behind a slow answer counts
//! against the target (no coordinated omission). The pacer uses
//! `std::thread::sleep` (tens of µs of slack) rather than tokio's timer,
//! which fires on a 1 ms grid and would send bursts; its own lateness is
//! measured and reported, since it adds to every target alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use crate::client::{histogram, nanos, BoxError, Call, Conn, Tally};

/// What one target did in one step.
pub(crate) struct StepResult {
    /// Latency of answered 2xx requests, in ns (from the intended send
    /// time in open loop, from the send in closed loop).
    pub(crate) latency: Histogram<u64>,
    /// Requests that got a whole 2xx answer.
    pub(crate) completed: u64,
    /// From the step's start to its last answer.
    pub(crate) elapsed: Duration,
    /// Statuses, errors and Corral's headers.
    pub(crate) tally: Tally,
    /// How late the pacer released requests (open loop only), in ns.
    pub(crate) pacer_late: Option<Histogram<u64>>,
}

impl StepResult {
    /// Answered requests per second.
    pub(crate) fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.completed as f64 / secs
        } else {
            0.0
        }
    }
}

/// What one worker brings back.
struct WorkerResult {
    latency: Histogram<u64>,
    completed: u64,
    last: Option<Instant>,
    tally: Tally,
}

impl WorkerResult {
    fn new() -> Self {
        Self {
            latency: histogram(),
            completed: 0,
            last: None,
            tally: Tally::default(),
        }
    }
}

/// Opens `n` connections to `addr` before a step starts, so connection
/// set-up is not part of any measured latency.
async fn connections(addr: SocketAddr, n: usize) -> Result<Vec<Conn>, BoxError> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Sums the workers' results into a step's.
async fn gather(
    workers: Vec<tokio::task::JoinHandle<WorkerResult>>,
    start: Instant,
) -> Result<StepResult, BoxError> {
    let mut step = StepResult {
        latency: histogram(),
        completed: 0,
        elapsed: Duration::ZERO,
        tally: Tally::default(),
        pacer_late: None,
    };
    let mut last = start;
    for worker in workers {
        let result = worker.await?;
        step.latency.add(&result.latency)?;
        step.completed += result.completed;
        step.tally.merge(&result.tally);
        if let Some(t) = result.last {
            last = last.max(t);
        }
    }
    step.elapsed = last.saturating_duration_since(start);
    Ok(step)
}

/// `rate` requests per second of `call` for `duration`, open loop over
/// `conns` keep-alive connections.
pub(crate) async fn open_loop(
    addr: SocketAddr,
    call: &Call,
    rate: f64,
    duration: Duration,
    conns: usize,
) -> Result<StepResult, BoxError> {
    let pool = connections(addr, conns).await?;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let start = Instant::now() + Duration::from_millis(10);
    let pacer = std::thread::spawn(move || pace(&tx, start, rate, duration));
    let workers = pool
        .into_iter()
        .map(|conn| tokio::spawn(paced_worker(conn, call.clone(), Arc::clone(&rx))))
        .collect();
    let mut step = gather(workers, start).await?;
    let late = pacer
        .join()
        .map_err(|_| BoxError::from("the pacer thread panicked"))?;
    step.pacer_late = Some(late);
    Ok(step)
}

/// Releases one intended send time per `1/rate` from `start` for
/// `duration`, sleeping between them; a late wake-up releases every time
/// that is due at once (the open loop catches up, as real clients
/// would). Returns how late each release was.
// tokio's sleep fires on a 1 ms grid: 5 requests at once every ms at
// 5,000/s, not one every 200 µs. The workspace bans std's sleep so tests
// can pause time; this thread is never under a paused clock.
#[allow(clippy::disallowed_methods)]
fn pace(
    tx: &mpsc::UnboundedSender<Instant>,
    start: Instant,
    rate: f64,
    duration: Duration,
) -> Histogram<u64> {
    let total = (duration.as_secs_f64() * rate).round() as u64;
    let mut late = histogram();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        late.saturating_record(nanos(Instant::now().saturating_duration_since(due)));
        if tx.send(due).is_err() {
            break;
        }
    }
    late
}

/// Takes the next due request, sends it on its connection, and charges
/// its latency from when it was due.
async fn paced_worker(
    mut conn: Conn,
    call: Call,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>,
) -> WorkerResult {
    let mut result = WorkerResult::new();
    loop {
        let due = { rx.lock().await.recv().await };
        let Some(due) = due else { break };
        if conn.exchange(&call, &mut result.tally).await {
            let done = Instant::now();
            result.latency.saturating_record(nanos(done - due));
            result.completed += 1;
            result.last = Some(done);
        }
    }
    result
}

/// Each of `conns` connections sends `call` again as soon as the last
/// answer is read, for `duration`: the most the target can answer.
pub(crate) async fn closed_loop(
    addr: SocketAddr,
    call: &Call,
    duration: Duration,
    conns: usize,
) -> Result<StepResult, BoxError> {
    let pool = connections(addr, conns).await?;
    let start = Instant::now();
    let end = start + duration;
    let workers = pool
        .into_iter()
        .map(|mut conn| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut result = WorkerResult::new();
                while Instant::now() < end {
                    let sent = Instant::now();
                    if conn.exchange(&call, &mut result.tally).await {
                        let done = Instant::now();
                        result.latency.saturating_record(nanos(done - sent));
                        result.completed += 1;
                        result.last = Some(done);
                    }
                }
                result
            })
        })
        .collect();
    gather(workers, start).await
}
