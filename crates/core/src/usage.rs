//! Token counts read from an answer as it streams by.

/// The token counts an Ollama or OpenAI answer reports: Ollama's
/// `prompt_eval_count`/`eval_count` in its last message, OpenAI's
/// `usage.prompt_tokens`/`completion_tokens`.
///
/// Layers that settle a cost when the answer ends (fair share, token
/// rate limits) feed it each data frame; counts arrive in the last message
/// of a stream, whole in one frame (Ollama writes each message in one
/// write).
///
/// ```
/// use corral_core::Usage;
///
/// let mut usage = Usage::default();
/// usage.read(br#"{"done":false,"response":"hi"}"#);
/// assert_eq!(usage.cost(), None);
/// usage.read(br#"{"done":true,"prompt_eval_count":26,"eval_count":298}"#);
/// assert_eq!(usage.generated, Some(298));
/// assert_eq!(usage.cost(), Some(26.0 + 2.0 * 298.0));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, once reported.
    pub prompt: Option<u64>,
    /// Generated tokens, once reported.
    pub generated: Option<u64>,
}

impl Usage {
    /// Reads token counts from a chunk of an answer.
    pub fn read(&mut self, chunk: &[u8]) {
        if let Some(n) = number_after(chunk, b"\"prompt_eval_count\":")
            .or_else(|| number_after(chunk, b"\"prompt_tokens\":"))
        {
            self.prompt = Some(n);
        }
        if let Some(n) = number_after(chunk, b"\"eval_count\":")
            .or_else(|| number_after(chunk, b"\"completion_tokens\":"))
        {
            self.generated = Some(n);
        }
    }

    /// Prompt tokens + 2 × generated tokens, as the design counts service.
    pub fn cost(self) -> Option<f64> {
        match (self.prompt, self.generated) {
            (None, None) => None,
            (p, g) => Some(p.unwrap_or(0) as f64 + 2.0 * g.unwrap_or(0) as f64),
        }
    }
}

fn number_after(haystack: &[u8], key: &[u8]) -> Option<u64> {
    let at = haystack.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &haystack[at..];
    let start = rest.iter().position(|b| *b != b' ')?;
    let digits: Vec<u8> = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_and_openai_counts_are_read_and_do_not_mix_up() {
        let mut usage = Usage::default();
        usage.read(
            br#"{"done":true,"prompt_eval_count":26,"prompt_eval_duration":1,"eval_count":298}"#,
        );
        assert_eq!((usage.prompt, usage.generated), (Some(26), Some(298)));
        assert_eq!(usage.cost(), Some(26.0 + 2.0 * 298.0));

        let mut usage = Usage::default();
        usage.read(
            br#"data: {"usage":{"prompt_tokens": 9,"completion_tokens":12,"total_tokens":21}}"#,
        );
        assert_eq!(usage.cost(), Some(9.0 + 24.0));

        let mut usage = Usage::default();
        usage.read(br#"{"response":"eval_count is a word here","done":false}"#);
        assert_eq!(usage.cost(), None);
    }
}
