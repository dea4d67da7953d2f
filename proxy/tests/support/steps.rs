//! The step servers of the saga tests and the calls agents make to
//! `/corral/sagas`: submitting a saga, reading it, waiting for a status,
//! and the effects applied with their idempotency keys checked.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use corral_e2e::{eventually_async, request, send, Reply};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The step servers listen on 127.0.0.1: allowed only when asked.
pub(crate) const LOOPBACK_STEPS: &str = "[sagas]\nallow_private_targets = true\n";

/// Step servers, one path per step: `/{n}/action` and `/{n}/compensate`.
/// Each counts calls per `Idempotency-Key` and applies a key's effect
/// once; `/{failing}/action` waits until the gate opens, then fails.
#[derive(Clone)]
pub(crate) struct Steps {
    pub(crate) url: String,
    shared: Arc<Shared>,
}

struct Shared {
    calls: Mutex<Vec<(String, String)>>,
    effects: Mutex<Vec<String>>,
    failing: usize,
    gate: watch::Sender<bool>,
}

impl Steps {
    /// Servers where step `failing` (from 1) blocks on the gate, then
    /// fails (0: none fails).
    pub(crate) async fn start(failing: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            effects: Mutex::new(Vec::new()),
            failing,
            gate: watch::channel(false).0,
        });
        let serving = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, shared }
    }

    pub(crate) fn open_gate(&self) {
        self.shared.gate.send_replace(true);
    }

    /// `(path, idempotency key)` of every call, in order.
    pub(crate) fn calls(&self) -> Vec<(String, String)> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub(crate) fn calls_to(&self, path: &str) -> usize {
        self.calls().iter().filter(|(p, _)| p == path).count()
    }

    /// The effects applied (one per key), as `{path}` in order.
    pub(crate) fn effects(&self) -> Vec<String> {
        self.shared.effects.lock().unwrap().clone()
    }

    fn call(&self, n: usize, what: &str) -> Value {
        json!({"method": "POST", "url": format!("{}/{n}/{what}", self.url), "body": {"step": n}})
    }

    /// A saga of `n` steps on these servers.
    pub(crate) fn saga(&self, n: usize) -> String {
        let steps: Vec<Value> = (1..=n)
            .map(|i| json!({"name": format!("step{i}"), "action": self.call(i, "action"), "compensation": self.call(i, "compensate")}))
            .collect();
        json!({ "steps": steps }).to_string()
    }
}

async fn answer(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let key = request
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    shared
        .calls
        .lock()
        .unwrap()
        .push((path.clone(), key.clone()));
    if path == format!("/{}/action", shared.failing) {
        let mut gate = shared.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let mut refused = Response::new(Full::from(r#"{"error":"sold out"}"#));
        *refused.status_mut() = StatusCode::CONFLICT;
        return Ok(refused);
    }
    let mut effects = shared.effects.lock().unwrap();
    if !effects.iter().any(|k| *k == format!("{path} {key}")) {
        effects.push(format!("{path} {key}"));
    }
    Ok(Response::new(Full::from(format!(r#"{{"done":"{path}"}}"#))))
}

pub(crate) fn as_agent(
    method: &str,
    url: &str,
    agent: &str,
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut request = request(method, url, body);
    request
        .headers_mut()
        .insert("x-agent-id", agent.parse().unwrap());
    request
}

pub(crate) async fn submit(url: &str, agent: &str, definition: String) -> Reply {
    send(as_agent(
        "POST",
        &format!("{url}/corral/sagas"),
        agent,
        definition,
    ))
    .await
}

pub(crate) async fn status_of(url: &str, agent: &str, id: &str) -> Value {
    send(as_agent(
        "GET",
        &format!("{url}/corral/sagas/{id}"),
        agent,
        "",
    ))
    .await
    .json()
}

pub(crate) async fn until_status(url: &str, agent: &str, id: &str, wanted: &str) -> Value {
    eventually_async(&format!("saga {id} {wanted}"), || async {
        status_of(url, agent, id).await["status"] == wanted
    })
    .await;
    status_of(url, agent, id).await
}

/// The effects' paths with the saga's keys checked: `{n}/{what}` each.
pub(crate) fn effects_of(steps: &Steps, id: &str) -> Vec<String> {
    steps
        .effects()
        .iter()
        .map(|effect| {
            let (path, key) = effect.split_once(' ').unwrap();
            let mut parts = path.trim_start_matches('/').split('/');
            let (n, what) = (parts.next().unwrap(), parts.next().unwrap());
            let step: usize = n.parse().unwrap();
            assert_eq!(key, format!("{id}:{}:{what}", step - 1), "{effect}");
            path.to_string()
        })
        .collect()
}
