//! `corral`: an Ollama-compatible reverse proxy built from Corral's tower
//! layers.
//!
//! Agents point `OLLAMA_HOST` at it; it forwards every Ollama and
//! OpenAI-compatible call to the upstream Ollama server, streams
//! included, through a stack of layers chosen in the config's
//! `[[layers]]` list, after `classify`, which is always first.
//!
//! - [`Config`]: the TOML file, plain data with defaults;
//! - [`config::ModelOptions`]: load options pinned per model
//!   (`[models."name"]`): `num_ctx` and `keep_alive` set or clamped in
//!   every request for the model, so no client makes Ollama reload or
//!   unload a runner the others share;
//! - [`stack::build`]: the stack as one boxed `tower` service, callable
//!   without a socket;
//! - [`Server`]: listeners, HTTP/1.1 and h2c connections, graceful
//!   shutdown; [`Running`] serves one in the background;
//! - [`registry`]: where layer crates plug in, one line each;
//! - [`respond`]: the one place errors become Ollama-shaped answers.
//!
//! Features: `otlp` (default) exports each request's span over OTLP/HTTP;
//! `jemalloc` (default) makes jemalloc (`tikv-jemallocator`) the `corral`
//! binary's allocator. The library sets no global allocator: a service
//! that imports it keeps its own. jemalloc over glibc's malloc is
//! measured in `benches/RESULTS.md` ("The changes, each measured", issue 21); mimalloc was
//! measured too, and gained less here.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use corral::{Config, Running};
//!
//! let mut config = Config::default();
//! config.server.listen = "127.0.0.1:0".parse()?;
//! config.upstream.url = "127.0.0.1:11434".into();
//! let proxy = Running::start(&config).await?;
//! println!("OLLAMA_HOST={}", proxy.addr());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

pub mod admin;
pub mod agent_api;
mod background;
pub mod cli;
pub mod config;
mod conn_guard;
mod connection;
mod drain;
mod fields;
mod follow;
mod forwarded;
pub mod front;
mod hop;
mod keys;
mod layers;
pub mod listen;
mod observe;
#[cfg(feature = "otlp")]
mod otlp;
mod pin;
pub mod registry;
pub mod reload;
mod repoll;
pub mod respond;
mod running;
pub mod server;
pub mod stack;
mod svc;
pub mod telemetry;
mod trace;
pub mod upstream;
mod upstream_tls;
mod upstream_url;
mod upstreams;

pub use config::{Config, LayerConfig, LoadError};
pub use hop::strip_hop_by_hop;
pub use registry::{options, BuildContext, LayerKind, StackLayer};
pub use running::Running;
pub use server::{Server, StartError};
pub use stack::{HttpRequest, HttpResponse, Stack, StackService};
pub use upstream::Upstream;
pub use upstream_url::UpstreamUrl;
