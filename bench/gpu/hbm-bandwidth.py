"""The GPU's measured memory read bandwidth, the yardstick of issue 4's "≥ 85% of HBM bandwidth" target.

Reads a 4 GiB buffer with a reduction (read-only traffic, what a decode step's weight stream is) and
copies one (read + write), timing each with CUDA events; prints the median of 20 runs of each in GB/s
(10^9 bytes/s). Run on the GPU machine: `python3 bench/gpu/hbm-bandwidth.py`.
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


if __name__ == "__main__":
    main()
