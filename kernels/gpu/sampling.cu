// Sampling on the device: each row's argmax, and each row's k largest values, so a step reads back a token
// id (greedy) or k candidates instead of the whole vocabulary's logits (about 1 MB a row for 248K tokens).
// Order: larger value first, the lower index among equal values (llama.cpp's greedy tie rule); a NaN never
// comes before a number. The CPU references are `argmax` and `top_k` in kernels/src/backend.rs.
#include "compat.h"

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / WARP_SIZE)

// An unsigned key in the order above: larger floats give larger keys, -0 and +0 the same one (they are
// equal values); NaN gives 0 (last).
__device__ __forceinline__ u32 order_key(float v) {
    if (v != v) return 0;
    const u32 b = v == 0.0f ? 0u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// A value and its index as one 64-bit key whose unsigned order is the order above: order_key on top, the
// index complemented below (of equal values the lower index wins). A row of NaNs gives index 0.
__device__ __forceinline__ u64 argmax_key(float v, u32 i) { return ((u64)order_key(v) << 32) | (u64)(~i); }

__device__ __forceinline__ u64 max_u64(u64 a, u64 b) { return a > b ? a : b; }

// The largest of the block's keys, in every thread (a warp's by shuffles, then the warps' through shared
// memory).
__device__ __forceinline__ u64 block_max_key(u64 best) {
    __shared__ u64 part[SAMPLE_WARPS];
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
        const u32 lo = (u32)shfl_xor_int((int)(u32)best, m), hi = (u32)shfl_xor_int((int)(u32)(best >> 32), m);
        best = max_u64(best, ((u64)hi << 32) | lo);
    }
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    if (lane == 0) part[warp] = best;
    __syncthreads();
    for (u32 w = 0; w < blockDim.x / WARP_SIZE; w++) best = max_u64(best, part[w]);
    return best;
}

// A row's argmax in two launches, so a 248K-value row of logits is read by many SMs rather than one
// block (which took ~110 µs, each warp waiting out one load at a time): argmax_split's blocks each take
// `chunk` values of a row (grid: splits × rows), four loads in flight a thread, and leave their best key;
// argmax_rows takes the best of a row's `splits` keys. Keys compare by value then index, so the result
// does not depend on how the row was split.
#define ARGMAX_UNROLL 4
KILN_KERNEL void argmax_split(const float* x, u32 n, u32 chunk, u64* part) {
    grid_dependency_entry();
    const float* row = x + (u64)blockIdx.y * n;
    const u32 lo = blockIdx.x * chunk, hi = min(n, lo + chunk);
    u64 best = 0;
    for (u32 i = lo + threadIdx.x; i < hi; i += ARGMAX_UNROLL * blockDim.x) {
        float v[ARGMAX_UNROLL];
#pragma unroll
        for (int j = 0; j < ARGMAX_UNROLL; j++) {
            const u32 at = i + j * blockDim.x;
            v[j] = at < hi ? row[at] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < ARGMAX_UNROLL; j++) {
            const u32 at = i + j * blockDim.x;
            if (at < hi) best = max_u64(best, argmax_key(v[j], at));
        }
    }
    best = block_max_key(best);
    if (threadIdx.x == 0) part[(u64)blockIdx.y * gridDim.x + blockIdx.x] = best;
}

KILN_KERNEL void argmax_rows(const u64* part, u32 splits, u32* out) {
    grid_dependency_entry();
    u64 best = 0;
    for (u32 s = threadIdx.x; s < splits; s += blockDim.x) best = max_u64(best, part[(u64)blockIdx.x * splits + s]);
    best = block_max_key(best);
    if (threadIdx.x == 0) out[blockIdx.x] = ~(u32)best;
}

// One block per row, k ≤ n: a radix select finds the key of the k-th largest value in four passes of 8
// bits (a shared histogram of the keys that match the digits chosen so far); then every value above it
// and, of the values equal to it, the ones with the lowest indices fill the row's k slots (unordered: the
// host sorts k pairs). Each thread takes a contiguous run of the row, so the equal values' ranks follow
// the index order through a prefix sum of the threads' counts.
KILN_KERNEL void top_k_rows(const float* x, u32 n, u32 k, u32* out_idx, float* out_val) {
    grid_dependency_entry();
    __shared__ u32 hist[256];
    __shared__ u32 s_prefix, s_need;
    __shared__ u32 gt_at[SAMPLE_THREADS + 1], eq_at[SAMPLE_THREADS + 1];
    const float* row = x + (u64)blockIdx.x * n;
    u32* oi = out_idx + (u64)blockIdx.x * k;
    float* ov = out_val + (u64)blockIdx.x * k;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_need = k;
    }
    u32 mask = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (u32 d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
        __syncthreads();
        const u32 prefix = s_prefix;
        for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
            const u32 key = order_key(row[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            u32 need = s_need, d = 255;
            for (;; d--) {
                if (hist[d] >= need || d == 0) break;
                need -= hist[d];
            }
            s_need = need;
            s_prefix = prefix | (d << shift);
        }
        mask |= 255u << shift;
        __syncthreads();
    }
    const u32 kth = s_prefix, need = s_need;  // take every key > kth and `need` keys == kth
    const u32 per = (n + blockDim.x - 1) / blockDim.x, lo = threadIdx.x * per, hi = min(n, lo + per);
    u32 gt = 0, eq = 0;
    for (u32 i = lo; i < hi; i++) {
        const u32 key = order_key(row[i]);
        gt += key > kth;
        eq += key == kth;
    }
    gt_at[threadIdx.x + 1] = gt;
    eq_at[threadIdx.x + 1] = eq;
    __syncthreads();
    if (threadIdx.x == 0) {
        gt_at[0] = 0;
        eq_at[0] = 0;
        for (u32 t = 1; t <= blockDim.x; t++) {
            gt_at[t] += gt_at[t - 1];
            eq_at[t] += eq_at[t - 1];
        }
    }
    __syncthreads();
    u32 g = gt_at[threadIdx.x], e = eq_at[threadIdx.x];
    const u32 n_gt = k - need;
    for (u32 i = lo; i < hi; i++) {
        const float v = row[i];
        const u32 key = order_key(v);
        if (key > kth) {
            oi[g] = i;
            ov[g] = v;
            g++;
        } else if (key == kth) {
            if (e < need) {
                oi[n_gt + e] = i;
                ov[n_gt + e] = v;
            }
            e++;
        }
    }
}
