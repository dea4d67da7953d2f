//! Added latency of the pass-through: the same request to the simulated
//! Ollama directly, through a bare hyper pass-through (the floor any
//! proxy pays for the extra hop), and through `corral` with no optional
//! layers; one at a time over a keep-alive connection, so the
//! differences are what each hop adds per request.

#![allow(missing_docs)] // criterion_group! makes an undocumented pub fn.

use corral_benches::{bare_proxy, call, client, instant_upstream, proxy};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const GENERATE: &str = r#"{"model":"llama3","prompt":"why is the sky blue?","stream":false}"#;
const STREAM: &str = r#"{"model":"llama3","prompt":"why is the sky blue?"}"#;

fn passthrough(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (upstream, bare, corral) = runtime.block_on(async {
        let upstream = instant_upstream(200).await;
        let bare = bare_proxy(&upstream).await;
        let corral = proxy(&upstream).await;
        (upstream, bare, corral)
    });
    let targets = [
        ("direct", upstream.url()),
        ("bare_hyper_proxy", format!("http://{bare}")),
        ("corral", corral.url()),
    ];
    let client = client();

    let mut group = c.benchmark_group("version");
    group.throughput(Throughput::Elements(1));
    for (name, base) in &targets {
        let url = format!("{base}/api/version");
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| call(&client, "GET", &url, ""))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("generate_200_tokens_whole");
    group.throughput(Throughput::Elements(1));
    for (name, base) in &targets {
        let url = format!("{base}/api/generate");
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter(|| call(&client, "POST", &url, GENERATE))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("generate_200_chunk_stream");
    group.throughput(Throughput::Elements(1));
    for (name, base) in &targets {
        let url = format!("{base}/api/generate");
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter(|| call(&client, "POST", &url, STREAM))
        });
    }
    group.finish();

    drop(corral);
    drop(upstream);
}

criterion_group!(benches, passthrough);
criterion_main!(benches);
