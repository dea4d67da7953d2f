//! Model names as Ollama compares them.

/// The name Ollama gives `name` when it compares models: a name without a
/// tag is the `latest` one, so `llama3` and `llama3:latest` are the same
/// model (a `:` before the last `/` is a registry's port, not a tag).
///
/// Layers that keep something per model (the scheduler's pools, the
/// proxy's pinned load options) key it by this, so a client cannot slip
/// past a per-model rule by spelling the model the other way.
///
/// ```
/// use corral_core::canonical_model;
///
/// assert_eq!(canonical_model("llama3"), "llama3:latest");
/// assert_eq!(canonical_model("llama3:8b"), "llama3:8b");
/// assert_eq!(canonical_model("localhost:5000/me/tiny"), "localhost:5000/me/tiny:latest");
/// ```
pub fn canonical_model(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}
