//! How the text log format writes fields: as `tracing-subscriber`'s
//! `DefaultFields` does, with a shortcut for plain strings.
//!
//! The fmt subscriber formats a span's fields when the span is made and
//! when a field is recorded, whether or not a line is ever logged in it:
//! every request's span (request id, path, endpoint, agent, class,
//! model) went through `write!` and `str`'s `Debug` at ~1,500
//! instructions a field, a tenth of the proxy's own work per request.
//! A string of printable ASCII without quotes or backslashes is written
//! by `Debug` as itself between quotes, so it is written so here directly;
//! anything else (other values, escapes, messages, colours) goes to
//! `DefaultFields`' own visitor, and the output is the same byte for byte.
//!
//! The plain fields are gathered on the stack and handed to the writer in
//! one piece: the writer is the span's `String`, which grew (and was
//! copied) three times for a request's span when each piece went to it
//! on its own (~2,000 instructions a request under callgrind).

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::fmt::FormatFields;

/// `DefaultFields`, faster for plain strings.
#[derive(Debug, Default)]
pub(crate) struct PlainFields;

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = PlainVisitor {
            writer,
            pending: Pending::default(),
            is_empty: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.flush();
        visitor.result
    }
}

struct PlainVisitor<'writer> {
    writer: Writer<'writer>,
    /// Plain fields not yet handed to `writer`.
    pending: Pending,
    is_empty: bool,
    result: fmt::Result,
}

/// Bytes gathered before they go to the writer in one `write_str`.
struct Pending {
    bytes: [u8; 256],
    len: usize,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl Pending {
    /// Appends `parts` whole, or nothing when they do not fit.
    fn push(&mut self, parts: &[&str]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > self.bytes.len() - self.len {
            return false;
        }
        for part in parts {
            self.bytes[self.len..self.len + part.len()].copy_from_slice(part.as_bytes());
            self.len += part.len();
        }
        true
    }

    /// What is gathered; whole `str`s were appended, so it is UTF-8.
    fn take(&mut self) -> Result<&str, fmt::Error> {
        let len = std::mem::take(&mut self.len);
        std::str::from_utf8(&self.bytes[..len]).map_err(|_| fmt::Error)
    }
}

impl PlainVisitor<'_> {
    /// Hands what is gathered to the writer.
    fn flush(&mut self) {
        if self.pending.len == 0 || self.result.is_err() {
            return;
        }
        self.result = match self.pending.take() {
            Ok(text) => self.writer.write_str(text),
            Err(e) => Err(e),
        };
    }

    /// Lets `DefaultFields`' visitor write one field, after what is
    /// already written.
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.flush();
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        // It writes every field but the `log.` metadata of events from
        // the `log` crate.
        self.is_empty = self.is_empty && field.name().starts_with("log.");
    }
}

/// Whether `Debug` writes `value` as itself between quotes.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        let shortcut = !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("r#")
            && !name.starts_with("log.")
            && plain(value);
        if !shortcut {
            return self.delegate(field, |v| v.record_str(field, value));
        }
        if self.result.is_err() {
            return;
        }
        let pad = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        let parts = [pad, name, "=\"", value, "\""];
        if self.pending.push(&parts) {
            return;
        }
        self.flush();
        if self.result.is_ok() {
            let w = &mut self.writer;
            self.result = parts.iter().try_for_each(|part| w.write_str(part));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.delegate(field, |v| v.record_debug(field, value));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines<F>(fields: F, ansi: bool) -> String
    where
        F: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .with_ansi(ansi)
            .without_time()
            .fmt_fields(fields)
            .finish();
        // Longer than what is gathered before it is written, between
        // fields that are gathered.
        let long = "a/".repeat(200);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "0123456789abcdef",
                method = %http::Method::POST,
                path = "/api/generate",
                long = long.as_str(),
                endpoint = "generate",
                agent = tracing::field::Empty,
                model = tracing::field::Empty,
                priority = tracing::field::Empty,
                r#type = "raw",
            );
            span.record("agent", "planner-1");
            span.record("model", "llama3:8b \"quoted\" \\ é\ttab");
            span.record("priority", 3u8);
            let _entered = span.enter();
            let error = std::io::Error::other("broken pipe");
            tracing::warn!(
                error = %error, empty = "", control = "a\u{1b}[31mred", quote = "say \"hi\"",
                backslash = "C:\\path", tab = "a\tb", "upstream \"stream\" broke"
            );
            tracing::error!(
                error = &error as &(dyn std::error::Error + 'static),
                count = 2u64,
                ratio = 0.5,
                yes = true,
                "failed"
            );
            tracing::info!(message = "plain message", detail = ?Some("x"));
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_are_written_as_the_default_fields_write_them() {
        for ansi in [false, true] {
            let plain = lines(PlainFields, ansi);
            assert_eq!(plain, lines(DefaultFields::new(), ansi));
            if !ansi {
                assert!(plain.contains(" agent=\"planner-1\" "), "{plain}");
            }
        }
    }
}
