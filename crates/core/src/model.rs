//! Model names as Ollama compares them.

/// The name Ollama means by `name`: `llama3` and `llama3:latest` are one
/// model, a tag after the last `/` is kept, and a registry host's port
/// (`host:5000/llama3`) is not a tag.
///
/// ```
/// use corral_core::canonical_model;
/// assert_eq!(canonical_model("llama3"), "llama3:latest");
/// assert_eq!(canonical_model("llama3:8b"), "llama3:8b");
/// assert_eq!(canonical_model("host:5000/llama3"), "host:5000/llama3:latest");
/// ```
pub fn canonical_model(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}
