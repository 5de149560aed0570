"""The OpenAI-compatible API of `kiln-agent serve`, through the official `openai` client and raw HTTP,
against a real server running a real model (SmolLM2-135M-Instruct)."""

import json
import threading

import httpx
import openai
import pytest

from conftest import Server

CAPITAL = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_plain_chat(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=CAPITAL, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"


def test_streaming_matches_non_streaming(client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Write two sentences about the sea."}],
              temperature=0, max_tokens=40)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_raw_sse_format(server):
    body = {"messages": CAPITAL, "temperature": 0, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [l for l in r.iter_lines() if l]
    assert all(l.startswith("data: ") for l in lines)
    assert lines[-1] == "data: [DONE]"
    for l in lines[:-1]:
        assert json.loads(l[6:])["object"] == "chat.completion.chunk"


def test_usage_matches_the_tokenizer(server, client, model_id):
    r = client.chat.completions.create(model=model_id, messages=CAPITAL, temperature=0, max_tokens=3)
    prompt = httpx.post(server.url + "/apply-template", json={"messages": CAPITAL}).json()["prompt"]
    tokens = httpx.post(server.url + "/tokenize",
                        json={"content": prompt, "add_special": True, "parse_special": True}).json()["tokens"]
    assert r.usage.prompt_tokens == len(tokens)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_prefix_reuse_reports_cached_tokens(client, model_id):
    sys = {"role": "system", "content": "You are a terse assistant for a weather station. " * 10}
    msgs = [sys, {"role": "user", "content": "Hello"}]
    client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=4)
    msgs2 = [sys, {"role": "user", "content": "Hello there"}]
    r = client.chat.completions.create(model=model_id, messages=msgs2, temperature=0, max_tokens=4)
    cached = r.usage.prompt_tokens_details.cached_tokens
    assert cached > 50, cached
    assert r.model_extra["timings"]["cache_n"] == cached


def test_stop_sequences(client, model_id):
    kw = dict(model=model_id, messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
              temperature=0, max_tokens=40)
    base = client.chat.completions.create(**kw).choices[0].message.content
    assert "5" in base, base
    stop = "5"
    cut = base[: base.index(stop)]
    r = client.chat.completions.create(stop=[stop, "zzz"], **kw)
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    chunks = client.chat.completions.create(stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


def test_response_format_json_object(client, model_id):
    r = client.chat.completions.create(
        model=model_id, temperature=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as a JSON object with a name and an age."}])
    obj = json.loads(r.choices[0].message.content)
    assert isinstance(obj, dict)


def test_forced_tool_call_round_trip(client, model_id):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model=model_id, messages=msgs, tools=[WEATHER_TOOL], temperature=0,
                                       max_tokens=60,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls"
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments), dict)
    # Streamed, the same call arrives as a tool-call delta.
    chunks = list(client.chat.completions.create(
        model=model_id, messages=msgs, tools=[WEATHER_TOOL], temperature=0, max_tokens=60, stream=True,
        tool_choice="required"))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather" and deltas[0].index == 0
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The round trip: the call and its result go back, the model answers in text.
    msgs += [msg.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "sunny"}'}]
    r2 = client.chat.completions.create(model=model_id, messages=msgs, tools=[WEATHER_TOOL], temperature=0,
                                        max_tokens=40, tool_choice="none")
    assert r2.choices[0].message.content
    assert not r2.choices[0].message.tool_calls


def test_conversation_with_tool_calls_renders(server):
    msgs = [{"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"}]
    prompt = httpx.post(server.url + "/apply-template", json={"messages": msgs, "tools": [WEATHER_TOOL]}).json()["prompt"]
    assert '"name": "get_weather"' in prompt or '"name":"get_weather"' in prompt
    assert "-3 C, snow" in prompt and "<tools>" in prompt


def test_reasoning_off_means_no_open_think(server):
    for kw in [{}, {"reasoning_effort": "none"}, {"chat_template_kwargs": {"enable_thinking": False}}]:
        r = httpx.post(server.url + "/apply-template", json={"messages": CAPITAL, **kw}).json()
        assert r["thinking"] is False
        assert not r["prompt"].rstrip().endswith("<think>")
    r = httpx.post(server.url + "/apply-template", json={"messages": CAPITAL, "reasoning_effort": "high"}).json()
    assert r["thinking"] is True


def test_completions_endpoint(client, model_id):
    r = client.completions.create(model=model_id, prompt="The capital of France is", temperature=0, max_tokens=4)
    assert "Paris" in r.choices[0].text
    assert r.usage.completion_tokens <= 4
    chunks = list(client.completions.create(model=model_id, prompt="The capital of France is", temperature=0,
                                            max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_models_health_metrics(server, client, model_id):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id == model_id
    assert client.models.retrieve(model_id).id == model_id
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200
    text = httpx.get(server.url + "/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ["kiln_prompt_tokens", "kiln_generated_tokens", "kiln_time_to_first_token_seconds",
                 "kiln_queue_depth", "kiln_slots_busy", "kiln_requests", "kiln_context_size",
                 "kiln_decode_tokens_per_second", "kiln_prefill_tokens_per_second", "kiln_ready"]:
        assert name in fams, name
    assert [s.value for s in fams["kiln_ready"].samples] == [1.0]
    kinds = {s.labels["kind"]: s.value for s in fams["kiln_context_size"].samples}
    assert kinds == {"requested": 2048.0, "effective": 2048.0}
    assert any(s.value > 0 for s in fams["kiln_generated_tokens"].samples)
    assert any(s.labels.get("status") == "200" for s in fams["kiln_requests"].samples)


def err(r, status, param=None):
    assert r.status_code == status, (r.status_code, r.text)
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"} and e["message"]
    if param:
        assert e["param"] == param, e
    return e


@pytest.mark.parametrize("body,param", [
    ({"messages": []}, "messages"),
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": CAPITAL, "temperature": -1}, "temperature"),
    ({"messages": CAPITAL, "temperature": 1e30}, "temperature"),
    ({"messages": CAPITAL, "top_p": 7}, "top_p"),
    ({"messages": CAPITAL, "top_k": -2}, "top_k"),
    ({"messages": CAPITAL, "max_tokens": -1}, "max_tokens"),
    ({"messages": CAPITAL, "max_tokens": 10**9}, "max_tokens"),
    ({"messages": CAPITAL, "stop": 3}, "stop"),
    ({"messages": CAPITAL, "n": 2}, "n"),
    ({"messages": CAPITAL, "tool_choice": "required"}, "tool_choice"),
    ({"messages": CAPITAL, "response_format": {"type": "xml"}}, "response_format"),
    ({"messages": CAPITAL, "reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_bad_requests_are_400(server, body, param):
    err(httpx.post(server.url + "/v1/chat/completions", json=body), 400, param)


def test_malformed_bodies(server):
    url = server.url + "/v1/chat/completions"
    e = err(httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert e["type"] == "invalid_request_error"
    err(httpx.post(url, content=b""), 400)
    err(httpx.post(url, content=b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}'), 400)
    err(httpx.post(url, json={"messages": CAPITAL, "temperature": "hot"}), 400)
    err(httpx.post(url, json={"messages": CAPITAL, "stream": "yes"}), 400)
    err(httpx.post(url, json=[1, 2, 3]), 400)
    big = {"messages": [{"role": "user", "content": "x" * 2_000_000}]}
    err(httpx.post(url, json=big), 413)


def test_context_overflow_and_unknown_model(server):
    url = server.url + "/v1/chat/completions"
    long = {"messages": [{"role": "user", "content": "word " * 5000}]}
    e = err(httpx.post(url, json=long), 400)
    assert e["code"] == "context_length_exceeded"
    e = err(httpx.post(url, json={"model": "gpt-17", "messages": CAPITAL}), 404, "model")
    assert e["code"] == "model_not_found"
    err(httpx.get(server.url + "/v1/nope"), 404)
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).chat.completions.create(
            model="gpt-17", messages=CAPITAL)


def test_server_survives_all_of_it(client, model_id):
    r = client.chat.completions.create(model=model_id, messages=CAPITAL, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content


def test_disconnect_frees_the_slot(server, client, model_id):
    body = {"messages": [{"role": "user", "content": "Tell me a very long story."}], "max_tokens": 1500,
            "temperature": 0, "stream": True}
    # Two slots: start two long streams, read a little of each, and hang up.
    for _ in range(2):
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as r:
            for i, _line in enumerate(r.iter_lines()):
                if i > 3:
                    break
    # With both slots freed, a new request is served at once.
    r = client.chat.completions.create(model=model_id, messages=CAPITAL, temperature=0, max_tokens=5,
                                       timeout=20)
    assert r.choices[0].message.content


def test_api_key_and_queue_full():
    s = Server(parallel=1, queue=1, api_key="sekret")
    try:
        url = s.url + "/v1/chat/completions"
        err(httpx.post(url, json={"messages": CAPITAL}), 401)
        err(httpx.post(url, json={"messages": CAPITAL}, headers={"Authorization": "Bearer wrong"}), 401)
        assert httpx.get(s.url + "/health").status_code == 200  # health stays open
        assert httpx.get(s.url + "/v1/models", headers=s.headers()).status_code == 200
        # One slot, one queue place: a third concurrent request is refused with 503 + Retry-After.
        body = {"messages": [{"role": "user", "content": "Count from 1 to 1000, separated by commas."}],
                "max_tokens": 300, "temperature": 0}
        responses = []

        def call():
            responses.append(httpx.post(url, json=body, headers=s.headers(), timeout=120))

        # More concurrent requests than one slot plus one queue place can hold, however fast the engine:
        # every request is answered, each with 200 or with 503 + Retry-After, and some are refused.
        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 503}, codes
        assert codes.count(200) >= 2, codes
        refused = [r for r in responses if r.status_code == 503]
        assert refused, codes
        for r in refused:
            err(r, 503)
            assert int(r.headers["retry-after"]) > 0
    finally:
        assert s.stop() == 0


def test_cors_only_when_asked(server):
    r = httpx.options(server.url + "/v1/models",
                      headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
