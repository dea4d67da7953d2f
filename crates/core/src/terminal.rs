//! The frame that ends a streamed answer, seen as it goes by: Ollama's
//! last NDJSON line (`"done":true`), OpenAI's `data: [DONE]`, Anthropic's
//! `event: message_stop` and the Responses API's closing event
//! (`response.completed`, `response.failed`, `response.incomplete`).
//!
//! A client that has read that frame has the whole answer, and may close
//! the connection at once (the OpenAI SDKs stop reading at `[DONE]`),
//! often before the upstream's body has told the proxy it ended: the
//! watcher must not take it for a client that left midway.

use std::sync::OnceLock;

use http::{header, HeaderMap};
use memchr::{memchr, memmem::Finder};

/// Ollama's last line says so (Go writes no space after the colon; inside
/// a string the quotes would be escaped).
const DONE: &[u8] = b"\"done\":true";

/// How much of an SSE line is kept to tell a terminal one: longer than
/// any of them, so a longer line never passes for one.
const LINE_KEPT: usize = 32;

/// The framing of a streamed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Ndjson,
    Sse,
}

/// How far the terminal frame has gone by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Nothing,
    /// Its marker, not yet its end.
    Marker,
    /// All of it: its line (NDJSON) or its event (SSE) has ended.
    Whole,
}

/// Watches a streamed answer's data for its terminal frame; fed every
/// chunk in order.
#[derive(Debug, Clone)]
pub(crate) struct TerminalFrame {
    framing: Framing,
    seen: Seen,
    /// NDJSON: the last bytes of the data so far, where a marker split
    /// across two chunks begins. SSE: the current line's first bytes.
    kept: [u8; LINE_KEPT],
    /// How many bytes `kept` holds (NDJSON), or how long the current
    /// line is so far (SSE, `kept` holding the first of them).
    kept_len: usize,
}

impl TerminalFrame {
    /// A watcher for an answer with `headers`, when it is a stream whose
    /// end can be told: NDJSON or server-sent events.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Self> {
        let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let framing = if content_type.starts_with("application/x-ndjson") {
            Framing::Ndjson
        } else if content_type.starts_with("text/event-stream") {
            Framing::Sse
        } else {
            return None;
        };
        Some(Self {
            framing,
            seen: Seen::Nothing,
            kept: [0; LINE_KEPT],
            kept_len: 0,
        })
    }

    /// Whether the whole terminal frame has gone by.
    pub(crate) fn is_seen(&self) -> bool {
        self.seen == Seen::Whole
    }

    /// The next chunk of the answer's data.
    pub(crate) fn read(&mut self, chunk: &[u8]) {
        match self.framing {
            Framing::Ndjson => self.read_ndjson(chunk),
            Framing::Sse => self.read_sse(chunk),
        }
    }

    /// The marker, then the end of its line.
    fn read_ndjson(&mut self, chunk: &[u8]) {
        let rest = match self.seen {
            Seen::Whole => return,
            Seen::Marker => chunk,
            Seen::Nothing => match self.find_done(chunk) {
                Some(end) => {
                    self.seen = Seen::Marker;
                    &chunk[end..]
                }
                None => {
                    self.keep_tail(chunk);
                    return;
                }
            },
        };
        if memchr(b'\n', rest).is_some() {
            self.seen = Seen::Whole;
        }
    }

    /// Where the marker ends in `chunk`, though it began in the chunk
    /// before.
    fn find_done(&self, chunk: &[u8]) -> Option<usize> {
        // The searcher built once: `memmem::find` builds one a call, and
        // this runs for every chunk of every streamed answer.
        static FINDER: OnceLock<Finder<'static>> = OnceLock::new();
        let done = FINDER.get_or_init(|| Finder::new(DONE));
        if let Some(at) = done.find(chunk) {
            return Some(at + DONE.len());
        }
        let head = &chunk[..chunk.len().min(DONE.len() - 1)];
        let mut window = [0u8; 2 * LINE_KEPT];
        let kept = self.kept_len;
        window[..kept].copy_from_slice(&self.kept[..kept]);
        window[kept..kept + head.len()].copy_from_slice(head);
        let at = done.find(&window[..kept + head.len()])?;
        Some(at + DONE.len() - kept)
    }

    /// Keeps the data's last bytes, where a split marker would begin.
    fn keep_tail(&mut self, chunk: &[u8]) {
        let keep = DONE.len() - 1;
        if chunk.len() >= keep {
            self.kept[..keep].copy_from_slice(&chunk[chunk.len() - keep..]);
            self.kept_len = keep;
            return;
        }
        let old = (keep - chunk.len()).min(self.kept_len);
        self.kept.copy_within(self.kept_len - old..self.kept_len, 0);
        self.kept[old..old + chunk.len()].copy_from_slice(chunk);
        self.kept_len = old + chunk.len();
    }

    /// Line by line: a terminal line, then the blank line that ends its
    /// event.
    fn read_sse(&mut self, mut chunk: &[u8]) {
        while self.seen != Seen::Whole {
            let Some(newline) = memchr(b'\n', chunk) else {
                self.extend_line(chunk);
                return;
            };
            self.extend_line(&chunk[..newline]);
            self.end_line();
            chunk = &chunk[newline + 1..];
        }
    }

    fn extend_line(&mut self, bytes: &[u8]) {
        let start = self.kept_len.min(LINE_KEPT);
        let take = bytes.len().min(LINE_KEPT - start);
        self.kept[start..start + take].copy_from_slice(&bytes[..take]);
        self.kept_len = self.kept_len.saturating_add(bytes.len());
    }

    fn end_line(&mut self) {
        let line = &self.kept[..self.kept_len.min(LINE_KEPT)];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.seen {
            Seen::Nothing if ends_the_stream(line) => self.seen = Seen::Marker,
            Seen::Marker if line.is_empty() => self.seen = Seen::Whole,
            _ => {}
        }
        self.kept_len = 0;
    }
}

/// Whether an SSE line (its first [`LINE_KEPT`] bytes) opens the event
/// that ends the stream. `[DONE]` is told as the OpenAI SDKs tell it, by
/// the start of the data.
fn ends_the_stream(line: &[u8]) -> bool {
    let field = |name: &[u8]| {
        line.strip_prefix(name)
            .map(|value| value.strip_prefix(b" ").unwrap_or(value))
    };
    if let Some(data) = field(b"data:") {
        return data.starts_with(b"[DONE]");
    }
    matches!(
        field(b"event:"),
        Some(b"message_stop" | b"response.completed" | b"response.failed" | b"response.incomplete")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(content_type: &str) -> TerminalFrame {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        TerminalFrame::of(&headers).unwrap()
    }

    /// Whether `chunks`, read in order, end with the terminal frame whole.
    fn seen(content_type: &str, chunks: &[&str]) -> bool {
        let mut terminal = watcher(content_type);
        for chunk in chunks {
            terminal.read(chunk.as_bytes());
        }
        terminal.is_seen()
    }

    const NDJSON: &str = "application/x-ndjson";
    const SSE: &str = "text/event-stream; charset=utf-8";

    #[test]
    fn the_terminal_frame_of_each_api_is_told_whole_and_only_whole() {
        let table: &[(&str, &[&str], bool)] = &[
            // Ollama
            (NDJSON, &["{\"response\":\"a\",\"done\":false}\n"], false),
            (
                NDJSON,
                &["{\"response\":\"\",\"done\":true,\"eval_count\":3}\n"],
                true,
            ),
            (NDJSON, &["{\"done\":true,\"context\":[1,2", ",3]}"], false),
            (NDJSON, &["{\"done\":true,\"context\":[1,2", ",3]}\n"], true),
            (NDJSON, &["{\"x\":1,\"do", "ne\":tr", "ue}\n"], true),
            (
                NDJSON,
                &["{\"response\":\"\\\"done\\\":true\",\"done\":false}\n"],
                false,
            ),
            // OpenAI
            (SSE, &["data: {\"choices\":[]}\n\n"], false),
            (SSE, &["data: {\"choices\":[]}\n\ndata: [DONE]\n\n"], true),
            (SSE, &["data: [DONE]\n"], false),
            (SSE, &["data: [DO", "NE]\n", "\n"], true),
            (SSE, &["data:[DONE]\r\n\r\n"], true),
            (SSE, &["data: {\"content\":\"data: [DONE]\"}\n\n"], false),
            // Anthropic
            (SSE, &["event: message_delta\ndata: {}\n\n"], false),
            (
                SSE,
                &["event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"],
                true,
            ),
            (SSE, &["event: message_stop\ndata: {\"type\":\"mess"], false),
            (SSE, &["event: message_stopped\ndata: {}\n\n"], false),
            // Responses
            (
                SSE,
                &["event: response.completed\ndata: {\"response\":{}}\n\n"],
                true,
            ),
            (
                SSE,
                &["event: response.output_text.delta\ndata: {}\n\n"],
                false,
            ),
        ];
        for (content_type, chunks, expected) in table {
            assert_eq!(
                seen(content_type, chunks),
                *expected,
                "{content_type} {chunks:?}"
            );
        }
    }

    #[test]
    fn a_marker_split_at_every_byte_is_still_told() {
        for whole in [
            "{\"model\":\"m\",\"done\":true}\n",
            "data: {}\n\ndata: [DONE]\n\n",
            "event: message_stop\ndata: {}\n\n",
        ] {
            let kind = if whole.starts_with('{') { NDJSON } else { SSE };
            for cut in 1..whole.len() {
                let (a, b) = whole.split_at(cut);
                assert!(seen(kind, &[a, b]), "{whole:?} cut at {cut}");
            }
            let bytes: Vec<&str> = (0..whole.len()).map(|i| &whole[i..=i]).collect();
            assert!(seen(kind, &bytes), "{whole:?} byte by byte");
        }
    }

    #[test]
    fn other_answers_have_no_terminal_frame_to_watch() {
        for content_type in ["application/json", "text/plain"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
            assert!(TerminalFrame::of(&headers).is_none(), "{content_type}");
        }
        assert!(TerminalFrame::of(&HeaderMap::new()).is_none());
    }
}
