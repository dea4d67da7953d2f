//! `corral-example-tower-client [OLLAMA_URL] [PROMPT]`: asks twice; the
//! second answer comes from the cache.

#[tokio::main]
async fn main() -> Result<(), corral_core::BoxError> {
    let mut args = std::env::args().skip(1);
    let ollama = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:11434".into());
    let prompt = args.next().unwrap_or_else(|| "Why is the sky blue?".into());
    let client = corral_example_tower_client::Client::new(&ollama, 30)?;
    for _ in 0..2 {
        let answer = client.generate("llama3", &prompt).await?;
        println!("cached: {}\n{}", answer.cached, answer.text);
    }
    Ok(())
}
