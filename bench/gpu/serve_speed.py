#!/usr/bin/env python3
"""Decode speed as a client sees it: one streamed chat completion at a time through the official openai
client against a running `kiln-agent serve`; prints the median tokens/s between the first and the last
content chunk over N requests. Usage: serve_speed.py URL [N] [MAX_TOKENS]"""
import statistics
import sys
import time

from openai import OpenAI

url, n, max_tokens = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3, int(sys.argv[3]) if len(sys.argv) > 3 else 64
client = OpenAI(base_url=url + "/v1", api_key="unused", timeout=600, max_retries=0)
speeds = []
for i in range(n):
    first = last = None
    tokens = 0
    # The raw completions endpoint: no chat template, no reasoning split (a random-weight model's tokens
    # may open a thinking block, which the chat endpoint would not show as content).
    stream = client.completions.create(
        model="x", prompt=f"Request {i}: tell me a story.", max_tokens=max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        # Every chunk with a choice is a generated token's worth of output (random-weight models' text may
        # be empty while a UTF-8 sequence is incomplete), so the time between the first and the last one
        # is the decode time.
        if chunk.choices:
            last = time.perf_counter()
            first = first or last
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    if first and last > first and tokens > 8:
        speeds.append((tokens - 1) / (last - first))
    else:
        print(f"request {i}: {tokens} tokens (too few to time)")
if not speeds:
    sys.exit("no request produced enough tokens to time")
print(f"serve decode (client side): median {statistics.median(speeds):.1f} tok/s over {len(speeds)} requests "
      f"of {max_tokens} tokens: {[round(s, 1) for s in speeds]}")
