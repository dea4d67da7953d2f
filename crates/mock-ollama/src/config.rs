use std::time::Duration;

/// How the simulated Ollama behaves. Every field has a flag of the same
/// name in the `corral-mock-ollama` binary.
///
/// The defaults are a small, fast server: 4 requests at once per model
/// (what `OLLAMA_NUM_PARALLEL` would say), 512 waiting (Ollama's
/// `OLLAMA_MAX_QUEUE`), 20 ms to the first token, 200 tokens a second.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Requests generating at once per model.
    pub parallel: usize,
    /// Requests that may wait for a slot; one more gets 503 "server busy".
    pub max_queue: usize,
    /// Time from getting a slot to the first token (prompt evaluation).
    pub ttft: Duration,
    /// Generated tokens per second per request; infinite for no delay
    /// between tokens.
    pub tokens_per_sec: f64,
    /// Tokens in an answer when the request sets no `num_predict`.
    pub tokens: usize,
    /// Time to load a model that is not loaded.
    pub load_time: Duration,
    /// Models kept loaded at once; loading one more evicts the least
    /// recently used.
    pub max_loaded_models: usize,
    /// The models the server has.
    pub models: Vec<String>,
    /// Length of the embedding vectors.
    pub embedding_dim: usize,
    /// Share of inference requests answered 500 with a runner error.
    pub error_rate: f64,
    /// Share of streams that stall (stop sending, keep the connection)
    /// after a few chunks, for `stall`.
    pub stall_rate: f64,
    /// How long a stall lasts.
    pub stall: Duration,
    /// Share of streams whose connection drops after a few chunks.
    pub drop_rate: f64,
    /// Delay before any response's headers.
    pub slow_headers: Duration,
    /// Seed of the fault dice, so runs repeat.
    pub seed: u64,
    /// How many requests `/mock/requests` keeps.
    pub log_capacity: usize,
    /// Tokens per second for some models (by name, with or without a
    /// tag): a small model generates faster than a large one.
    pub model_tokens_per_sec: std::collections::BTreeMap<String, f64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            parallel: 4,
            max_queue: 512,
            ttft: Duration::from_millis(20),
            tokens_per_sec: 200.0,
            tokens: 24,
            load_time: Duration::ZERO,
            max_loaded_models: 3,
            models: vec![
                "llama3".into(),
                "tinyllama".into(),
                "nomic-embed-text".into(),
            ],
            embedding_dim: 16,
            error_rate: 0.0,
            stall_rate: 0.0,
            stall: Duration::from_secs(3600),
            drop_rate: 0.0,
            slow_headers: Duration::ZERO,
            seed: 7,
            log_capacity: 1000,
            model_tokens_per_sec: std::collections::BTreeMap::new(),
        }
    }
}

impl MockConfig {
    /// The generation rate of `model`: its own if set, else
    /// `tokens_per_sec`.
    ///
    /// ```
    /// use corral_mock_ollama::MockConfig;
    ///
    /// let config = MockConfig {
    ///     model_tokens_per_sec: [("tinyllama".to_string(), 800.0)].into(),
    ///     ..MockConfig::default()
    /// };
    /// assert_eq!(config.tokens_per_sec_for("tinyllama:latest"), 800.0);
    /// assert_eq!(config.tokens_per_sec_for("llama3"), config.tokens_per_sec);
    /// ```
    pub fn tokens_per_sec_for(&self, model: &str) -> f64 {
        let base = model.strip_suffix(":latest").unwrap_or(model);
        self.model_tokens_per_sec
            .get(model)
            .or_else(|| self.model_tokens_per_sec.get(base))
            .copied()
            .unwrap_or(self.tokens_per_sec)
    }
}
