//! A fake Corral and agent on a real socket for the HTTP steps' tests,
//! recording what each call carried, and their config.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use corral_saga::{BoxFuture, Definition, Resolve, SagaConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What the fake server saw: method, path, `Idempotency-Key`,
/// `X-Agent-Id`, `Prefer`.
pub(crate) type Seen = Arc<Mutex<Vec<[String; 5]>>>;

/// A fake Corral and agent: `POST /api/chat` with `Prefer:
/// respond-async` becomes job 1, `running` on the first poll and `done`
/// after; `/fail` answers 409; anything else 200 with `{"path": ...}`.
pub(crate) async fn server() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let seen = recorded.clone();
            let service = service_fn(move |request| answer(seen.clone(), request));
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, seen)
}

pub(crate) async fn answer(
    seen: Seen,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let path = request.uri().path().to_string();
    let polls = {
        let mut seen = seen.lock().unwrap();
        seen.push([
            request.method().to_string(),
            path.clone(),
            header("idempotency-key"),
            header("x-agent-id"),
            header("prefer"),
        ]);
        seen.iter().filter(|s| s[1] == "/corral/jobs/1").count()
    };
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::from(body.to_string()));
        *response.status_mut() = status;
        response
    };
    Ok(match path.as_str() {
        "/api/chat" if header("prefer") == "respond-async" => {
            let mut accepted = reply(StatusCode::ACCEPTED, json!({"id": "1"}));
            accepted
                .headers_mut()
                .insert("location", "/corral/jobs/1".parse().unwrap());
            accepted
        }
        "/corral/jobs/1" if polls < 2 => reply(StatusCode::OK, json!({"status": "running"})),
        "/corral/jobs/1" => reply(
            StatusCode::OK,
            json!({"status": "done", "response": {"status": 200, "headers": {}, "body": {"message": "summary"}}}),
        ),
        "/fail" => reply(StatusCode::CONFLICT, json!({"error": "sold out"})),
        _ => reply(StatusCode::OK, json!({"path": path})),
    })
}

/// Every agent is the fake server.
pub(crate) struct Here(pub(crate) String);

impl Resolve for Here {
    fn resolve<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

pub(crate) fn config() -> SagaConfig {
    SagaConfig {
        job_poll_interval: Duration::from_millis(10),
        call_timeout: Duration::from_secs(5),
        compensation_backoff: Duration::from_millis(10),
        // The fake servers listen on 127.0.0.1.
        allow_private_targets: true,
        ..SagaConfig::default()
    }
}

pub(crate) fn definition(json: Value) -> Definition {
    let definition: Definition = serde_json::from_value(json).unwrap();
    definition.validate(8).unwrap();
    definition
}
