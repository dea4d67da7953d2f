//! `corral-example-axum [OLLAMA_URL] [LISTEN]`: the example service.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ollama = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:11434".into());
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let client = corral_example_axum::OllamaClient::new(&ollama, 1)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("POST http://{listen}/ask, asking {ollama}");
    axum::serve(listener, corral_example_axum::app(client)).await?;
    Ok(())
}
