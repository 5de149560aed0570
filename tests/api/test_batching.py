"""Continuous batching in `kiln-agent serve`: the decoding slots' next tokens go through one forward pass
per step. Concurrent greedy requests, batched that way, must give the same text as the same requests sent
one at a time, through the official `openai` client; /metrics must show that batches of several rows ran."""

import threading

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server

# Different prompts, so the slots sit at different positions and prompt lengths.
PROMPTS = [
    "Write two sentences about the sea.",
    "List three fruits.",
    "Explain what a CPU cache is in two sentences, for a child who has never seen a computer.",
    "Why is the sky blue?",
]


def batch_rows(url):
    """(passes with more than one row, all passes) from the kiln_decode_batch_rows histogram."""
    fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    samples = fams["kiln_decode_batch_rows"].samples
    count = next(s.value for s in samples if s.name.endswith("_count"))
    single = next(s.value for s in samples if s.name.endswith("_bucket") and float(s.labels["le"]) == 1.0)
    return count - single, count


def test_concurrent_greedy_requests_match_sequential_ones():
    s = Server(parallel=4, queue=8)
    try:
        client = OpenAI(base_url=s.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        model = client.models.list().data[0].id

        def ask(prompt, stream):
            kw = dict(model=model, messages=[{"role": "user", "content": prompt}], temperature=0,
                      max_tokens=32)
            if not stream:
                r = client.chat.completions.create(**kw)
                return r.choices[0].message.content, r.choices[0].finish_reason
            chunks = list(client.chat.completions.create(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
            return text, finish[-1]

        alone = [ask(p, stream=False) for p in PROMPTS]
        multi_before, _ = batch_rows(s.url)
        assert multi_before == 0, "one request at a time ran batches of several rows"

        together = [None] * len(PROMPTS)

        def worker(i):
            together[i] = ask(PROMPTS[i], stream=i % 2 == 1)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for prompt, a, b in zip(PROMPTS, alone, together):
            assert b == a, f"{prompt!r}: alone {a!r}, concurrently {b!r}"
        assert all(text for text, _ in alone)
        multi, total = batch_rows(s.url)
        assert multi > 0, f"no decode pass had more than one row ({total} passes)"
    finally:
        assert s.stop() == 0
