use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::scheduler::Permit;

pin_project! {
    /// The response body of a scheduled request: holds its permit until
    /// the stream has been sent in full, broken or dropped, because the
    /// GPU is busy for the whole generation, not only until the headers.
    ///
    /// On the way it reads the token counts the answer reports
    /// (`prompt_eval_count`/`eval_count`, or OpenAI's `usage`) and settles
    /// the agent's fair-share counter with the real cost.
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
        usage: Usage,
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    prompt: Option<u64>,
    generated: Option<u64>,
}

impl<B: std::fmt::Debug> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn new(inner: B, permit: Option<Permit>) -> Self {
        Self {
            inner,
            permit,
            usage: Usage::default(),
        }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.permit.is_none() {
            return polled;
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.usage.read(data.chunk());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => finish(this.permit, *this.usage),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Gives the permit back now, settled with what the answer reported.
fn finish(permit: &mut Option<Permit>, usage: Usage) {
    if let Some(mut permit) = permit.take() {
        if let Some(cost) = usage.cost() {
            permit.settle(cost);
        }
    }
}

impl Usage {
    /// Reads token counts from a chunk of an Ollama or OpenAI answer.
    /// Counts arrive in the last message of a stream, whole in one frame
    /// (Ollama writes each message in one write).
    fn read(&mut self, chunk: &[u8]) {
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
    fn cost(self) -> Option<f64> {
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
