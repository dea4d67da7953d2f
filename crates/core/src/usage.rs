//! Token counts read from an answer as it streams by.

use std::sync::OnceLock;

use memchr::memmem::Finder;

/// The token counts an answer reports: Ollama's
/// `prompt_eval_count`/`eval_count` in its last message, OpenAI's
/// `usage.prompt_tokens`/`completion_tokens`, and the Anthropic Messages
/// and OpenAI Responses APIs' `usage.input_tokens`/`output_tokens` (in a
/// stream: Anthropic's `message_start` and `message_delta`, the
/// Responses API's `response.completed`; the last count read wins).
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
        // Every frame of every answer comes through here, in several
        // layers at once: each key is looked for once, vectorised.
        let [prompt_eval, prompt_tokens, input, eval, completion, output] = first_keys(chunk);
        if let Some(n) = number_at(chunk, prompt_eval)
            .or_else(|| number_at(chunk, prompt_tokens))
            .or_else(|| number_at(chunk, input))
        {
            self.prompt = Some(n);
        }
        if let Some(n) = number_at(chunk, eval)
            .or_else(|| number_at(chunk, completion))
            .or_else(|| number_at(chunk, output))
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

/// The keys [`Usage::read`] looks for, by their two endings: each key
/// is its ending's match preceded by one of its beginnings, the slot
/// of [`first_keys`]'s answer it fills given with it. Slots: prompt
/// (Ollama, OpenAI, Anthropic), then generated (the same three).
const KEYS: [(&[u8], &[Beginning]); 2] = [
    (b"_count\":", &[(0, b"\"prompt_eval"), (3, b"\"eval")]),
    (
        b"_tokens\":",
        &[
            (1, b"\"prompt"),
            (2, b"\"input"),
            (4, b"\"completion"),
            (5, b"\"output"),
        ],
    ),
];

/// A key's beginning, before its ending, and the slot it fills.
type Beginning = (usize, &'static [u8]);

/// Where the value after the first occurrence of each key starts.
fn first_keys(haystack: &[u8]) -> [Option<usize>; 6] {
    // Two vectorised searches, one per ending, each match checked
    // against the keys that end so: every frame of every answer passes
    // here, once or twice (the observation, fair share), and a streamed
    // frame holds no key at all. A search per key (six) took 2,580
    // instructions a chunk of a stream over the bare proxy's, with the
    // end-of-stream marker's searcher built each chunk; these two and a
    // searcher built once, 1,507 (benches/RESULTS.md, "Third pass").
    static FINDERS: OnceLock<[Finder<'static>; 2]> = OnceLock::new();
    let finders = FINDERS.get_or_init(|| KEYS.map(|(ending, _)| Finder::new(ending)));
    let mut found = [None; 6];
    for (finder, (ending, beginnings)) in finders.iter().zip(KEYS) {
        let mut from = 0;
        while let Some(at) = haystack.get(from..).and_then(|rest| finder.find(rest)) {
            let at = from + at;
            from = at + ending.len();
            for &(slot, beginning) in beginnings {
                if found[slot].is_none() && haystack[..at].ends_with(beginning) {
                    found[slot] = Some(from);
                }
            }
        }
    }
    found
}

/// The whole number at `at` (spaces before it allowed), if there is one.
fn number_at(haystack: &[u8], at: Option<usize>) -> Option<u64> {
    let rest = haystack.get(at?..)?;
    let start = rest.iter().position(|b| *b != b' ')?;
    let digits = &rest[start..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    digits[..len].iter().try_fold(0u64, |n, d| {
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

    #[test]
    fn an_anthropic_stream_gives_its_input_at_start_and_its_output_at_the_end() {
        let mut usage = Usage::default();
        usage.read(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n");
        usage.read(b"event: content_block_delta\ndata: {\"delta\":{\"text\":\"hi\"}}\n\n");
        usage.read(b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n");
        assert_eq!((usage.prompt, usage.generated), (Some(12), Some(30)));

        let mut usage = Usage::default();
        usage.read(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":9,\"total_tokens\":14}}}\n\n");
        assert_eq!(usage.cost(), Some(5.0 + 18.0));
    }

    /// The first version, a search per key at every byte: the one pass
    /// must read every chunk the same way.
    fn reference(chunk: &[u8]) -> Usage {
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
        Usage {
            prompt: number_after(chunk, b"\"prompt_eval_count\":")
                .or_else(|| number_after(chunk, b"\"prompt_tokens\":"))
                .or_else(|| number_after(chunk, b"\"input_tokens\":")),
            generated: number_after(chunk, b"\"eval_count\":")
                .or_else(|| number_after(chunk, b"\"completion_tokens\":"))
                .or_else(|| number_after(chunk, b"\"output_tokens\":")),
        }
    }

    #[test]
    fn one_pass_reads_like_a_search_per_key() {
        let chunks: &[&[u8]] = &[
            br#"{"context":[1,2,3],"done":true,"eval_count":8,"eval_duration":8000,"prompt_eval_count":1,"response":"x"}"#,
            br#"{"eval_count":"x","completion_tokens":4,"prompt_tokens": 3}"#,
            br#"{"eval_count":5,"eval_count":6}"#,
            br#"{"prompt_eval_count":  ,"prompt_tokens":2}"#,
            br#"{"eval_count":99999999999999999999999,"completion_tokens":1}"#,
            br#""eval_count":"#,
            br#""eval_count":7"#,
            br#"""""eval_count""eval_count":3"#,
            b"",
            b"\"",
            br#"data: {"usage":{"prompt_tokens":9,"completion_tokens":12}}"#,
            br#"event: message_delta
data: {"type":"message_delta","usage":{"output_tokens":15}}"#,
            br#"{"usage":{"input_tokens":4,"output_tokens":7,"total_tokens":11}}"#,
            br#"{"usage":{"cache_creation_input_tokens":6,"input_tokens":4,"xoutput_tokens":1,"output_tokens":7}}"#,
            br#"{"x_count":1,"_tokens":2,"eval_count":"3","eval_count":4,"prompt_eval_count":5}"#,
            br#"_count":_tokens":"eval_count":_count":"#,
        ];
        for chunk in chunks {
            let mut usage = Usage::default();
            usage.read(chunk);
            assert_eq!(
                usage,
                reference(chunk),
                "{}",
                String::from_utf8_lossy(chunk)
            );
        }
    }

    #[test]
    fn every_arrangement_of_keys_reads_like_a_search_per_key() {
        // Pieces that make and break the keys: the keys themselves, their
        // endings alone, prefixes that make a longer key, quotes, numbers.
        let pieces: &[&[u8]] = &[
            b"\"prompt_eval_count\":",
            b"\"eval_count\":",
            b"\"prompt_tokens\":",
            b"\"completion_tokens\":",
            b"\"input_tokens\":",
            b"\"output_tokens\":",
            b"_count\":",
            b"_tokens\":",
            b"\"cache_creation",
            b"\"prompt",
            b"\"eval",
            b"_eval",
            b"\"input",
            b"\"",
            b" 12",
            b"7,",
            b"x",
        ];
        let mut chunk = Vec::new();
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in [&b"3"[..], b""] {
                        chunk.clear();
                        for piece in [*a, *b, *c, d] {
                            chunk.extend_from_slice(piece);
                        }
                        let mut usage = Usage::default();
                        usage.read(&chunk);
                        assert_eq!(
                            usage,
                            reference(&chunk),
                            "{}",
                            String::from_utf8_lossy(&chunk)
                        );
                    }
                }
            }
        }
    }
}
