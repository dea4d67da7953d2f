//! The example client against the simulated Ollama: a question asked
//! again is answered by the cache, and the quota refuses with a typed
//! error that says when to come back.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use corral_e2e::{fast, mock};
use corral_example_tower_client::Client;
use corral_ratelimit::RateLimited;

#[tokio::test]
async fn a_question_asked_again_is_answered_by_the_cache() {
    let upstream = mock(fast()).await;
    let client = Client::new(&upstream.url(), 30).unwrap();
    let first = client
        .generate("llama3", "why is the sky blue?")
        .await
        .unwrap();
    let again = client
        .generate("llama3", "why is the sky blue?")
        .await
        .unwrap();
    assert!(!first.cached && again.cached);
    assert_eq!(first.text, again.text);
    assert_eq!(upstream.requests().len(), 1, "Ollama was asked once");
}

#[tokio::test]
async fn past_its_quota_it_is_refused_with_when_to_come_back() {
    let upstream = mock(fast()).await;
    let client = Client::new(&upstream.url(), 2).unwrap();
    for prompt in ["one", "two"] {
        client.generate("llama3", prompt).await.unwrap();
    }
    let err = client.generate("llama3", "three").await.unwrap_err();
    let refused = err.downcast_ref::<RateLimited>().unwrap();
    assert!(corral_core::Refusal::retry_after(refused).is_some());
    assert_eq!(upstream.requests().len(), 2);
}
