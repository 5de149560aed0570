// GGML block formats on the device: per-type dot products of a weight "unit" (a run of 16..64 values
// inside one block) with activations quantized to 8 bits (int8 values, one f32 scale per 32), using
// four-way byte dot products. Layouts are GGML's (see kernels/src/quant/); each function states its unit.
// A unit's float arithmetic is spelled out (fmaf, __fmul_rn, ...) instead of left to the compiler, which
// contracted the same expression into FMAs differently in different kernels: a row must sum to the same
// bits in every kernel that takes it (a verify row equals the decode step; see matvec.cu).
#pragma once
#include "compat.h"

// GgmlType ids, as in the GGUF file.
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q4_1 3
#define T_Q5_0 6
#define T_Q5_1 7
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q5_K 13
#define T_Q6_K 14

// The activations one unit is dotted with: `NR` rows, each `yq_stride` ints of packed int8 values and
// `yd_stride` groups of 32 values, each group's (scale d, d · Σ its int8 values). The scaled sum is what
// the offset and min terms of Q4_0/Q4_1/Q5/K-quants need, so no unit sums the activations itself.
struct Act {
    const int* yq;
    const float2* yd;
    u32 yq_stride;
    u32 yd_stride;
};

// Quantizes value `i` of an activation row (groups of 32 consecutive values) to int8 with its group's
// (scale, scaled sum): the form every quantized product reads. Called by all 32 lanes that hold one
// group, lane l holding value i with i % 32 == l % 32, so the group's max and sum are warp shuffles; a
// lane past the data passes valid = false (counts as 0, stores nothing). Producers (the norms, the
// gated activations) call it on their outputs, which saves the separate quantize_act launch.
__device__ __forceinline__ void quantize_group(float v, u64 i, bool valid, i8* yq, float2* yd) {
    v = valid ? v : 0.0f;
    float amax = fabsf(v);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) amax = fmaxf(amax, shfl_xor(amax, m));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : (int)roundf(v / d);
    int sum = q;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) sum += shfl_xor_int(sum, m);
    if (valid) {
        yq[i] = (i8)q;
        if (i % 32 == 0) yd[i / 32] = make_float2(d, d * (float)sum);
    }
}

// Bit j of `bits` (j < 4) moved to bit 4 of byte j: the fifth bit of four Q5 values.
__device__ __forceinline__ int spread_bit4(u32 bits) {
    return (int)(((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25));
}

__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_0: 18-byte blocks of 32; unit = one block.
template <int NR>
__device__ __forceinline__ void unit_q4_0(const u8* row, u32 u, const Act& a, float* acc) {
    const u8* b = row + u * 18;
    const float d = h2f(*(const u16*)b);
    int q[4];
#pragma unroll
    for (int i = 0; i < 4; i++) q[i] = load_int_b2(b + 2 + 4 * i);
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int* y = a.yq + r * a.yq_stride + u * 8;
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            sumi = dp4a(q[i] & 0x0F0F0F0F, y[i], sumi);
            sumi = dp4a((q[i] >> 4) & 0x0F0F0F0F, y[4 + i], sumi);
        }
        const float2 ys = a.yd[r * a.yd_stride + u];
        acc[r] = fmaf(d, fmaf(ys.x, (float)sumi, -8.0f * ys.y), acc[r]);
    }
}

// Q4_1: 20-byte blocks of 32 (d, m, 16 bytes of nibbles); unit = one block.
template <int NR>
__device__ __forceinline__ void unit_q4_1(const u8* row, u32 u, const Act& a, float* acc) {
    const u8* b = row + u * 20;
    const float d = h2f(*(const u16*)b), m = h2f(*(const u16*)(b + 2));
    int q[4];
#pragma unroll
    for (int i = 0; i < 4; i++) q[i] = load_int_b4(b + 4 + 4 * i);
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int* y = a.yq + r * a.yq_stride + u * 8;
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            sumi = dp4a(q[i] & 0x0F0F0F0F, y[i], sumi);
            sumi = dp4a((q[i] >> 4) & 0x0F0F0F0F, y[4 + i], sumi);
        }
        const float2 ys = a.yd[r * a.yd_stride + u];
        acc[r] += fmaf(d * ys.x, (float)sumi, m * ys.y);
    }
}

// Q5_0 (22 bytes: d, 32 fifth bits, nibbles) and Q5_1 (24 bytes: d, m, bits, nibbles); unit = one block.
template <int NR, bool HAS_MIN>
__device__ __forceinline__ void unit_q5(const u8* row, u32 u, const Act& a, float* acc) {
    const u8* b = row + u * (HAS_MIN ? 24 : 22);
    const float d = h2f(*(const u16*)b);
    const float m = HAS_MIN ? h2f(*(const u16*)(b + 2)) : 0.0f;
    const u8* hp = b + (HAS_MIN ? 4 : 2);
    const u32 qh = (u32)load_int_b2(hp);
    int lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int q = load_int_b2(hp + 4 + 4 * i);
        lo[i] = (q & 0x0F0F0F0F) | spread_bit4(qh >> (4 * i));
        hi[i] = ((q >> 4) & 0x0F0F0F0F) | spread_bit4(qh >> (4 * i + 16));
    }
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int* y = a.yq + r * a.yq_stride + u * 8;
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            sumi = dp4a(lo[i], y[i], sumi);
            sumi = dp4a(hi[i], y[4 + i], sumi);
        }
        const float2 ys = a.yd[r * a.yd_stride + u];
        acc[r] = HAS_MIN ? acc[r] + fmaf(d * ys.x, (float)sumi, m * ys.y)
                         : fmaf(d, fmaf(ys.x, (float)sumi, -16.0f * ys.y), acc[r]);
    }
}

// Q8_0: 34-byte blocks of 32; unit = half a block (16 values).
template <int NR>
__device__ __forceinline__ void unit_q8_0(const u8* row, u32 u, const Act& a, float* acc) {
    const u32 blk = u >> 1, half = u & 1;
    const u8* b = row + blk * 34;
    const float d = h2f(*(const u16*)b);
    int q[4];
#pragma unroll
    for (int i = 0; i < 4; i++) q[i] = load_int_b2(b + 2 + 16 * half + 4 * i);
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int* y = a.yq + r * a.yq_stride + u * 4;
        int sumi = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) sumi = dp4a(q[i], y[i], sumi);
        acc[r] = fmaf(d * a.yd[r * a.yd_stride + blk].x, (float)sumi, acc[r]);
    }
}

// Q4_K (144 bytes per 256) and Q5_K (176): unit = 16 bytes of nibbles = 16 values of sub-block 2k
// (low nibbles) and the same 16 positions of sub-block 2k+1 (high nibbles).
template <int NR, bool FIVE>
__device__ __forceinline__ void unit_qk(const u8* row, u32 u, const Act& a, float* acc) {
    const u32 blk = u >> 3, k = (u >> 1) & 3, h = u & 1;
    const u8* b = row + blk * (FIVE ? 176 : 144);
    // Wide loads: blocks are 16-byte aligned (144 and 176 are multiples of 16), so d/dmin come in one
    // word, the 12 scale bytes in three, and the unit's 16 quant bytes in one 16-byte load.
    const u32 dm = *(const u32*)b;
    const float d = h2f((u16)(dm & 0xFFFF)), dmin = h2f((u16)(dm >> 16));
    const u32 s0 = *(const u32*)(b + 4), s1 = *(const u32*)(b + 8), s2 = *(const u32*)(b + 12);
    // scale_min_k4 for sub-blocks 2k and 2k+1 straight from the packed words (byte j of the 12 scale
    // bytes is byte j%4 of word j/4), so no byte array lands in local memory.
    int sc0, m0, sc1, m1;
    {
#define KILN_BYTE(w, i) (((w) >> (8 * (i))) & 0xFFu)
        const u32 j0 = 2 * k, j1 = 2 * k + 1;
        if (k < 2) {
            sc0 = KILN_BYTE(s0, j0) & 63; m0 = KILN_BYTE(s1, j0) & 63;
            sc1 = KILN_BYTE(s0, j1) & 63; m1 = KILN_BYTE(s1, j1) & 63;
        } else {
            const u32 i0 = j0 - 4, i1 = j1 - 4;
            sc0 = (KILN_BYTE(s2, i0) & 0xF) | ((KILN_BYTE(s0, i0) >> 6) << 4);
            m0 = (KILN_BYTE(s2, i0) >> 4) | ((KILN_BYTE(s1, i0) >> 6) << 4);
            sc1 = (KILN_BYTE(s2, i1) & 0xF) | ((KILN_BYTE(s0, i1) >> 6) << 4);
            m1 = (KILN_BYTE(s2, i1) >> 4) | ((KILN_BYTE(s1, i1) >> 6) << 4);
        }
#undef KILN_BYTE
    }
    const uint4 qv = *(const uint4*)(b + (FIVE ? 48 : 16) + 32 * k + 16 * h);
    const int qi[4] = {(int)qv.x, (int)qv.y, (int)qv.z, (int)qv.w};
    int hb[4] = {0, 0, 0, 0};
    if (FIVE) {
        const uint4 hv = *(const uint4*)(b + 16 + 16 * h);
        hb[0] = (int)hv.x; hb[1] = (int)hv.y; hb[2] = (int)hv.z; hb[3] = (int)hv.w;
    }
    int lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        lo[i] = qi[i] & 0x0F0F0F0F;
        hi[i] = (qi[i] >> 4) & 0x0F0F0F0F;
        if (FIVE) {
            lo[i] |= ((hb[i] >> (2 * k)) & 0x01010101) << 4;
            hi[i] |= ((hb[i] >> (2 * k + 1)) & 0x01010101) << 4;
        }
    }
    const u32 first = blk * 256 + 64 * k + 16 * h;  // value index of the unit's first low-nibble value
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int4 ya = *(const int4*)(a.yq + r * a.yq_stride + first / 4);
        const int4 yb = *(const int4*)(a.yq + r * a.yq_stride + first / 4 + 8);
        const int y0[4] = {ya.x, ya.y, ya.z, ya.w}, y1[4] = {yb.x, yb.y, yb.z, yb.w};
        int s0i = 0, s1i = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            s0i = dp4a(lo[i], y0[i], s0i);
            s1i = dp4a(hi[i], y1[i], s1i);
        }
        // Sub-blocks 2k and 2k+1: (scale, scaled sum) of each, one 16-byte load. The min term covers a
        // whole sub-block of 32 values, of which this unit holds 16: the h = 0 unit adds it for both.
        const float4 ys = *(const float4*)(a.yd + r * a.yd_stride + blk * 8 + 2 * k);
        // Rounded step by step (no contraction into FMAs): the compiler contracted this expression
        // differently for different NR, so a verify batch's row differed in the last bit from the same
        // row decoded alone (gpu_ops: matmul_every_type_and_batch, grouped_products_match_cpu).
        const float t0 = __fmul_rn(__fmul_rn(ys.x, (float)sc0), (float)s0i);
        const float t1 = __fmul_rn(__fmul_rn(ys.z, (float)sc1), (float)s1i);
        const float mins =
            h == 0 ? __fmul_rn(dmin, __fadd_rn(__fmul_rn((float)m0, ys.y), __fmul_rn((float)m1, ys.w))) : 0.0f;
        acc[r] = __fadd_rn(acc[r], __fsub_rn(__fmul_rn(d, __fadd_rn(t0, t1)), mins));
    }
}

// The GPU's Q6_K layout, written when a weight is loaded (kernels/src/gpu/backend/q6k.rs): GGUF's 210-byte
// super-blocks are only 2-byte aligned, so a thread's 32-byte run of them took 9 word loads and 8 funnel
// shifts. A row of nb super-blocks is stored as their 208-byte bodies (ql[128], qh[64], the 16 scales)
// back to back, then their nb f16 d's, padded to a multiple of 16 bytes: every body 16-byte aligned.
__device__ __forceinline__ const u8* q6k_body(const u8* row, u32 blk) { return row + blk * 208; }
__device__ __forceinline__ float q6k_d(const u8* row, u32 nb, u32 blk) {
    return h2f(*(const u16*)(row + nb * 208 + 2 * blk));
}

// The activation-row counts up to which unit_q6_k takes the stored values (0 .. 63) and adds −32 · Σy
// with dp4a, instead of making each value signed first: the same integer sums (so every row count still
// gives the same bits), 10.9 M instructions against 12.3 M for a 27B Q6_K down projection, 168.5-169.2
// against 167.9-168.5 tok/s (H200, bench/README.md, session 20). Past one row each row pays the dp4a.
#ifndef KILN_Q6K_BIASED
#define KILN_Q6K_BIASED 1
#endif

// Four Q6_K values as signed bytes, each its low nibble (word `lo` shifted right by `nshift`) with its high
// bit pair (word `hi` shifted right by `hshift`) above it, minus 32: the subtraction without borrows
// crossing bytes.
__device__ __forceinline__ int q6_signed(int lo, int hi, u32 nshift, u32 hshift) {
    const int v = ((lo >> nshift) & 0x0F0F0F0F) | (((hi >> hshift) & 0x03030303) << 4);
    return ((v | (int)0x80808080) - 0x20202020) ^ (int)0x80808080;
}

// Q6_K in the GPU's layout (q6k_body): unit = 32 consecutive values (two scale groups), whose low
// nibbles and high bit pairs are 32 contiguous, 16-byte aligned bytes each.
template <int NR>
__device__ __forceinline__ void unit_q6_k(const u8* row, u32 u, const Act& a, float* acc) {
    const u32 blk = u >> 3, hf = (u >> 2) & 1, qq = u & 3;
    const u8* b = q6k_body(row, blk);
    const float d = q6k_d(row, a.yd_stride / 8, blk);
    const u32 sc2 = *(const u16*)(b + 192 + 8 * hf + 2 * qq);  // the two groups' scales, one load
    const float sc0 = (float)(i8)(sc2 & 0xFF), sc1 = (float)(i8)(sc2 >> 8);
    const uint4* lp = (const uint4*)(b + 64 * hf + 32 * (qq & 1));
    const uint4* hp = (const uint4*)(b + 128 + 32 * hf);
    const uint4 l0 = lp[0], l1 = lp[1], h0 = hp[0], h1 = hp[1];
    const int ql[8] = {(int)l0.x, (int)l0.y, (int)l0.z, (int)l0.w, (int)l1.x, (int)l1.y, (int)l1.z, (int)l1.w};
    const int qh[8] = {(int)h0.x, (int)h0.y, (int)h0.z, (int)h0.w, (int)h1.x, (int)h1.y, (int)h1.z, (int)h1.w};
    const u32 nshift = (qq >> 1) * 4, hshift = 2 * qq;
    // BIASED (KILN_Q6K_BIASED): the values as stored and −32 · Σy added by dp4a with four −32 bytes.
    constexpr bool BIASED = NR <= KILN_Q6K_BIASED;
    int v[8];
#pragma unroll
    for (int i = 0; i < 8; i++)
        v[i] = BIASED ? ((ql[i] >> nshift) & 0x0F0F0F0F) | (((qh[i] >> hshift) & 0x03030303) << 4)
                      : q6_signed(ql[i], qh[i], nshift, hshift);
    const u32 first = blk * 256 + 128 * hf + 32 * qq;  // 32-aligned: one activation scale
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const int4 ya = *(const int4*)(a.yq + r * a.yq_stride + first / 4);
        const int4 yb = *(const int4*)(a.yq + r * a.yq_stride + first / 4 + 4);
        int s0 = dp4a(v[0], ya.x, 0), s1 = dp4a(v[4], yb.x, 0);
        s0 = dp4a(v[1], ya.y, s0); s1 = dp4a(v[5], yb.y, s1);
        s0 = dp4a(v[2], ya.z, s0); s1 = dp4a(v[6], yb.z, s1);
        s0 = dp4a(v[3], ya.w, s0); s1 = dp4a(v[7], yb.w, s1);
        if (BIASED) {
            const int m32 = (int)0xE0E0E0E0;
            s0 = dp4a(m32, ya.x, s0); s1 = dp4a(m32, yb.x, s1);
            s0 = dp4a(m32, ya.y, s0); s1 = dp4a(m32, yb.y, s1);
            s0 = dp4a(m32, ya.z, s0); s1 = dp4a(m32, yb.z, s1);
            s0 = dp4a(m32, ya.w, s0); s1 = dp4a(m32, yb.w, s1);
        }
        acc[r] = fmaf(d * a.yd[r * a.yd_stride + first / 32].x, fmaf(sc0, (float)s0, sc1 * (float)s1), acc[r]);
    }
}

// Units per row of `k` values, and bytes per row, for each quantized type.
__device__ __forceinline__ u32 units_per_row(int type, u32 k) {
    switch (type) {
        case T_Q8_0: return k / 16;
        case T_Q4_K: case T_Q5_K: return k / 32;
        case T_Q6_K: return k / 32;
        default: return k / 32;
    }
}

// A Q4_K/Q5_K value of sub-block `sub` of a super-block with 16-byte head h (d, dmin, packed scales),
// from its nibble byte and (Q5_K) its fifth-bit byte.
__device__ __forceinline__ float qk_value(const u8* h, u8 byte, u8 fifth, u32 sub, bool five) {
    int sc, m;
    scale_min_k4(sub, h + 4, &sc, &m);
    int q = (sub & 1) ? (byte >> 4) : (byte & 0xF);
    if (five) q |= ((fifth >> sub) & 1) << 4;
    return h2f(*(const u16*)h) * sc * (float)q - h2f(*(const u16*)(h + 2)) * m;
}

// The tiled Q4_K/Q5_K layout of the tensor-core products (matvec.cu, qk_frags_tile): where byte `pos` of
// row rr's super-block (0 .. 143, Q5_K 175, in GGUF's order) sits in its 16-row group's tile. Aligned
// 8-byte pieces of a super-block stay together (tile_qk and dequant_group_tiled move them whole).
__device__ __forceinline__ u32 qk_tile_offset(bool five, u32 rr, u32 pos) {
    if (pos < 16) return 16 * rr + pos;                       // the heads, row order
    if (five && pos < 48) return 256 + 32 * rr + (pos - 16);  // the fifth bits, row order
    // The nibbles: lane 4g + t's 16 bytes of run j are bytes 16 (j % 2) .. + 15 of chunk t of row
    // g + 8 (j / 2).
    const u32 p = pos - (five ? 48 : 16), chunk = p / 32, half = p % 32 / 16;
    return (five ? 768 : 256) + 512 * (2 * (rr / 8) + half) + 16 * (4 * (rr % 8) + chunk) + p % 16;
}

// Value i of row r of a tiled Q4_K/Q5_K matrix of `row_bytes` bytes a row.
__device__ __forceinline__ float dequant_value_tiled(int type, const u8* w, u32 row_bytes, u32 r, u32 i) {
    const bool five = type == T_Q5_K;
    const u32 rr = r % 16, j = i % 256, sub = j / 32, l = j % 32;
    const u8* tile = w + (u64)(r / 16) * 16 * row_bytes + (u64)(i / 256) * 16 * (five ? 176 : 144);
    const u8 byte = tile[qk_tile_offset(five, rr, (five ? 48 : 16) + 32 * (sub / 2) + l)];
    const u8 fifth = five ? tile[qk_tile_offset(five, rr, 16 + l)] : 0;
    return qk_value(tile + 16 * rr, byte, fifth, sub, five);
}

// One dequantized value `i` of a row of `k` values (embedding gathers, KV loads): slow, general, exact.
__device__ __forceinline__ float dequant_value(int type, const u8* row, u32 i, u32 k) {
    switch (type) {
        case T_F32: return ((const float*)row)[i];
        case T_F16: return h2f(((const u16*)row)[i]);
        case T_Q4_0: {
            const u8* b = row + (i / 32) * 18; const u32 j = i % 32;
            const int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
            return h2f(*(const u16*)b) * (float)(q - 8);
        }
        case T_Q4_1: {
            const u8* b = row + (i / 32) * 20; const u32 j = i % 32;
            const int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
            return h2f(*(const u16*)b) * (float)q + h2f(*(const u16*)(b + 2));
        }
        case T_Q5_0: case T_Q5_1: {
            const bool mn = type == T_Q5_1;
            const u8* b = row + (i / 32) * (mn ? 24 : 22); const u32 j = i % 32;
            const u8* hp = b + (mn ? 4 : 2);
            const u32 qh = (u32)load_int_b2(hp);
            const int lo = j < 16 ? (hp[4 + j] & 0xF) : (hp[4 + j - 16] >> 4);
            const int q = lo | (int)(((qh >> j) & 1u) << 4);
            const float d = h2f(*(const u16*)b);
            return mn ? d * (float)q + h2f(*(const u16*)(b + 2)) : d * (float)(q - 16);
        }
        case T_Q8_0: {
            const u8* b = row + (i / 32) * 34;
            return h2f(*(const u16*)b) * (float)(i8)b[2 + i % 32];
        }
        case T_Q4_K: case T_Q5_K: {
            const bool five = type == T_Q5_K;
            const u8* b = row + (i / 256) * (five ? 176 : 144); const u32 j = i % 256;
            const u32 sub = j / 32, l = j % 32;
            return qk_value(b, b[(five ? 48 : 16) + 32 * (sub / 2) + l], five ? b[16 + l] : 0, sub, five);
        }
        case T_Q6_K: {
            const u8* b = q6k_body(row, i / 256); const u32 j = i % 256;
            const u32 hf = j / 128, r = j % 128, qq = r / 32, l = r % 32;
            const u8 lb = b[64 * hf + 32 * (qq & 1) + l];
            const int lo = (qq >> 1) ? (lb >> 4) : (lb & 0xF);
            const int hb = (b[128 + 32 * hf + l] >> (2 * qq)) & 3;
            return q6k_d(row, k / 256, i / 256) * (float)(i8)b[192 + j / 16] * (float)((lo | (hb << 4)) - 32);
        }
        default: return 0.0f;
    }
}

// The 32 values of group `g` of a row of `k` values (values 32g .. 32g+31) dequantized, each block's
// scales decoded once for the group: the prefill path expands whole weight matrices with it. Same
// results as dequant_value, value by value.
__device__ __forceinline__ void dequant_group(int type, const u8* row, u32 g, u32 k, float* v) {
    switch (type) {
        case T_Q4_0: case T_Q4_1: {
            const bool mn = type == T_Q4_1;
            const u8* b = row + g * (mn ? 20 : 18);
            const float d = h2f(*(const u16*)b), m = mn ? h2f(*(const u16*)(b + 2)) : 0.0f;
            const u8* q = b + (mn ? 4 : 2);
#pragma unroll
            for (int j = 0; j < 16; j++) {
                v[j] = mn ? d * (float)(q[j] & 0xF) + m : d * (float)((q[j] & 0xF) - 8);
                v[j + 16] = mn ? d * (float)(q[j] >> 4) + m : d * (float)((q[j] >> 4) - 8);
            }
            return;
        }
        case T_Q5_0: case T_Q5_1: {
            const bool mn = type == T_Q5_1;
            const u8* b = row + g * (mn ? 24 : 22);
            const float d = h2f(*(const u16*)b), m = mn ? h2f(*(const u16*)(b + 2)) : 0.0f;
            const u8* hp = b + (mn ? 4 : 2);
            const u32 qh = (u32)load_int_b2(hp);
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const int lo = j < 16 ? (hp[4 + j] & 0xF) : (hp[4 + j - 16] >> 4);
                const int q = lo | (int)(((qh >> j) & 1u) << 4);
                v[j] = mn ? d * (float)q + m : d * (float)(q - 16);
            }
            return;
        }
        case T_Q8_0: {
            const u8* b = row + g * 34;
            const float d = h2f(*(const u16*)b);
#pragma unroll
            for (int j = 0; j < 32; j++) v[j] = d * (float)(i8)b[2 + j];
            return;
        }
        case T_Q4_K: case T_Q5_K: {
            const bool five = type == T_Q5_K;
            const u8* b = row + (g / 8) * (five ? 176 : 144);
            const u32 sub = g % 8;
            int sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            const float d = h2f(*(const u16*)b) * (float)sc, dm = h2f(*(const u16*)(b + 2)) * (float)m;
            const u8* q = b + (five ? 48 : 16) + 32 * (sub / 2);
#pragma unroll
            for (int l = 0; l < 32; l++) {
                int x = (sub & 1) ? (q[l] >> 4) : (q[l] & 0xF);
                if (five) x |= ((b[16 + l] >> sub) & 1) << 4;
                v[l] = d * (float)x - dm;
            }
            return;
        }
        case T_Q6_K: {
            const u8* b = q6k_body(row, g / 8);
            const u32 r = (g % 8) * 32, hf = r / 128, qq = (r % 128) / 32;
            const float d = q6k_d(row, k / 256, g / 8);
            const float s0 = d * (float)(i8)b[192 + r / 16], s1 = d * (float)(i8)b[192 + r / 16 + 1];
#pragma unroll
            for (int l = 0; l < 32; l++) {
                const u8 lb = b[64 * hf + 32 * (qq & 1) + l];
                const int lo = (qq >> 1) ? (lb >> 4) : (lb & 0xF);
                const int hb = (b[128 + 32 * hf + l] >> (2 * qq)) & 3;
                v[l] = (l < 16 ? s0 : s1) * (float)((lo | (hb << 4)) - 32);
            }
            return;
        }
        default: {
#pragma unroll
            for (int j = 0; j < 32; j++) v[j] = dequant_value(type, row, g * 32 + j, k);
        }
    }
}

// Group g (values 32g .. 32g + 31) of row r of a tiled Q4_K/Q5_K matrix, as dequant_group gives the same
// row untiled: the nibble (and fifth-bit) bytes come as four 8-byte pieces.
__device__ __forceinline__ void dequant_group_tiled(int type, const u8* w, u32 row_bytes, u32 r, u32 g, float* v) {
    const bool five = type == T_Q5_K;
    const u32 rr = r % 16, sub = g % 8;
    const u8* tile = w + (u64)(r / 16) * 16 * row_bytes + (u64)(g / 8) * 16 * (five ? 176 : 144);
    const u8* h = tile + 16 * rr;
    int sc, m;
    scale_min_k4(sub, h + 4, &sc, &m);
    const float d = h2f(*(const u16*)h) * (float)sc, dm = h2f(*(const u16*)(h + 2)) * (float)m;
    uint2 q[4], f[4];
#pragma unroll
    for (int t = 0; t < 4; t++) {
        q[t] = *(const uint2*)(tile + qk_tile_offset(five, rr, (five ? 48 : 16) + 32 * (sub / 2) + 8 * t));
        f[t] = five ? *(const uint2*)(tile + qk_tile_offset(five, rr, 16 + 8 * t)) : make_uint2(0, 0);
    }
#pragma unroll
    for (int l = 0; l < 32; l++) {
        const u32 qw = l % 8 < 4 ? q[l / 8].x : q[l / 8].y, fw = l % 8 < 4 ? f[l / 8].x : f[l / 8].y;
        const u32 byte = (qw >> (8 * (l % 4))) & 0xFF;
        int x = (sub & 1) ? (int)(byte >> 4) : (int)(byte & 0xF);
        if (five) x |= (((fw >> (8 * (l % 4))) >> sub) & 1) << 4;
        v[l] = d * (float)x - dm;
    }
}
