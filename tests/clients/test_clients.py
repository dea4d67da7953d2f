"""The official Python clients, unchanged, through a real corral with no
configuration (the default stack: shed, priority, retry, breaker).

Usage: test_clients.py PATH/TO/corral PATH/TO/corral-mock-ollama

Starts the simulated Ollama and corral in front of it on free ports, then
drives corral with ollama-python (found through OLLAMA_HOST, as agents
find it), the OpenAI SDK (chat, completions, embeddings, the Responses
API) and the Anthropic SDK (Messages, as Claude Code talks to Ollama),
and checks every answer against the one the same client gets from the
upstream directly.
"""

import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.request

CORRAL, MOCK = sys.argv[1], sys.argv[2]
del sys.argv[1:3]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


MOCK_PORT, CORRAL_PORT = free_port(), free_port()
procs = [
    subprocess.Popen([MOCK, "--listen", f"127.0.0.1:{MOCK_PORT}", "--ttft-ms", "1", "--tps", "2000", "--tokens", "12"],
                     stderr=subprocess.DEVNULL),
    subprocess.Popen([CORRAL, "--listen", f"127.0.0.1:{CORRAL_PORT}", "--upstream", f":{MOCK_PORT}"],
                     stderr=subprocess.DEVNULL),
]
try:
    wait_ready(f"http://127.0.0.1:{CORRAL_PORT}/corral/readyz")
except Exception:
    for p in procs:
        p.kill()
    raise

# Agents set OLLAMA_HOST and nothing else: the client must find corral.
os.environ["OLLAMA_HOST"] = f"127.0.0.1:{CORRAL_PORT}"
import anthropic  # noqa: E402
import ollama  # noqa: E402
import openai  # noqa: E402

DIRECT = f"127.0.0.1:{MOCK_PORT}"


class OllamaPython(unittest.TestCase):
    def setUp(self):
        self.through = ollama.Client(headers={"X-Agent-Id": "py-agent", "X-Priority": "2"})
        self.direct = ollama.Client(host=DIRECT)

    def test_the_client_finds_corral_through_ollama_host(self):
        self.assertIn(str(CORRAL_PORT), str(self.through._client.base_url))

    def test_generate_and_chat_answer_as_the_upstream_does(self):
        a = self.direct.generate(model="llama3", prompt="why is the sky blue?")
        b = self.through.generate(model="llama3", prompt="why is the sky blue?")
        self.assertEqual(a.response, b.response)
        self.assertEqual(b.eval_count, 12)
        self.assertTrue(b.done)
        msgs = [{"role": "user", "content": "hello"}]
        self.assertEqual(self.direct.chat(model="llama3", messages=msgs).message.content,
                         self.through.chat(model="llama3", messages=msgs).message.content)

    def test_streams_arrive_whole_and_in_order(self):
        a = [p.response for p in self.direct.generate(model="llama3", prompt="stream", stream=True)]
        b = [p.response for p in self.through.generate(model="llama3", prompt="stream", stream=True)]
        self.assertEqual(a, b)
        self.assertEqual(len(b), 13)
        parts = list(self.through.chat(model="llama3", messages=[{"role": "user", "content": "hi"}], stream=True))
        self.assertTrue(parts[-1].done)
        self.assertEqual(parts[-1].done_reason, "stop")

    def test_embeddings_both_apis(self):
        a = self.direct.embed(model="nomic-embed-text", input=["one", "two"])
        b = self.through.embed(model="nomic-embed-text", input=["one", "two"])
        self.assertEqual(a.embeddings, b.embeddings)
        self.assertEqual(len(b.embeddings), 2)
        self.assertEqual(self.direct.embeddings(model="nomic-embed-text", prompt="x").embedding,
                         self.through.embeddings(model="nomic-embed-text", prompt="x").embedding)

    def test_model_management(self):
        names = [m.model for m in self.through.list().models]
        self.assertIn("llama3:latest", names)
        self.assertIn("completion", self.through.show("llama3").capabilities)
        statuses = [p.status for p in self.through.pull("phi3", stream=True)]
        self.assertEqual(statuses[0], "pulling manifest")
        self.assertEqual(statuses[-1], "success")
        self.through.copy("phi3", "phi3-copy")
        self.through.delete("phi3-copy")
        self.assertIsNotNone(self.through.ps())

    def test_errors_keep_their_status_and_message(self):
        with self.assertRaises(ollama.ResponseError) as caught:
            self.through.generate(model="ghost", prompt="x")
        self.assertEqual(caught.exception.status_code, 404)
        self.assertIn("not found", caught.exception.error)
        bad = ollama.Client(headers={"X-Priority": "11"})
        with self.assertRaises(ollama.ResponseError) as caught:
            bad.generate(model="llama3", prompt="x")
        self.assertEqual(caught.exception.status_code, 400)
        self.assertIn("X-Priority", caught.exception.error)


class OpenAiSdk(unittest.TestCase):
    def setUp(self):
        self.through = openai.OpenAI(base_url=f"http://127.0.0.1:{CORRAL_PORT}/v1", api_key="ollama",
                                     default_headers={"X-Agent-Id": "openai-agent"}, max_retries=0)
        self.direct = openai.OpenAI(base_url=f"http://{DIRECT}/v1", api_key="ollama", max_retries=0)

    def test_chat_completions_whole_and_streamed(self):
        msgs = [{"role": "user", "content": "hello"}]
        a = self.direct.chat.completions.create(model="llama3", messages=msgs)
        b = self.through.chat.completions.create(model="llama3", messages=msgs)
        self.assertEqual(a.choices[0].message.content, b.choices[0].message.content)
        self.assertEqual(b.usage.completion_tokens, 12)
        chunks = list(self.through.chat.completions.create(
            model="llama3", messages=msgs, stream=True, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, b.choices[0].message.content)
        self.assertEqual(chunks[-1].usage.completion_tokens, 12)

    def test_completions_embeddings_and_models(self):
        a = self.direct.completions.create(model="llama3", prompt="once upon")
        b = self.through.completions.create(model="llama3", prompt="once upon")
        self.assertEqual(a.choices[0].text, b.choices[0].text)
        e = self.through.embeddings.create(model="nomic-embed-text", input=["x", "y"])
        self.assertEqual(len(e.data), 2)
        ids = [m.id for m in self.through.models.list()]
        self.assertIn("llama3:latest", ids)
        self.assertEqual(self.through.models.retrieve("llama3").id, "llama3:latest")

    def test_errors_are_typed_by_the_sdk(self):
        with self.assertRaises(openai.NotFoundError):
            self.through.models.retrieve("ghost")
        with self.assertRaises(openai.BadRequestError) as caught:
            self.through.chat.completions.create(
                model="llama3", messages=[{"role": "user", "content": "x"}],
                extra_headers={"X-Priority": "urgent"})
        self.assertIn("X-Priority", caught.exception.message)

    def test_the_responses_api_whole_and_streamed(self):
        a = self.direct.responses.create(model="llama3", input="why is the sky blue?")
        b = self.through.responses.create(model="llama3", input="why is the sky blue?")
        self.assertEqual(a.output_text, b.output_text)
        self.assertEqual(b.status, "completed")
        self.assertEqual(b.usage.output_tokens, 12)
        events = list(self.through.responses.create(model="llama3", input="why is the sky blue?", stream=True))
        self.assertEqual(events[0].type, "response.created")
        self.assertEqual(events[-1].type, "response.completed")
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        self.assertEqual(text, b.output_text)
        with self.through.responses.stream(model="llama3", input="why is the sky blue?") as stream:
            final = stream.get_final_response()
        self.assertEqual(final.output_text, b.output_text)
        with self.assertRaises(openai.NotFoundError):
            self.through.responses.create(model="ghost", input="x")


class AnthropicSdk(unittest.TestCase):
    def setUp(self):
        self.through = anthropic.Anthropic(base_url=f"http://127.0.0.1:{CORRAL_PORT}", api_key="ollama",
                                           default_headers={"X-Agent-Id": "claude-agent"}, max_retries=0)
        self.direct = anthropic.Anthropic(base_url=f"http://{DIRECT}", api_key="ollama", max_retries=0)
        self.ask = dict(model="llama3", max_tokens=64, system="be brief",
                        messages=[{"role": "user", "content": "why is the sky blue?"}])

    def test_messages_whole_and_streamed(self):
        a = self.direct.messages.create(**self.ask)
        b = self.through.messages.create(**self.ask)
        self.assertEqual(a.content[0].text, b.content[0].text)
        self.assertEqual(b.stop_reason, "end_turn")
        self.assertEqual(b.usage.output_tokens, 12)
        with self.through.messages.stream(**self.ask) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertEqual(text, b.content[0].text)
        self.assertEqual(final.usage.output_tokens, 12)

    def test_errors_are_typed_by_the_sdk(self):
        with self.assertRaises(anthropic.NotFoundError):
            self.through.messages.create(**{**self.ask, "model": "ghost"})
        # A refusal by corral itself comes in Anthropic's shape too.
        with self.assertRaises(anthropic.BadRequestError) as caught:
            self.through.messages.create(**self.ask, extra_headers={"X-Priority": "urgent"})
        self.assertEqual(caught.exception.body["type"], "error")
        self.assertIn("X-Priority", caught.exception.body["error"]["message"])

    def test_messages_are_scheduled_and_counted(self):
        self.through.messages.create(**self.ask)
        with urllib.request.urlopen(f"http://127.0.0.1:{CORRAL_PORT}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        self.assertIn('corral_requests_total{endpoint="v1_messages"', metrics)
        with urllib.request.urlopen(f"http://127.0.0.1:{CORRAL_PORT}/corral/events?kind=dispatched", timeout=5) as r:
            events = r.read().decode()
        self.assertIn("claude-agent", events, "it waited for a permit like any generation")


if __name__ == "__main__":
    try:
        result = unittest.main(exit=False, verbosity=2, warnings="ignore").result
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
    sys.exit(0 if result.wasSuccessful() else 1)
