//! `bare-proxy`: the floor of the `overhead` bench as a process of its
//! own. It runs [`corral_benches::bare_proxy_at`] (accept, forward over a
//! pooled hyper client, stream the answer back, nothing else), so the
//! bench compares Corral and nginx against the least any hyper reverse
//! proxy pays, each in its own process on the same cores.

use std::net::SocketAddr;

use clap::Parser;

/// A bare hyper reverse proxy: the cost of an extra hop and nothing more.
#[derive(Debug, Parser)]
#[command(name = "bare-proxy")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:11436")]
    listen: SocketAddr,
    /// The upstream's address (host:port, plain HTTP/1.1).
    #[arg(long, default_value = "127.0.0.1:11434")]
    upstream: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let addr = corral_benches::bare_proxy_at(args.listen, args.upstream).await?;
    eprintln!(
        "bare-proxy: listening on {addr}, forwarding to {}",
        args.upstream
    );
    // Serve until told to stop; SIGTERM (the default kill) ends the
    // process without this, SIGINT exits cleanly here.
    tokio::signal::ctrl_c().await?;
    Ok(())
}
