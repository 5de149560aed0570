// Element-wise ops and copies: one thread per value, grid-stride loops.
#include "compat.h"
#include "quant.h"

#define GRID_LOOP(i, n) for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

KILN_KERNEL void add_bias(float* x, const float* bias, u32 rows, u32 dim) {
    grid_dependency_entry();
    GRID_LOOP(i, (u64)rows * dim) x[i] += bias[i % dim];
}

KILN_KERNEL void add_assign(float* x, const float* y, u32 n) {
    grid_dependency_entry();
    GRID_LOOP(i, n) x[i] += y[i];
}

KILN_KERNEL void scale_inplace(float* x, float s, u32 n) {
    grid_dependency_entry();
    GRID_LOOP(i, n) x[i] *= s;
}

KILN_KERNEL void swiglu(const float* gate, const float* up, u32 n, float* out) {
    grid_dependency_entry();
    GRID_LOOP(i, n) out[i] = silu(gate[i]) * up[i];
}

// GELU (tanh form) as ggml's CPU backend computes it: the input rounded to f16, the result too.
__device__ __forceinline__ float gelu_f16(float v) {
    const float x = h2f(f2h(v));
    return h2f(f2h(0.5f * x * (1.0f + tanhf(0.7978846f * x * (1.0f + 0.044715f * x * x)))));
}

KILN_KERNEL void geglu(const float* gate, const float* up, u32 n, float* out) {
    grid_dependency_entry();
    GRID_LOOP(i, n) out[i] = gelu_f16(gate[i]) * up[i];
}

// The stacked forms: row r of x is n gate values then n up values (one product over [gate; up]). With
// `yq` given (n a multiple of 32) the output is also quantized for the down projection (quantize_group):
// every lane of a warp runs the same iterations, since rows · n is then a multiple of 32.
KILN_KERNEL void swiglu_stacked(const float* x, u32 rows, u32 n, float* out, i8* yq, float2* yd) {
    grid_dependency_entry();
    GRID_LOOP(i, (u64)rows * n) {
        const u64 r = i / n, c = i % n;
        out[i] = silu(x[2 * r * n + c]) * x[2 * r * n + n + c];
        if (yq) quantize_group(out[i], i, true, yq, yd);
    }
}

KILN_KERNEL void geglu_stacked(const float* x, u32 rows, u32 n, float* out, i8* yq, float2* yd) {
    grid_dependency_entry();
    GRID_LOOP(i, (u64)rows * n) {
        const u64 r = i / n, c = i % n;
        out[i] = gelu_f16(x[2 * r * n + c]) * x[2 * r * n + n + c];
        if (yq) quantize_group(out[i], i, true, yq, yd);
    }
}

// x *= sigmoid(gate) (the attention output gate), quantized for the output projection when `yq` is given.
KILN_KERNEL void sigmoid_mul(float* x, const float* gate, u32 n, i8* yq, float2* yd) {
    grid_dependency_entry();
    GRID_LOOP(i, n) {
        x[i] *= sigmoidf(gate[i]);
        if (yq) quantize_group(x[i], i, true, yq, yd);
    }
}

KILN_KERNEL void copy_rows(const float* src, u64 src_off, u64 src_stride, float* dst, u64 dst_off,
                           u64 dst_stride, u32 width, u32 rows) {
    grid_dependency_entry();
    GRID_LOOP(i, (u64)rows * width) {
        const u64 r = i / width, c = i % width;
        dst[dst_off + r * dst_stride + c] = src[src_off + r * src_stride + c];
    }
}

// Several copies in one launch (Backend::copy_many): `spans` holds (source address, destination address,
// values) per copy, uploaded by the host; blockIdx.y is the copy, the x blocks stride over its values,
// four at a time where both ends are 16-byte aligned and the count a multiple of four.
KILN_KERNEL void copy_spans(const u64* spans, u32 n_spans) {
    grid_dependency_entry();
    const u32 c = blockIdx.y;
    if (c >= n_spans) return;
    const float* src = (const float*)spans[3 * c];
    float* dst = (float*)spans[3 * c + 1];
    const u64 n = spans[3 * c + 2];
    if ((((u64)src | (u64)dst | n * 4) & 15) == 0) {
        const float4* s4 = (const float4*)src;
        float4* d4 = (float4*)dst;
        GRID_LOOP(i, n / 4) d4[i] = s4[i];
    } else {
        GRID_LOOP(i, n) dst[i] = src[i];
    }
}

// Rotary embedding in place over `rows` rows of n_heads × head_dim. Thread per (row, head, pair). The
// angle of pair i is pos·freq_scale·base^(−2i/n_rot), the power built by repeated multiplication as the
// CPU backend (and ggml) do, so long positions round the same way.
KILN_KERNEL void rope(float* x, const u32* positions, u32 pos0, u32 rows, u32 n_heads, u32 head_dim,
                      u32 n_rot, float theta_scale, float freq_scale, int neox) {
    grid_dependency_entry();
    const u32 half = n_rot / 2;
    GRID_LOOP(t, (u64)rows * n_heads * half) {
        const u32 i = (u32)(t % half);
        const u64 rh = t / half;
        const u32 r = (u32)(rh / n_heads);
        const u32 pos = positions ? positions[r] : pos0 + r;
        float theta = (float)pos;
        for (u32 j = 0; j < i; j++) theta *= theta_scale;
        const float ang = theta * freq_scale;
        const float c = cosf(ang), s = sinf(ang);
        float* head = x + rh * head_dim;
        const u32 a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = head[a], x1 = head[b];
        head[a] = fmaf(x0, c, -(x1 * s));
        head[b] = fmaf(x0, s, x1 * c);
    }
}
