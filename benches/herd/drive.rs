//! The agents: each thinks, asks, reads the whole answer, and waits out a
//! `Retry-After` before asking again, until the run ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;

use crate::herd::fleet::{think, Api, Call, Class};
use crate::herd::record::{Outcome, Record};

/// What every agent of a run shares.
#[derive(Debug)]
pub(crate) struct Drive {
    pub(crate) fleet: Vec<Class>,
    /// Where agents send: one URL, or several replicas (agents spread
    /// over them).
    pub(crate) bases: Vec<String>,
    pub(crate) api: Api,
    pub(crate) model: String,
    pub(crate) embed_model: String,
    pub(crate) duration: Duration,
    pub(crate) grace: Duration,
    pub(crate) seed: u64,
    /// Multiplies every think time: below 1, a busier fleet.
    pub(crate) think_scale: f64,
    /// Each agent stops after this many requests; `None`: at the end of
    /// the run.
    pub(crate) requests: Option<u64>,
    /// Agents start within this long of each other.
    pub(crate) stampede: Duration,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Runs the whole fleet against `drive.bases`; every request's record.
pub(crate) async fn run(drive: Arc<Drive>) -> Vec<Record> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let start = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let mut agents = tokio::task::JoinSet::new();
    for (class, spec) in drive.fleet.iter().enumerate() {
        for index in 0..spec.agents {
            agents.spawn(agent(
                drive.clone(),
                client.clone(),
                class,
                index,
                start,
                stopped.clone(),
            ));
        }
    }
    // Agents stop asking at the end of the run; what is still open a
    // grace period later is counted as unfinished.
    let deadline = start + drive.duration + drive.grace;
    let mut records = Vec::new();
    let collect = async {
        while let Some(done) = agents.join_next().await {
            if let Ok(mine) = done {
                records.extend(mine);
            }
        }
    };
    tokio::select! {
        () = collect => {}
        () = tokio::time::sleep_until(deadline) => {
            let _ = stop.send(true);
            while let Some(done) = agents.join_next().await {
                if let Ok(mine) = done {
                    records.extend(mine);
                }
            }
        }
    }
    records.sort_by_key(|r| r.at);
    records
}

/// Loads both models before the fleet starts, as an operator's
/// preloaded server would have them: no run pays for the first load.
pub(crate) async fn warm(upstream: &str, options: &super::Options) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut class = options
        .fleet
        .first()
        .cloned()
        .unwrap_or_else(|| super::design_fleet()[0].clone());
    class.tokens = 1;
    let mut rng = fastrand::Rng::with_seed(0);
    for (chat, generate) in [(1.0, 0.0), (0.0, 0.0)] {
        class.chat = chat;
        class.generate = generate;
        let call = class.next_call(
            &mut rng,
            options.api,
            (&options.model, &options.embed_model),
            "warm-up",
            0,
        );
        let _ = send(&client, upstream, "warm-up", &class, call).await;
    }
}

async fn agent(
    drive: Arc<Drive>,
    client: HttpClient,
    class: usize,
    index: usize,
    start: Instant,
    mut stopped: watch::Receiver<bool>,
) -> Vec<Record> {
    let spec = &drive.fleet[class];
    let id = format!("{}-{index:02}", spec.name);
    let mut rng = fastrand::Rng::with_seed(drive.seed ^ ((class as u64) << 32 | index as u64));
    let mean_think = spec.think.mul_f64(drive.think_scale);
    // Each agent keeps to one replica, as one behind a sticky balancer or
    // on its own host would; the classes spread over all of them.
    let offset: usize = drive.fleet[..class].iter().map(|c| c.agents).sum();
    let base = &drive.bases[(offset + index) % drive.bases.len().max(1)];
    let mut records = Vec::new();
    // The stampede: everyone starts within the first moments.
    let spread = u64::try_from(drive.stampede.as_millis()).unwrap_or(u64::MAX);
    let mut pause = Duration::from_millis(rng.u64(0..spread.max(1)));
    for n in 0u64.. {
        if drive.requests.is_some_and(|requests| n >= requests) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stopped.wait_for(|s| *s) => break,
        }
        let at = start.elapsed();
        if at >= drive.duration {
            break;
        }
        let call = spec.next_call(
            &mut rng,
            drive.api,
            (&drive.model, &drive.embed_model),
            &id,
            n,
        );
        let kind = call.kind;
        let sent = Instant::now();
        let exchange = tokio::time::timeout(spec.deadline, send(&client, base, &id, spec, call));
        let answer = tokio::select! {
            answer = exchange => match answer {
                Ok(answer) => answer,
                Err(_) => Answer::ended(Outcome::TimedOut),
            },
            _ = stopped.wait_for(|s| *s) => Answer::ended(Outcome::Unfinished),
        };
        let Answer {
            outcome,
            first_byte,
            queued,
            retry_after,
        } = answer;
        let unfinished = outcome == Outcome::Unfinished;
        records.push(Record {
            class,
            kind,
            at,
            latency: sent.elapsed(),
            first_byte,
            queued,
            outcome,
        });
        if unfinished {
            break;
        }
        pause = think(&mut rng, mean_think).max(retry_after.unwrap_or_default());
    }
    records
}

/// What an agent learnt from one exchange.
struct Answer {
    outcome: Outcome,
    first_byte: Option<Duration>,
    queued: Option<Duration>,
    retry_after: Option<Duration>,
}

impl Answer {
    fn ended(outcome: Outcome) -> Self {
        Self {
            outcome,
            first_byte: None,
            queued: None,
            retry_after: None,
        }
    }
}

/// Sends `call` and reads the whole answer.
async fn send(client: &HttpClient, base: &str, agent: &str, class: &Class, call: Call) -> Answer {
    let sent = Instant::now();
    let request = http::Request::post(format!("{base}{}", call.path))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-agent-id", agent)
        .header("x-deadline-ms", class.deadline.as_millis().to_string());
    let request = if class.asks_priority {
        request.header("x-priority", class.priority.to_string())
    } else {
        request
    };
    let request = request.body(Full::new(call.body));
    let Ok(request) = request else {
        return Answer::ended(Outcome::Failed("bad request".into()));
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return Answer::ended(Outcome::Failed(format!("connect: {e}"))),
    };
    let (parts, mut body) = response.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let retry_after = header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    let queued = header("x-corral-queue-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let answer = |outcome, first_byte, retry_after| Answer {
        outcome,
        first_byte,
        queued,
        retry_after,
    };
    let mut first_byte = None;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    if !data.is_empty() && first_byte.is_none() {
                        first_byte = Some(sent.elapsed());
                    }
                    bytes.extend_from_slice(data);
                }
            }
            Err(e) => return answer(Outcome::Failed(format!("body: {e}")), first_byte, None),
        }
    }
    if !parts.status.is_success() {
        let reason = header("x-corral-reason")
            .map(str::to_string)
            .unwrap_or_else(|| format!("upstream_{}", parts.status.as_u16()));
        return answer(Outcome::Refused(reason), first_byte, retry_after);
    }
    if broke_off(&bytes, call.stream) {
        return answer(Outcome::Failed("stream error".into()), first_byte, None);
    }
    let outcome = if header("x-corral-answer") == Some("default") {
        Outcome::DefaultAnswer
    } else if matches!(
        header("x-corral-cache"),
        Some("hit" | "stale" | "coalesced")
    ) {
        Outcome::Cached
    } else if header("x-corral-model-rewrite").is_some() || header("x-corral-token-cap").is_some() {
        Outcome::Degraded
    } else {
        Outcome::Served
    };
    answer(outcome, first_byte, retry_after)
}

/// Whether a 200 answer ended with an error line or event instead of
/// its last chunk: a stream that broke is not an answer.
fn broke_off(body: &[u8], stream: bool) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return true;
    };
    if !stream {
        return text.trim_start().starts_with("{\"error\"");
    }
    let last = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && *l != "data: [DONE]")
        .unwrap_or("");
    let json = last.strip_prefix("data:").map(str::trim).unwrap_or(last);
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(value) => value.get("error").is_some(),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::broke_off;

    #[test]
    fn a_stream_ending_in_an_error_is_broken_and_a_whole_one_is_not() {
        assert!(!broke_off(b"{\"response\":\"a\"}\n{\"done\":true}\n", true));
        assert!(broke_off(
            b"{\"response\":\"a\"}\n{\"error\":\"upstream broke\"}\n",
            true
        ));
        assert!(!broke_off(
            b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n",
            true
        ));
        assert!(broke_off(
            b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
            true
        ));
        assert!(broke_off(b"{\"response\":\"a\"", true));
        assert!(!broke_off(b"{\"response\":\"whole\",\"done\":true}", false));
    }
}
