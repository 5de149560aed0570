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

// Merges the block's warps' running (max, sum, accumulators) for each of its G heads (head0, head0 + 1,
// ...) and stores the split's partial sums (part_acc: [rows][n_heads][n_splits][D]; part_ml: the same of (max, sum)).
// sh_acc is [WARPS][GM][D] and sh_ml [WARPS][GM][2], flattened.
template <int D, int WARPS, int GM = ATT_GMAX>
__device__ __forceinline__ void store_partials(const float* sh_acc, const float* sh_ml, u32 G, u32 r, u32 n_heads,
                                               u32 head0, u32 split, u32 n_splits, float* part_acc,
                                               float* part_ml) {
    for (u32 t = threadIdx.x; t < G * D; t += blockDim.x) {
        const u32 g = t / D, d = t % D;
        float M = -1e30f;
        for (int w = 0; w < WARPS; w++) M = fmaxf(M, sh_ml[(w * GM + g) * 2]);
        float L = 0.0f, A = 0.0f;
        for (int w = 0; w < WARPS; w++) {
            const float f = expf(sh_ml[(w * GM + g) * 2] - M);
            L = fmaf(sh_ml[(w * GM + g) * 2 + 1], f, L);
            A = fmaf(sh_acc[(w * GM + g) * D + d], f, A);
        }
        const u64 idx = ((u64)r * n_heads + head0 + g) * n_splits + split;
        part_acc[idx * D + d] = A;
        if (d == 0) {
            part_ml[idx * 2] = M;
            part_ml[idx * 2 + 1] = L;
        }
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
#pragma unroll
    for (u32 g = 0; g < ATT_GMAX; g++) {
        if (g >= G) continue;  // constant indices: a runtime g would put acc in local memory
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
    store_partials<D, ATT_WARPS>(&sh_acc[0][0][0], &sh_ml[0][0][0], G, r, n_heads, kvh * G, split, n_splits, part_acc,
                                 part_ml);
}

// The same parameters as attn_tile_* (one launch site); `row_splits` is attn_tile's alone.
#define ATTN(KTN, KT, D)                                                                               \
    KILN_KERNEL void attn_split_##KTN##_##D(const float* q, const u8* kc, const u8* vc, u32 row_bytes,  \
                                            u32 n_heads, u32 n_kv_heads, u32 start, u32 window,         \
                                            float scale, float softcap, u32 chunk, u32 row_splits,      \
                                            float* part_acc, float* part_ml) {                          \
        grid_dependency_entry();                                                                        \
        (void)row_splits;                                                                               \
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

// The same split attention for q4_0 and q8_0 caches, heads of 64..256 values, a key per lane. Each warp
// takes tiles of 32 keys: it loads the tile's K (lane j: key j's head, into registers) and V (the whole
// tile, coalesced, into shared memory) in one round trip; lane j dots key j with the G query heads in
// four-way byte products against q quantized to q8_0 (as ggml and the CPU backend dot a quantized K
// cache), so no reduction runs per key; the tile's softmax weights go through shared memory and the warp
// adds the tile's V rows, each lane owning D/32 values. (attn_split's per-key warp reductions and byte
// loads left a long context's decode at a tenth of memory speed.)
//
// Splits: with `chunk` > 0 (prompt chunks) every row uses splits of that many keys. With `chunk` = 0
// (decode and verify batches) a row's splits are sized from its own position, at most `row_splits` of
// them: short contexts get splits of one tile per warp, long ones longer splits rather than more partial
// sums to merge. A row's keys then fall into the same splits, tiles and order whether the row runs alone
// or in a verify batch (gridDim.y covers the batch's last row; the splits a row does not reach are empty,
// exact zeros in the merge), so speculative decoding gives exactly the tokens greedy gives.
//
// Written for 32-lane warps (a tile is 32 keys, a quantization group 32 lanes): NVIDIA and RDNA. Wave64
// parts (CDNA) get no attn_tile_* kernels, so a backend there must take attn_split_*.
#if WARP_SIZE == 32
#define ATQ_WARPS 4
#define ATQ_MIN_CHUNK (ATQ_WARPS * 32)
#define ATQ_BLOCKS 3  // resident blocks per SM the register budget is cut for

// Keys per split for a row at `pos` with up to `n_splits` splits (chunk = 0 above).
__device__ __forceinline__ u32 tiled_chunk(u32 pos, u32 n_splits) {
    const u32 even = ((pos + n_splits) / n_splits + 31) / 32 * 32;  // ceil((pos + 1) / n) to whole tiles
    return max((u32)ATQ_MIN_CHUNK, even);
}

// The 32-bit word at even byte offset `o` of a run held as words (o is a constant once loops unroll).
__device__ __forceinline__ u32 word_at(const u32* w, int o) {
    if (o % 4 == 0) return w[o / 4];
    return (u32)((((u64)w[o / 4 + 1] << 32) | w[o / 4]) >> (8 * (o % 4)));
}

// Loads N words from a pointer aligned to VEC words (4, 2 or 1), VEC at a time.
template <int N, int VEC>
__device__ __forceinline__ void load_words(const u32* src, u32* dst) {
#pragma unroll
    for (int i = 0; i < N; i += VEC) {
        if constexpr (VEC == 4) {
            const uint4 t = *(const uint4*)(src + i);
            dst[i] = t.x; dst[i + 1] = t.y; dst[i + 2] = t.z; dst[i + 3] = t.w;
        } else if constexpr (VEC == 2) {
            const uint2 t = *(const uint2*)(src + i);
            dst[i] = t.x; dst[i + 1] = t.y;
        } else {
            dst[i] = src[i];
        }
    }
}

template <int KT, int D, int GM>
__device__ __forceinline__ void attn_tile(const float* q, const u8* kc, const u8* vc, u32 row_bytes, u32 n_heads,
                                          u32 n_kv_heads, u32 start, u32 window, float scale, float softcap,
                                          u32 chunk, u32 row_splits, float* part_acc, float* part_ml) {
    constexpr int NB = D / 32, EPL = D / 32, BB = KT == T_Q4_0 ? 18 : 34;
    constexpr int W = NB * BB / 4;  // words of one head's cached row (NB is even: whole words)
    constexpr int VEC = W % 4 == 0 ? 4 : W % 2 == 0 ? 2 : 1;
    constexpr int TILE_WORDS = ATQ_WARPS * 32 * W, MERGE_WORDS = ATQ_WARPS * GM * D;
    // The V tiles while the keys are walked, then the warps' sums for the merge at the end.
    __shared__ __align__(16) u32 sh_raw[TILE_WORDS > MERGE_WORDS ? TILE_WORDS : MERGE_WORDS];
    __shared__ __align__(16) int sh_q[GM][D / 4];
    __shared__ float sh_qd[GM][NB];
    __shared__ int sh_qs[GM][NB];
    __shared__ __align__(16) float sh_p[ATQ_WARPS][32][GM];
    __shared__ float sh_ml[ATQ_WARPS][GM][2];
    const u32 split = blockIdx.y, r = blockIdx.z, n_splits = gridDim.y;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // A kv head's query heads may be dealt to several blocks (gridDim.x = n_kv_heads · groups; the host
    // does so when the splits alone leave SMs idle, at short contexts): G heads from head0 here. Each
    // head is computed alone, so its result does not depend on the grouping.
    const u32 groups = gridDim.x / n_kv_heads, kvh = blockIdx.x / groups, hg = blockIdx.x % groups;
    const u32 g_all = n_heads / n_kv_heads, per = (g_all + groups - 1) / groups;
    const u32 head0 = kvh * g_all + min(g_all, hg * per);
    const u32 G = min(g_all, hg * per + per) - min(g_all, hg * per);
    const u32 pos = start + r;
    const u32 ch = chunk > 0 ? chunk : tiled_chunk(pos, row_splits);
    const u32 lo = (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
    const u32 s_lo = max(lo, split * ch);
    const u32 s_hi = min(pos + 1, (split + 1) * ch);  // exclusive
    const u32 hoff = kvh * NB * BB;

    // q of the group's heads → q8_0 (ggml's reference rounding: d = amax / 127 kept as f16, q = rint(x/d)),
    // a 32-value group per warp and pass; every pass's q value is loaded before any is used.
    constexpr int QPASS = (GM * NB + ATQ_WARPS - 1) / ATQ_WARPS;
    float qv[QPASS];
#pragma unroll
    for (int i = 0; i < QPASS; i++) {
        const u32 gb = warp + ATQ_WARPS * i, g = gb / NB, b = gb % NB;
        qv[i] = g < G ? q[((u64)r * n_heads + head0 + g) * D + b * 32 + lane] : 0.0f;
    }
#pragma unroll
    for (int i = 0; i < QPASS; i++) {
        const u32 gb = warp + ATQ_WARPS * i, g = gb / NB, b = gb % NB;
        if (g < G) {
            const float amax = warp_max(fabsf(qv[i]));
            const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            const int qi = max(-128, min(127, (int)rintf(qv[i] * id)));
            int sum = qi;
#pragma unroll
            for (int m = 16; m > 0; m >>= 1) sum += shfl_xor_int(sum, m);
            ((i8*)sh_q[g])[b * 32 + lane] = (i8)qi;
            if (lane == 0) {
                sh_qd[g][b] = h2f(f2h(amax / 127.0f));
                sh_qs[g][b] = sum;
            }
        }
    }
    __syncthreads();

    float acc[GM][EPL], m[GM], l[GM];
#pragma unroll
    for (int g = 0; g < GM; g++) {
        m[g] = -1e30f;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[g][e] = 0.0f;
    }
    u32* sh_v = sh_raw + warp * 32 * W;  // this warp's V tile: 32 rows of W words
    // The lane's V values: EPL consecutive values of block vb, from byte vo of the head's row.
    const u32 vb = lane * EPL / 32, vj = lane * EPL % 32;
    const u32 vo = vb * BB + 2 + (KT == T_Q4_0 ? vj % 16 : vj);
    const u32 vshift = KT == T_Q4_0 && vj >= 16 ? 4 : 0;

    for (u32 base = s_lo + warp * 32; base < s_hi; base += ATQ_WARPS * 32) {
        const u32 key = base + lane;
        const bool valid = key < s_hi;
        const u32 n = min(32u, s_hi - base);
        // One round trip: this lane's key, and the tile's V rows (vector t of the tile = row t / (W/VEC)).
        u32 kw[W];
        if (valid) load_words<W, VEC>((const u32*)(kc + (u64)key * row_bytes + hoff), kw);
        u32 vt[W];
#pragma unroll
        for (int i = 0; i < W; i += VEC) {
            const u32 t = lane + 32 * (i / VEC), row = t / (W / VEC), part = t % (W / VEC);
            if (row < n) load_words<VEC, VEC>((const u32*)(vc + (u64)(base + row) * row_bytes + hoff) + part * VEC, vt + i);
        }
#pragma unroll
        for (int i = 0; i < W; i += VEC) {
            const u32 t = lane + 32 * (i / VEC), row = t / (W / VEC), part = t % (W / VEC);
            if (row < n) {
#pragma unroll
                for (int x = 0; x < VEC; x++) sh_v[row * W + part * VEC + x] = vt[i + x];
            }
        }

        float s[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) s[g] = 0.0f;
#pragma unroll
        for (int b = 0; b < NB; b++) {
            const int o = b * BB;
            const float dk = h2f((u16)(o % 4 ? kw[o / 4] >> 16 : kw[o / 4] & 0xFFFF));
            int kq[8];
#pragma unroll
            for (int i = 0; i < (KT == T_Q4_0 ? 4 : 8); i++) kq[i] = (int)word_at(kw, o + 2 + 4 * i);
#pragma unroll
            for (int g = 0; g < GM; g++) {
                if (g < (int)G) {
                    const int4 y0 = *(const int4*)&sh_q[g][b * 8];
                    const int4 y1 = *(const int4*)&sh_q[g][b * 8 + 4];
                    int sumi = 0;
                    if (KT == T_Q4_0) {
                        const int y[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
#pragma unroll
                        for (int i = 0; i < 4; i++) {
                            sumi = dp4a(kq[i] & 0x0F0F0F0F, y[i], sumi);
                            sumi = dp4a((kq[i] >> 4) & 0x0F0F0F0F, y[4 + i], sumi);
                        }
                        sumi -= 8 * sh_qs[g][b];
                    } else {
                        sumi = dp4a(kq[0], y0.x, sumi); sumi = dp4a(kq[1], y0.y, sumi);
                        sumi = dp4a(kq[2], y0.z, sumi); sumi = dp4a(kq[3], y0.w, sumi);
                        sumi = dp4a(kq[4], y1.x, sumi); sumi = dp4a(kq[5], y1.y, sumi);
                        sumi = dp4a(kq[6], y1.z, sumi); sumi = dp4a(kq[7], y1.w, sumi);
                    }
                    s[g] = fmaf(dk * sh_qd[g][b], (float)sumi, s[g]);
                }
            }
        }
        float c[GM];
#pragma unroll
        for (int g = 0; g < GM; g++) {
            c[g] = 1.0f;
            if (g < (int)G) {
                float sc = s[g] * scale;
                if (softcap > 0.0f) sc = softcap * tanhf(sc / softcap);
                sc = valid ? sc : -1e30f;
                const float mn = fmaxf(m[g], warp_max(sc));
                c[g] = expf(m[g] - mn);
                m[g] = mn;
                const float pe = valid ? expf(sc - mn) : 0.0f;
                l[g] = fmaf(l[g], c[g], pe);
                sh_p[warp][lane][g] = pe;
            }
        }
        sync_warp();
#pragma unroll
        for (int g = 0; g < GM; g++)
#pragma unroll
            for (int e = 0; e < EPL; e++) acc[g][e] *= c[g];
#pragma unroll 2
        for (u32 j = 0; j < n; j++) {
            const u8* vrow = (const u8*)(sh_v + j * W);
            const float dv = h2f(*(const u16*)(vrow + vb * BB));
            float v[EPL];
#pragma unroll
            for (int h = 0; h < EPL / 2; h++) {
                const u32 two = *(const u16*)(vrow + vo + 2 * h);
#pragma unroll
                for (int t = 0; t < 2; t++) {
                    const u32 byte = (two >> (8 * t)) & 0xFF;
                    v[2 * h + t] = KT == T_Q4_0 ? (float)((int)((byte >> vshift) & 0xF) - 8) : (float)(i8)byte;
                }
            }
            float p[GM];
#pragma unroll
            for (int g = 0; g < GM; g += 2) {
                const float2 pp = *(const float2*)&sh_p[warp][j][g];
                p[g] = pp.x * dv;
                p[g + 1] = pp.y * dv;
            }
#pragma unroll
            for (int g = 0; g < GM; g++)
                if (g < (int)G)
#pragma unroll
                    for (int e = 0; e < EPL; e++) acc[g][e] = fmaf(p[g], v[e], acc[g][e]);
        }
        sync_warp();
    }
    __syncthreads();  // the V tiles' memory becomes the merge's
    float* sh_acc = (float*)sh_raw;  // [ATQ_WARPS][GM][D]
#pragma unroll
    for (int g = 0; g < GM; g++) {
        if (g < (int)G) {  // constant indices: a runtime g would put acc in local memory
            l[g] = warp_sum(l[g]);
#pragma unroll
            for (int e = 0; e < EPL; e++) sh_acc[(warp * GM + g) * D + lane * EPL + e] = acc[g][e];
            if (lane == 0) {
                sh_ml[warp][g][0] = m[g];
                sh_ml[warp][g][1] = l[g];
            }
        }
    }
    __syncthreads();
    store_partials<D, ATQ_WARPS, GM>(sh_acc, &sh_ml[0][0][0], G, r, n_heads, head0, split, n_splits, part_acc, part_ml);
}

// attn_tile_*: up to ATT_GMAX query heads a block; attn_tile2_*: up to 2 (TILE2_HEADS on the host), for a
// kv head's query heads dealt to several blocks: a quarter of the per-key work, and no spills. A head's
// arithmetic is the same in both.
#define ATQ_BLOCKS2 3  // 167 registers (4 blocks an SM spilled)
#define ATTQ(name, GM, BLOCKS, KTN, KT, D)                                                                   \
    KILN_KERNEL __launch_bounds__(ATQ_WARPS * 32, BLOCKS) void name##_##KTN##_##D(const float* q, const u8* kc, const u8* vc, u32 row_bytes,   \
                                           u32 n_heads, u32 n_kv_heads, u32 start, u32 window,          \
                                           float scale, float softcap, u32 chunk, u32 row_splits,       \
                                           float* part_acc, float* part_ml) {                           \
        grid_dependency_entry();                                                                        \
        attn_tile<KT, D, GM>(q, kc, vc, row_bytes, n_heads, n_kv_heads, start, window, scale, softcap,  \
                             chunk, row_splits, part_acc, part_ml);                                     \
    }
#define ATTQ_ALL(name, GM, BLOCKS)                                                                          \
    ATTQ(name, GM, BLOCKS, q4_0, T_Q4_0, 64) ATTQ(name, GM, BLOCKS, q4_0, T_Q4_0, 128)                      \
    ATTQ(name, GM, BLOCKS, q4_0, T_Q4_0, 256) ATTQ(name, GM, BLOCKS, q8_0, T_Q8_0, 64)                      \
    ATTQ(name, GM, BLOCKS, q8_0, T_Q8_0, 128) ATTQ(name, GM, BLOCKS, q8_0, T_Q8_0, 256)
ATTQ_ALL(attn_tile, ATT_GMAX, ATQ_BLOCKS)
ATTQ_ALL(attn_tile2, 2, ATQ_BLOCKS2)
#endif

// Merges the splits of each (row, head). Block (row·head, 32-value slice of the head), 8 warps: each warp
// sums every eighth split for its lane's value, then the warps are added. Long contexts have hundreds of
// splits, which one thread per value walking them all serially left to a few SMs.
#define MERGE_WARPS (256 / WARP_SIZE)  // the host launches 256 threads
KILN_KERNEL void attn_merge(const float* part_acc, const float* part_ml, u32 n_splits, u32 d, float* out) {
    grid_dependency_entry();
    __shared__ float sh_a[MERGE_WARPS][WARP_SIZE], sh_l[MERGE_WARPS], sh_m[MERGE_WARPS];
    const u64 rh = blockIdx.x;
    const u32 warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const u32 i = blockIdx.y * WARP_SIZE + lane;
    const float* ml = part_ml + rh * n_splits * 2;
    float M = -1e30f;
    for (u32 s = threadIdx.x; s < n_splits; s += blockDim.x) M = fmaxf(M, ml[2 * s]);
    M = warp_max(M);
    if (lane == 0) sh_m[warp] = M;
    __syncthreads();
    M = sh_m[0];
    for (u32 w = 1; w < MERGE_WARPS; w++) M = fmaxf(M, sh_m[w]);
    float L = 0.0f, A = 0.0f;
    for (u32 s = warp; s < n_splits; s += MERGE_WARPS) {
        const float f = expf(ml[2 * s] - M);
        L += ml[2 * s + 1] * f;
        if (i < d) A += part_acc[(rh * n_splits + s) * d + i] * f;
    }
    sh_a[warp][lane] = A;
    if (lane == 0) sh_l[warp] = L;
    __syncthreads();
    if (warp == 0 && i < d) {
        float LL = 0.0f, AA = 0.0f;
        for (u32 w = 0; w < MERGE_WARPS; w++) {
            LL += sh_l[w];
            AA += sh_a[w][lane];
        }
        out[rh * d + i] = LL > 0.0f ? AA / LL : 0.0f;
    }
}

// Writes `rows` rows of `width` values into the cache at positions start.. in its type. Thread per 32
// values; the quantizers are ggml's reference ones (q8_0: round(x/d), d = amax/127; q4_0: d = max/−8 of
// the signed largest-magnitude value, q = min(15, trunc(x/d + 8.5))).
KILN_KERNEL void kv_store(int kt, const float* x, u32 rows, u32 width, u8* cache, u32 row_bytes, u32 start) {
    grid_dependency_entry();
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    const u32 per_row = width / 32;
    if (t >= (u64)rows * per_row) return;
    const u32 r = (u32)(t / per_row), b = (u32)(t % per_row);
    // The 32 values in registers before anything is stored: a store to the cache could alias any later
    // load of x, so loads after it would each wait out their own round trip.
    float src[32];
    const float4* from = (const float4*)(x + (u64)r * width + b * 32);
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float4 f = from[i];
        src[4 * i] = f.x, src[4 * i + 1] = f.y, src[4 * i + 2] = f.z, src[4 * i + 3] = f.w;
    }
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
    grid_dependency_entry();
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
