#!/usr/bin/env python3
"""A second process takes GPU memory until less than the agent's headroom is free, then frees it, while
requests keep going; prints what /status shows."""
import json, sys, threading, time, urllib.request
import torch

headroom = int(sys.argv[1])
url = "http://127.0.0.1:8089"
def status():
    return json.load(urllib.request.urlopen(url + "/status"))
ok, err, stop = [0], [], threading.Event()
def load():
    body = json.dumps({"model": "x", "prompt": "hello", "max_tokens": 8}).encode()
    while not stop.is_set():
        try:
            r = urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"}))
            json.load(r); ok[0] += 1
        except Exception as e:
            err.append(repr(e))
t = threading.Thread(target=load); t.start()
free, total = torch.cuda.mem_get_info()
take = free - headroom // 2
print(f"free {free/1e9:.2f} GB of {total/1e9:.2f}; taking {take/1e9:.2f} GB", flush=True)
t0 = time.time()
hog = torch.empty(take, dtype=torch.uint8, device="cuda")
while time.time() - t0 < 10 and status()["context"]["downsizes_total"] == 0:
    time.sleep(0.1)
s = status(); print(f"after {time.time()-t0:.2f}s under pressure:", json.dumps(s["context"]), s["phase"], flush=True)
time.sleep(1.5)
s = status(); print("still under pressure:", json.dumps(s["context"]), flush=True)
del hog; torch.cuda.empty_cache(); t1 = time.time()
while time.time() - t1 < 15 and status()["context"]["effective"] != s["context"]["requested"]:
    time.sleep(0.1)
s = status(); print(f"after {time.time()-t1:.2f}s freed:", json.dumps(s["context"]), s["phase"], flush=True)
stop.set(); t.join()
print(f"requests answered: {ok[0]}, errors: {len(err)}", err[:3], flush=True)
