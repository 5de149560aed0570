// Row normalisations: one block per row, the sum of squares reduced across the block.
#include "compat.h"

#define NORM_THREADS 256

__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    const int warp = threadIdx.x / WARP_SIZE, lane = threadIdx.x % WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < warps; w++) t += scratch[w];
    return t;
}

// out = x / sqrt(mean(x²) + eps) · weight (weight may be null).
KILN_KERNEL void rms_norm(const float* x, const float* weight, u32 dim, float eps, float* out) {
    __shared__ float scratch[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    float* orow = out + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x)
        orow[i] = weight ? xr[i] * scale * weight[i] : xr[i] * scale;
}

// out = rms_norm(x)·weight ⊙ silu(z): the gated norm at the end of a Gated DeltaNet layer.
KILN_KERNEL void rms_norm_gated(const float* x, const float* weight, const float* z, u32 dim, float eps,
                                float* out) {
    __shared__ float scratch[32];
    const u64 base = (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += x[base + i] * x[base + i];
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s / (float)dim + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x)
        out[base + i] = x[base + i] * scale * weight[i] * silu(z[base + i]);
}

// In place: x / sqrt(Σx² + eps).
KILN_KERNEL void l2_norm(float* x, u32 dim, float eps) {
    __shared__ float scratch[32];
    float* xr = x + (u64)blockIdx.x * dim;
    float s = 0.0f;
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) s += xr[i] * xr[i];
    s = block_sum(s, scratch);
    const float scale = 1.0f / sqrtf(s + eps);
    for (u32 i = threadIdx.x; i < dim; i += blockDim.x) xr[i] *= scale;
}
