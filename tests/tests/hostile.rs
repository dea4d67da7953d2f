//! Hostile input against a proxy that is busy with well-behaved agents:
//! truncated JSON, wrong types, huge numbers, invalid UTF-8, duplicate
//! keys, deep nesting, too many messages, 10 MB prompts, header floods,
//! slow senders, idle sockets and a client that stops reading its
//! stream. Each gets a clear 4xx or a closed connection; the agents in
//! the background see no error at all.

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corral::{Config, Running};
use corral_e2e::{get, mock, request, send, streaming, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(upstream: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
max_request_bytes = 1048576
header_read_timeout = "1s"
body_read_timeout = "1s"
write_stall_timeout = "1s"
max_headers = 64
max_header_bytes = 16384
max_json_depth = 32
max_messages = 64
[upstream]
url = "{upstream}"
capacity = 4

[[layers]]
kind = "priority"
"#
    );
    Config::parse(&text, std::path::Path::new("hostile.toml")).unwrap()
}

/// Eight agents streaming chats in a loop until `stop`; what went wrong
/// for them, if anything, and how many answers they had.
fn background(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut agents = Vec::new();
        for i in 0..8 {
            let (url, stop) = (url.clone(), stop.clone());
            agents.push(tokio::spawn(async move {
                let mut answered = 0;
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut r = request(
                        "POST",
                        &format!("{url}/api/chat"),
                        r#"{"model":"llama3","messages":[{"role":"user","content":"steady work"}]}"#,
                    );
                    r.headers_mut()
                        .insert("x-agent-id", format!("good-{i}").parse().unwrap());
                    match answer(r).await {
                        Ok((200, text))
                            if text.lines().last().is_some_and(|l| l.contains("\"done\":true")) => {}
                        Ok((status, text)) => errors.push(format!("{status}: {text}")),
                        Err(e) => errors.push(e),
                    }
                    answered += 1;
                }
                (answered, errors)
            }));
        }
        let mut total = 0;
        let mut errors = Vec::new();
        for agent in agents {
            let (n, e) = agent.await.unwrap();
            total += n;
            errors.extend(e);
        }
        (total, errors)
    })
}

/// The status and text of the answer to `r`, or what went wrong.
async fn answer(
    r: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<(u16, String), String> {
    let response = within(corral_e2e::client().request(r))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = within(http_body_util::BodyExt::collect(response.into_body()))
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Writes `bytes` on a new connection and reads until the server closes
/// it (the test fails if it never does): what came back.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = within(stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_refusals_while_good_agents_see_no_error() {
    let upstream = mock(streaming(8, 200_000.0)).await;
    let corral = Running::start(&config(&upstream.url())).await.unwrap();
    let url = corral.url();
    let addr = corral.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let load = background(url.clone(), stop.clone());

    let chat = format!("{url}/api/chat");
    let generate = format!("{url}/api/generate");
    let bodies: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            br#"{"model":"llama3","messages":[{"role":"us"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "model of the wrong type",
            br#"{"model":5,"messages":[]}"#.to_vec(),
            400,
            "expected a string",
        ),
        (
            "a string where an object goes",
            br#""llama3""#.to_vec(),
            400,
            "expected a JSON object",
        ),
        (
            "a huge number",
            br#"{"model":"llama3","options":{"num_predict":1e999}}"#.to_vec(),
            400,
            "invalid JSON",
        ),
        (
            "invalid UTF-8",
            b"{\"model\":\"llama3\",\"prompt\":\"\xc3\x28\"}".to_vec(),
            400,
            "not UTF-8",
        ),
        (
            "duplicate keys",
            br#"{"model":"llama3","model":"other"}"#.to_vec(),
            400,
            "duplicate field",
        ),
        (
            "deep nesting",
            format!(
                r#"{{"model":"llama3","format":{}1{}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
            .into_bytes(),
            400,
            "nested deeper than 32",
        ),
        (
            "too many messages",
            format!(
                r#"{{"model":"llama3","messages":[{}]}}"#,
                vec![r#"{"role":"user","content":"x"}"#; 65].join(",")
            )
            .into_bytes(),
            400,
            "65 messages",
        ),
    ];
    for (what, body, status, says) in bodies {
        let target = if what.contains("UTF") {
            &generate
        } else {
            &chat
        };
        let reply = send(request("POST", target, body)).await;
        assert_eq!(reply.status.as_u16(), status, "{what}: {:?}", reply.body);
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{what}: {error}");
    }

    // A 10 MB prompt: refused on its declared length before it is read.
    // (Written over a raw socket: the answer comes while the client is
    // still sending, and a client that insists on writing it all meets a
    // closed connection, as with any server that will not read it.)
    let prompt = format!(
        r#"{{"model":"llama3","prompt":"{}"}}"#,
        "x".repeat(10 << 20)
    );
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_all(
        format!(
            "POST /api/generate HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            prompt.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let _ = big.write_all(&prompt.as_bytes()[..64 * 1024]).await;
    let answer = read_to_close(&mut big).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("max_request_bytes"), "{answer}");

    // Header floods: too many, and too large.
    let mut many = String::from("GET /api/tags HTTP/1.1\r\nHost: corral\r\n");
    for i in 0..200 {
        many.push_str(&format!("X-Flood-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(status_of(&raw(addr, many.as_bytes()).await), 431);
    let large = format!(
        "GET /api/tags HTTP/1.1\r\nHost: corral\r\nX-Large: {}\r\n\r\n",
        "y".repeat(64 * 1024)
    );
    let answer = raw(addr, large.as_bytes()).await;
    assert!(answer.is_empty() || status_of(&answer) == 431, "{answer}");

    // A body that stops arriving: 408 with an Ollama-shaped error.
    let answer = raw(
        addr,
        b"POST /api/generate HTTP/1.1\r\nHost: corral\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
    )
    .await;
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");

    // Headers that stop arriving, and a socket that sends nothing: closed.
    let answer = raw(addr, b"POST /api/generate HTTP/1.1\r\nHost: cor").await;
    assert!(answer.is_empty() || status_of(&answer) == 408, "{answer}");
    assert_eq!(raw(addr, b"").await, "");
    // The start of the HTTP/2 preface, then nothing: closed too.
    assert_eq!(raw(addr, b"PRI * HTTP/2.0\r\n").await, "");

    // A client that asks for a long stream and reads none of it is cut
    // off, and what it held (its upstream permit) is given back.
    let stalled_before = corral_e2e::metric_sum(
        &url,
        "corral_connections_closed_total{reason=\"write_stall\"} ",
    )
    .await;
    let mut reader = TcpStream::connect(addr).await.unwrap();
    // Two million tokens, as fast as the simulator can write them: far
    // more than the sockets' buffers hold.
    let body = r#"{"model":"llama3","prompt":"never read"}"#;
    reader
        .write_all(
            format!(
                "POST /api/generate HTTP/1.1\r\nHost: corral\r\nX-Mock-Fault: tokens=2000000,tps=10000000000\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let url2 = url.clone();
    within(async {
        loop {
            if corral_e2e::metric_sum(
                &url2,
                "corral_connections_closed_total{reason=\"write_stall\"} ",
            )
            .await
                > stalled_before
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut drained = Vec::new();
    within(reader.read_to_end(&mut drained)).await.ok();
    assert!(drained.len() < 2_000_000 * 50, "the answer was cut short");

    // The agents went on undisturbed the whole time.
    stop.store(true, Ordering::Relaxed);
    let (answered, errors) = within(load).await.unwrap();
    assert!(
        errors.is_empty(),
        "{} errors, the first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(answered >= 8, "{answered}");
    let metrics = get(&format!("{url}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.lines().any(|l| l == "corral_upstream_in_flight 0"),
        "every permit is back: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("corral_upstream_in_flight"))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let upstream = mock(corral_e2e::fast()).await;
    let corral = corral_e2e::proxy_with(&upstream.url(), |c| {
        c.server.max_connections_per_address = 3;
    })
    .await;
    let addr = corral.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Accepted in order: the fourth finds the address's share taken and
    // is closed without a byte.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert_eq!(read_to_close(&mut fourth).await, "");

    // One given back, a new connection is served.
    drop(held.pop());
    let url = corral.url();
    let mut served = false;
    for _ in 0..100 {
        // The server sees the close a moment later; no event to wait on.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /api/version HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut stream).await;
        if !answer.is_empty() {
            assert_eq!(status_of(&answer), 200, "{answer}");
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served, "a place given back is taken again at {url}");
}
