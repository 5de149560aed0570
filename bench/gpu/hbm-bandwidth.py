"""The GPU's measured memory read bandwidth, the yardstick of issue 4's "≥ 85% of HBM bandwidth" target.

Reads a 4 GiB buffer with a reduction (read-only traffic, what a decode step's weight stream is) and
copies one (read + write), timing each with CUDA events; prints the median of 20 runs of each in GB/s
(10^9 bytes/s). Run on the GPU machine: `python3 bench/gpu/hbm-bandwidth.py`.

Then the same reduction over buffers of the sizes a decode step's products read one kernel at a time
(the 27B's 5,120 × 6,144 Q4_K output projection, 17.7 MB; its Q4_K FFN down, 50.1 MB; gate+up, 100.3
MB) and 400 MB, each call on another buffer so nothing comes from L2: what one kernel of that size
reaches when it starts from an idle bus and ends with a tail.
"""

import statistics

import torch


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out)


def main():
    n = 4 << 30  # bytes
    x = torch.ones(n // 4, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    read = timed(lambda: x.sum())
    copy = timed(lambda: y.copy_(x))
    print(torch.cuda.get_device_name(0))
    print(f"read (sum of 4 GiB): {n / read / 1e9:.0f} GB/s")
    print(f"copy (4 GiB read + 4 GiB written): {2 * n / copy / 1e9:.0f} GB/s")
    del x, y
    for mb in (17.7, 50.1, 100.3, 400.0):
        size = int(mb * 1e6) // 4 * 4
        copies = max(2, min(32, int(800 / mb)))  # 800 MB in all: far more than L2
        xs = [torch.ones(size // 4, dtype=torch.float32, device="cuda") for _ in range(copies)]
        # Captured in a CUDA graph, so the calls follow each other on the GPU without waiting for Python
        # (a 17.7 MB reduction is shorter than launching it from here).
        [x.sum() for x in xs]  # warm-up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            sums = [x.sum() for x in xs]
        per_call = timed(graph.replay, reps=5) / copies
        print(f"read, one kernel per {mb:.1f} MB buffer: {size / per_call / 1e9:.0f} GB/s "
              f"({per_call * 1e6:.1f} us a call)")
        del xs, sums, graph


if __name__ == "__main__":
    main()
