//! The status page in a real headless Chromium, driven through
//! chromedriver (W3C WebDriver) by this test, which starts both: the
//! 131-agent herd shows live on the page (agents, the queue, events),
//! and the degradation level forced from the page is forced.
//!
//! The screenshot goes to `target/ui.png`, or where
//! `CORRAL_UI_SCREENSHOT` says (the README's is taken with
//! `CORRAL_UI_SCREENSHOT=docs/ui.png`).

#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use corral::{Config, Running};
use corral_e2e::herd::CLASSES;
use corral_e2e::{mock, request_with, send};
use corral_mock_ollama::MockConfig;
use serde_json::{json, Value};

const TOKEN: &str = "ui-admin-token-1234";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("chromedriver: {e}: the status page test needs Debian's chromium and chromium-driver (scripts/test installs them)")
            });
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // A process has no event to wait on.
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return driver;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("chromedriver never listened on {port}");
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        let reply = send(request_with(
            method,
            &format!("{}{path}", self.url),
            body,
            &[("content-type", "application/json")],
        ))
        .await;
        let value = reply.json();
        assert!(
            reply.status.is_success(),
            "WebDriver {method} {path}: {value}"
        );
        value["value"].clone()
    }
}

/// A headless Chromium session.
struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

impl<'a> Browser<'a> {
    async fn open(driver: &'a Driver) -> Self {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"]
            }
        }}});
        let session = driver.call("POST", "/session", capabilities).await;
        Self {
            driver,
            session: session["sessionId"].as_str().unwrap().to_string(),
        }
    }

    async fn go(&self, url: &str) {
        self.driver
            .call(
                "POST",
                &format!("/session/{}/url", self.session),
                json!({"url": url}),
            )
            .await;
    }

    /// Runs `script` in the page; its result.
    async fn run(&self, script: &str) -> Value {
        self.driver
            .call(
                "POST",
                &format!("/session/{}/execute/sync", self.session),
                json!({"script": script, "args": []}),
            )
            .await
    }

    /// Clicks the element `css` selects, as a user would.
    async fn click(&self, css: &str) {
        let element = self
            .driver
            .call(
                "POST",
                &format!("/session/{}/element", self.session),
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = element
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap()
            .to_string();
        self.driver
            .call(
                "POST",
                &format!("/session/{}/element/{id}/click", self.session),
                json!({}),
            )
            .await;
    }

    /// Waits until `script` returns true in the page.
    async fn until(&self, what: &str, script: &str) {
        for _ in 0..300 {
            if self.run(script).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let page = self
            .run("return document.querySelector('main').innerText")
            .await;
        panic!("the page never showed {what}: {page}");
    }

    async fn screenshot(&self) -> Vec<u8> {
        let png = self
            .driver
            .call(
                "GET",
                &format!("/session/{}/screenshot", self.session),
                json!({}),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap()
    }

    async fn close(self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.session), json!({}))
            .await;
    }
}

fn herd_config(upstream: &str) -> Config {
    // One priority for all: the agents share the permits fairly, so the
    // whole herd is served (and shows) within seconds.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\ntoken = \"{TOKEN}\"\n[upstream]\nurl = \"{upstream}\"\ncapacity = 4\n\n[[layers]]\nkind = \"degrade\"\n\n[[layers]]\nkind = \"cache\"\n\n[[layers]]\nkind = \"priority\"\n{}",
        corral_e2e::herd::classes_toml(|_, _| 5, false)
    );
    Config::parse(&text, std::path::Path::new("ui.toml")).unwrap()
}

/// The herd asking, each agent one request after another, until `stop`.
fn herd(url: &str, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut agents = Vec::new();
    for (class, _, count) in CLASSES {
        for i in 0..count {
            let (url, stop) = (url.to_string(), stop.clone());
            agents.push(tokio::spawn(async move {
                let client = corral_e2e::client();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let request =
                        corral_e2e::herd::ask(&format!("{url}/api/generate"), class, i, n, 5);
                    if let Ok(response) = client.request(request).await {
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    }
                    n += 1;
                }
            }));
        }
    }
    agents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_herd_live_and_forces_a_level() {
    let upstream = mock(MockConfig {
        parallel: 4,
        ttft: Duration::from_millis(20),
        tokens_per_sec: 400.0,
        tokens: 20,
        ..MockConfig::default()
    })
    .await;
    let corral = Running::start(&herd_config(&upstream.url())).await.unwrap();
    let url = corral.url();
    let stop = Arc::new(AtomicBool::new(false));
    let agents = herd(&url, &stop);

    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.go(&format!("{url}/corral/ui#token={TOKEN}")).await;
    browser
        .until(
            "the stream live",
            "return document.getElementById('connection').textContent === 'live'",
        )
        .await;
    browser
        .until(
            "the herd's agents",
            "return document.querySelectorAll('#agents tbody tr').length >= 100",
        )
        .await;
    browser
        .until(
            "requests waiting in the queue",
            "return Number(document.getElementById('queued').textContent) > 0",
        )
        .await;
    browser
        .until(
            "the upstream",
            "return document.querySelectorAll('#upstreams tbody tr').length === 1",
        )
        .await;
    browser
        .until(
            "the permits in use",
            "return Number(document.getElementById('in-flight').textContent) === 4",
        )
        .await;
    browser
        .until(
            "the last events",
            "return document.querySelectorAll('#events tbody tr').length > 0",
        )
        .await;
    browser
        .until(
            "agents' rates",
            "return [...document.querySelectorAll('#agents tbody tr td:nth-child(3)')].some(td => Number(td.textContent) > 0)",
        )
        .await;
    // The token never shows in the address.
    assert!(!browser
        .run("return location.href")
        .await
        .to_string()
        .contains(TOKEN));

    // Force a level from the page.
    browser
        .run("document.getElementById('force-level').value = 'L2'; return true")
        .await;
    browser.click("#force-button").await;
    browser
        .until(
            "the forced level",
            "return document.getElementById('level').textContent === 'L2 (forced)'",
        )
        .await;
    let degrade = send(request_with(
        "GET",
        &format!("{url}/corral/degrade"),
        "",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    ))
    .await
    .json();
    assert_eq!(degrade["forced"], "L2", "{degrade}");

    // The capacity, and an agent's priority, from the page too.
    browser
        .run("document.getElementById('capacity-input').value = '6'; return true")
        .await;
    browser.click("#capacity-button").await;
    browser
        .until(
            "the new capacity",
            "return document.getElementById('capacity').textContent === '6'",
        )
        .await;
    browser
        .run("document.getElementById('priority-agent').value = 'batch-7'; document.getElementById('priority-value').value = '1'; return true")
        .await;
    browser.click("#priority-button").await;
    browser
        .until(
            "the pinned priority in the agents' table",
            "return [...document.querySelectorAll('#agents tbody tr')].some(r => r.cells[0].textContent === 'batch-7' && r.cells[6].textContent === '1')",
        )
        .await;
    let pinned = send(request_with(
        "GET",
        &format!("{url}/corral/priority"),
        "",
        &[("authorization", &format!("Bearer {TOKEN}"))],
    ))
    .await
    .json();
    assert!(pinned.to_string().contains("batch-7"), "{pinned}");

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    // Relative to the workspace, as the README names it.
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = workspace.join(
        std::env::var("CORRAL_UI_SCREENSHOT").unwrap_or_else(|_| "target/ui.png".to_string()),
    );
    std::fs::write(&path, png).unwrap();
    browser.close().await;

    stop.store(true, Ordering::Relaxed);
    for agent in agents {
        agent.abort();
    }
    // Without the token, the stream is refused; the page itself is open.
    let refused = corral_e2e::get(&format!("{url}/corral/ui/stream")).await;
    assert_eq!(refused.status, 401);
    let page = corral_e2e::get(&format!("{url}/corral/ui")).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<title>Corral</title>"));
}
