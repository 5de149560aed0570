// The common subset of CUDA and HIP that every Kiln kernel is written in. One source builds with nvcc
// and NVRTC (NVIDIA) and with hipcc and hipRTC (AMD); this header is the only place that knows which.
// It includes no system header, so the run-time compilers (NVRTC/hipRTC) need no include paths.
#pragma once

#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC_RTC__) || defined(__HIP__)
#define KILN_HIP 1
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
#else
#define KILN_CUDA 1
#endif

typedef signed char i8;
typedef unsigned char u8;
typedef unsigned short u16;
typedef int i32;
typedef unsigned int u32;
typedef unsigned long long u64;

#define KILN_KERNEL extern "C" __global__

// The first statement of every kernel. NVIDIA sm_90+ can launch a kernel while the one before it in the
// stream is still running (programmatic dependent launch, which the CUDA backend asks for): its blocks
// get resident and wait here until the previous kernel has finished and its writes are visible, then
// let the next kernel launch in turn. That hides the launch and ramp-up of each of the ~900 small
// kernels of a decode step behind the tail of the one before. Every kernel waits, so each one also
// finds everything earlier in the stream done. Elsewhere (and for launches without the attribute), a
// no-op. A kernel may load before it only what the launch just before it (which may still be running)
// never writes: weights, and a recurrent layer's state, which only an earlier launch of the same kernel
// or a copy between passes writes (everything two launches back has finished when a kernel starts:
// the launch before it waited here before letting it launch). Those loads then overlap the kernel
// before it instead of adding a round trip to the step.
__device__ __forceinline__ void grid_dependency_entry() {
#if defined(KILN_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Threads that execute in lock step and exchange registers with shuffles: 32 on NVIDIA and RDNA
// (wave32, the default hipcc uses for gfx10/gfx11), 64 on CDNA (gfx9).
#if defined(KILN_HIP) && defined(__AMDGCN_WAVEFRONT_SIZE)
#define WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define WARP_SIZE 32
#endif

__device__ __forceinline__ float shfl_xor(float v, int mask) {
#if defined(KILN_HIP)
    return __shfl_xor(v, mask, WARP_SIZE);
#else
    return __shfl_xor_sync(0xffffffffu, v, mask, 32);
#endif
}

__device__ __forceinline__ int shfl_xor_int(int v, int mask) {
#if defined(KILN_HIP)
    return __shfl_xor(v, mask, WARP_SIZE);
#else
    return __shfl_xor_sync(0xffffffffu, v, mask, 32);
#endif
}

// Orders the shared-memory writes of a warp before its lanes read each other's (CUDA's independent
// thread scheduling needs the barrier; a wavefront runs in lock step, so AMD needs only the fence).
__device__ __forceinline__ void sync_warp() {
#if defined(KILN_HIP)
    __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");
    __builtin_amdgcn_wave_barrier();
    __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");
#else
    __syncwarp();
#endif
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v += shfl_xor(v, m);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, shfl_xor(v, m));
    return v;
}

// IEEE half <-> float without the vendors' half headers (which the run-time compilers may lack).
__device__ __forceinline__ float h2f(u16 h) {
#if defined(KILN_HIP)
    return (float)__builtin_bit_cast(_Float16, h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

// Round to nearest even, as the CPU backend's f16::from_f32.
__device__ __forceinline__ u16 f2h(float f) {
#if defined(KILN_HIP)
    return __builtin_bit_cast(u16, (_Float16)f);
#else
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Sum of four signed byte products plus c.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
#if defined(KILN_HIP)
#if __has_builtin(__builtin_amdgcn_sudot4) && (defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__))
    return __builtin_amdgcn_sudot4(true, a, true, b, c, false);
#elif __has_builtin(__builtin_amdgcn_sdot4) && (defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__) || defined(__gfx1011__) || defined(__gfx1012__) || defined(__gfx1030__) || defined(__gfx1031__) || defined(__gfx1032__) || defined(__gfx1033__) || defined(__gfx1034__) || defined(__gfx1035__) || defined(__gfx1036__))
    return __builtin_amdgcn_sdot4(a, b, c, false);
#else
    const i8* x = (const i8*)&a;
    const i8* y = (const i8*)&b;
    return c + x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
#endif
#else
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
#endif
}

// A 32-bit word from a 2-byte aligned address (blocks of 18, 22 and 34 bytes are only that aligned).
__device__ __forceinline__ int load_int_b2(const u8* p) {
    const u16* q = (const u16*)p;
    return (int)((u32)q[0] | ((u32)q[1] << 16));
}

__device__ __forceinline__ int load_int_b4(const u8* p) { return *(const int*)p; }

__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The sum of v over the block (every thread gets it), warps added in order; `scratch` holds 32 floats
// of shared memory. Every thread of the block must call it.
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

// A Gated DeltaNet's gates for head h, in place: alpha ← softplus(alpha + dt_bias)·a (the log-decay),
// beta ← sigmoid(beta). Shared by delta_net_gates, and by split_qkv_l2 and conv_split_l2, which apply
// them in passing.
__device__ __forceinline__ void delta_net_gate(float* alpha, float* beta, const float* dt_bias, const float* a,
                                               u64 i, u32 h) {
    const float z = alpha[i] + dt_bias[h];
    const float sp = z > 20.0f ? z : logf(1.0f + expf(z));
    alpha[i] = sp * a[h];
    beta[i] = sigmoidf(beta[i]);
}
