//! What the operator says of each upstream.

use std::collections::HashMap;
use std::sync::Arc;

use corral_core::canonical_model;

/// The name of the pool of requests that name no model: served anywhere,
/// never loaded or evicted.
pub const ANY_MODEL: &str = "*";

/// One upstream, as configured.
///
/// ```
/// use corral_fleet::UpstreamSpec;
///
/// let spec = UpstreamSpec::new("gpu-a", 4)
///     .with_models(["llama3", "qwen2.5:*"])
///     .with_max_loaded(Some(1));
/// assert!(spec.serves("llama3:latest"));
/// assert!(spec.serves("qwen2.5:7b"));
/// assert!(!spec.serves("mistral:latest"));
/// assert_eq!(spec.capacity_of("llama3:latest"), 4);
/// ```
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// Its name in metrics, logs and the status.
    pub name: Arc<str>,
    /// Requests one loaded model runs at once: its `OLLAMA_NUM_PARALLEL`.
    pub capacity: usize,
    /// Models with a capacity of their own, by canonical name.
    pub model_capacity: HashMap<String, usize>,
    /// The models it may serve: canonical names, or a prefix ending in
    /// `*`. Empty: every model.
    pub models: Vec<String>,
    /// How many models it holds loaded at once (`OLLAMA_MAX_LOADED_MODELS`,
    /// or what its memory allows); `None`: no limit Corral should keep.
    pub max_loaded: Option<usize>,
    /// A heavier upstream takes a larger share of the requests.
    pub weight: f64,
}

impl UpstreamSpec {
    /// An upstream named `name` running `capacity` requests of each
    /// loaded model at once, serving every model, weight 1.
    pub fn new(name: &str, capacity: usize) -> Self {
        Self {
            name: Arc::from(name),
            capacity,
            model_capacity: HashMap::new(),
            models: Vec::new(),
            max_loaded: None,
            weight: 1.0,
        }
    }

    /// Only these models (names, or prefixes ending in `*`).
    pub fn with_models<S: AsRef<str>>(mut self, models: impl IntoIterator<Item = S>) -> Self {
        self.models = models
            .into_iter()
            .map(|m| {
                let m = m.as_ref();
                if m.ends_with('*') {
                    m.to_string()
                } else {
                    canonical_model(m)
                }
            })
            .collect();
        self
    }

    /// At most `max` models loaded at once.
    pub fn with_max_loaded(mut self, max: Option<usize>) -> Self {
        self.max_loaded = max;
        self
    }

    /// Whether it may serve `model` (canonical).
    pub fn serves(&self, model: &str) -> bool {
        model == ANY_MODEL
            || self.models.is_empty()
            || self.models.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }

    /// Requests of `model` (canonical) it runs at once, as configured.
    pub fn capacity_of(&self, model: &str) -> usize {
        self.model_capacity
            .get(model)
            .copied()
            .unwrap_or(self.capacity)
    }
}
