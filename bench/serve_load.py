#!/usr/bin/env python3
"""Load on `kiln-agent serve`: N concurrent streaming chat clients for D seconds on loopback.

Starts the server itself (so it can read its RSS), then reports errors, request and token throughput,
time-to-first-token p50/p99, and the server's RSS before and after. Not a timed test.

  python3 bench/serve_load.py [--clients 32] [--duration 120] [--parallel 4] [--max-tokens 64]
                              [--model FILE] [--bin target/release/kiln-agent]
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a CPU cache is in two sentences.",
    "List three fruits.",
    "Why is the sky blue?",
    "Give me a short tip for learning Rust.",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def client_loop(i, url, stop_at, max_tokens, stats):
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as http:
        n = 0
        while time.monotonic() < stop_at:
            body = {
                "messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                "max_tokens": max_tokens, "temperature": 0.7, "seed": i * 1000 + n, "stream": True,
                "stream_options": {"include_usage": True},
            }
            n += 1
            t0 = time.monotonic()
            ttft = None
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        stats["errors"][str(r.status_code)] = stats["errors"].get(str(r.status_code), 0) + 1
                        await asyncio.sleep(0.5)
                        continue
                    async for line in r.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            stats["errors"]["stream"] = stats["errors"].get("stream", 0) + 1
                            break
                        if ttft is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                            ttft = time.monotonic() - t0
                        if chunk.get("usage"):
                            stats["tokens"] += chunk["usage"]["completion_tokens"]
                stats["done"] += 1
                stats["latency"].append(time.monotonic() - t0)
                if ttft is not None:
                    stats["ttft"].append(ttft)
            except httpx.HTTPError as e:
                stats["errors"][type(e).__name__] = stats["errors"].get(type(e).__name__, 0) + 1


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=120)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model", default=str(CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "kiln-agent"))
    a = ap.parse_args()
    a.clients = max(1, min(a.clients, 512))
    a.duration = max(1.0, min(a.duration, 1800.0))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([a.bin, "serve", "--model", a.model, "--port", str(port), "--parallel",
                             str(a.parallel), "--queue", str(max(a.clients, 1)), "--ctx", "2048"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            sys.exit("server did not become ready")
        rss0 = rss_mib(proc.pid)
        stats = {"done": 0, "tokens": 0, "ttft": [], "latency": [], "errors": {}}
        t0 = time.monotonic()
        stop_at = t0 + a.duration
        await asyncio.gather(*(client_loop(i, url, stop_at, a.max_tokens, stats) for i in range(a.clients)))
        wall = time.monotonic() - t0
        rss1 = rss_mib(proc.pid)
        print(f"clients={a.clients} duration={a.duration:.0f}s parallel={a.parallel} max_tokens={a.max_tokens}")
        print(f"requests ok: {stats['done']}  errors: {sum(stats['errors'].values())} {stats['errors'] or ''}")
        print(f"throughput: {stats['done'] / wall:.2f} req/s, {stats['tokens'] / wall:.1f} generated tok/s "
              f"(wall {wall:.1f}s, includes the drain after the deadline)")
        print(f"TTFT p50 {pct(stats['ttft'], 50):.3f}s  p99 {pct(stats['ttft'], 99):.3f}s; "
              f"latency p50 {pct(stats['latency'], 50):.2f}s  p99 {pct(stats['latency'], 99):.2f}s")
        print(f"server RSS: {rss0:.1f} MiB before, {rss1:.1f} MiB after")
        # Every client has finished: a slot still busy or a job still queued a few seconds later would be a
        # leak (the engine updates the gauges on its next loop, up to ~50 ms after the last answer).
        for _ in range(50):
            gauges = {line.split()[0]: float(line.split()[1]) for line in httpx.get(url + "/metrics", timeout=10)
                      .text.splitlines() if line.startswith(("kiln_slots_busy ", "kiln_queue_depth "))}
            if not any(gauges.values()):
                break
            time.sleep(0.1)
        print(f"after the load: busy slots {gauges.get('kiln_slots_busy')}, queued {gauges.get('kiln_queue_depth')}")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        print(f"server exit code after SIGTERM: {rc}")


if __name__ == "__main__":
    asyncio.run(main())
