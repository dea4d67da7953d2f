//! The agents: each sends its generations one after another, to the
//! next base in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

use super::{Record, Setup};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Every agent at once, each sending its requests one after another; a
/// request goes to the next of `bases` in turn (with one base, always
/// there).
pub(super) async fn run(setup: &Setup, bases: Vec<String>) -> Vec<Record> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    let bases = Arc::new(bases);
    let turn = Arc::new(AtomicUsize::new(0));
    let models = Arc::new(setup.models.clone());
    let mut agents = tokio::task::JoinSet::new();
    for (index, (priority, model)) in setup.fleet().into_iter().enumerate() {
        let (client, bases, turn, models) =
            (client.clone(), bases.clone(), turn.clone(), models.clone());
        let (requests, tokens, deadline) = (setup.requests, setup.tokens, setup.deadline);
        agents.spawn(async move {
            let agent = format!("agent-{index:03}");
            let mut records = Vec::new();
            for n in 0..requests {
                let base = &bases[turn.fetch_add(1, Ordering::Relaxed) % bases.len()];
                let body = format!(
                    r#"{{"model":"{}","prompt":"{agent}, request {n}","stream":false,"options":{{"num_predict":{tokens}}}}}"#,
                    models[model]
                );
                let sent = Instant::now();
                let call = send(&client, base, &agent, priority, body);
                let error = match tokio::time::timeout(deadline, call).await {
                    Ok(result) => result.err(),
                    Err(_) => Some("timed out".to_string()),
                };
                records.push(Record {
                    priority,
                    model,
                    latency: sent.elapsed(),
                    error,
                });
            }
            records
        });
    }
    let mut records = Vec::new();
    while let Some(done) = agents.join_next().await {
        if let Ok(mine) = done {
            records.extend(mine);
        }
    }
    records
}

/// Sends one generation and reads its whole answer.
async fn send(
    client: &HttpClient,
    base: &str,
    agent: &str,
    priority: u8,
    body: String,
) -> Result<(), String> {
    let request = http::Request::post(format!("{base}/api/generate"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-agent-id", agent)
        .header("x-priority", priority.to_string())
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    if body.starts_with(b"{\"error\"") {
        return Err("error answer".into());
    }
    Ok(())
}
