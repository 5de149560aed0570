// The Gated DeltaNet pieces of Qwen3.5/3.6: the causal conv, the gates, and the delta-rule recurrence.
#include "compat.h"

// Causal depthwise conv1d then SiLU. Thread per channel, walking the rows in order; `state` keeps the
// last kernel−1 inputs of each channel (channel-major) and is advanced past the new rows.
// `snapshots` (may be null): the state after each row, slot r at r × channels × (kernel − 1), so a
// speculative verify pass can be rolled back to any of its tokens.
KILN_KERNEL void conv1d_silu(const float* x, const float* weight, float* state, u32 rows, u32 channels,
                             u32 kernel, float* out, float* snapshots) {
    grid_dependency_entry();
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    const u32 ks = kernel - 1;
    float win[8];  // kernel ≤ 8 (checked by the host)
    for (u32 j = 0; j < ks; j++) win[j] = state[c * ks + j];
    const float* w = weight + (u64)c * kernel;
    for (u32 r = 0; r < rows; r++) {
        const float xin = x[(u64)r * channels + c];
        float s = 0.0f;
        for (u32 j = 0; j < ks; j++) s += win[j] * w[j];
        s += xin * w[ks];
        out[(u64)r * channels + c] = silu(s);
        for (u32 j = 0; j + 1 < ks; j++) win[j] = win[j + 1];
        if (ks > 0) win[ks - 1] = xin;
        if (snapshots)
            for (u32 j = 0; j < ks; j++) snapshots[((u64)r * channels + c) * ks + j] = win[j];
    }
    for (u32 j = 0; j < ks; j++) state[c * ks + j] = win[j];
}

// alpha ← softplus(alpha + dt_bias)·a, beta ← sigmoid(beta), over rows × n values.
KILN_KERNEL void delta_net_gates(float* alpha, float* beta, const float* dt_bias, const float* a, u32 rows,
                                 u32 n) {
    grid_dependency_entry();
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * n) return;
    const u32 h = (u32)(i % n);
    const float z = alpha[i] + dt_bias[h];
    const float sp = z > 20.0f ? z : logf(1.0f + expf(z));
    alpha[i] = sp * a[h];
    beta[i] = sigmoidf(beta[i]);
}

// The gated delta rule, token by token. One warp per (V-head h, state column j): the warp holds column j
// of S (head_k_dim values, `dk / WARP_SIZE` per lane) in registers across all the rows, so the state is
// read and written once per call. Per token: S ← e^g·S; δ = β(v_j − S_jᵀk); S_j += k·δ; o_j = scale·S_jᵀq.
#define DN_MAX_PER_LANE 8
KILN_KERNEL void gated_delta_net(const float* q, const float* k, const float* v, const float* g,
                                 const float* beta, float* state, u32 rows, u32 n_k_heads, u32 n_v_heads,
                                 u32 dk, u32 dv, float scale, float* out, float* snapshots) {
    grid_dependency_entry();
    const u32 warps = blockDim.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const u32 col = blockIdx.x * warps + threadIdx.x / WARP_SIZE;
    if (col >= n_v_heads * dv) return;
    const u32 h = col / dv, j = col % dv, hk = h % n_k_heads;
    const u32 per = dk / WARP_SIZE;
    float s[DN_MAX_PER_LANE];
    float* st = state + (u64)col * dk;
#pragma unroll
    for (u32 t = 0; t < DN_MAX_PER_LANE; t++) s[t] = t < per ? st[lane + t * WARP_SIZE] : 0.0f;
    for (u32 r = 0; r < rows; r++) {
        const float* kr = k + ((u64)r * n_k_heads + hk) * dk;
        const float* qr = q + ((u64)r * n_k_heads + hk) * dk;
        const float decay = expf(g[(u64)r * n_v_heads + h]);
        const float b = beta[(u64)r * n_v_heads + h];
        float kv[DN_MAX_PER_LANE], dot = 0.0f;
#pragma unroll
        for (u32 t = 0; t < DN_MAX_PER_LANE; t++) {
            if (t < per) {
                s[t] *= decay;
                kv[t] = kr[lane + t * WARP_SIZE];
                dot += s[t] * kv[t];
            }
        }
        dot = warp_sum(dot);
        const float delta = (v[((u64)r * n_v_heads + h) * dv + j] - dot) * b;
        float o = 0.0f;
#pragma unroll
        for (u32 t = 0; t < DN_MAX_PER_LANE; t++) {
            if (t < per) {
                s[t] += kv[t] * delta;
                o += s[t] * qr[lane + t * WARP_SIZE];
            }
        }
        o = warp_sum(o);
        if (lane == 0) out[((u64)r * n_v_heads + h) * dv + j] = o * scale;
        if (snapshots) {
            // The state after token r, for rolling a speculative verify pass back to it.
            float* snap = snapshots + (u64)r * n_v_heads * dv * dk + (u64)col * dk;
#pragma unroll
            for (u32 t = 0; t < DN_MAX_PER_LANE; t++)
                if (t < per) snap[lane + t * WARP_SIZE] = s[t];
        }
    }
#pragma unroll
    for (u32 t = 0; t < DN_MAX_PER_LANE; t++)
        if (t < per) st[lane + t * WARP_SIZE] = s[t];
}
