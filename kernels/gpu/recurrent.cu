// The Gated DeltaNet pieces of Qwen3.5/3.6: the causal conv, the gates, and the delta-rule recurrence.
#include "compat.h"

// Causal depthwise conv1d then SiLU. Thread per channel, walking the rows in order; `state` keeps the
// last kernel−1 inputs of each channel (channel-major) and is advanced past the new rows.
// `snapshots` (may be null): the state after each row but the last (whose state is `state`), slot r at
// r × channels × (kernel − 1), so a speculative verify pass can be rolled back to any of its tokens.
#define CONV_BATCH 8
#define CONV_MAX_TAPS 8

// One channel's window and taps, in registers: loops over CONV_MAX_TAPS with the tap count as a bound (a
// runtime index put them in local memory), the last tap (the new input's) apart. Loaded before the wait
// (compat.h): the state only this kernel's earlier launches write, the taps are a weight.
struct ConvChannel {
    float win[CONV_MAX_TAPS - 1], w[CONV_MAX_TAPS - 1], w_last;
    u32 ks;

    __device__ __forceinline__ void load(const float* state, const float* weight, u32 c, u32 kernel, bool live) {
        ks = kernel - 1;  // kernel ≤ CONV_MAX_TAPS (checked by the host)
#pragma unroll
        for (u32 j = 0; j < CONV_MAX_TAPS - 1; j++) {
            win[j] = live && j < ks ? state[c * ks + j] : 0.0f;
            w[j] = live && j < ks ? weight[(u64)c * kernel + j] : 0.0f;
        }
        w_last = live ? weight[(u64)c * kernel + ks] : 0.0f;
    }

    // silu(conv) of the next input, and the window moved past it.
    __device__ __forceinline__ float step(float x) {
        float s = 0.0f;
#pragma unroll
        for (u32 j = 0; j < CONV_MAX_TAPS - 1; j++)
            if (j < ks) s += win[j] * w[j];
        s += x * w_last;
#pragma unroll
        for (u32 j = 0; j < CONV_MAX_TAPS - 2; j++)
            if (j + 1 < ks) win[j] = win[j + 1];
        // A select over the window, so the index stays a constant.
#pragma unroll
        for (u32 j = 0; j < CONV_MAX_TAPS - 1; j++)
            if (j + 1 == ks) win[j] = x;
        return silu(s);
    }

    __device__ __forceinline__ void save(float* dst) const {
#pragma unroll
        for (u32 j = 0; j < CONV_MAX_TAPS - 1; j++)
            if (j < ks) dst[j] = win[j];
    }
};

KILN_KERNEL void conv1d_silu(const float* x, const float* weight, float* state, u32 rows, u32 channels,
                             u32 kernel, float* out, float* snapshots) {
    const u32 c = blockIdx.x * blockDim.x + threadIdx.x;
    const bool live = c < channels;
    ConvChannel ch;
    ch.load(state, weight, c, kernel, live);
    grid_dependency_entry();
    if (!live) return;
    // The inputs come CONV_BATCH rows at a time, all loads in flight together: a prompt chunk walks
    // hundreds of rows, and one load per row waited out a round trip each.
    for (u32 r0 = 0; r0 < rows; r0 += CONV_BATCH) {
        float xb[CONV_BATCH];
#pragma unroll
        for (u32 b = 0; b < CONV_BATCH; b++) xb[b] = r0 + b < rows ? x[(u64)(r0 + b) * channels + c] : 0.0f;
#pragma unroll
        for (u32 b = 0; b < CONV_BATCH; b++) {
            const u32 r = r0 + b;
            if (r >= rows) break;
            out[(u64)r * channels + c] = ch.step(xb[b]);
            if (snapshots && r + 1 < rows) ch.save(snapshots + ((u64)r * channels + c) * ch.ks);
        }
    }
    ch.save(state + c * ch.ks);
}

// conv1d_silu and split_qkv_l2 (norm.cu) in one launch, for up to CONV_BATCH rows (decode, verify): a
// block of head_k threads per run of head_k channels of the conv's [q heads | k heads | v], a thread a
// channel as in conv1d_silu. A q or k block L2-normalises its head in each row with the block sum
// split_qkv_l2 takes (whose warps past head_k add zeros), so q, k and v are split_qkv_l2's to the bit.
// The last block, with `alpha` given, applies the delta-rule gates as split_qkv_l2's does.
KILN_KERNEL void conv_split_l2(const float* x, const float* weight, float* state, u32 rows, u32 kernel,
                               float* snapshots, u32 n_k_heads, u32 head_k, u32 v_dim, float eps, float* q,
                               float* k, float* v, float* alpha, float* beta, const float* dt_bias,
                               const float* a, u32 n_gates) {
    __shared__ float scratch[32];
    const u32 kd = n_k_heads * head_k, channels = 2 * kd + v_dim;
    const bool gates = alpha && blockIdx.x == gridDim.x - 1;
    const bool head = blockIdx.x < 2 * n_k_heads;  // the whole block normalises, or none of it
    const u32 c = blockIdx.x * head_k + threadIdx.x;
    const bool live = !gates && c < channels;
    ConvChannel ch;
    ch.load(state, weight, c, kernel, live);
    grid_dependency_entry();
    if (gates) {
        for (u32 r = 0; r < rows; r++)
            for (u32 h = threadIdx.x; h < n_gates; h += blockDim.x)
                delta_net_gate(alpha, beta, dt_bias, a, (u64)r * n_gates + h, h);
        return;
    }
    float xb[CONV_BATCH];
#pragma unroll
    for (u32 r = 0; r < CONV_BATCH; r++) xb[r] = live && r < rows ? x[(u64)r * channels + c] : 0.0f;
    float* dst = head ? (c < kd ? q + c : k + (c - kd)) : v + (c - 2 * kd);
    const u32 stride = head ? kd : v_dim;
    // Not unrolled (hipcc cannot unroll a loop around block_sum's barriers): row r's input is picked from
    // xb by a select over constant indices, so xb stays in registers.
    for (u32 r = 0; r < rows; r++) {
        float xr = 0.0f;
#pragma unroll
        for (u32 b = 0; b < CONV_BATCH; b++)
            if (b == r) xr = xb[b];
        const float o = live ? ch.step(xr) : 0.0f;
        if (live && snapshots && r + 1 < rows) ch.save(snapshots + ((u64)r * channels + c) * ch.ks);
        if (head) {
            const float scale = 1.0f / sqrtf(block_sum(o * o, scratch) + eps);
            dst[(u64)r * stride] = o * scale;
        } else if (live) {
            dst[(u64)r * stride] = o;
        }
    }
    if (live) ch.save(state + c * ch.ks);
}

// alpha ← softplus(alpha + dt_bias)·a, beta ← sigmoid(beta), over rows × n values.
KILN_KERNEL void delta_net_gates(float* alpha, float* beta, const float* dt_bias, const float* a, u32 rows,
                                 u32 n) {
    grid_dependency_entry();
    const u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (u64)rows * n) return;
    delta_net_gate(alpha, beta, dt_bias, a, i, (u32)(i % n));
}

// The gated delta rule, token by token. One warp per (V-head h, state column j): the warp holds column j
// of S (head_k_dim values, `dk / WARP_SIZE` per lane) in registers across all the rows, so the state is
// read and written once per call. Per token: S ← e^g·S; δ = β(v_j − S_jᵀk); S_j += k·δ; o_j = scale·S_jᵀq.
// A prompt chunk walks hundreds of tokens one after another, so each token's inputs (k, q, v, g, β) are
// loaded while the token before is computed: without that, every token waited out a round trip to L2
// (the recurrence was a fifth of a 16K-token prefill).
#define DN_MAX_PER_LANE 8
struct DeltaInputs {
    float k[DN_MAX_PER_LANE], q[DN_MAX_PER_LANE], v, g, beta;
};

__device__ __forceinline__ void delta_inputs(DeltaInputs& in, const float* q, const float* k, const float* v,
                                             const float* g, const float* beta, u32 r, u32 n_k_heads,
                                             u32 n_v_heads, u32 h, u32 hk, u32 j, u32 dk, u32 dv, u32 per,
                                             u32 lane) {
    const float* kr = k + ((u64)r * n_k_heads + hk) * dk;
    const float* qr = q + ((u64)r * n_k_heads + hk) * dk;
#pragma unroll
    for (u32 t = 0; t < DN_MAX_PER_LANE; t++) {
        in.k[t] = t < per ? kr[lane + t * WARP_SIZE] : 0.0f;
        in.q[t] = t < per ? qr[lane + t * WARP_SIZE] : 0.0f;
    }
    in.v = v[((u64)r * n_v_heads + h) * dv + j];
    in.g = g[(u64)r * n_v_heads + h];
    in.beta = beta[(u64)r * n_v_heads + h];
}

KILN_KERNEL void gated_delta_net(const float* q, const float* k, const float* v, const float* g,
                                 const float* beta, float* state, u32 rows, u32 n_k_heads, u32 n_v_heads,
                                 u32 dk, u32 dv, float scale, float* out, float* snapshots) {
    const u32 warps = blockDim.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const u32 col = blockIdx.x * warps + threadIdx.x / WARP_SIZE;
    const bool live = col < n_v_heads * dv && rows > 0;
    const u32 h = col / dv, j = col % dv, hk = h % n_k_heads;
    const u32 per = dk / WARP_SIZE;
    // The state column before the wait (compat.h: only this kernel's earlier launches and copies
    // between passes write it): 3 MB a layer for the 27B, which then streams in while the q/k/v split
    // before this kernel runs.
    float s[DN_MAX_PER_LANE];
    float* st = state + (u64)col * dk;
#pragma unroll
    for (u32 t = 0; t < DN_MAX_PER_LANE; t++) s[t] = live && t < per ? st[lane + t * WARP_SIZE] : 0.0f;
    grid_dependency_entry();
    if (!live) return;
    DeltaInputs next;
    delta_inputs(next, q, k, v, g, beta, 0, n_k_heads, n_v_heads, h, hk, j, dk, dv, per, lane);
    for (u32 r = 0; r < rows; r++) {
        const DeltaInputs in = next;
        if (r + 1 < rows)
            delta_inputs(next, q, k, v, g, beta, r + 1, n_k_heads, n_v_heads, h, hk, j, dk, dv, per, lane);
        const float decay = expf(in.g);
        float dot = 0.0f;
#pragma unroll
        for (u32 t = 0; t < DN_MAX_PER_LANE; t++) {
            if (t < per) {
                s[t] *= decay;
                dot += s[t] * in.k[t];
            }
        }
        dot = warp_sum(dot);
        const float delta = (in.v - dot) * in.beta;
        float o = 0.0f;
#pragma unroll
        for (u32 t = 0; t < DN_MAX_PER_LANE; t++) {
            if (t < per) {
                s[t] += in.k[t] * delta;
                o += s[t] * in.q[t];
            }
        }
        o = warp_sum(o);
        if (lane == 0) out[((u64)r * n_v_heads + h) * dv + j] = o * scale;
        if (snapshots && r + 1 < rows) {
            // The state after token r, for rolling a speculative verify pass back to it (the last
            // token's is the live state).
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
