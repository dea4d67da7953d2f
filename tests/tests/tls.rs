//! An `https://` upstream, trusted through `[upstream] ca_file`.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;

use corral_e2e::{fast, get, mock, post, proxy_with};
use tokio::net::TcpListener;

/// A TLS terminator for `backend` with a fresh self-signed certificate
/// for `localhost`; returns its port and the certificate's PEM.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn an_https_upstream_with_a_private_ca_is_reached() {
    let upstream = mock(fast()).await;
    let (port, pem) = tls_front(upstream.addr()).await;
    let dir = std::env::temp_dir().join(format!("corral-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();

    let corral = proxy_with(&format!("https://localhost:{port}"), |c| {
        c.upstream.ca_file = Some(ca.clone())
    })
    .await;
    let reply = post(
        &format!("{}/api/generate", corral.url()),
        r#"{"model":"llama3","prompt":"over tls","stream":false}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["done"], true);
    assert_eq!(upstream.stats().completed, 1);

    // Without the CA the certificate is not trusted: a 502 that says why.
    let untrusting = proxy_with(&format!("https://localhost:{port}"), |_| {}).await;
    let reply = get(&format!("{}/api/tags", untrusting.url())).await;
    assert_eq!(reply.status, 502);
    assert!(
        reply.json()["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("certificate"),
        "{:?}",
        reply.body
    );
}
