// The official JavaScript client, ollama-js, unchanged, through a real
// corral with no configuration (the default stack: shed, priority,
// retry, breaker).
//
// Usage: node --test tests/clients/test_ollama_js.mjs, with CORRAL and
// MOCK the paths of corral and corral-mock-ollama, and OLLAMA_JS the
// directory ollama-js is installed in (scripts/test-clients sets them).
//
// Starts the simulated Ollama and corral in front of it on free ports,
// and checks every answer against the one the same client gets from the
// upstream directly.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import net from "node:net";
import path from "node:path";
import { pathToFileURL } from "node:url";

const { CORRAL, MOCK, OLLAMA_JS } = process.env;
const { Ollama } = await import(
  pathToFileURL(path.join(OLLAMA_JS, "node_modules/ollama/dist/index.mjs")).href
);

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitReady(url, seconds = 30) {
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} never became ready`);
}

const processes = [];
let corralUrl, through, direct;

before(async () => {
  const [mockPort, corralPort] = [await freePort(), await freePort()];
  processes.push(
    spawn(MOCK, ["--listen", `127.0.0.1:${mockPort}`, "--ttft-ms", "1", "--tps", "2000", "--tokens", "12"], {
      stdio: "ignore",
    }),
    spawn(CORRAL, ["--listen", `127.0.0.1:${corralPort}`, "--upstream", `:${mockPort}`], { stdio: "ignore" }),
  );
  corralUrl = `http://127.0.0.1:${corralPort}`;
  await waitReady(`${corralUrl}/corral/readyz`);
  through = new Ollama({ host: corralUrl, headers: { "X-Agent-Id": "js-agent", "X-Priority": "2" } });
  direct = new Ollama({ host: `http://127.0.0.1:${mockPort}` });
});

after(() => {
  for (const p of processes) p.kill();
});

const collect = async (stream) => {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return parts;
};

test("generate and chat answer as the upstream does", async () => {
  const ask = { model: "llama3", prompt: "why is the sky blue?" };
  const [a, b] = [await direct.generate(ask), await through.generate(ask)];
  assert.equal(b.response, a.response);
  assert.equal(b.eval_count, 12);
  assert.equal(b.done, true);
  const chat = { model: "llama3", messages: [{ role: "user", content: "hello" }] };
  assert.equal((await through.chat(chat)).message.content, (await direct.chat(chat)).message.content);
});

test("streams arrive whole and in order", async () => {
  const ask = { model: "llama3", prompt: "stream", stream: true };
  const a = (await collect(await direct.generate(ask))).map((p) => p.response);
  const b = (await collect(await through.generate(ask))).map((p) => p.response);
  assert.deepEqual(b, a);
  assert.equal(b.length, 13);
  const parts = await collect(
    await through.chat({ model: "llama3", messages: [{ role: "user", content: "hi" }], stream: true }),
  );
  assert.equal(parts.at(-1).done, true);
  assert.equal(parts.at(-1).done_reason, "stop");
});

test("embeddings, both APIs", async () => {
  const ask = { model: "nomic-embed-text", input: ["one", "two"] };
  const b = await through.embed(ask);
  assert.deepEqual(b.embeddings, (await direct.embed(ask)).embeddings);
  assert.equal(b.embeddings.length, 2);
  const old = { model: "nomic-embed-text", prompt: "x" };
  assert.deepEqual((await through.embeddings(old)).embedding, (await direct.embeddings(old)).embedding);
});

test("model management", async () => {
  const names = (await through.list()).models.map((m) => m.model);
  assert.ok(names.includes("llama3:latest"), names.join(", "));
  assert.ok((await through.show({ model: "llama3" })).capabilities.includes("completion"));
  const statuses = (await collect(await through.pull({ model: "phi3", stream: true }))).map((p) => p.status);
  assert.equal(statuses[0], "pulling manifest");
  assert.equal(statuses.at(-1), "success");
  await through.copy({ source: "phi3", destination: "phi3-copy" });
  await through.delete({ model: "phi3-copy" });
  assert.ok(Array.isArray((await through.ps()).models));
});

test("errors keep their status and message", async () => {
  await assert.rejects(through.generate({ model: "ghost", prompt: "x" }), (e) => {
    assert.equal(e.name, "ResponseError");
    assert.equal(e.status_code, 404);
    assert.match(e.error, /not found/);
    return true;
  });
  const bad = new Ollama({ host: corralUrl, headers: { "X-Priority": "11" } });
  await assert.rejects(bad.generate({ model: "llama3", prompt: "x" }), (e) => {
    assert.equal(e.status_code, 400);
    assert.match(e.error, /X-Priority/);
    return true;
  });
});

test("a stream the client aborts ends its request; the next is answered", async () => {
  const stream = await through.generate({ model: "llama3", prompt: "leave early", stream: true });
  await assert.rejects(
    (async () => {
      for await (const _ of stream) stream.abort();
    })(),
    (e) => e.name === "AbortError",
  );
  const after = await through.generate({ model: "llama3", prompt: "after" });
  assert.equal(after.done, true);
  // The aborted request is over on corral's side too: nothing in flight.
  const end = Date.now() + 15000;
  let inFlight;
  while (Date.now() < end) {
    const metrics = await (await fetch(`${corralUrl}/metrics`)).text();
    inFlight = metrics
      .split("\n")
      .filter((l) => l.startsWith("corral_requests_in_flight"))
      .reduce((sum, l) => sum + Number(l.split(" ").at(-1)), 0);
    if (inFlight === 0) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  assert.equal(inFlight, 0);
});

test("requests are scheduled and counted under the agent's name", async () => {
  await through.chat({ model: "llama3", messages: [{ role: "user", content: "count me" }] });
  const metrics = await (await fetch(`${corralUrl}/metrics`)).text();
  assert.match(metrics, /corral_requests_total\{endpoint="chat"/);
  const events = await (await fetch(`${corralUrl}/corral/events?kind=dispatched`)).text();
  assert.match(events, /js-agent/, "it waited for a permit like any generation");
});
