// Sampling on the device: each row's argmax, and each row's k largest values, so a step reads back a token
// id (greedy) or k candidates instead of the whole vocabulary's logits (about 1 MB a row for 248K tokens).
// Order: larger value first, the lower index among equal values (llama.cpp's greedy tie rule); a NaN never
// comes before a number. The CPU references are `argmax` and `top_k` in kernels/src/backend.rs.
#include "compat.h"

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / WARP_SIZE)
#define NO_INDEX 0xFFFFFFFFu

__device__ __forceinline__ bool before(float v, u32 i, float bv, u32 bi) {
    return v > bv || (v == bv && i < bi) || (bv != bv && v == v) || (bi == NO_INDEX && v == v);
}

// One block per row: every thread keeps its best (value, index), then the warps and the block reduce.
// A row of NaNs gives index 0, as the CPU reference does.
KILN_KERNEL void argmax_rows(const float* x, u32 n, u32* out) {
    grid_dependency_entry();
    __shared__ float sv[SAMPLE_WARPS];
    __shared__ u32 si[SAMPLE_WARPS];
    const float* row = x + (u64)blockIdx.x * n;
    float bv = 0.0f;
    u32 bi = NO_INDEX;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = row[i];
        if (before(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) {
        const float ov = shfl_xor(bv, m);
        const u32 oi = (u32)shfl_xor_int((int)bi, m);
        if (oi != NO_INDEX && before(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < blockDim.x / WARP_SIZE; w++) {
            if (si[w] != NO_INDEX && before(sv[w], si[w], bv, bi)) {
                bv = sv[w];
                bi = si[w];
            }
        }
        out[blockIdx.x] = bi == NO_INDEX ? 0 : bi;
    }
}

// An unsigned key in the order above: larger floats give larger keys, -0 and +0 the same one (they are
// equal values); NaN gives 0 (last).
__device__ __forceinline__ u32 order_key(float v) {
    if (v != v) return 0;
    const u32 b = v == 0.0f ? 0u : __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
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
