//! Replicas of `corral` sharing one Redis: starting three, the config
//! they share, and what their tests measure.

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use corral_e2e::herd::CLASSES;
use corral_e2e::{mock, request, send, Redis};
use corral_mock_ollama::{MockConfig, MockOllama};

use super::{config_file, corral, free_port, wait_for};

/// What a test of replicas runs on: a Redis of its own, an upstream, and
/// the config the replicas share, under a key prefix of the test's own.
pub(crate) struct Fleet {
    /// The Redis the replicas share.
    pub(crate) redis: Redis,
    /// The simulated Ollama they all forward to.
    pub(crate) upstream: MockOllama,
    /// Their key prefix in Redis.
    pub(crate) keys: String,
    /// Their config file's text.
    pub(crate) text: String,
}

impl Fleet {
    /// A fast upstream, leases of 5 s, `extra` layers before the scheduler.
    pub(crate) async fn start(test: &str, extra: &str) -> Self {
        Self::start_with(corral_e2e::fast(), test, "5s", extra).await
    }

    /// An upstream of `upstream`, leases of `lease`, `extra` layers.
    pub(crate) async fn start_with(
        upstream: MockConfig,
        test: &str,
        lease: &str,
        extra: &str,
    ) -> Self {
        let redis = Redis::start().await;
        let upstream = mock(upstream).await;
        let keys = prefix(test);
        let text = config(&upstream.url(), &redis.url, &keys, lease, extra);
        Self {
            redis,
            upstream,
            keys,
            text,
        }
    }

    /// Three replicas of the shared config.
    pub(crate) async fn three(&self) -> [Replica; 3] {
        three(&self.text).await
    }

    /// Waits until `n` replicas listen on `channel`.
    pub(crate) async fn listening(&self, channel: &str, n: usize) {
        listening(&self.redis.url, &self.keys, channel, n).await;
    }
}

/// A replica: a `corral` process, killed when dropped.
pub(crate) struct Replica {
    child: Child,
    pub(crate) url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    pub(crate) async fn start(name: &str, config: &str) -> Self {
        let port = free_port();
        let path = config_file(&format!("{name}.toml"), config);
        let child = corral()
            .env("CORRAL_CONFIG", &path)
            .env("CORRAL_LISTEN", format!("127.0.0.1:{port}"))
            .env("HOSTNAME", name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(port).await;
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Kills it with SIGKILL: no chance to give anything back.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) async fn generate(
        &self,
        agent: &str,
        priority: u8,
        prompt: &str,
    ) -> corral_e2e::Reply {
        let mut request = request(
            "POST",
            &format!("{}/api/generate", self.url),
            format!(r#"{{"model":"llama3","prompt":"{prompt}","stream":false}}"#),
        );
        request
            .headers_mut()
            .insert("x-agent-id", agent.parse().unwrap());
        request
            .headers_mut()
            .insert("x-priority", priority.to_string().parse().unwrap());
        send(request).await
    }

    /// `GET /corral/events?{query}`: the events, oldest first.
    pub(crate) async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        let reply = send(request(
            "GET",
            &format!("{}/corral/events?{query}", self.url),
            "",
        ))
        .await;
        reply.json().as_array().cloned().unwrap_or_default()
    }

    /// Its `corral_state_backend_up`: 1 while it shares state in Redis.
    pub(crate) async fn backend_up(&self) -> f64 {
        corral_e2e::metric_sum(&self.url, "corral_state_backend_up").await
    }

    pub(crate) async fn degrade(&self, body: &str) -> serde_json::Value {
        let method = if body.is_empty() { "GET" } else { "POST" };
        send(request(
            method,
            &format!("{}/corral/degrade", self.url),
            body.to_string(),
        ))
        .await
        .json()
    }
}

/// `POST {url}/api/generate` with `body`, from `agent`, with `extra`
/// headers (`x-request-id`, `x-mock-fault`, ...).
pub(crate) fn ask(
    url: &str,
    agent: &str,
    body: &str,
    extra: &[(&'static str, &str)],
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut ask = request("POST", &format!("{url}/api/generate"), body.to_string());
    ask.headers_mut()
        .insert("x-agent-id", agent.parse().unwrap());
    for (name, value) in extra {
        ask.headers_mut().insert(*name, value.parse().unwrap());
    }
    ask
}

/// What `redis-cli -u url args...` prints, trimmed.
pub(crate) fn redis_cli(url: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Waits until `n` clients listen on `channel` under the key prefix
/// `keys` (replicas subscribe as they start, not before they answer).
pub(crate) async fn listening(redis_url: &str, keys: &str, channel: &str, n: usize) {
    let channel = format!("{keys}{channel}");
    corral_e2e::eventually("the replicas listen", || {
        let reply = redis_cli(redis_url, &["PUBSUB", "NUMSUB", &channel]);
        reply
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<usize>().ok())
            .is_some_and(|count| count >= n)
    })
    .await;
}

/// A key prefix no other run uses, for a shared `REDIS_URL`.
pub(crate) fn prefix(test: &str) -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    format!(
        "corral-test-{}-{}-{test}:",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    )
}

/// The config every replica of a test shares: the fleet's classes, the
/// scheduler with leases of `lease`, `extra` layers before it.
pub(crate) fn config(
    upstream: &str,
    redis: &str,
    prefix: &str,
    lease: &str,
    extra: &str,
) -> String {
    let mut text = format!(
        "[upstream]\nurl = \"{upstream}\"\ncapacity = 4\n\n[state]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nkey_prefix = \"{prefix}\"\nredis_timeout = \"200ms\"\n\n{extra}\n[[layers]]\nkind = \"priority\"\nlease_ttl = \"{lease}\"\n"
    );
    for (name, priority, _) in CLASSES {
        text.push_str(&format!(
            "\n[[classes]]\nname = \"{name}\"\npriority = {priority}\npriorities = [{priority}, {priority}]\n"
        ));
        if name == "opus" {
            text.push_str("rate_limit = { requests_per_minute = 5 }\n");
        }
    }
    for (name, _, count) in CLASSES {
        for i in 0..count {
            text.push_str(&format!(
                "[[agents]]\nid = \"{name}-{i}\"\nclass = \"{name}\"\n"
            ));
        }
    }
    text
}

/// Whether every one of `replicas` says its backend is `up` (1) or not (0).
pub(crate) async fn every_backend(replicas: &[Replica], up: f64) -> bool {
    for replica in replicas {
        if replica.backend_up().await != up {
            return false;
        }
    }
    true
}

pub(crate) async fn three(config: &str) -> [Replica; 3] {
    [
        Replica::start("replica-a", config).await,
        Replica::start("replica-b", config).await,
        Replica::start("replica-c", config).await,
    ]
}
