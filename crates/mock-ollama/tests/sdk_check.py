"""Drives the simulated Ollama's /v1/messages and /v1/responses with the
official SDKs (anthropic, openai>=1.40) and checks they parse its answers.

    python3 -m venv target/py && target/py/bin/pip install anthropic 'openai>=1.40'
    cargo run -p corral-mock-ollama -- --listen 127.0.0.1:18555 &
    target/py/bin/python crates/mock-ollama/tests/sdk_check.py http://127.0.0.1:18555

Exits non-zero on the first answer that does not parse or disagrees.
"""

import sys

import anthropic
import openai

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:18555"
MODEL = "llama3"


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        sys.exit(1)


def messages():
    client = anthropic.Anthropic(base_url=BASE, api_key="x", max_retries=0)
    ask = dict(
        model=MODEL,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "why is the sky blue"}],
    )
    whole = client.messages.create(**ask)
    text = "".join(b.text for b in whole.content if b.type == "text")
    check(
        "messages.create",
        whole.type == "message" and whole.stop_reason == "end_turn" and text != "",
        f"{text!r} stop_reason={whole.stop_reason} usage={whole.usage.input_tokens}/{whole.usage.output_tokens}",
    )

    with client.messages.stream(**ask) as stream:
        deltas = "".join(stream.text_stream)
        final = stream.get_final_message()
    check(
        "messages.stream",
        deltas == text and final.content[0].text == text
        and final.usage.output_tokens == whole.usage.output_tokens,
        f"{deltas!r} stop_reason={final.stop_reason} usage={final.usage.input_tokens}/{final.usage.output_tokens}",
    )

    cut = client.messages.create(**{**ask, "max_tokens": 3})
    check(
        "messages.create max_tokens=3",
        cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3,
        f"{cut.content[0].text!r} stop_reason={cut.stop_reason}",
    )

    try:
        client.messages.create(**{**ask, "model": "no-such-model"})
        check("messages.create unknown model", False, "no error raised")
    except anthropic.NotFoundError as e:
        check("messages.create unknown model", e.status_code == 404, f"{e.status_code} {e.body}")


def responses():
    client = openai.OpenAI(base_url=BASE + "/v1", api_key="x", max_retries=0)
    ask = dict(model=MODEL, instructions="be brief", input="why is the sky blue")
    whole = client.responses.create(**ask)
    check(
        "responses.create",
        whole.status == "completed" and whole.output_text != "",
        f"{whole.output_text!r} status={whole.status} usage={whole.usage.input_tokens}/{whole.usage.output_tokens}/{whole.usage.total_tokens}",
    )

    names, deltas, final = [], "", None
    for event in client.responses.create(**ask, stream=True):
        names.append(event.type)
        if event.type == "response.output_text.delta":
            deltas += event.delta
        elif event.type == "response.completed":
            final = event.response
    check(
        "responses.create stream=True",
        deltas == whole.output_text and final is not None
        and final.output_text == whole.output_text
        and final.usage.output_tokens == whole.usage.output_tokens,
        f"{deltas!r} events={names[0]}..{names[-1]} ({len(names)})",
    )

    with client.responses.stream(**ask) as stream:
        for _ in stream:
            pass
        streamed = stream.get_final_response()
    check(
        "responses.stream",
        streamed.output_text == whole.output_text,
        f"{streamed.output_text!r}",
    )

    cut = client.responses.create(**ask, max_output_tokens=3)
    check(
        "responses.create max_output_tokens=3",
        cut.usage.output_tokens == 3,
        f"{cut.output_text!r} status={cut.status} incomplete_details={cut.incomplete_details}",
    )

    try:
        client.responses.create(**{**ask, "model": "no-such-model"})
        check("responses.create unknown model", False, "no error raised")
    except openai.NotFoundError as e:
        check("responses.create unknown model", e.status_code == 404, f"{e.status_code} {e.body}")


if __name__ == "__main__":
    print(f"anthropic {anthropic.__version__}, openai {openai.__version__}, against {BASE}")
    messages()
    responses()
    print("all parsed")
