// Row normalisations: one block per row, the sum of squares reduced across the block.
#include "compat.h"
#include "quant.h"

#define NORM_THREADS 256

// Values of a row each thread holds in registers when the row fits the block that way: the row is then
// read once, with all its loads in flight together, which matters for the decode step's single row
// (one block for the whole GPU, so the kernel is pure latency).
#define NORM_VALUES_PER_THREAD 8

// out = v / sqrt(mean(v²) + eps) · weight (weight may be null) for v = x, or v = x + y when y is given
// (the residual add that precedes most norms, fused to save a launch; v is then stored to `sum`, a
// buffer other than x and y). The block size depends only on `dim` (the host picks it), so a row is
// summed in the same order whatever the batch. With `yq` given (dim a multiple of 32), the output is
// also quantized for the product that reads it next (quantize_group), saving that product's own pass.
__device__ __forceinline__ void rms_norm_row(const float* x, const float* y, const float* weight, u32 dim,
                                             float eps, float* sum, float* out, i8* yq, float2* yd) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    const float* yr = y ? y + (u64)blockIdx.x * dim : 0;
    float* sr = y ? sum + (u64)blockIdx.x * dim : 0;
    float* orow = out + (u64)blockIdx.x * dim;
    float s = 0.0f;
    if (dim <= blockDim.x * NORM_VALUES_PER_THREAD) {
        // Every load before the first store: a store could alias any later load (nothing tells the
        // compiler otherwise), so loads after it would each wait out their own round trip.
        float v[NORM_VALUES_PER_THREAD], r[NORM_VALUES_PER_THREAD], w[NORM_VALUES_PER_THREAD];
#pragma unroll
        for (int j = 0; j < NORM_VALUES_PER_THREAD; j++) {
            const u32 i = threadIdx.x + j * blockDim.x;
            v[j] = i < dim ? xr[i] : 0.0f;
            r[j] = yr && i < dim ? yr[i] : 0.0f;
            w[j] = i < dim && weight ? weight[i] : 1.0f;
        }
#pragma unroll
        for (int j = 0; j < NORM_VALUES_PER_THREAD; j++) {
            const u32 i = threadIdx.x + j * blockDim.x;
            if (yr && i < dim) {
                v[j] += r[j];
                sr[i] = v[j];
            }
            s += v[j] * v[j];
        }
        s = block_sum(s, scratch);
        const float scale = 1.0f / sqrtf(s / (float)dim + eps);
#pragma unroll
        for (int j = 0; j < NORM_VALUES_PER_THREAD; j++) {
            const u32 i = threadIdx.x + j * blockDim.x;
            const float o = v[j] * scale * w[j];
            if (i < dim) orow[i] = o;
            if (yq) quantize_group(o, (u64)blockIdx.x * dim + i, i < dim, yq, yd);
        }
        return;
    }
    // Each thread reads back only the values it wrote itself, so no barrier is needed between the loops.
    const float* vr = yr ? sr : xr;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = yr ? xr[i] + yr[i] : xr[i];
        if (yr) sr[i] = v;
        s += v * v;
    }
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) {
        const float o = weight ? vr[i] * scale * weight[i] : vr[i] * scale;
        orow[i] = o;
        if (yq) quantize_group(o, (u64)blockIdx.x * dim + i, true, yq, yd);
    }
}

// rms_norm_row a block per row; y (the residual) may be null, and then x is only read. The same parameters
// as rms_norm_split below (one launch site).
KILN_KERNEL void rms_norm(const float* x, const float* y, const float* weight, u32 dim, float eps, float* sum,
                          float* out, i8* yq, float2* yd) {
    grid_dependency_entry();
    rms_norm_row(x, y, weight, dim, eps, sum, out, yq, yd);
}

// The same norm for a few long rows (decode and verify: the 27B's rows are 5,120 values), a block per
// slice of NORM_SPLIT_THREADS values of a row, a value a thread: grid (slices, rows). One block per row
// left the step's 127 norms each on a single SM, bound by its issue rate (the quantization's shuffles, 5
// values a thread) at ≈ 8 µs.
// Every block sums the squares of its whole row itself (20 KB or 40 KB from L2, read by all of the row's
// blocks at once, in one batch of loads for rows up to 8,192 values) in one fixed order, so the row's
// scale has the same bits in every block and for any number of rows: a verify row rounds exactly as a
// decode step does. Then it normalizes and quantizes its own slice. The sum x + y goes to `sum`, never to
// x, which the row's other blocks may still be reading (the blocks of a row used to meet at a barrier in
// global memory instead). dim is a multiple of 4 (the host checks).
#define NORM_SPLIT_THREADS 256
// float4 loads of the whole row a thread keeps in flight (of x, and of y when given).
#define NORM_SPLIT_LOADS 8

KILN_KERNEL void rms_norm_split(const float* x, const float* y, const float* weight, u32 dim, float eps,
                                float* sum, float* out, i8* yq, float2* yd) {
    __shared__ float scratch[32];
    const u64 row = (u64)blockIdx.y * dim;
    const u32 i = blockIdx.x * NORM_SPLIT_THREADS + threadIdx.x;
    const float w = i < dim && weight ? weight[i] : 1.0f;  // a weight: loaded before the wait
    grid_dependency_entry();
    const float4* x4 = (const float4*)(x + row);
    const float4* y4 = y ? (const float4*)(y + row) : 0;
    const u32 n4 = dim / 4;
    const float v = i < dim ? x[row + i] + (y ? y[row + i] : 0.0f) : 0.0f;
    float s = 0.0f;
    for (u32 i0 = threadIdx.x; i0 < n4; i0 += NORM_SPLIT_LOADS * NORM_SPLIT_THREADS) {
        float4 a[NORM_SPLIT_LOADS], b[NORM_SPLIT_LOADS];
#pragma unroll
        for (int j = 0; j < NORM_SPLIT_LOADS; j++) {
            const u32 k = i0 + j * NORM_SPLIT_THREADS;
            a[j] = k < n4 ? x4[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            b[j] = y4 && k < n4 ? y4[k] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int j = 0; j < NORM_SPLIT_LOADS; j++) {
            // The same additions as v's, so a value's square is of the value stored.
            const float e0 = a[j].x + b[j].x, e1 = a[j].y + b[j].y, e2 = a[j].z + b[j].z, e3 = a[j].w + b[j].w;
            s = fmaf(e0, e0, s);
            s = fmaf(e1, e1, s);
            s = fmaf(e2, e2, s);
            s = fmaf(e3, e3, s);
        }
    }
    s = block_sum(s, scratch);
    const float o = v * (1.0f / sqrtf(s / (float)dim + eps)) * w;
    if (y && i < dim) sum[row + i] = v;
    if (i < dim) out[row + i] = o;
    if (yq) quantize_group(o, row + i, i < dim, yq, yd);
}

// out = rms_norm(x)·weight ⊙ silu(z): the gated norm at the end of a Gated DeltaNet layer (quantized too
// when `yq` is given, as in rms_norm_row).
KILN_KERNEL void rms_norm_gated(const float* x, const float* weight, const float* z, u32 dim, float eps,
                                float* out, i8* yq, float2* yd) {
    __shared__ float scratch[32];
    const u64 base = (u64)blockIdx.x * dim;
    if (dim <= blockDim.x) {
        // A value a thread (the 27B's heads are 128 values): x and z in one round of loads, the weight
        // before the wait; the same sums and products as the loops below.
        const u32 i = threadIdx.x;
        const bool live = i < dim;
        const float w = live ? weight[i] : 0.0f;
        grid_dependency_entry();
        const float xv = live ? x[base + i] : 0.0f, zv = live ? z[base + i] : 0.0f;
        const float scale = 1.0f / sqrtf(block_sum(xv * xv, scratch) / (float)dim + eps);
        const float o = xv * scale * w * silu(zv);
        if (live) out[base + i] = o;
        if (yq) quantize_group(o, base + i, live, yq, yd);
        return;
    }
    grid_dependency_entry();
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += x[base + i] * x[base + i];
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) {
        const float o = x[base + i] * scale * weight[i] * silu(z[base + i]);
        out[base + i] = o;
        if (yq) quantize_group(o, base + i, true, yq, yd);
    }
}

// In place: x / sqrt(Σx² + eps).
KILN_KERNEL void l2_norm(float* x, u32 dim, float eps) {
    grid_dependency_entry();
    __shared__ float scratch[32];
    float* xr = x + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) xr[i] *= scale;
}

// The recurrent layer's conv output (rows of [q | k | v]) split into q and k, each L2-normalised per head
// of `head_k` values as l2_norm does, and v: one launch for what were three copies and two norms. Grid
// (2·n_k_heads + ⌈v_dim / blockDim⌉ [+ 1], rows): a block either normalises one q or k head or copies a
// run of v, or (the last, when `alpha` is given) applies the row's n_gates delta-rule gates, which
// delta_net_gates would otherwise launch for alone.
KILN_KERNEL void split_qkv_l2(const float* conv, u32 n_k_heads, u32 head_k, u32 v_dim, float eps, float* q,
                              float* k, float* v, float* alpha, float* beta, const float* dt_bias,
                              const float* a, u32 n_gates) {
    grid_dependency_entry();
    __shared__ float scratch[32];
    const u32 r = blockIdx.y, kd = n_k_heads * head_k;
    if (alpha && blockIdx.x == gridDim.x - 1) {
        for (u32 h = threadIdx.x; h < n_gates; h += blockDim.x)
            delta_net_gate(alpha, beta, dt_bias, a, (u64)r * n_gates + h, h);
        return;
    }
    const float* src = conv + (u64)r * (2 * kd + v_dim);
    if (blockIdx.x < 2 * n_k_heads) {
        const u32 part = blockIdx.x / n_k_heads, h = blockIdx.x % n_k_heads;
        const float* hs = src + part * kd + h * head_k;
        float* dst = (part ? k : q) + (u64)r * kd + h * head_k;
        float s = 0.0f;
        for (u32 i = threadIdx.x; i < head_k; i += blockDim.x) s += hs[i] * hs[i];
        s = block_sum(s, scratch);
        const float scale = 1.0f / sqrtf(s + eps);
        for (u32 i = threadIdx.x; i < head_k; i += blockDim.x) dst[i] = hs[i] * scale;
        return;
    }
    const u32 i = (blockIdx.x - 2 * n_k_heads) * blockDim.x + threadIdx.x;
    if (i < v_dim) v[(u64)r * v_dim + i] = src[2 * kd + i];
}

// A gated attention layer's q and k made ready for the cache and the attention, one launch for what were
// two copies, two norms and two RoPEs: grid (n_heads + n_kv_heads, rows), a block per head. A q block
// reads its head's [q | gate] pair from `qg`, copies the gate out, and writes RoPE(RMSNorm(q)·q_norm);
// a k block the same for its head of `k` without a gate. The norm multiplies as rms_norm_row does and
// the rotation is rope's (angle by repeated multiplication, NeoX or interleaved pairs).
#define QK_MAX_HEAD_DIM 512
KILN_KERNEL void qk_norm_rope(const float* qg, const float* kin, const float* q_norm, const float* k_norm,
                              u32 n_heads, u32 n_kv_heads, u32 head_dim, float eps, const u32* positions,
                              u32 pos0, u32 n_rot, float theta_scale, float freq_scale, int neox, float* q,
                              float* gate, float* k) {
    grid_dependency_entry();
    __shared__ float scratch[32];
    __shared__ float vals[QK_MAX_HEAD_DIM];
    const u32 r = blockIdx.y, hb = blockIdx.x;
    const bool is_q = hb < n_heads;
    const u32 h = is_q ? hb : hb - n_heads;
    const float* src = is_q ? qg + ((u64)r * n_heads + h) * 2 * head_dim : kin + ((u64)r * n_kv_heads + h) * head_dim;
    float* dst = is_q ? q + ((u64)r * n_heads + h) * head_dim : k + ((u64)r * n_kv_heads + h) * head_dim;
    const float* w = is_q ? q_norm : k_norm;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < head_dim; i += blockDim.x) {
        const float v = src[i];
        vals[i] = v;
        s += v * v;
        if (is_q) gate[((u64)r * n_heads + h) * head_dim + i] = src[head_dim + i];
    }
    // block_sum's barriers also publish vals.
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)head_dim + eps);
    const u32 half = n_rot / 2;
    const u32 pos = positions ? positions[r] : pos0 + r;
    for (u32 i = threadIdx.x; i < head_dim; i += blockDim.x) {
        if (i < half) {
            float theta = (float)pos;
            for (u32 j = 0; j < i; j++) theta *= theta_scale;
            const float ang = theta * freq_scale;
            const float c = cosf(ang), sn = sinf(ang);
            const u32 ia = neox ? i : 2 * i, ib = neox ? i + half : 2 * i + 1;
            const float x0 = vals[ia] * scale * w[ia], x1 = vals[ib] * scale * w[ib];
            dst[ia] = fmaf(x0, c, -(x1 * sn));
            dst[ib] = fmaf(x0, sn, x1 * c);
        } else if (i >= n_rot) {
            dst[i] = vals[i] * scale * w[i];
        }
    }
}
