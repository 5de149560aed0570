"""Automatic context downsizing, end to end on the CPU backend: a real `kiln-agent serve` with a real model
watches a fake device whose memory the test controls (`--memory-source fake:FILE`: `USED TOTAL` bytes, where
USED is what other processes take; the agent's own planned bytes are added to it like on a real GPU).

The whole cycle runs while the official openai client keeps sending requests from several threads: another
process takes memory → the server shrinks its context (drains, reallocates, resumes) → the memory is freed →
after the hysteresis delay it grows back. No request may fail or get lost along the way. A second server with
a short drain time shows the Downsizing phase, a request sent during the drain waiting in the queue and then
answered, and a request still running at the deadline ended cleanly with a retryable error. `promtool check
metrics` must accept /metrics with the GPU series in it.
"""

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from conftest import ROOT, Server

TOTAL = 100 * 10**9
HEADROOM = 512 << 20


def write_mem(path: Path, others: int, total: int = TOTAL):
    # Atomically, so the server never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"# used-by-others total\n{others} {total}\n")
    tmp.replace(path)


def status(server) -> dict:
    r = httpx.get(server.url + "/status", timeout=5)
    assert r.status_code == 200
    return r.json()


def wait_for(server, pred, what, timeout=30.0):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        s = status(server)
        seen.append(s.get("phase"))
        if pred(s):
            return s, seen
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}; last status {s}")


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head == name or (head.startswith(name + "{") and all(f'{k}="{v}"' in head for k, v in labels.items())):
            return float(value)
    raise AssertionError(f"{name} {labels} not in /metrics")


class Load:
    """Threads sending chat requests back to back (some streamed) until stopped; records every outcome."""

    def __init__(self, url: str, workers: int):
        self.client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=120, max_retries=0)
        self.stop = threading.Event()
        self.ok = []  # (finish time, stream?)
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(workers)]
        for t in self.threads:
            t.start()

    def run(self, i: int):
        n = 0
        while not self.stop.is_set():
            n += 1
            stream = (i + n) % 3 == 0
            try:
                msgs = [{"role": "user", "content": f"Worker {i}, request {n}: name a colour."}]
                if stream:
                    text = ""
                    for chunk in self.client.chat.completions.create(
                        model="x", messages=msgs, max_tokens=12, temperature=0, stream=True
                    ):
                        if chunk.choices and chunk.choices[0].delta.content:
                            text += chunk.choices[0].delta.content
                else:
                    r = self.client.chat.completions.create(model="x", messages=msgs, max_tokens=12, temperature=0)
                    text = r.choices[0].message.content
                assert text, "an empty answer"
                self.ok.append((time.time(), stream))
            except Exception as e:  # noqa: BLE001 - every failure is a test failure, reported below
                self.errors.append(f"worker {i} request {n}: {e!r}")

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def answered_between(self, t0: float, t1: float) -> int:
        return sum(1 for t, _ in self.ok if t0 <= t <= t1)

    def wait_answers(self, since: float, n: int = 2, timeout: float = 90.0):
        """Waits until `n` requests finished after `since` (the machine may be slow and shared)."""
        deadline = time.time() + timeout
        while self.answered_between(since, time.time()) < n:
            assert not self.errors, self.errors
            assert time.time() < deadline, f"fewer than {n} answers in {timeout} s"
            time.sleep(0.05)


@pytest.fixture
def mem_file(tmp_path):
    f = tmp_path / "device-memory"
    write_mem(f, 0)
    return f


def start(mem_file: Path, *extra: str, parallel=2, queue=16) -> Server:
    # The alias makes the openai client's model name "x" valid.
    return Server(parallel=parallel, queue=queue, extra_args=[
        "--memory-source", f"fake:{mem_file}", "--memory-poll-ms", "100", "--vram-headroom", str(HEADROOM),
        "--ctx-min", "512", "--alias", "x", *extra,
    ])


def test_downsize_and_grow_back_under_load(mem_file):
    server = start(mem_file, "--grow-after-s", "1", "--downsize-drain-s", "30")
    load = None
    try:
        s = status(server)
        assert s["phase"] == "Ready"
        assert s["context"] == {"requested": 2048, "effective": 2048, "downsizes_total": 0}
        resident = s["memory"]["resident_bytes"]
        assert resident > 0
        gpu = s["gpus"][0]
        assert gpu["vendor"] == "fake" and gpu["vram_total_bytes"] == TOTAL
        assert gpu["vram_used_bytes"] == resident, "the fake device shows the agent's own bytes"

        load = Load(server.url, workers=4)  # 4 workers on 2 slots: there is always a queue
        load.wait_answers(0)
        t_pressure = time.time()
        # Another process takes all but (headroom - 1 byte): the current context no longer fits.
        write_mem(mem_file, TOTAL - resident - HEADROOM + 1)
        s, phases = wait_for(server, lambda s: s["context"]["effective"] < 2048, "the downsize")
        assert s["context"]["effective"] == 1536, "one rung down is enough to free one byte"
        assert s["context"]["downsizes_total"] == 1
        assert s["memory"]["resident_bytes"] < resident
        t_small = time.time()

        # Pressure stays: no further downsize, and no grow (it would not fit with room to spare).
        load.wait_answers(t_small)
        time.sleep(max(0.0, 2.0 - (time.time() - t_small)))
        s = status(server)
        assert s["context"]["effective"] == 1536 and s["context"]["downsizes_total"] == 1
        m = httpx.get(server.url + "/metrics").text
        assert metric(m, "kiln_context_downsizes_total") == 1
        assert metric(m, "kiln_context_size", kind="effective") == 1536
        assert metric(m, "kiln_context_size", kind="requested") == 2048
        assert metric(m, "kiln_gpu_vram_total_bytes", vendor="fake", gpu="0") == TOTAL

        # The other process exits: after the hysteresis delay the context grows back.
        t_release = time.time()
        write_mem(mem_file, 0)
        s, _ = wait_for(server, lambda s: s["context"]["effective"] == 2048, "the grow-back")
        grow_took = time.time() - t_release
        assert grow_took >= 1.0, f"grew back after {grow_took:.2f}s, before the 1 s hysteresis"
        assert s["context"]["downsizes_total"] == 1
        assert s["phase"] == "Ready"
        assert s["memory"]["resident_bytes"] == resident
        t_big = time.time()
        load.wait_answers(t_big)
        load.finish()

        assert not load.errors, load.errors
        assert load.answered_between(0, t_pressure) > 0
        assert load.answered_between(t_small, t_release) > 0, "requests are answered at the smaller context"
        assert load.answered_between(t_big, time.time()) > 0, "and after growing back"
        assert any(stream for _, stream in load.ok) and any(not stream for _, stream in load.ok)
        log = (Path(server.log.name)).read_text()
        assert "reducing the context from 2048 to 1536" in log
        assert "growing the context from 1536 to 2048" in log
    finally:
        if load:
            load.finish()
        assert server.stop() == 0


def test_drain_queues_new_requests_and_ends_the_rest_cleanly(mem_file):
    server = start(mem_file, "--downsize-drain-s", "3", "--grow-after-s", "3600", parallel=1)
    try:
        resident = status(server)["memory"]["resident_bytes"]
        # Greedy counting goes on far longer than the test waits: the request is surely still running.
        body = {"model": "x", "prompt": "Count: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "max_tokens": 1500,
                "temperature": 0, "stream": True}
        c = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        queued = {}

        def late_request():
            r = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
            queued["finish"] = r.choices[0].finish_reason
            queued["at"] = time.time()

        events, late = [], None
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(line[6:])
                if len(events) == 3:
                    write_mem(mem_file, TOTAL - resident - HEADROOM + 1)
                    s, _ = wait_for(server, lambda s: s["phase"] == "Downsizing", "the Downsizing phase", 10)
                    assert "reducing the context from 2048 to 1536" in s["message"]
                    # Admission is stopped: a request sent now waits in the queue instead of failing.
                    late = threading.Thread(target=late_request)
                    late.start()
        t_end = time.time()
        # The drain time is up: the request still running ends with a clear, retryable error.
        assert events[-1] != "[DONE]"
        assert '"context_resizing"' in events[-1] and "Retry" in events[-1], events[-1]
        late.join(timeout=120)
        assert queued.get("finish") in ("stop", "length"), "the queued request was answered, not lost"
        assert queued["at"] >= t_end - 0.5
        s = status(server)
        assert s["phase"] == "Ready" and s["context"]["effective"] == 1536
        # A prompt that no longer fits the smaller context is refused clearly.
        too_long = httpx.post(server.url + "/v1/completions", timeout=60,
                              json={"model": "x", "prompt": list(range(100, 1700)), "max_tokens": 1})
        assert too_long.status_code == 400 and "1536" in too_long.text
    finally:
        assert server.stop() == 0


def promtool() -> str:
    path = os.environ.get("KILN_PROMTOOL")
    if not path:
        bindir = subprocess.run([str(ROOT / "scripts" / "prometheus.sh")], check=True, capture_output=True,
                                text=True).stdout.strip()
        path = str(Path(bindir) / "promtool")
    return path


def test_promtool_accepts_metrics(mem_file):
    server = start(mem_file)
    try:
        c = OpenAI(base_url=server.url + "/v1", api_key="unused", timeout=120, max_retries=0)
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        wait_for(server, lambda s: s["gpus"] and s["gpus"][0]["vram_used_bytes"] > 0, "a memory sample")
        text = httpx.get(server.url + "/metrics").text
        for name in ["kiln_gpu_vram_total_bytes", "kiln_gpu_vram_used_bytes", "kiln_context_downsizes_total",
                     'kiln_context_size{kind="requested"}', 'kiln_context_size{kind="effective"}']:
            assert name in text, name
        r = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    finally:
        assert server.stop() == 0
