// Causal attention over a KV cache stored in f32, f16, q8_0 or q4_0 (rows of n_kv_heads × head_dim).
//
// Split-K ("flash decoding"): block (kv head, split, query row) walks its slice of key positions with an
// online softmax for all the query heads that share the kv head (GQA: K and V are read once per group),
// four warps taking every fourth key; a second kernel merges the splits. Long contexts get many splits, so
// a single decode token still spreads over the whole GPU.
#include "compat.h"
#include "quant.h"

#define ATT_WARPS 4
#define ATT_GMAX 8

// The `EPL` consecutive values of a head that lane `lane` owns, from a cached row (a lane's values never
// straddle a 32-value block since EPL divides 32).
template <int KT, int EPL>
__device__ __forceinline__ void load_lane(const u8* head, u32 lane, u32 d, float* out) {
    const u32 first = lane * EPL;
    if (first >= d) {  // heads narrower than a warp leave the upper lanes idle
#pragma unroll
        for (int e = 0; e < EPL; e++) out[e] = 0.0f;
    } else if (KT == T_F32) {
#pragma unroll
        for (int e = 0; e < EPL; e++) out[e] = ((const float*)head)[first + e];
    } else if (KT == T_F16) {
#pragma unroll
        for (int e = 0; e < EPL; e++) out[e] = h2f(((const u16*)head)[first + e]);
    } else if (KT == T_Q8_0) {
        const u8* b = head + (first / 32) * 34;
        const float d = h2f(*(const u16*)b);
#pragma unroll
        for (int e = 0; e < EPL; e++) out[e] = d * (float)(i8)b[2 + first % 32 + e];
    } else {  // T_Q4_0
        const u8* b = head + (first / 32) * 18;
        const float d = h2f(*(const u16*)b);
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            const u32 j = first % 32 + e;
            const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
            out[e] = d * (float)(q - 8);
        }
    }
}

__device__ __forceinline__ u32 head_bytes(int kt, u32 values) {
    switch (kt) {
        case T_F32: return values * 4;
        case T_F16: return values * 2;
        case T_Q8_0: return values / 32 * 34;
        default: return values / 32 * 18;
    }
}

// part_acc: [rows][n_heads][n_splits][D] unnormalised sums; part_ml: [rows][n_heads][n_splits][2] (max, sum).
template <int KT, int D>
__device__ __forceinline__ void attn_split(const float* q, const u8* kc, const u8* vc, u32 row_bytes,
                                           u32 n_heads, u32 n_kv_heads, u32 start, u32 window, float scale,
                                           float softcap, u32 chunk, float* part_acc, float* part_ml) {
    constexpr int EPL = D >= WARP_SIZE ? D / WARP_SIZE : 1;
    __shared__ float sh_acc[ATT_WARPS][ATT_GMAX][D];
    __shared__ float sh_ml[ATT_WARPS][ATT_GMAX][2];
    const u32 kvh = blockIdx.x, split = blockIdx.y, r = blockIdx.z, n_splits = gridDim.y;
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const u32 G = n_heads / n_kv_heads;
    const u32 pos = start + r;
    const u32 lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const u32 s_lo = max(lo, split * chunk);
    const u32 s_hi = min(pos + 1, (split + 1) * chunk);  // exclusive
    const u32 hoff = head_bytes(KT, kvh * D);

    float qr[ATT_GMAX][EPL], acc[ATT_GMAX][EPL], m[ATT_GMAX], l[ATT_GMAX];
#pragma unroll
    for (u32 g = 0; g < ATT_GMAX; g++) {
        m[g] = -1e30f;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) {
            acc[g][e] = 0.0f;
            qr[g][e] = (g < G && lane * EPL < D) ? q[((u64)r * n_heads + kvh * G + g) * D + lane * EPL + e] : 0.0f;
        }
    }
    for (u32 p = s_lo + warp; p < s_hi; p += ATT_WARPS) {
        float kv[EPL], vv[EPL];
        load_lane<KT, EPL>(kc + (u64)p * row_bytes + hoff, lane, D, kv);
        load_lane<KT, EPL>(vc + (u64)p * row_bytes + hoff, lane, D, vv);
#pragma unroll
        for (u32 g = 0; g < ATT_GMAX; g++) {
            if (g < G) {
                float s = 0.0f;
#pragma unroll
                for (int e = 0; e < EPL; e++) s += qr[g][e] * kv[e];
                s = warp_sum(s) * scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
                const float mn = fmaxf(m[g], s);
                const float c = expf(m[g] - mn), pe = expf(s - mn);
                m[g] = mn;
                l[g] = l[g] * c + pe;
#pragma unroll
                for (int e = 0; e < EPL; e++) acc[g][e] = acc[g][e] * c + pe * vv[e];
            }
        }
    }
    for (u32 g = 0; g < G; g++) {
        if (lane * EPL < D) {
#pragma unroll
            for (int e = 0; e < EPL; e++) sh_acc[warp][g][lane * EPL + e] = acc[g][e];
        }
        if (lane == 0) {
            sh_ml[warp][g][0] = m[g];
            sh_ml[warp][g][1] = l[g];
        }
    }
    __syncthreads();
    // Merge the four warps: thread t handles value t % D of head t / D.
    for (u32 t = threadIdx.x; t < G * D; t += blockDim.x) {
        const u32 g = t / D, d = t % D;
        float M = -1e30f;
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, sh_ml[w][g][0]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++) {
            const float f = expf(sh_ml[w][g][0] - M);
            L += sh_ml[w][g][1] * f;
            A += sh_acc[w][g][d] * f;
        }
        const u64 idx = ((u64)r * n_heads + kvh * G + g) * n_splits + split;
        part_acc[idx * D + d] = A;
        if (d == 0) {
            part_ml[idx * 2] = M;
            part_ml[idx * 2 + 1] = L;
        }
    }
}

#define ATTN(KTN, KT, D)                                                                               \
    KILN_KERNEL void attn_split_##KTN##_##D(const float* q, const u8* kc, const u8* vc, u32 row_bytes,  \
                                            u32 n_heads, u32 n_kv_heads, u32 start, u32 window,         \
                                            float scale, float softcap, u32 chunk, float* part_acc,     \
                                            float* part_ml) {                                            \
        attn_split<KT, D>(q, kc, vc, row_bytes, n_heads, n_kv_heads, start, window, scale, softcap,     \
                          chunk, part_acc, part_ml);                                                    \
    }
#define ATTN_D(KTN, KT) ATTN(KTN, KT, 32) ATTN(KTN, KT, 64) ATTN(KTN, KT, 128) ATTN(KTN, KT, 256)
// Quantized caches need whole 32-value blocks per head; f32/f16 also serve heads of 16.
ATTN(f32, T_F32, 16)
ATTN(f16, T_F16, 16)
ATTN_D(f32, T_F32)
ATTN_D(f16, T_F16)
ATTN_D(q8_0, T_Q8_0)
ATTN_D(q4_0, T_Q4_0)

// Merges the splits of each (row, head): block per (row, head), thread per value.
KILN_KERNEL void attn_merge(const float* part_acc, const float* part_ml, u32 n_splits, u32 d, float* out) {
    const u64 rh = blockIdx.x;
    const float* ml = part_ml + rh * n_splits * 2;
    float M = -1e30f;
    for (u32 s = 0; s < n_splits; s++) M = fmaxf(M, ml[2 * s]);
    for (u32 i = threadIdx.x; i < d; i += blockDim.x) {
        float L = 0.0f, A = 0.0f;
        for (u32 s = 0; s < n_splits; s++) {
            const float f = expf(ml[2 * s] - M);
            L += ml[2 * s + 1] * f;
            A += part_acc[(rh * n_splits + s) * d + i] * f;
        }
        out[rh * d + i] = L > 0.0f ? A / L : 0.0f;
    }
}

// Writes `rows` rows of `width` values into the cache at positions start.. in its type. Thread per 32
// values; the quantizers are ggml's reference ones (q8_0: round(x/d), d = amax/127; q4_0: d = max/−8 of
// the signed largest-magnitude value, q = min(15, trunc(x/d + 8.5))).
KILN_KERNEL void kv_store(int kt, const float* x, u32 rows, u32 width, u8* cache, u32 row_bytes, u32 start) {
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u32 per_row = width / 32;
    if (t >= (u64)rows * per_row) return;
    const u32 r = (u32)(t / per_row), b = (u32)(t % per_row);
    const float* src = x + (u64)r * width + b * 32;
    u8* row = cache + (u64)(start + r) * row_bytes;
    if (kt == T_F32) {
        for (int i = 0; i < 32; i++) ((float*)row)[b * 32 + i] = src[i];
    } else if (kt == T_F16) {
        for (int i = 0; i < 32; i++) ((u16*)row)[b * 32 + i] = f2h(src[i]);
    } else if (kt == T_Q8_0) {
        u8* blk = row + b * 34;
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(src[i]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        *(u16*)blk = f2h(d);
        for (int i = 0; i < 32; i++) blk[2 + i] = (u8)(i8)roundf(src[i] * id);
    } else {
        u8* blk = row + b * 18;
        float amax = 0.0f, mx = 0.0f;
        for (int i = 0; i < 32; i++) {
            if (fabsf(src[i]) > amax) {
                amax = fabsf(src[i]);
                mx = src[i];
            }
        }
        const float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        *(u16*)blk = f2h(d);
        for (int j = 0; j < 16; j++) {
            const int q0 = min(15, (int)(i8)(src[j] * id + 8.5f));
            const int q1 = min(15, (int)(i8)(src[j + 16] * id + 8.5f));
            blk[2 + j] = (u8)(q0 | (q1 << 4));
        }
    }
}

// Prefill through the vendor BLAS (kernels/src/gpu/cuda/attention_blas.rs): the scaled scores of G heads
// × `rows` query rows against `n_keys` keys (f32, row-major per head) → causal softmax probabilities in
// f16 (what the second product reads). Row r sits at position start + r and sees keys 0..start + r.
// One block per (head, row).
KILN_KERNEL void attn_softmax_rows(const float* s, u32 rows, u32 n_keys, u32 start, u16* p) {
    __shared__ float scratch[32];
    const u64 base = (u64)blockIdx.x * n_keys;
    const u32 r = blockIdx.x % rows;
    const u32 visible = min(n_keys, start + r + 1);
    float m = -1e30f;
    for (u32 j = threadIdx.x; j < visible; j += blockDim.x) m = fmaxf(m, s[base + j]);
    m = warp_max(m);
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE, warps = blockDim.x / WARP_SIZE;
    if (lane == 0) scratch[warp] = m;
    __syncthreads();
    m = -1e30f;
    for (u32 w = 0; w < warps; w++) m = fmaxf(m, scratch[w]);
    __syncthreads();
    float sum = 0.0f;
    for (u32 j = threadIdx.x; j < visible; j += blockDim.x) sum += expf(s[base + j] - m);
    sum = warp_sum(sum);
    if (lane == 0) scratch[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (u32 w = 0; w < warps; w++) sum += scratch[w];
    const float inv = 1.0f / sum;
    for (u32 j = threadIdx.x; j < n_keys; j += blockDim.x)
        p[base + j] = f2h(j < visible ? expf(s[base + j] - m) * inv : 0.0f);
}
