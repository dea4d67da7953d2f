//! A simulated Ollama server, for tests and benchmarks.
//!
//! It stands in for a GPU box: Ollama's endpoints and response shapes
//! (NDJSON streams ending in a `done` message with `total_duration`,
//! `eval_count`, ...; the OpenAI-compatible `/v1` API with SSE streams;
//! the Anthropic Messages and OpenAI Responses APIs with named SSE
//! events), deterministic generated text, and the behaviour that makes a
//! real server hard to share.
//!
//! The routes, as Ollama serves them:
//!
//! - generating, each taking a slot of its model: `POST /api/generate`,
//!   `/api/chat`, `/api/embed`, `/api/embeddings`, `/v1/chat/completions`,
//!   `/v1/completions`, `/v1/embeddings`, `/v1/messages` (Anthropic's
//!   Messages API: a `message` document, or `message_start`,
//!   `content_block_*`, `message_delta`, `message_stop` events; Anthropic's
//!   error shape) and `/v1/responses` (OpenAI's Responses API: a
//!   `response` document, or `response.*` events with `sequence_number`).
//!   The chat-like calls answer the same words for the same conversation:
//!   `/v1/messages` and `/v1/responses` turn theirs into `/api/chat`
//!   messages as Ollama does;
//! - the model store: `GET /api/tags`, `GET /api/ps`, `POST /api/show`,
//!   `/api/pull`, `/api/push`, `/api/create`, `/api/copy`,
//!   `DELETE /api/delete`, `POST`/`HEAD /api/blobs/{digest}`,
//!   `GET /v1/models`, `GET /v1/models/{model}`;
//! - `GET /api/version`, `GET`/`HEAD /`;
//! - the mock's own: `GET /mock/stats`, `GET /mock/requests`,
//!   `POST /mock/reset`, `POST /mock/release?n=N`, and
//!   `POST /mock/parallel?n=N` (a restart with another
//!   `OLLAMA_NUM_PARALLEL`: requests generating finish in their slots, new
//!   ones get `n` per model; [`MockOllama::set_parallel`]).
//!
//! What makes a real server hard to share:
//!
//! - `parallel` requests generate at once **per model**, more wait, and
//!   beyond `max_queue` waiting the answer is Ollama's 503
//!   `server busy, please try again.  maximum pending requests exceeded`;
//! - a time to first token and a tokens-per-second rate;
//! - a load time when a request names a model that is not loaded, with at
//!   most `max_loaded_models` kept; the load is given up if the request
//!   that started it leaves first, as Ollama does (ollama#7408);
//! - faults: an error rate, streams that stall or drop, slow headers, set
//!   globally or per request with `X-Mock-Fault` (see [`Faults`]);
//! - counters of what it experienced (peak concurrency, queue, cancels,
//!   model loads) and a log of every request with the exact bytes it
//!   answered, on `GET /mock/stats` and `GET /mock/requests`, so tests can
//!   assert what the upstream saw.
//!
//! ```
//! use corral_mock_ollama::{MockConfig, MockOllama};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let mock = MockOllama::start(MockConfig {
//!     parallel: 4,
//!     ttft: Duration::from_millis(50),
//!     tokens_per_sec: 30.0,
//!     ..MockConfig::default()
//! })
//! .await?;
//! // Point a client or the proxy at mock.url(); afterwards:
//! assert_eq!(mock.stats().peak_in_flight, 0);
//! # Ok(())
//! # }
//! ```

// Handlers return `Result<_, Response>` to answer early; the size of a
// `Response` on that path does not matter in a test server.
#![allow(clippy::result_large_err)]

mod anthropic;
mod api;
mod config;
mod embed;
mod faults;
mod infer;
mod manage;
mod respond;
mod responses;
mod server;
mod shapes;
mod state;
mod stats;
mod text;

pub use config::MockConfig;
pub use faults::Faults;
pub use respond::BUSY_MESSAGE;
pub use server::MockOllama;
pub use stats::{RecordedRequest, Stats};
