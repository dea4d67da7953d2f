//! How Ollama reads a JSON body, where that differs from `serde_json`.

/// A key as Go's `encoding/json` (Ollama's parser) matches it to a field:
/// without case, with `ſ` (U+017F) as `s` and the Kelvin sign (U+212A) as
/// `k`. `{"Model": "x"}` names the model `x` to Ollama.
///
/// ```
/// assert_eq!(corral_core::go_key_fold("MODEL"), "model");
/// assert_eq!(corral_core::go_key_fold("\u{17f}eed"), "seed");
/// ```
pub fn go_key_fold(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}
