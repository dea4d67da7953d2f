use http::Method;

/// Which Ollama or OpenAI-compatible call a request is.
///
/// Found from the method and the path alone, so it is cheap enough for
/// every request; a method the endpoint does not take makes it
/// [`Endpoint::Other`], forwarded untouched, as Ollama's router would
/// answer it.
///
/// ```
/// use corral_core::{ApiFamily, Endpoint, EndpointKind};
/// use http::Method;
///
/// assert_eq!(Endpoint::from_request(&Method::GET, "/api/tags"), Endpoint::Tags);
/// assert_eq!(Endpoint::from_request(&Method::POST, "/v1/embeddings").kind(), EndpointKind::Inference);
/// assert_eq!(Endpoint::from_request(&Method::GET, "/v1/models/llama3").family(), ApiFamily::OpenAi);
/// assert_eq!(Endpoint::from_request(&Method::POST, "/v1/messages").kind(), EndpointKind::Inference);
/// assert_eq!(Endpoint::from_request(&Method::POST, "/v1/messages").family(), ApiFamily::Anthropic);
/// assert_eq!(Endpoint::from_request(&Method::GET, "/api/generate"), Endpoint::Other);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Endpoint {
    /// `GET /` or `HEAD /`: "Ollama is running".
    Root,
    /// `GET /api/version`.
    Version,
    /// `GET /api/tags`: the local models.
    Tags,
    /// `GET /api/ps`: the loaded models.
    Ps,
    /// `POST /api/show`: one model's details.
    Show,
    /// `POST /api/generate`.
    Generate,
    /// `POST /api/chat`.
    Chat,
    /// `POST /api/embed`.
    Embed,
    /// `POST /api/embeddings`, the older single-prompt embedding call.
    Embeddings,
    /// `POST /api/pull`.
    Pull,
    /// `POST /api/push`.
    Push,
    /// `POST /api/create`.
    Create,
    /// `POST /api/copy`.
    Copy,
    /// `DELETE /api/delete`.
    Delete,
    /// `HEAD` or `POST /api/blobs/:digest`.
    Blobs,
    /// `POST /v1/chat/completions`.
    OpenAiChat,
    /// `POST /v1/completions`.
    OpenAiCompletions,
    /// `POST /v1/embeddings`.
    OpenAiEmbeddings,
    /// `GET /v1/models`.
    OpenAiModels,
    /// `GET /v1/models/:model`.
    OpenAiModel,
    /// `POST /v1/messages`: the Anthropic Messages API (Claude Code and
    /// other agent harnesses point `ANTHROPIC_BASE_URL` at Ollama).
    AnthropicMessages,
    /// `POST /v1/responses`: the OpenAI Responses API.
    OpenAiResponses,
    /// `POST /v1/audio/transcriptions`: speech to text by a model (a
    /// multipart form, streamed through, never read into memory).
    OpenAiTranscriptions,
    /// Anything else: forwarded as it is.
    Other,
}

/// What an endpoint costs the upstream, which decides how Corral treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    /// Generation and embeddings: takes the GPU, waits for an upstream
    /// permit, its body is read and parsed.
    Inference,
    /// Reads of the server's state: never queued behind a generation.
    Metadata,
    /// Pull, push, create, copy, delete, blobs: governed by auth, not by
    /// the queue.
    Management,
    /// A path Corral does not know: forwarded untouched.
    Other,
}

/// Which API an endpoint belongs to, which decides the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFamily {
    /// Ollama's native API: errors are `{"error": "..."}`, streams NDJSON.
    Ollama,
    /// The OpenAI-compatible `/v1` API: errors are
    /// `{"error": {"message", "type", "param", "code"}}`, streams SSE.
    OpenAi,
    /// The OpenAI Responses API (`/v1/responses`): errors as OpenAI's,
    /// streams SSE with named events (`response.output_text.delta`, an
    /// `error` event).
    OpenAiResponses,
    /// The Anthropic Messages API (`/v1/messages`): errors are
    /// `{"type": "error", "error": {"type", "message"}}`, streams SSE with
    /// named events.
    Anthropic,
}

impl Endpoint {
    /// Every endpoint, for building label sets and tables.
    pub const ALL: [Endpoint; 24] = [
        Endpoint::Root,
        Endpoint::Version,
        Endpoint::Tags,
        Endpoint::Ps,
        Endpoint::Show,
        Endpoint::Generate,
        Endpoint::Chat,
        Endpoint::Embed,
        Endpoint::Embeddings,
        Endpoint::Pull,
        Endpoint::Push,
        Endpoint::Create,
        Endpoint::Copy,
        Endpoint::Delete,
        Endpoint::Blobs,
        Endpoint::OpenAiChat,
        Endpoint::OpenAiCompletions,
        Endpoint::OpenAiEmbeddings,
        Endpoint::OpenAiModels,
        Endpoint::OpenAiModel,
        Endpoint::AnthropicMessages,
        Endpoint::OpenAiResponses,
        Endpoint::OpenAiTranscriptions,
        Endpoint::Other,
    ];

    /// The endpoint a request with this method and path calls.
    pub fn from_request(method: &Method, path: &str) -> Self {
        let get = method == Method::GET;
        let post = method == Method::POST;
        let head = method == Method::HEAD;
        match path {
            "/" if get || head => Endpoint::Root,
            "/api/version" if get => Endpoint::Version,
            "/api/tags" if get => Endpoint::Tags,
            "/api/ps" if get => Endpoint::Ps,
            "/api/show" if post => Endpoint::Show,
            "/api/generate" if post => Endpoint::Generate,
            "/api/chat" if post => Endpoint::Chat,
            "/api/embed" if post => Endpoint::Embed,
            "/api/embeddings" if post => Endpoint::Embeddings,
            "/api/pull" if post => Endpoint::Pull,
            "/api/push" if post => Endpoint::Push,
            "/api/create" if post => Endpoint::Create,
            "/api/copy" if post => Endpoint::Copy,
            "/api/delete" if method == Method::DELETE => Endpoint::Delete,
            "/v1/chat/completions" if post => Endpoint::OpenAiChat,
            "/v1/completions" if post => Endpoint::OpenAiCompletions,
            "/v1/embeddings" if post => Endpoint::OpenAiEmbeddings,
            "/v1/models" if get => Endpoint::OpenAiModels,
            "/v1/messages" if post => Endpoint::AnthropicMessages,
            "/v1/responses" if post => Endpoint::OpenAiResponses,
            "/v1/audio/transcriptions" if post => Endpoint::OpenAiTranscriptions,
            _ => match path.strip_prefix("/api/blobs/") {
                Some(digest) if (post || head) && is_segment(digest) => Endpoint::Blobs,
                _ => match path.strip_prefix("/v1/models/") {
                    Some(model) if get && !model.is_empty() => Endpoint::OpenAiModel,
                    _ => Endpoint::Other,
                },
            },
        }
    }

    /// What the endpoint costs the upstream.
    pub fn kind(self) -> EndpointKind {
        match self {
            Endpoint::Generate
            | Endpoint::Chat
            | Endpoint::Embed
            | Endpoint::Embeddings
            | Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::OpenAiEmbeddings
            | Endpoint::AnthropicMessages
            | Endpoint::OpenAiResponses
            | Endpoint::OpenAiTranscriptions => EndpointKind::Inference,
            Endpoint::Root
            | Endpoint::Version
            | Endpoint::Tags
            | Endpoint::Ps
            | Endpoint::Show
            | Endpoint::OpenAiModels
            | Endpoint::OpenAiModel => EndpointKind::Metadata,
            Endpoint::Pull
            | Endpoint::Push
            | Endpoint::Create
            | Endpoint::Copy
            | Endpoint::Delete
            | Endpoint::Blobs => EndpointKind::Management,
            Endpoint::Other => EndpointKind::Other,
        }
    }

    /// Which API the endpoint belongs to.
    pub fn family(self) -> ApiFamily {
        match self {
            Endpoint::OpenAiChat
            | Endpoint::OpenAiCompletions
            | Endpoint::OpenAiEmbeddings
            | Endpoint::OpenAiModels
            | Endpoint::OpenAiModel
            | Endpoint::OpenAiTranscriptions => ApiFamily::OpenAi,
            Endpoint::OpenAiResponses => ApiFamily::OpenAiResponses,
            Endpoint::AnthropicMessages => ApiFamily::Anthropic,
            _ => ApiFamily::Ollama,
        }
    }

    /// Whether the request body is a small JSON document Corral reads into
    /// memory (bounded) before forwarding: every `POST`/`DELETE` endpoint
    /// but blob uploads and audio forms, which are streamed through.
    pub fn has_json_body(self) -> bool {
        !matches!(
            self,
            Endpoint::Root
                | Endpoint::Version
                | Endpoint::Tags
                | Endpoint::Ps
                | Endpoint::OpenAiModels
                | Endpoint::OpenAiModel
                | Endpoint::Blobs
                | Endpoint::OpenAiTranscriptions
                | Endpoint::Other
        )
    }

    /// Whether the answer streams when the request does not say: Ollama's
    /// generate, chat, pull, push and create stream unless `"stream": false`;
    /// the OpenAI API streams only when `"stream": true`.
    pub fn streams_by_default(self) -> bool {
        matches!(
            self,
            Endpoint::Generate
                | Endpoint::Chat
                | Endpoint::Pull
                | Endpoint::Push
                | Endpoint::Create
        )
    }

    /// A short, stable name, for metric labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Root => "root",
            Endpoint::Version => "version",
            Endpoint::Tags => "tags",
            Endpoint::Ps => "ps",
            Endpoint::Show => "show",
            Endpoint::Generate => "generate",
            Endpoint::Chat => "chat",
            Endpoint::Embed => "embed",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Pull => "pull",
            Endpoint::Push => "push",
            Endpoint::Create => "create",
            Endpoint::Copy => "copy",
            Endpoint::Delete => "delete",
            Endpoint::Blobs => "blobs",
            Endpoint::OpenAiChat => "v1_chat_completions",
            Endpoint::OpenAiCompletions => "v1_completions",
            Endpoint::OpenAiEmbeddings => "v1_embeddings",
            Endpoint::OpenAiModels => "v1_models",
            Endpoint::OpenAiModel => "v1_model",
            Endpoint::AnthropicMessages => "v1_messages",
            Endpoint::OpenAiResponses => "v1_responses",
            Endpoint::OpenAiTranscriptions => "v1_audio_transcriptions",
            Endpoint::Other => "other",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_path_maps_to_its_endpoint() {
        let cases = [
            (Method::GET, "/", Endpoint::Root),
            (Method::HEAD, "/", Endpoint::Root),
            (Method::GET, "/api/version", Endpoint::Version),
            (Method::GET, "/api/tags", Endpoint::Tags),
            (Method::GET, "/api/ps", Endpoint::Ps),
            (Method::POST, "/api/show", Endpoint::Show),
            (Method::POST, "/api/generate", Endpoint::Generate),
            (Method::POST, "/api/chat", Endpoint::Chat),
            (Method::POST, "/api/embed", Endpoint::Embed),
            (Method::POST, "/api/embeddings", Endpoint::Embeddings),
            (Method::POST, "/api/pull", Endpoint::Pull),
            (Method::POST, "/api/push", Endpoint::Push),
            (Method::POST, "/api/create", Endpoint::Create),
            (Method::POST, "/api/copy", Endpoint::Copy),
            (Method::DELETE, "/api/delete", Endpoint::Delete),
            (Method::HEAD, "/api/blobs/sha256:abc", Endpoint::Blobs),
            (Method::POST, "/api/blobs/sha256:abc", Endpoint::Blobs),
            (Method::POST, "/v1/chat/completions", Endpoint::OpenAiChat),
            (Method::POST, "/v1/completions", Endpoint::OpenAiCompletions),
            (Method::POST, "/v1/embeddings", Endpoint::OpenAiEmbeddings),
            (Method::GET, "/v1/models", Endpoint::OpenAiModels),
            (Method::GET, "/v1/models/llama3:8b", Endpoint::OpenAiModel),
            (Method::POST, "/v1/messages", Endpoint::AnthropicMessages),
            (Method::POST, "/v1/responses", Endpoint::OpenAiResponses),
            (
                Method::POST,
                "/v1/audio/transcriptions",
                Endpoint::OpenAiTranscriptions,
            ),
            (Method::GET, "/v1/messages", Endpoint::Other),
            (Method::GET, "/api/blobs/", Endpoint::Other),
            (Method::POST, "/api/blobs/a/b", Endpoint::Other),
            (Method::GET, "/v1/models/", Endpoint::Other),
            (Method::PUT, "/api/chat", Endpoint::Other),
            (Method::GET, "/metrics", Endpoint::Other),
        ];
        for (method, path, expected) in cases {
            assert_eq!(
                Endpoint::from_request(&method, path),
                expected,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = Endpoint::ALL.iter().map(|e| e.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Endpoint::ALL.len());
    }
}
