//! The `ollama-rs` client, unchanged, through the proxy: it cannot tell
//! Corral from Ollama. Every answer equals the one the same client gets
//! from the upstream directly.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast_proxy, mock, proxy, streaming, within};
use futures_util::StreamExt;
use ollama_rs::generation::chat::request::ChatMessageRequest;
use ollama_rs::generation::chat::ChatMessage;
use ollama_rs::generation::completion::request::GenerationRequest;
use ollama_rs::generation::embeddings::request::{EmbeddingsInput, GenerateEmbeddingsRequest};
use ollama_rs::Ollama;

fn client(url: &str) -> Ollama {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-agent-id", "rs-agent".parse().unwrap());
    let mut ollama = Ollama::try_new(url).expect("url");
    ollama.set_headers(Some(headers));
    ollama
}

#[tokio::test]
async fn generate_chat_and_embed_answer_as_the_upstream_does() {
    let (upstream, corral) = fast_proxy().await;
    let direct = client(&upstream.url());
    let through = client(&corral.url());

    let ask = || GenerationRequest::new("llama3".into(), "why is the sky blue?");
    let a = within(direct.generate(ask())).await.unwrap();
    let b = within(through.generate(ask())).await.unwrap();
    assert_eq!(a.response, b.response);
    assert_eq!(b.eval_count, Some(8));
    assert!(b.done);

    let chat = || {
        ChatMessageRequest::new(
            "llama3".into(),
            vec![ChatMessage::user("hello there".into())],
        )
    };
    let a = within(direct.send_chat_messages(chat())).await.unwrap();
    let b = within(through.send_chat_messages(chat())).await.unwrap();
    assert_eq!(a.message.content, b.message.content);
    assert_eq!(b.final_data.unwrap().eval_count, 8);

    let embed = || {
        GenerateEmbeddingsRequest::new(
            "nomic-embed-text".into(),
            EmbeddingsInput::Multiple(vec!["a".into(), "b".into()]),
        )
    };
    let a = within(direct.generate_embeddings(embed())).await.unwrap();
    let b = within(through.generate_embeddings(embed())).await.unwrap();
    assert_eq!(a.embeddings, b.embeddings);
    assert_eq!(b.embeddings.len(), 2);

    // The agent was known by its header on the way.
    assert!(upstream
        .requests()
        .iter()
        .filter(|r| r.headers.contains_key("x-forwarded-for"))
        .all(|r| r.headers.get("x-agent-id").map(String::as_str) == Some("rs-agent")));
}

#[tokio::test]
async fn streamed_generation_and_chat_arrive_token_by_token() {
    // Slow enough that every token is its own read: ollama-rs 0.3 parses
    // each read on its own.
    let upstream = mock(streaming(12, 200.0)).await;
    let corral = proxy(&upstream.url()).await;
    let direct = client(&upstream.url());
    let through = client(&corral.url());

    let collect_generate = |ollama: Ollama| async move {
        let mut stream = ollama
            .generate_stream(GenerationRequest::new("llama3".into(), "stream please"))
            .await
            .unwrap();
        let (mut text, mut pieces, mut done) = (String::new(), 0, false);
        while let Some(batch) = stream.next().await {
            for piece in batch.unwrap() {
                pieces += 1;
                text.push_str(&piece.response);
                done |= piece.done;
            }
        }
        (text, pieces, done)
    };
    let (a, _, _) = within(collect_generate(direct.clone())).await;
    let (b, pieces, done) = within(collect_generate(through.clone())).await;
    assert_eq!(a, b);
    assert_eq!(pieces, 13, "12 tokens and the final message, none lost");
    assert!(done);

    let collect_chat = |ollama: Ollama| async move {
        let mut stream = ollama
            .send_chat_messages_stream(ChatMessageRequest::new(
                "llama3".into(),
                vec![ChatMessage::user("stream a chat".into())],
            ))
            .await
            .unwrap();
        let mut text = String::new();
        let mut last_done = false;
        while let Some(piece) = stream.next().await {
            let piece = piece.unwrap();
            text.push_str(&piece.message.content);
            last_done = piece.done;
        }
        (text, last_done)
    };
    let a = within(collect_chat(direct)).await;
    let b = within(collect_chat(through)).await;
    assert_eq!(a, b);
    assert!(b.1);
}

#[tokio::test]
async fn model_management_works_through_the_proxy() {
    let (_upstream, corral) = fast_proxy().await;
    let ollama = client(&corral.url());

    let models = within(ollama.list_local_models()).await.unwrap();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    assert!(names.contains(&"llama3:latest"), "{names:?}");

    let info = within(ollama.show_model_info("llama3".into()))
        .await
        .unwrap();
    assert!(info.capabilities.iter().any(|c| c == "completion"));

    let pulled = within(ollama.pull_model("phi3".into(), false))
        .await
        .unwrap();
    assert_eq!(pulled.message, "success");
    within(ollama.copy_model("phi3".into(), "phi3-copy".into()))
        .await
        .unwrap();
    within(ollama.delete_model("phi3-copy".into()))
        .await
        .unwrap();
    let err = within(ollama.delete_model("phi3-copy".into())).await;
    assert!(err.is_err(), "deleting twice fails as it would on Ollama");

    let unknown = within(ollama.generate(GenerationRequest::new("ghost".into(), "x"))).await;
    assert!(unknown.unwrap_err().to_string().contains("not found"));
}
