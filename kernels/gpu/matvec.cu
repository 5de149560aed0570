// Matrix × few-vectors products (decode, and the speculative verify batch of up to 8 rows): one warp per
// output value, its lanes striding over the weight row's units; each weight unit is loaded once and
// dotted with all NR activation rows, so a verify batch reads the weights once.
#include "compat.h"
#include "quant.h"

// Activations → int8 with one (scale, scaled sum) per 32 values (the dp4a operand; see quantize_group).
// One thread per value; the 32 values of a group are consecutive lanes. Used where the producer of the
// activations did not quantize them itself.
KILN_KERNEL void quantize_act(const float* x, u32 n, i8* yq, float2* yd) {
    grid_dependency_entry();
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    quantize_group(i < n ? x[i] : 0.0f, i, i < n, yq, yd);
}

// One block of MMV_THREADS threads per output value: the threads stride over the row's units two at a
// time (so each has two independent loads in flight), then the block reduces. A row per block keeps
// thousands of rows' loads in flight at once, which is what saturates HBM for a single token.
#define MMV_THREADS 128

template <int NR>
__device__ __forceinline__ void block_reduce_store(float* acc, float* out, u32 n_out, u32 o) {
    __shared__ float part[MMV_THREADS / 32][NR];
    const u32 lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int r = 0; r < NR; r++) {
        const float s = warp_sum(acc[r]);
        if (lane == 0) part[warp][r] = s;
    }
    __syncthreads();
    if (threadIdx.x < NR) {
        float t = 0.0f;
        for (u32 w = 0; w < MMV_THREADS / WARP_SIZE; w++) t += part[w][threadIdx.x];
        out[(u64)threadIdx.x * n_out + o] = t;
    }
}

template <int TYPE, int NR>
__device__ __forceinline__ void unit(const u8* row, u32 u, const Act& a, float* acc) {
    if (TYPE == T_Q4_0) unit_q4_0<NR>(row, u, a, acc);
    if (TYPE == T_Q4_1) unit_q4_1<NR>(row, u, a, acc);
    if (TYPE == T_Q5_0) unit_q5<NR, false>(row, u, a, acc);
    if (TYPE == T_Q5_1) unit_q5<NR, true>(row, u, a, acc);
    if (TYPE == T_Q8_0) unit_q8_0<NR>(row, u, a, acc);
    if (TYPE == T_Q4_K) unit_qk<NR, false>(row, u, a, acc);
    if (TYPE == T_Q5_K) unit_qk<NR, true>(row, u, a, acc);
    if (TYPE == T_Q6_K) unit_q6_k<NR>(row, u, a, acc);
}

// Output values o .. o + RPB - 1 by one block (RPB = 2: mmv2_*, the form for passes of 2+ activation rows),
// each summed exactly as a block of its own sums it (the same threads, units and order). With two rows
// each unit's activations, loaded once (the second row's unit calls read the same addresses with no
// store between), serve both weight rows, which halves the L1 traffic that bounds a block per row at 4
// activation rows (12 bytes of activations per weight byte). A decode step keeps a row a block, which
// spreads a single row over more blocks.
template <int TYPE, int NR, int RPB>
__device__ __forceinline__ void mmvq(const u8* w, u32 row_bytes, u32 n_units, u32 n_out, const int* yq,
                                     const float2* yd, u32 k, float* out) {
    const u32 o = blockIdx.x * RPB;
    if (o >= n_out) return;
    const bool second = RPB > 1 && o + 1 < n_out;  // the same for the whole block
    const u8* row0 = w + (u64)o * row_bytes;
    const u8* row1 = second ? row0 + row_bytes : row0;  // the last block may have one row: repeat it
    const Act a = {yq, yd, k / 4, k / 32};
    float acc[RPB][NR];
#pragma unroll
    for (int q = 0; q < RPB; q++)
#pragma unroll
        for (int r = 0; r < NR; r++) acc[q][r] = 0.0f;
    u32 u = threadIdx.x;
    for (; u + MMV_THREADS < n_units; u += 2 * MMV_THREADS) {
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int q = 0; q < RPB; q++) unit<TYPE, NR>(q ? row1 : row0, u + j * MMV_THREADS, a, acc[q]);
    }
    if (u < n_units) {
#pragma unroll
        for (int q = 0; q < RPB; q++) unit<TYPE, NR>(q ? row1 : row0, u, a, acc[q]);
    }
    block_reduce_store<NR>(acc[0], out, n_out, o);
    if (second) {
        __syncthreads();  // the first row's partial sums are read before the second's overwrite them
        block_reduce_store<NR>(acc[RPB - 1], out, n_out, o + 1);
    }
}

// The same product with one warp per output value and MMVW_THREADS / WARP_SIZE values per block: no
// block-wide reduction, and each lane walks more of the row with U units in flight, which keeps more loads
// outstanding per SM than a block per row (the 27B's rows are 5120 or 17408 values: 160 or 544 units).
// On an H100 this decodes 4-6% faster than a block per row (bench/README.md). KILN_MMV=block|warp|auto
// selects the variant at run time; the default (auto) takes this one except for products with few
// outputs, which a block per row spreads over more SMs.
#define MMVW_THREADS 128

// Output rows o .. o + RPW - 1 of a product, by the calling warp: lane-strided units, U in flight per
// lane. With RPW = 2 each unit's activations, loaded once (the second unit call's loads are the same
// addresses with no store between, so the compiler reuses them), serve two weight rows: for a verify
// batch of 4 rows a unit reads 12 bytes of activations (from L1) per weight byte, and that L1 traffic,
// not HBM, bounded the product.
template <int TYPE, int NR, int U, int RPW>
__device__ __forceinline__ void warp_rows(const u8* row, u32 row_bytes, u32 n_units, const Act& a, u32 n_out,
                                          u32 o, float* out) {
    const u32 lane = threadIdx.x % WARP_SIZE;
    const bool second = RPW > 1 && o + 1 < n_out;
    const u8* row1 = second ? row + row_bytes : row;  // the last warp may have one row: repeat it
    float acc[RPW][NR];
#pragma unroll
    for (int q = 0; q < RPW; q++)
#pragma unroll
        for (int r = 0; r < NR; r++) acc[q][r] = 0.0f;
    u32 u = lane;
    for (; u + (U - 1) * WARP_SIZE < n_units; u += U * WARP_SIZE) {
#pragma unroll
        for (int j = 0; j < U; j++) {
            unit<TYPE, NR>(row, u + j * WARP_SIZE, a, acc[0]);
            if (RPW > 1) unit<TYPE, NR>(row1, u + j * WARP_SIZE, a, acc[RPW - 1]);
        }
    }
    for (; u < n_units; u += WARP_SIZE) {
        unit<TYPE, NR>(row, u, a, acc[0]);
        if (RPW > 1) unit<TYPE, NR>(row1, u, a, acc[RPW - 1]);
    }
#pragma unroll
    for (int q = 0; q < RPW; q++) {
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const float t = warp_sum(acc[q][r]);
            if (lane == 0 && (q == 0 || second)) out[(u64)r * n_out + o + q] = t;
        }
    }
}

template <int TYPE, int NR, int U, int RPW>
__device__ __forceinline__ void mmvq_warp(const u8* w, u32 row_bytes, u32 n_units, u32 n_out, const int* yq,
                                          const float2* yd, u32 k, float* out) {
    const u32 o = (blockIdx.x * (MMVW_THREADS / WARP_SIZE) + threadIdx.x / WARP_SIZE) * RPW;
    if (o >= n_out) return;  // the whole warp leaves together
    const Act a = {yq, yd, k / 4, k / 32};
    warp_rows<TYPE, NR, U, RPW>(w + (u64)o * row_bytes, row_bytes, n_units, a, n_out, o, out);
}

// Several products of the same activations in one launch (the recurrent layer's four input projections,
// attention's q, k and v): each part has its own weight (any quantized type) and output, and the blocks
// are dealt out to the parts in order, a warp per output row as in mmvq_warp. One launch instead of up to
// four, and the small products (the 48-row gates) share the GPU with the big ones instead of each
// running nearly alone. The layout matches `MatvecGroup` in kernels/src/gpu/cuda/mod.rs.
#define MMVG_MAX_PARTS 4
struct MatvecPart {
    const u8* w;
    float* out;
    // tiled: a Q4_K/Q5_K weight in the tensor-core kernels' tiled layout (qk_frags_tile)
    u32 row_bytes, n_units, n_out, type, first_block, tiled;
};
struct MatvecGroup {
    MatvecPart p[MMVG_MAX_PARTS];
    u32 n_parts, pad;
};

template <int NR>
__device__ __forceinline__ void mmvq_group(const MatvecGroup& g, const int* yq, const float2* yd, u32 k) {
    // Selected with constant indices (no dynamic indexing of the parameter struct, which would copy it
    // to local memory).
    MatvecPart p = g.p[0];
#pragma unroll
    for (u32 j = 1; j < MMVG_MAX_PARTS; j++)
        if (j < g.n_parts && blockIdx.x >= g.p[j].first_block) p = g.p[j];
    const u32 o = (blockIdx.x - p.first_block) * (MMVW_THREADS / WARP_SIZE) + threadIdx.x / WARP_SIZE;
    if (o >= p.n_out) return;
    const Act a = {yq, yd, k / 4, k / 32};
    const u8* row = p.w + (u64)o * p.row_bytes;
    switch (p.type) {
        case T_Q4_0: warp_rows<T_Q4_0, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q4_1: warp_rows<T_Q4_1, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q5_0: warp_rows<T_Q5_0, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q5_1: warp_rows<T_Q5_1, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q8_0: warp_rows<T_Q8_0, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q4_K: warp_rows<T_Q4_K, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q5_K: warp_rows<T_Q5_K, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        case T_Q6_K: warp_rows<T_Q6_K, NR, 2, 1>(row, p.row_bytes, p.n_units, a, p.n_out, o, p.out); break;
        default: break;
    }
}

#define MMVG(NR)                                                                                    \
    KILN_KERNEL void mmvg_##NR(MatvecGroup g, const int* yq, const float2* yd, u32 k) {             \
        grid_dependency_entry();                                                                    \
        mmvq_group<NR>(g, yq, yd, k);                                                               \
    }
MMVG(1) MMVG(2) MMVG(3) MMVG(4) MMVG(5) MMVG(6) MMVG(7) MMVG(8)

// K-quant products (Q4_K, Q5_K, Q6_K) × up to 8 activation rows on the tensor cores (NVIDIA sm_80+: int8
// mma.sync). A warp takes 16 output rows and a K-slice; the mma multiply those 16 weight rows' 4-, 5- or
// 6-bit values (int8 in the fragments) with int8 activations into exact int32 sums, so the activations
// are read once per 16 weight rows instead of once per row and a verify batch is not bound by L1 traffic.
// Q4_K and Q5_K put a super-block's 8 sub-blocks in the 8 columns (mmq_frags_qk; most verify batches
// (sub-block, row) pairs: mmq_frags_qk_pairs); Q6_K, whose scales cover 16 values, puts the activation
// rows there (columns past NR zero) and takes m16n8k16, one 16-value sub-block an mma, a thread's 4
// bytes at 4t. The sums inside an mma are integers, so the order
// of the values within it does not matter. Every activation row is computed alone, in the same order for
// any NR, so a verify batch's rows equal decode steps bit for bit (speculative decoding needs it). Blocks
// of WARPS warps split K (super-blocks dealt round-robin) and sum in a fixed order. The float arithmetic
// is spelled out with fmaf (as in the dp4a units of quant.h), so no compiler's contraction choice, which
// may differ between the NR instantiations, decides the rounding.
//
// The per-sub-block work is kept to integer multiplies: within a super-block a Q4_K/Q5_K row's value is
// d · Σ_sb yscale_sb · (sc_sb · c_sb) − dmin · Σ_sb ysum_sb · m_sb (the formula of unit_qk, regrouped),
// with the 6-bit scales and mins unpacked from the three scale words; a Q6_K row's is
// d · Σ_G yscale_G · (sc_2G · c_2G + sc_2G+1 · c_2G+1) over its 32-value groups G.
#if defined(KILN_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define KILN_MMQ 1

__device__ __forceinline__ void mma_s8(int (&c)[4], const int (&a)[4], const int (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_s8_k16(int (&c)[4], const int (&a)[2], int b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b));
}

// A Q4_K super-block's 6-bit scales and mins as bytes: byte j % 4 of sc[j / 4] is sub-block j's scale,
// likewise m (scale_min_k4 for all eight sub-blocks in word operations).
struct Q4kScales {
    u32 sc[2], m[2];
    float d, dmin;
};

__device__ __forceinline__ Q4kScales q4k_scales(const uint4& head) {
    Q4kScales s;
    s.d = h2f((u16)(head.x & 0xFFFF));
    s.dmin = h2f((u16)(head.x >> 16));
    s.sc[0] = head.y & 0x3F3F3F3Fu;
    s.m[0] = head.z & 0x3F3F3F3Fu;
    s.sc[1] = (head.w & 0x0F0F0F0Fu) | ((head.y >> 2) & 0x30303030u);
    s.m[1] = ((head.w >> 4) & 0x0F0F0F0Fu) | ((head.z >> 2) & 0x30303030u);
    return s;
}

__device__ __forceinline__ int byte_of(u32 w, int j) { return (int)((w >> (8 * j)) & 0xFFu); }

// The activation side of a thread's fragments: its column for B (g; zeros past NR) and its two columns of
// C (2t, 2t + 1), whose (scale, scaled sum) pairs it reads where they exist.
struct MmqCols {
    const i8* yb;
    const float2 *yd0, *yd1;
    bool has_b;
};

// Q4_K (144 bytes per 256) and Q5_K (176: the same nibbles after 32 bytes of fifth bits, bit sb of byte l
// for value l of sub-block sb) take the sub-blocks, not the activation rows, as the mma's columns: A's
// k-slots 4t .. 4t + 3 hold sub-block 2t and 16 + 4t .. 16 + 4t + 3 sub-block 2t + 1 (mma p of a
// super-block's 8 taking their positions 4p .. 4p + 3), and B's column n carries sub-block n's activations
// in that sub-block's slots only, so after 8 mma the int32 C holds every (row, sub-block) dot of the
// super-block: lane 4g + t has rows g and g + 8, sub-blocks 2t and 2t + 1. The scales, mins and
// activation scales are then applied once a super-block by all 32 lanes; with the activation rows as the
// columns (before session 18) they were applied once a sub-block by the 8 lanes holding column 0 of a
// single row: 165 instructions a super-block against 275, the 27B's Q4_K products 13-31% faster on an H200
// (bench/README.md, session 18). NR activation rows run NR chains of 8 mma on the same A fragments, each
// summed alone in the same order. A lane's weights are chunk t of its two rows (32 bytes: the low nibbles
// are sub-block 2t, the high ones 2t + 1) and, for Q5_K, both rows' 32 bytes of fifth bits.
struct QkFrags {
    uint4 h0, h1;  // rows g and g + 8's heads: d, dmin, the packed scales and mins
    uint4 q[4];    // chunk t of row g (q[0], q[1]) and of row g + 8 (q[2], q[3])
    uint4 f[4];    // Q5_K: row g's fifth bits (f[0], f[1]) and row g + 8's (f[2], f[3])
};

// The fragments from the super-block's bytes b0 and b1 in the thread's two rows (GGUF's layout; a row's
// bytes start 16-byte aligned, its blocks being 144 or 176 bytes).
template <bool FIVE>
__device__ __forceinline__ QkFrags qk_frags_rows(const u8* b0, const u8* b1, u32 t) {
    constexpr u32 QS = FIVE ? 48 : 16;
    QkFrags f;
    f.h0 = *(const uint4*)b0;
    f.h1 = *(const uint4*)b1;
    f.q[0] = *(const uint4*)(b0 + QS + 32 * t);
    f.q[1] = *(const uint4*)(b0 + QS + 32 * t + 16);
    f.q[2] = *(const uint4*)(b1 + QS + 32 * t);
    f.q[3] = *(const uint4*)(b1 + QS + 32 * t + 16);
#pragma unroll
    for (int j = 0; j < 4; j++)
        f.f[j] = FIVE ? *(const uint4*)((j < 2 ? b0 : b1) + 16 + 16 * (j % 2)) : make_uint4(0, 0, 0, 0);
    return f;
}

// The tiled layout the GPU backend repacks Q4_K/Q5_K weights into for these kernels (the tile_qk kernel
// below writes it, at load; qk_tile_offset in quant.h is its one definition): each 16-row group's bytes
// stay where they were, but as one tile a super-block, tile `blk` at blk · 16 · 144 (Q5_K 176) from the
// group's start, holding the 16 rows' heads (16 bytes each, row order), for Q5_K then their fifth bits
// (32 bytes each, row order), then 2,048 bytes of nibbles as four 512-byte runs, lane 4g + t's 16 bytes
// of run j being bytes 16 (j % 2) .. + 15 of chunk t of row g + 8 (j / 2). A thread's nibbles come in
// whole 16-byte loads and each load instruction of a warp reads 512 consecutive bytes (GGUF's layout
// gave 8 rows a load instruction: 14-22% slower products, bench/README.md session 16).
template <bool FIVE>
__device__ __forceinline__ QkFrags qk_frags_tile(const u8* tile, u32 lane) {
    const u32 g = lane / 4;
    const uint4* heads = (const uint4*)tile;
    const uint4* runs = (const uint4*)(tile + (FIVE ? 768 : 256)) + lane;
    QkFrags f;
    f.h0 = heads[g];
    f.h1 = heads[g + 8];
#pragma unroll
    for (int j = 0; j < 4; j++) f.q[j] = runs[32 * j];
    const uint4* fifth = (const uint4*)(tile + 256);
#pragma unroll
    for (int j = 0; j < 4; j++) f.f[j] = FIVE ? fifth[2 * (g + 8 * (j / 2)) + j % 2] : make_uint4(0, 0, 0, 0);
    return f;
}

__device__ __forceinline__ u32 word_of(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The A fragments of a super-block's mma p (positions 4p .. 4p + 3 of the lane's sub-blocks): rows g and
// g + 8's low nibbles (sub-block 2t), then their high nibbles (2t + 1), Q5_K's fifth bits added.
template <bool FIVE>
__device__ __forceinline__ void qk_a_frags(const QkFrags& w, int p, u32 t, int (&a)[4]) {
    constexpr u32 NIB = 0x0F0F0F0Fu;
    const u32 wg = word_of(w.q[p / 4], p % 4), wh = word_of(w.q[2 + p / 4], p % 4);
    a[0] = (int)(wg & NIB);
    a[1] = (int)(wh & NIB);
    a[2] = (int)((wg >> 4) & NIB);
    a[3] = (int)((wh >> 4) & NIB);
    if (FIVE) {
        const u32 fg = word_of(w.f[p / 4], p % 4), fh = word_of(w.f[2 + p / 4], p % 4);
        a[0] |= (int)(((fg >> (2 * t)) & 0x01010101u) << 4);
        a[1] |= (int)(((fh >> (2 * t)) & 0x01010101u) << 4);
        a[2] |= (int)(((fg >> (2 * t + 1)) & 0x01010101u) << 4);
        a[3] |= (int)(((fh >> (2 * t + 1)) & 0x01010101u) << 4);
    }
}

// One super-block (index blk along k) of the thread's two rows into acc[r] (row g, row g + 8) for each
// activation row r: NR rows of yq (k values each) and of yd (k / 32 (scale, scaled sum) pairs each).
template <int NR, bool FIVE>
__device__ __forceinline__ void mmq_frags_qk(const QkFrags& w, u32 blk, const i8* yq, const float2* yd, u32 k,
                                             u32 lane, float (&acc)[NR][2]) {
    const u32 g = lane / 4, t = lane % 4;
    // The thread's B registers: column g (sub-block g) in the k-slots of sub-block 2t, then of 2t + 1.
    const u32 m0 = g == 2 * t ? ~0u : 0u, m1 = g == 2 * t + 1 ? ~0u : 0u;
    // Activation row r's sub-block g: two 16-byte loads for the one- and two-row products, else a word an
    // mma (eight rows' 32 bytes would not stay in registers).
    constexpr int HELD = NR <= 2 ? NR : 1;
    uint4 yh[HELD][2];
#pragma unroll
    for (int r = 0; r < HELD; r++) {
        const uint4* p = (const uint4*)(yq + (u64)r * k + blk * 256 + 32 * g);
        yh[r][0] = p[0];
        yh[r][1] = p[1];
    }
    int c[NR][4];
#pragma unroll
    for (int r = 0; r < NR; r++) c[r][0] = c[r][1] = c[r][2] = c[r][3] = 0;
#pragma unroll
    for (int p = 0; p < 8; p++) {
        int a[4];
        qk_a_frags<FIVE>(w, p, t, a);
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const u32 yw = NR == HELD ? word_of(yh[r < HELD ? r : 0][p / 4], p % 4)
                                   : *(const u32*)(yq + (u64)r * k + blk * 256 + 32 * g + 4 * p);
            const int b[2] = {(int)(yw & m0), (int)(yw & m1)};
            mma_s8(c[r], a, b);
        }
    }
    // Sub-blocks 2t and 2t + 1's scales and mins: bytes 2 (t % 2) and 2 (t % 2) + 1 of word t / 2.
    const Q4kScales s0 = q4k_scales(w.h0), s1 = q4k_scales(w.h1);
    // Shifts by a lane-dependent amount written out, not byte_of: the unsigned byte then converts to
    // float in one instruction (I2F.U8; byte_of's int took a mask and a conversion each, 4 more
    // instructions a super-block in the single-row kernel).
    const u32 sh = 16 * (t % 2);
    const u32 sw0 = t < 2 ? s0.sc[0] : s0.sc[1], mw0 = t < 2 ? s0.m[0] : s0.m[1];
    const u32 sw1 = t < 2 ? s1.sc[0] : s1.sc[1], mw1 = t < 2 ? s1.m[0] : s1.m[1];
    const int sc0a = (int)((sw0 >> sh) & 0xFF), sc0b = (int)((sw0 >> (sh + 8)) & 0xFF);
    const int sc1a = (int)((sw1 >> sh) & 0xFF), sc1b = (int)((sw1 >> (sh + 8)) & 0xFF);
    const float mn0a = (float)((mw0 >> sh) & 0xFF), mn0b = (float)((mw0 >> (sh + 8)) & 0xFF);
    const float mn1a = (float)((mw1 >> sh) & 0xFF), mn1b = (float)((mw1 >> (sh + 8)) & 0xFF);
#pragma unroll
    for (int r = 0; r < NR; r++) {
        // (scale, scaled sum) of sub-blocks 2t (x, y) and 2t + 1 (z, w); k / 32 is a multiple of 8.
        const float4 ys = *(const float4*)(yd + (u64)r * (k / 32) + blk * 8 + 2 * t);
        const float sa0 = fmaf(ys.x, (float)(c[r][0] * sc0a), ys.z * (float)(c[r][1] * sc0b));
        const float sm0 = fmaf(ys.y, mn0a, ys.w * mn0b);
        const float sa1 = fmaf(ys.x, (float)(c[r][2] * sc1a), ys.z * (float)(c[r][3] * sc1b));
        const float sm1 = fmaf(ys.y, mn1a, ys.w * mn1b);
        acc[r][0] += fmaf(s0.d, sa0, -(s0.dmin * sm0));
        acc[r][1] += fmaf(s1.d, sa1, -(s1.dmin * sm1));
    }
}

// Which activation-row counts take the row pairs below (bit NR of KILN_MMQ_PAIR_ROWS, which
// KILN_KERNEL_DEFINES can set for measuring), the others the sub-block columns of mmq_frags_qk, one mma
// chain a row: 2, 3, 4, 6 and 8 rows. With 5 and 7 the last pair is half empty and the pairs' 3-4 pairs
// of sums took 140-146 registers: 5 rows 10.71-10.72 ms against 9.85-9.87 for the 27B's verify pass, 7
// rows 13.40-13.49 against 13.18-13.21 (H200, bench/README.md, session 19).
#ifndef KILN_MMQ_PAIR_ROWS
#define KILN_MMQ_PAIR_ROWS 0x15C
#endif
__host__ __device__ constexpr bool mmq_pairs(int nr) { return nr >= 2 && ((KILN_MMQ_PAIR_ROWS >> nr) & 1); }

// A verify batch's rows (NR of mmq_pairs) in pairs on m16n8k16, whose lane t owns only k-slots 4t ..
// 4t + 3: set 0 of the mma puts the even sub-blocks there (2t, the low nibbles of chunk t), set 1 the odd
// ones (2t + 1), and B's 8 columns are (sub-block, activation row) for a pair of rows: column n the
// set's n % 4-th sub-block of row n / 4, filled by the lane whose k-slots hold that sub-block
// (g % 4 == t) and zero elsewhere. Four B entries in sixteen carry values against one in eight with the
// sub-blocks alone as the columns (mmq_frags_qk), so 4 rows take 32 m16n8k16 a super-block instead of
// 32 m16n8k32, and the activations come in four 16-byte loads a row pair instead of a 4-byte load and
// two masks an mma. Lane 4g + t ends with sub-blocks 4u .. 4u + 3 (u = t % 2) of activation row t / 2
// of the pair, for rows g and g + 8: the sums P_2u and P_2u+1 that decode's lanes 2u and 2u + 1
// accumulate, computed with decode's exact formula, kept apart over the super-blocks and added as
// decode's lane tree adds them (mmq_rows), so every verify row equals a decode step bit for bit. The
// 27B's verify pass of 4 tokens: 7.95-8.01 ms against 8.80-8.83 (one token 6.15-6.21; H200, session 19).
template <int NR, bool FIVE>
__device__ __forceinline__ void mmq_frags_qk_pairs(const QkFrags& w, u32 blk, const i8* yq, const float2* yd,
                                                   u32 k, u32 lane, float (&acc)[(NR + 1) / 2][2][2]) {
    constexpr int NP = (NR + 1) / 2;
    const u32 g = lane / 4, t = lane % 4, u = t % 2;
    // The B side: sub-blocks 2t and 2t + 1 (64 consecutive bytes) of activation row 2rp + g / 4.
    auto acts = [&](int rp, uint4 (&v)[4]) {
        const u32 r = 2 * rp + g / 4;
        const bool carries = g % 4 == t && r < NR;
        const uint4* y = (const uint4*)(yq + (u64)(carries ? r : 0) * k + blk * 256 + 64 * t);
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = carries ? y[j] : make_uint4(0, 0, 0, 0);
    };
    // A row pair at a time, its activations loaded for it (all pairs' at once held 16 more registers
    // at 4 rows: 9.37 against 9.31 ms for the 27B's 4-token verify pass, H200, session 19), the A
    // fragments rebuilt for each pair.
    int c[NP][2][4];
#pragma unroll
    for (int rp = 0; rp < NP; rp++) {
        uint4 yv[4];
        acts(rp, yv);
#pragma unroll
        for (int s = 0; s < 2; s++) c[rp][s][0] = c[rp][s][1] = c[rp][s][2] = c[rp][s][3] = 0;
#pragma unroll
        for (int p = 0; p < 8; p++) {
            // mma p's A: set 0 (low nibbles: sub-block 2t) and set 1 (high: 2t + 1), rows g and g + 8.
            int a[4];
            qk_a_frags<FIVE>(w, p, t, a);
            const int a0[2] = {a[0], a[1]}, a1[2] = {a[2], a[3]};
            mma_s8_k16(c[rp][0], a0, (int)word_of(yv[p / 4], p % 4));
            mma_s8_k16(c[rp][1], a1, (int)word_of(yv[2 + p / 4], p % 4));
        }
    }
    // Sub-blocks 4u .. 4u + 3's scales and mins: the bytes of word u.
    const Q4kScales s0 = q4k_scales(w.h0), s1 = q4k_scales(w.h1);
    const u32 sw[2] = {u ? s0.sc[1] : s0.sc[0], u ? s1.sc[1] : s1.sc[0]};
    const u32 mw[2] = {u ? s0.m[1] : s0.m[0], u ? s1.m[1] : s1.m[0]};
    const float d[2] = {s0.d, s1.d}, dmin[2] = {s0.dmin, s1.dmin};
#pragma unroll
    for (int rp = 0; rp < NP; rp++) {
        const u32 r = 2 * rp + t / 2;
        if (r >= NR) continue;
        // (scale, scaled sum) of sub-blocks 4u, 4u + 1 (lo) and 4u + 2, 4u + 3 (hi).
        const float4 lo = *(const float4*)(yd + (u64)r * (k / 32) + blk * 8 + 4 * u);
        const float4 hi = *(const float4*)(yd + (u64)r * (k / 32) + blk * 8 + 4 * u + 2);
#pragma unroll
        for (int i = 0; i < 2; i++) {  // rows g (C's 0, 1) and g + 8 (2, 3)
            const int sc[4] = {(int)(sw[i] & 0xFF), (int)((sw[i] >> 8) & 0xFF), (int)((sw[i] >> 16) & 0xFF),
                               (int)(sw[i] >> 24)};
            const float mn[4] = {(float)(mw[i] & 0xFF), (float)((mw[i] >> 8) & 0xFF),
                                 (float)((mw[i] >> 16) & 0xFF), (float)(mw[i] >> 24)};
            const float sa0 = fmaf(lo.x, (float)(c[rp][0][2 * i] * sc[0]), lo.z * (float)(c[rp][1][2 * i] * sc[1]));
            const float sm0 = fmaf(lo.y, mn[0], lo.w * mn[1]);
            const float sa1 =
                fmaf(hi.x, (float)(c[rp][0][2 * i + 1] * sc[2]), hi.z * (float)(c[rp][1][2 * i + 1] * sc[3]));
            const float sm1 = fmaf(hi.y, mn[2], hi.w * mn[3]);
            acc[rp][i][0] += fmaf(d[i], sa0, -(dmin[i] * sm0));
            acc[rp][i][1] += fmaf(d[i], sa1, -(dmin[i] * sm1));
        }
    }
}

// Super-blocks first, first + step, ... of the thread's rows r0 and r1 (TILED: of the 16-row group at
// `group`, in the tiled layout). A single activation row keeps the next super-block's weights in flight
// while it computes one (the loads issued before the mma, into a second set of registers): with 4 warps a
// 16-row block, a warp of the 27B's 5,120-output products otherwise waits for each super-block alone
// (down projection 28.0 against 16.8 µs on an H200, bench/README.md session 18). More rows keep their
// registers for the activations.
template <int NR, bool FIVE, bool TILED, typename Acc>
__device__ __forceinline__ void mmq_blocks_qk(const u8* r0, const u8* r1, const u8* group, u32 n_blocks,
                                              u32 first, u32 step, const i8* yq, const float2* yd, u32 k,
                                              u32 lane, Acc& acc) {
    constexpr u32 BYTES = FIVE ? 176 : 144;
    constexpr bool AHEAD = NR == 1 && !FIVE;
    auto fetch = [&](u32 blk) {
        return TILED ? qk_frags_tile<FIVE>(group + blk * 16 * BYTES, lane)
                     : qk_frags_rows<FIVE>(r0 + blk * BYTES, r1 + blk * BYTES, lane % 4);
    };
    QkFrags next;
    if (AHEAD && first < n_blocks) next = fetch(first);
    for (u32 blk = first; blk < n_blocks; blk += step) {
        const QkFrags w = AHEAD ? next : fetch(blk);
        if (AHEAD && blk + step < n_blocks) next = fetch(blk + step);
        if constexpr (!mmq_pairs(NR))
            mmq_frags_qk<NR, FIVE>(w, blk, yq, yd, k, lane, acc);
        else
            mmq_frags_qk_pairs<NR, FIVE>(w, blk, yq, yd, k, lane, acc);
    }
}

// Q6_K in the GPU's layout (q6k_body in quant.h: a super-block's 208-byte body of ql[128], qh[64] and 16
// int8 scales, 16-byte aligned, its d apart). Value v = 128n + 32q + l of a block has its low nibble in
// ql[64n + 32(q & 1) + l] (high nibbles for q ≥ 2) and its high bit pair in qh[32n + l] (bits 2q, 2q + 1);
// its 16-value sub-block j = v / 16 has scale j. The thread's 4 bytes of sub-block j = 8n + 2q + lh sit
// at 16lh + 4t of those runs.
template <int NR>
__device__ __forceinline__ void mmq_blocks_q6_k(const u8* r0, const u8* r1, u32 n_blocks, u32 first, u32 step,
                                                const MmqCols& y, u32 t, float (&acc)[4]) {
    const u32 c0 = 2 * t, c1 = 2 * t + 1;
    for (u32 blk = first; blk < n_blocks; blk += step) {
        const u8* b0 = q6k_body(r0, blk);
        const u8* b1 = q6k_body(r1, blk);
        // ql words by (n, q & 1, lh), qh words by (n, lh), the 16 scales as 4 words.
        int l0[8], l1[8], hb0[4], hb1[4], sc0[4], sc1[4];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const u32 off = 64 * (i / 4) + 32 * ((i / 2) % 2) + 16 * (i % 2) + 4 * t;
            l0[i] = *(const int*)(b0 + off);
            l1[i] = *(const int*)(b1 + off);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const u32 off = 128 + 32 * (i / 2) + 16 * (i % 2) + 4 * t;
            hb0[i] = *(const int*)(b0 + off);
            hb1[i] = *(const int*)(b1 + off);
            sc0[i] = *(const int*)(b0 + 192 + 4 * i);
            sc1[i] = *(const int*)(b1 + 192 + 4 * i);
        }
        const float d0 = q6k_d(r0, n_blocks, blk), d1 = q6k_d(r1, n_blocks, blk);
        float sa[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int G = 0; G < 8; G++) {
            const int n = G / 4, q = G % 4;
            int s[4] = {0, 0, 0, 0};  // Σ over the group's two sub-blocks of sc · c, per (row, column)
#pragma unroll
            for (int lh = 0; lh < 2; lh++) {
                const int j = 2 * G + lh;
                const int il = 4 * n + 2 * (q & 1) + lh, ih = 2 * n + lh;
                const u32 nshift = 4 * (q >> 1), hshift = 2 * q;
                const int a[2] = {q6_signed(l0[il], hb0[ih], nshift, hshift),
                                  q6_signed(l1[il], hb1[ih], nshift, hshift)};
                const int yv = *(const int*)(y.yb + blk * 256 + 16 * j + 4 * t);
                int c[4] = {0, 0, 0, 0};
                mma_s8_k16(c, a, y.has_b ? yv : 0);
                const int w0 = (int)(i8)byte_of((u32)sc0[j / 4], j % 4);
                const int w1 = (int)(i8)byte_of((u32)sc1[j / 4], j % 4);
                s[0] += c[0] * w0;
                s[1] += c[1] * w0;
                s[2] += c[2] * w1;
                s[3] += c[3] * w1;
            }
            const u32 sub = blk * 8 + G;
            if (c0 < NR) {
                const float ys = y.yd0[sub].x;
                sa[0] = fmaf(ys, (float)s[0], sa[0]);
                sa[2] = fmaf(ys, (float)s[2], sa[2]);
            }
            if (c1 < NR) {
                const float ys = y.yd1[sub].x;
                sa[1] = fmaf(ys, (float)s[1], sa[1]);
                sa[3] = fmaf(ys, (float)s[3], sa[3]);
            }
        }
        acc[0] = fmaf(d0, sa[0], acc[0]);
        acc[1] = fmaf(d0, sa[1], acc[1]);
        acc[2] = fmaf(d1, sa[2], acc[2]);
        acc[3] = fmaf(d1, sa[3], acc[3]);
    }
}

// Output rows o0 .. o0 + 15 of a TYPE product by a block of WARPS warps (TILED: Q4_K/Q5_K weights in the
// tiled layout, whole 16-row groups).
template <int TYPE, int NR, int WARPS, bool TILED = false>
__device__ __forceinline__ void mmq_rows(const u8* w, u32 row_bytes, u32 n_out, u32 o0, const i8* yq,
                                         const float2* yd, u32 k, float* out, float (*part)[16][8]) {
    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const u32 g = lane / 4, t = lane % 4;
    // The thread's two weight rows (clamped: rows past the matrix are read but never stored).
    const u8* r0 = w + (u64)min(o0 + g, n_out - 1) * row_bytes;
    const u8* r1 = w + (u64)min(o0 + g + 8, n_out - 1) * row_bytes;
    // The warps' partial sums (part[warp][row][activation row]), added in warp order below.
    if (TYPE == T_Q6_K) {
        const u32 c0 = 2 * t, c1 = 2 * t + 1;
        const MmqCols y = {yq + (u64)(g < NR ? g : 0) * k, yd + (u64)(c0 < NR ? c0 : 0) * (k / 32),
                           yd + (u64)(c1 < NR ? c1 : 0) * (k / 32), g < NR};
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        mmq_blocks_q6_k<NR>(r0, r1, k / 256, warp, WARPS, y, t, acc);
        part[warp][g][c0] = acc[0];
        part[warp][g][c1] = acc[1];
        part[warp][g + 8][c0] = acc[2];
        part[warp][g + 8][c1] = acc[3];
    } else if constexpr (!mmq_pairs(NR)) {
        float acc[NR][2];
#pragma unroll
        for (int r = 0; r < NR; r++) acc[r][0] = acc[r][1] = 0.0f;
        mmq_blocks_qk<NR, TYPE == T_Q5_K, TILED>(r0, r1, w + (u64)o0 * row_bytes, k / 256, warp, WARPS, yq, yd, k,
                                                lane, acc);
        // A row's sub-block pairs P_t are on the lanes t = 0 .. 3 of its g: added in one fixed tree,
        // (P_0 + P_1) + (P_2 + P_3).
#pragma unroll
        for (int r = 0; r < NR; r++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                acc[r][i] += shfl_xor(acc[r][i], 1);
                acc[r][i] += shfl_xor(acc[r][i], 2);
            }
        if (t == 0) {
#pragma unroll
            for (int r = 0; r < NR; r++) {
                part[warp][g][r] = acc[r][0];
                part[warp][g + 8][r] = acc[r][1];
            }
        }
    } else {
        // Per row pair, output row (g, g + 8) and the lane's two sums P_2u, P_2u+1 (mmq_frags_qk_pairs).
        constexpr int NP = (NR + 1) / 2;
        float acc[NP][2][2];
#pragma unroll
        for (int rp = 0; rp < NP; rp++) acc[rp][0][0] = acc[rp][0][1] = acc[rp][1][0] = acc[rp][1][1] = 0.0f;
        mmq_blocks_qk<NR, TYPE == T_Q5_K, TILED>(r0, r1, w + (u64)o0 * row_bytes, k / 256, warp, WARPS, yq, yd, k,
                                                lane, acc);
        // Decode's tree: P_0 + P_1 on lane t = 0 (P_2 + P_3 on t = 1), then the two added across the lanes.
#pragma unroll
        for (int rp = 0; rp < NP; rp++) {
            const u32 r = 2 * rp + t / 2;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float s = acc[rp][i][0] + acc[rp][i][1];
                s += shfl_xor(s, 1);
                if (t % 2 == 0 && r < NR) part[warp][g + 8 * i][r] = s;
            }
        }
    }
    __syncthreads();
    const u32 row = threadIdx.x / 8, col = threadIdx.x % 8;  // the first 128 threads: one (row, column) each
    if (row < 16 && col < NR && o0 + row < n_out) {
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < WARPS; j++) s += part[j][row][col];
        out[(u64)col * n_out + o0 + row] = s;
    }
}

// Rows o0 .. o0 + 15 of a group's part, in the part's layout (Q6_K is never tiled).
template <int TYPE, int NR, int WARPS>
__device__ __forceinline__ void mmq_part(const MatvecPart& p, u32 o0, const i8* yq, const float2* yd, u32 k,
                                         float (*part)[16][8]) {
    if (TYPE != T_Q6_K && p.tiled)
        mmq_rows<TYPE, NR, WARPS, true>(p.w, p.row_bytes, p.n_out, o0, yq, yd, k, p.out, part);
    else
        mmq_rows<TYPE, NR, WARPS>(p.w, p.row_bytes, p.n_out, o0, yq, yd, k, p.out, part);
}

// Several products of the same activations (the recurrent layer's input projections, attention's q, k
// and v: one launch, like mmvg) or a single Q5_K or Q6_K one: the parts' 16-row blocks dealt out in order,
// each part of any of the three types.
template <int NR, int WARPS>
__device__ __forceinline__ void mmq_group(const MatvecGroup& g, const i8* yq, const float2* yd, u32 k) {
    __shared__ float part[WARPS][16][8];
    MatvecPart p = g.p[0];
#pragma unroll
    for (u32 j = 1; j < MMVG_MAX_PARTS; j++)
        if (j < g.n_parts && blockIdx.x >= g.p[j].first_block) p = g.p[j];
    const u32 o0 = (blockIdx.x - p.first_block) * 16;
    // The type and layout are the same for the whole block, so every thread reaches the block barrier
    // inside.
    switch (p.type) {
        case T_Q4_K: mmq_part<T_Q4_K, NR, WARPS>(p, o0, yq, yd, k, part); break;
        case T_Q5_K: mmq_part<T_Q5_K, NR, WARPS>(p, o0, yq, yd, k, part); break;
        case T_Q6_K: mmq_part<T_Q6_K, NR, WARPS>(p, o0, yq, yd, k, part); break;
        default: break;
    }
}

// A single Q4_K product, with its own arguments (fewer registers than a group's part selection).
template <int NR, int WARPS, bool TILED>
__device__ __forceinline__ void mmq_q4_k(const u8* w, u32 row_bytes, u32 n_out, const i8* yq, const float2* yd,
                                         u32 k, float* out) {
    __shared__ float part[WARPS][16][8];
    mmq_rows<T_Q4_K, NR, WARPS, TILED>(w, row_bytes, n_out, blockIdx.x * 16, yq, yd, k, out, part);
}

// The single Q4_K products of 2, 4 and 6 activation rows held to the registers that let 24 warps share
// an SM (`KILN_MMQ_BOUND_WARPS`; negative: no bound; MMQ_BOUNDS_<rows> = MMQ_BOUNDS_ON or _OFF chooses
// the row counts, both through KILN_KERNEL_DEFINES for measuring). Unbounded, the 4-row kernel took 82
// registers, 20 warps an SM, and the 27B's 4-token verify pass 9.31 ms against 7.99-8.02 bounded; 2 rows
// 6.78-6.81 against 7.09-7.12 ms (64 registers unbounded, 72 bounded: another schedule); 6 rows (96
// bytes spilled) 10.36-10.38 against 11.41-11.46. The others spill when bounded and ran slower: 3 rows
// 8.02-8.06 against 7.75-7.80 ms; 5, 7 and 8 rows 11.9-12.0, 17.0-17.1 and 15.0-15.1 ms against 9.85,
// 13.2 and 13.15; the groups (mmqg) at 3 rows 8.5 ms (H200, bench/README.md, session 19).
#ifndef KILN_MMQ_BOUND_WARPS
#define KILN_MMQ_BOUND_WARPS 24
#endif
#if KILN_MMQ_BOUND_WARPS < 0
#define MMQ_BOUNDS_ON(WARPS)
#else
#define MMQ_BOUNDS_ON(WARPS) __launch_bounds__(WARPS * 32, KILN_MMQ_BOUND_WARPS / WARPS)
#endif
#define MMQ_BOUNDS_OFF(WARPS)
#define MMQ_BOUNDS_1 MMQ_BOUNDS_OFF
#ifndef MMQ_BOUNDS_2
#define MMQ_BOUNDS_2 MMQ_BOUNDS_ON
#endif
#ifndef MMQ_BOUNDS_3
#define MMQ_BOUNDS_3 MMQ_BOUNDS_OFF
#endif
#ifndef MMQ_BOUNDS_4
#define MMQ_BOUNDS_4 MMQ_BOUNDS_ON
#endif
#ifndef MMQ_BOUNDS_5
#define MMQ_BOUNDS_5 MMQ_BOUNDS_OFF
#endif
#ifndef MMQ_BOUNDS_6
#define MMQ_BOUNDS_6 MMQ_BOUNDS_ON
#endif
#ifndef MMQ_BOUNDS_7
#define MMQ_BOUNDS_7 MMQ_BOUNDS_OFF
#endif
#ifndef MMQ_BOUNDS_8
#define MMQ_BOUNDS_8 MMQ_BOUNDS_OFF
#endif

// mmq_q4_k_* (a Q4_K product; mmqt_q4_k_* with its weight tiled) and mmqg_* (a group, or a Q5_K or
// Q6_K product): 4 warps a block of 16 rows; the mmq8, mmqt8 and mmqg8 forms 8 (more loads in flight for
// the products with few outputs and long rows, such as the FFN's down projection).
#define MMQ_AS(name, WARPS, NR, TILED)                                                                \
    KILN_KERNEL MMQ_BOUNDS_##NR(WARPS) void name##_##NR(const u8* w, u32 row_bytes, u32 n_out, const i8* yq, \
                                                        const float2* yd, u32 k, float* out) {             \
        grid_dependency_entry();                                                                       \
        mmq_q4_k<NR, WARPS, TILED>(w, row_bytes, n_out, yq, yd, k, out);                               \
    }
#define MMQ(name, WARPS, NR) MMQ_AS(name, WARPS, NR, false)
#define MMQT(name, WARPS, NR) MMQ_AS(name, WARPS, NR, true)
#define MMQG(name, WARPS, NR)                                                                     \
    KILN_KERNEL void name##_##NR(MatvecGroup g, const i8* yq, const float2* yd, u32 k) {          \
        grid_dependency_entry();                                                                   \
        mmq_group<NR, WARPS>(g, yq, yd, k);                                                        \
    }
#define MMQ_ALL(M, name, WARPS)                                                                   \
    M(name, WARPS, 1) M(name, WARPS, 2) M(name, WARPS, 3) M(name, WARPS, 4)                       \
    M(name, WARPS, 5) M(name, WARPS, 6) M(name, WARPS, 7) M(name, WARPS, 8)
MMQ_ALL(MMQ, mmq_q4_k, 4)
MMQ_ALL(MMQ, mmq8_q4_k, 8)
MMQ_ALL(MMQT, mmqt_q4_k, 4)
MMQ_ALL(MMQT, mmqt8_q4_k, 8)
MMQ_ALL(MMQG, mmqg, 4)
MMQ_ALL(MMQG, mmqg8, 8)
#endif

// f16/f32 weights against f32 activations (no activation rounding), 8 (f16) or 4 (f32) values a unit.
template <bool HALF, int NR>
__device__ __forceinline__ void mmvf(const u8* w, u32 n_out, const float* x, u32 k, float* out) {
    const u32 o = blockIdx.x;
    if (o >= n_out) return;
    float acc[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) acc[r] = 0.0f;
    if (HALF) {
        const u16* row = (const u16*)w + (u64)o * k;
        for (u32 j = threadIdx.x * 2; j < k; j += MMV_THREADS * 2) {
            const u32 pair = *(const u32*)(row + j);
            const float w0 = h2f((u16)(pair & 0xFFFF)), w1 = h2f((u16)(pair >> 16));
#pragma unroll
            for (int r = 0; r < NR; r++) acc[r] += w0 * x[(u64)r * k + j] + w1 * x[(u64)r * k + j + 1];
        }
    } else {
        const float* row = (const float*)w + (u64)o * k;
        for (u32 j = threadIdx.x; j < k; j += MMV_THREADS) {
            const float wv = row[j];
#pragma unroll
            for (int r = 0; r < NR; r++) acc[r] += wv * x[(u64)r * k + j];
        }
    }
    block_reduce_store<NR>(acc, out, n_out, o);
}

// The block-per-row families: RPB output rows a block (mmvq) for TYPE and NR activation rows.
#define MMVB(name, RPB, TYPE, NR)                                                                     \
    KILN_KERNEL void name##_##NR(const u8* w, u32 row_bytes, u32 n_units, u32 n_out, const int* yq,    \
                                 const float2* yd, u32 k, float* out) {                               \
        grid_dependency_entry();                                                                      \
        mmvq<TYPE, NR, RPB>(w, row_bytes, n_units, n_out, yq, yd, k, out);                            \
    }
#define MMVQ(name, TYPE, NR) MMVB(name, 1, TYPE, NR)
#define MMVQ_ALL(name, TYPE) \
    MMVQ(name, TYPE, 1) MMVQ(name, TYPE, 2) MMVQ(name, TYPE, 3) MMVQ(name, TYPE, 4) \
    MMVQ(name, TYPE, 5) MMVQ(name, TYPE, 6) MMVQ(name, TYPE, 7) MMVQ(name, TYPE, 8)

#define MMV2(name, TYPE, NR) MMVB(name, 2, TYPE, NR)
#define MMV2_ALL(name, TYPE) \
    MMV2(name, TYPE, 2) MMV2(name, TYPE, 3) MMV2(name, TYPE, 4) MMV2(name, TYPE, 5) \
    MMV2(name, TYPE, 6) MMV2(name, TYPE, 7) MMV2(name, TYPE, 8)

#define MMVW(name, TYPE, NR, U, RPW)                                                                  \
    KILN_KERNEL void name##_##NR(const u8* w, u32 row_bytes, u32 n_units, u32 n_out, const int* yq,    \
                                 const float2* yd, u32 k, float* out) {                               \
        grid_dependency_entry();                                                                      \
        mmvq_warp<TYPE, NR, U, RPW>(w, row_bytes, n_units, n_out, yq, yd, k, out);                    \
    }
#define MMVW_ALL(name, TYPE, U, RPW)                                                            \
    MMVW(name, TYPE, 1, U, RPW) MMVW(name, TYPE, 2, U, RPW) MMVW(name, TYPE, 3, U, RPW)         \
    MMVW(name, TYPE, 4, U, RPW) MMVW(name, TYPE, 5, U, RPW) MMVW(name, TYPE, 6, U, RPW)         \
    MMVW(name, TYPE, 7, U, RPW) MMVW(name, TYPE, 8, U, RPW)
#define MMVW_TYPES(prefix, U, RPW)                                                             \
    MMVW_ALL(prefix##_q4_0, T_Q4_0, U, RPW) MMVW_ALL(prefix##_q4_1, T_Q4_1, U, RPW)            \
    MMVW_ALL(prefix##_q5_0, T_Q5_0, U, RPW) MMVW_ALL(prefix##_q5_1, T_Q5_1, U, RPW)            \
    MMVW_ALL(prefix##_q8_0, T_Q8_0, U, RPW) MMVW_ALL(prefix##_q4_k, T_Q4_K, U, RPW)            \
    MMVW_ALL(prefix##_q5_k, T_Q5_K, U, RPW) MMVW_ALL(prefix##_q6_k, T_Q6_K, U, RPW)

// mmvw_*: a warp per output row; mmvp_*: a warp per pair of rows (the verify batch's default).
MMVW_TYPES(mmvw, 2, 1)
MMVW_TYPES(mmvp, 2, 2)

MMVQ_ALL(mmv_q4_0, T_Q4_0)
MMVQ_ALL(mmv_q4_1, T_Q4_1)
MMVQ_ALL(mmv_q5_0, T_Q5_0)
MMVQ_ALL(mmv_q5_1, T_Q5_1)
MMVQ_ALL(mmv_q8_0, T_Q8_0)
MMVQ_ALL(mmv_q4_k, T_Q4_K)
MMVQ_ALL(mmv_q5_k, T_Q5_K)
MMVQ_ALL(mmv_q6_k, T_Q6_K)

// mmv2_*: two rows a block, for 2+ activation rows.
MMV2_ALL(mmv2_q4_0, T_Q4_0)
MMV2_ALL(mmv2_q4_1, T_Q4_1)
MMV2_ALL(mmv2_q5_0, T_Q5_0)
MMV2_ALL(mmv2_q5_1, T_Q5_1)
MMV2_ALL(mmv2_q8_0, T_Q8_0)
MMV2_ALL(mmv2_q4_k, T_Q4_K)
MMV2_ALL(mmv2_q5_k, T_Q5_K)
MMV2_ALL(mmv2_q6_k, T_Q6_K)

#define MMVF(name, HALF, NR)                                                                 \
    KILN_KERNEL void name##_##NR(const u8* w, u32 n_out, const float* x, u32 k, float* out) { \
        grid_dependency_entry();                                                             \
        mmvf<HALF, NR>(w, n_out, x, k, out);                                                 \
    }
#define MMVF_ALL(name, HALF) \
    MMVF(name, HALF, 1) MMVF(name, HALF, 2) MMVF(name, HALF, 3) MMVF(name, HALF, 4) \
    MMVF(name, HALF, 5) MMVF(name, HALF, 6) MMVF(name, HALF, 7) MMVF(name, HALF, 8)

MMVF_ALL(mmv_f16, true)
MMVF_ALL(mmv_f32, false)

// Rows of a weight matrix (any type) gathered and dequantized: the token embedding.
// tiled: a Q4_K/Q5_K table in the tensor-core products' tiled layout (an LM head tied to the embeddings).
KILN_KERNEL void embed_rows(int type, const u8* table, u32 row_bytes, u32 n_rows, const u32* tokens,
                            u32 n_tokens, u32 dim, float* out, u32 tiled) {
    grid_dependency_entry();
    const u32 t = blockIdx.y;
    if (t >= n_tokens) return;
    const u32 tok = tokens[t];
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < dim; i += gridDim.x * blockDim.x)
        out[(u64)t * dim + i] = tok >= n_rows ? 0.0f
                                : tiled      ? dequant_value_tiled(type, table, row_bytes, tok, i)
                                             : dequant_value(type, table + (u64)tok * row_bytes, i, dim);
}

// Q4_K/Q5_K rows in whole 16-row groups (GGUF's layout) into the tiled layout of the tensor-core products
// (qk_frags_tile), once, when the weight is loaded: a thread an 8-byte piece of the source, stored where
// qk_tile_offset (the layout's one definition, which the gathers read by) puts it; the layout keeps each
// aligned 8 bytes of a super-block together. `n_pieces` = the bytes / 8.
KILN_KERNEL void tile_qk(const u8* src, u8* dst, u64 n_pieces, u32 row_bytes, u32 five) {
    grid_dependency_entry();
    const u32 block = five ? 176 : 144;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n_pieces; i += (u64)gridDim.x * blockDim.x) {
        const u64 row = i * 8 / row_bytes;
        const u32 in_row = (u32)(i * 8 % row_bytes), blk = in_row / block, pos = in_row % block;
        const u64 to = (row / 16) * 16 * row_bytes + (u64)blk * 16 * block + qk_tile_offset(five, row % 16, pos);
        *(uint2*)(dst + to) = *(const uint2*)(src + i * 8);
    }
}

// A whole vector weight dequantized to f32 (norm weights, biases: read every step, so kept dense).
KILN_KERNEL void dequant_row(int type, const u8* src, u32 n, float* out) {
    grid_dependency_entry();
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = dequant_value(type, src, i, n);
}

// Prefill (many activation rows): the weight matrix is expanded to f16 once per call and multiplied by
// the f16 activations with the vendor BLAS (tensor cores), which beats any per-row kernel past ~8 rows.
// One thread per group of 32 values (k a multiple of 32), written as four 16-byte stores: the expansion
// runs near memory speed, where one value per thread through dequant_value ran ~5x slower.
// tiled: a Q4_K/Q5_K matrix in the tensor-core products' tiled layout.
KILN_KERNEL void dequant_f16(int type, const u8* src, u32 rows, u32 k, u32 row_bytes, u16* out, u32 tiled) {
    grid_dependency_entry();
    const u32 groups = k / 32;
    const u64 n = (u64)rows * groups;
    for (u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x; t < n; t += (u64)gridDim.x * blockDim.x) {
        const u64 r = t / groups;
        const u32 g = (u32)(t % groups);
        float v[32];
        if (tiled)
            dequant_group_tiled(type, src, row_bytes, (u32)r, g, v);
        else
            dequant_group(type, src + r * row_bytes, g, k, v);
        uint4* dst = (uint4*)(out + r * k + (u64)g * 32);
#pragma unroll
        for (int c = 0; c < 4; c++) {
            u32 w[4];
#pragma unroll
            for (int p = 0; p < 4; p++)
                w[p] = (u32)f2h(v[8 * c + 2 * p]) | ((u32)f2h(v[8 * c + 2 * p + 1]) << 16);
            dst[c] = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

KILN_KERNEL void f32_to_f16(const float* x, u64 n, u16* out) {
    grid_dependency_entry();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = f2h(x[i]);
}
