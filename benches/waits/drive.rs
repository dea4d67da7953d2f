//! The clients: requests arriving at random, each asking again after a
//! refusal until it is let in.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::{Record, Setup, Variant};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client asks again for at most this long after its first sending.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Requests arriving at `load` × the server's rate (exponential gaps,
/// seeded) for the setup's duration, each a client of its own.
pub(super) async fn run(setup: &Setup, load: f64, variant: Variant, base: &str) -> Vec<Record> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    let rate = (load * setup.capacity_rate()).max(1e-3);
    let mut rng = fastrand::Rng::with_seed(setup.seed);
    let start = Instant::now();
    let mut at = Duration::ZERO;
    let mut clients = tokio::task::JoinSet::new();
    for n in 0.. {
        at += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / rate);
        if at >= setup.duration {
            break;
        }
        tokio::time::sleep_until(start + at).await;
        let tokens = rng.u32(setup.tokens.0..=setup.tokens.1);
        let asking = Asking {
            client: client.clone(),
            base: base.to_string(),
            agent: format!("client-{n:05}"),
            // The same id on every retry: it keeps the client's place.
            id: format!("waits-{n:05}"),
            tokens,
            variant,
            deadline: setup.deadline,
            probe: setup.probe,
        };
        clients.spawn(asking.until_answered());
    }
    let mut records = Vec::new();
    while let Some(done) = clients.join_next().await {
        if let Ok(record) = done {
            records.push(record);
        }
    }
    records
}

/// One client's request.
struct Asking {
    client: HttpClient,
    base: String,
    agent: String,
    id: String,
    tokens: u32,
    variant: Variant,
    deadline: Duration,
    probe: Duration,
}

/// An answer's status and the headers the bench reads.
struct Answer {
    status: u16,
    reason: Option<String>,
    queue_ms: Option<u64>,
    eta_ms: Option<u64>,
    retry_after_ms: Option<u64>,
}

impl Asking {
    /// Sends until let in (asking again every probe after a refusal at
    /// arrival), then reads the whole answer.
    async fn until_answered(self) -> Record {
        let first = Instant::now();
        let mut record = Record {
            tokens: self.tokens,
            ..Record::default()
        };
        let mut refused_at = None;
        loop {
            let sent = Instant::now();
            let Ok(answer) = self.send().await else {
                return record;
            };
            if answer.status == 503 && answer.reason.as_deref() == Some("deadline_unreachable") {
                if refused_at.is_none() {
                    refused_at = Some(sent);
                    let told = Duration::from_millis(answer.retry_after_ms.unwrap_or(0));
                    record.retry = Some((told, None));
                }
                if first.elapsed() > GIVE_UP {
                    return record;
                }
                tokio::time::sleep(self.probe).await;
                continue;
            }
            if let (Some(at), Some((told, _))) = (refused_at, record.retry) {
                record.retry = Some((told, Some(sent.saturating_duration_since(at))));
            }
            if answer.status == 200 {
                record.latency = Some(first.elapsed());
                record.in_time = sent.elapsed() <= self.deadline;
                record.waited = answer.queue_ms.map(Duration::from_millis);
                record.eta = answer.eta_ms.map(Duration::from_millis);
            }
            return record;
        }
    }

    async fn send(&self) -> Result<Answer, String> {
        let body = match self.variant {
            Variant::Told => format!(
                r#"{{"model":"llama3","prompt":"{}","stream":false,"options":{{"num_predict":{}}}}}"#,
                self.agent, self.tokens
            ),
            Variant::Untold => format!(
                r#"{{"model":"llama3","prompt":"{}","stream":false}}"#,
                self.agent
            ),
        };
        let request = http::Request::post(format!("{}/api/generate", self.base))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("x-agent-id", &self.agent)
            .header("x-request-id", &self.id)
            .header("x-deadline-ms", self.deadline.as_millis().to_string())
            // The server answers at the request's length, told or not.
            .header("x-mock-fault", format!("tokens={}", self.tokens))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        let answer = Answer {
            status: response.status().as_u16(),
            reason: header("x-corral-reason"),
            queue_ms: number("x-corral-queue-ms"),
            eta_ms: number("x-corral-queue-eta-ms"),
            retry_after_ms: number("x-corral-retry-after-ms"),
        };
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(answer)
    }
}
