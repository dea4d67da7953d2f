//! Deterministic "generation": the same model and prompt give the same
//! words and the same vectors, so tests can compare answers.

use std::hash::{Hash, Hasher};

const WORDS: [&str; 48] = [
    "the", "herd", "moves", "slowly", "across", "a", "quiet", "valley", "while", "one", "urgent",
    "request", "waits", "for", "its", "turn", "and", "every", "agent", "shares", "fairly", "in",
    "order", "of", "priority", "so", "that", "nothing", "is", "lost", "when", "load", "climbs",
    "tokens", "stream", "back", "to", "clients", "under", "calm", "skies", "llamas", "graze",
    "near", "gentle", "rivers", "before", "dusk",
];

fn hash(parts: &[&str], index: u64) -> u64 {
    // FNV-1a: stable across processes and Rust versions, unlike
    // `DefaultHasher`.
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for part in parts {
        part.hash(&mut h);
    }
    index.hash(&mut h);
    h.finish()
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The `i`th token of the answer of `model` to `prompt`: a word, with a
/// leading space after the first.
pub(crate) fn token(model: &str, prompt: &str, i: usize) -> String {
    let word = WORDS[(hash(&[model, prompt], i as u64) % WORDS.len() as u64) as usize];
    if i == 0 {
        word.to_string()
    } else {
        format!(" {word}")
    }
}

/// A unit vector of `dim` values for `input`.
pub(crate) fn embedding(model: &str, input: &str, dim: usize) -> Vec<f32> {
    let raw: Vec<f64> = (0..dim.max(1))
        .map(|j| (hash(&[model, input], j as u64) % 20_001) as f64 / 10_000.0 - 1.0)
        .collect();
    let norm = raw
        .iter()
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|v| (v / norm) as f32).collect()
}

/// A rough token count of a prompt: its words.
pub(crate) fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count().max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_prompt_gives_the_same_words_and_another_prompt_others() {
        let a: String = (0..12)
            .map(|i| token("llama3", "why is the sky blue", i))
            .collect();
        let b: String = (0..12)
            .map(|i| token("llama3", "why is the sky blue", i))
            .collect();
        let c: String = (0..12)
            .map(|i| token("llama3", "why is grass green", i))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn embeddings_are_unit_vectors_of_the_asked_length() {
        let v = embedding("nomic-embed-text", "hello", 32);
        assert_eq!(v.len(), 32);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(v, embedding("nomic-embed-text", "hullo", 32));
    }
}
