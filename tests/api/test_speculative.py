"""MTP speculative decoding in `kiln-agent serve` (`--spec mtp --spec-draft-n-max N`), through the official
openai client, on the tiny qwen35 model with an MTP head (tests/models/). Greedy answers must be token-for-token
the ones plain decoding gives — streamed or not, cut by max_tokens or a stop string, at the end of the context,
and under a JSON constraint — while /metrics counts drafted and accepted tokens. A model without an MTP head
is refused at start with a message that says why.
"""

import httpx
import pytest
from openai import OpenAI

from conftest import MODEL, ROOT, Server

QWEN35 = ROOT / "tests" / "models" / "qwen35-tiny-q8_0.gguf"
PROMPTS = [
    "Hello there, how are you?",
    "Write a function that adds two numbers.",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    "Tell me a long story about a dragon and a castle by the sea.",
]


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def servers():
    plain = Server(model=QWEN35, ctx=256, extra_args=["--alias", "x"])
    spec = Server(model=QWEN35, ctx=256, extra_args=["--alias", "x", "--spec", "mtp", "--spec-draft-n-max", "3"])
    yield plain, spec
    assert plain.stop() == 0
    assert spec.stop() == 0


def client(server) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def answer(server, prompt: str, stream: bool = False, **kw):
    c = client(server)
    msgs = [{"role": "user", "content": prompt}]
    if not stream:
        r = c.chat.completions.create(model="x", messages=msgs, temperature=0, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
    text, finish = "", None
    for chunk in c.chat.completions.create(model="x", messages=msgs, temperature=0, stream=True, **kw):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish, None


def test_greedy_answers_match_plain_decoding(servers):
    plain, spec = servers
    drafted0 = metric(spec, "kiln_spec_drafted_tokens_total")
    for prompt in PROMPTS:
        for max_tokens in (1, 2, 7, 40):
            want = answer(plain, prompt, max_tokens=max_tokens)
            got = answer(spec, prompt, max_tokens=max_tokens)
            assert got == want, f"{prompt!r} max_tokens={max_tokens}"
        want = answer(plain, prompt, stream=True, max_tokens=30)
        assert answer(spec, prompt, stream=True, max_tokens=30) == want
    drafted = metric(spec, "kiln_spec_drafted_tokens_total") - drafted0
    accepted = metric(spec, "kiln_spec_accepted_tokens_total")
    assert drafted > 0, "the MTP head drafted nothing"
    assert 0 <= accepted <= metric(spec, "kiln_spec_drafted_tokens_total")
    # Plain decoding never drafts.
    assert metric(plain, "kiln_spec_drafted_tokens_total") == 0


def test_stop_strings_cut_speculative_rounds_like_plain_ones(servers):
    plain, spec = servers
    for prompt in PROMPTS:
        full, _, _ = answer(plain, prompt, max_tokens=40)
        # A stop string from the middle of the plain answer (which may fall inside a verify round).
        words = [w for w in full.split() if len(w) > 2]
        if not words:
            continue
        stop = words[len(words) // 2]
        want = answer(plain, prompt, max_tokens=40, stop=[stop])
        assert want[1] == "stop"
        assert answer(spec, prompt, max_tokens=40, stop=[stop]) == want


def test_context_end_is_the_same(servers):
    plain, spec = servers
    c = client(plain)
    # Prompts that leave a few positions of the 256-token context, until one whose plain answer runs to the
    # context's last position (not to an end-of-generation token): drafting must stop at the edge.
    for word in ["count", "dragon", "sea", "castle", "one two", "x"]:
        n = 1
        while True:
            prompt = (word + " ") * n
            r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": prompt}], max_tokens=1)
            if r.usage.prompt_tokens > 236:
                break
            n += 1
        room = 256 - r.usage.prompt_tokens  # the most the server allows
        want = answer(plain, prompt, max_tokens=room)
        assert answer(spec, prompt, max_tokens=room) == want
        if want[1] == "length":
            assert want[2] == room
            return
    pytest.fail("no prompt ran to the end of the context")


def test_json_constrained_requests_still_work(servers):
    plain, spec = servers
    kw = dict(max_tokens=40, response_format={"type": "json_object"})
    assert answer(spec, "Give me JSON.", **kw) == answer(plain, "Give me JSON.", **kw)


def test_one_slot_answers_after_the_warm_up(servers):
    # With one slot, the first request lands on the slot the start-up warm-up ran on; the MTP head's mirror
    # must have been reset with it.
    plain, _ = servers
    one = Server(model=QWEN35, ctx=256, parallel=1,
                 extra_args=["--alias", "x", "--spec", "mtp", "--spec-draft-n-max", "3"])
    try:
        for prompt in PROMPTS[:2]:
            assert answer(one, prompt, max_tokens=20) == answer(plain, prompt, max_tokens=20)
    finally:
        assert one.stop() == 0


def test_a_model_without_an_mtp_head_is_refused():
    with pytest.raises(RuntimeError) as e:
        Server(model=MODEL, extra_args=["--spec", "mtp"])
    assert "no MTP" in str(e.value)
