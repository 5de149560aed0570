#!/usr/bin/env python3
"""Decode speed as a client sees it: streamed completions through the official openai client against a
running `kiln-agent serve`, one request at a time; prints the median tokens/s over N pairs of requests.
Usage: serve_speed.py URL [N] [MAX_TOKENS]

Each pair is a request for one token and one for MAX_TOKENS, both timed from the request to the stream's
end, on prompts of the same shape but different text (so neither reuses the other's cached prefix). The
difference is the time of the extra tokens, counted by the usage chunk. Timing between the first and the
last content chunk instead is wrong where tokens stream no text of their own (a random-weight model's
tokens often end inside a UTF-8 sequence, and the server streams a chunk only for non-empty text)."""
import statistics
import sys
import time

from openai import OpenAI

url, n, max_tokens = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, int(sys.argv[3]) if len(sys.argv) > 3 else 64
client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0)


def timed(prompt: str, tokens: int) -> tuple[float, int]:
    """Seconds from the request to the end of its stream, and the completion tokens the usage reports."""
    start = time.perf_counter()
    # The raw completions endpoint: no chat template, no reasoning split.
    stream = client.completions.create(
        model="x", prompt=prompt, max_tokens=tokens, temperature=0, stream=True,
        stream_options={"include_usage": True})
    used = 0
    for chunk in stream:
        if chunk.usage:
            used = chunk.usage.completion_tokens
    return time.perf_counter() - start, used


timed("Warm-up: tell me a story.", 8)  # the first request's one-time costs time neither of a pair
speeds = []
for i in range(n):
    short, one = timed(f"Request {i}a: tell me a story.", 1)
    full, tokens = timed(f"Request {i}b: tell me a story.", max_tokens)
    if one == 1 and tokens > 8 and full > short:
        speeds.append((tokens - 1) / (full - short))
    else:
        print(f"request {i}: {tokens} tokens in {full:.3f} s, 1 token in {short:.3f} s (cannot time)")
if not speeds:
    sys.exit("no request produced enough tokens to time")
print(f"serve decode (client side): median {statistics.median(speeds):.1f} tok/s over {len(speeds)} pairs "
      f"of requests for {max_tokens} tokens: {[round(s, 1) for s in speeds]}")
