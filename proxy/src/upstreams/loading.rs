//! A client that leaves while its model loads does not abort the load if
//! other requests wait for that model: Ollama gives up a load whose
//! requester leaves (ollama#7408), and the next request for the model
//! would pay it again.
//!
//! Streams only: a stream's headers come with its first token, once the
//! model is loaded; a whole answer's come at its end, so keeping one
//! going would run a generation nobody reads (and hold a slot Corral has
//! given to someone else).

use std::sync::Arc;

use corral_core::{Body, BoxError};
use corral_fleet::Fleet;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

type Answer = Result<Response<Incoming>, hyper_util::client::legacy::Error>;

/// Sends `request`, which loads `model` on its server, from a task of its
/// own: if the caller leaves before the answer's headers and the fleet
/// still has requests waiting for `model`, the task lives on until the
/// headers come (a stream's come with its first token: the model is
/// loaded), then drops the answer, which closes the connection.
pub(crate) async fn send_loading(
    client: Client<HttpsConnector<HttpConnector>, Body>,
    request: Request<Body>,
    fleet: Arc<Fleet>,
    upstream: usize,
    model: Arc<str>,
) -> Result<Answer, BoxError> {
    let (tell, answer) = oneshot::channel();
    let task = tokio::spawn(async move {
        // Left alone, it would wait on a hung server for ever.
        let result = match tokio::time::timeout(LOAD_TIMEOUT, client.request(request)).await {
            Ok(result) => result,
            Err(_) => return,
        };
        // Nobody to tell: the answer is dropped here.
        let _ = tell.send(result);
    });
    let mut watch = Leaving {
        task: Some(task),
        fleet,
        upstream,
        model,
    };
    let result = answer.await;
    watch.task = None;
    // Lost only with the runtime going down (or a panic in the client).
    result.map_err(|_| "the upstream request's task ended without an answer".into())
}

/// The longest a load is kept going for others: Ollama's own default
/// `OLLAMA_LOAD_TIMEOUT`.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// What the caller leaves behind.
struct Leaving {
    task: Option<JoinHandle<()>>,
    fleet: Arc<Fleet>,
    upstream: usize,
    model: Arc<str>,
}

impl Drop for Leaving {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        // Others want it: waiting in the queue, or sent to that server
        // beside it (its own permit is still held while this runs).
        let beside = self.fleet.running(self.upstream, &self.model) > 1;
        if beside || self.fleet.is_wanted(&self.model) {
            tracing::debug!(model = %self.model, "client left while its model loads: the load goes on for the requests waiting");
        } else {
            task.abort();
        }
    }
}
