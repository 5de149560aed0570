// What stream-ceiling.cu and product-lab.cu share: error checks, programmatic launches (as Kiln's decode
// step launches its kernels), stream capture into a graph, and medians of event-timed runs.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>

#define CHECK(x)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));    \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

// `fn` (a kernel or a cudaKernel_t) with programmatic stream serialization: it may launch while the
// kernel before it in `st` runs, its blocks waiting at griddepcontrol.wait.
inline void launch_pdl(cudaStream_t st, const void* fn, dim3 grid, dim3 block, void** args, size_t smem = 0) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    CHECK(cudaLaunchKernelExC(&cfg, fn, args));
}

template <typename T>
struct same_type {
    typedef T type;
};

// The same for a kernel of this program, its arguments converted to the kernel's parameter types.
template <typename... Params>
inline void launch_pdl(cudaStream_t st, void (*kernel)(Params...), dim3 grid, dim3 block,
                       typename same_type<Params>::type... args) {
    void* a[] = {&args...};
    launch_pdl(st, (const void*)kernel, grid, block, a);
}

// What `body` launches into `st`, captured as one graph.
inline cudaGraphExec_t capture(cudaStream_t st, const std::function<void()>& body) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    body();
    CHECK(cudaStreamEndCapture(st, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    CHECK(cudaGraphDestroy(g));
    return ge;
}

// Milliseconds `run` takes in `st`, timed by events: one round to warm up, then `reps`.
struct Timer {
    cudaStream_t st;
    cudaEvent_t e0, e1;
    explicit Timer(cudaStream_t s) : st(s) {
        CHECK(cudaEventCreate(&e0));
        CHECK(cudaEventCreate(&e1));
    }
    float once(const std::function<void()>& run) {
        CHECK(cudaEventRecord(e0, st));
        run();
        CHECK(cudaEventRecord(e1, st));
        CHECK(cudaEventSynchronize(e1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        return ms;
    }
    float median(int reps, const std::function<void()>& run) {
        once(run);
        std::vector<float> t;
        for (int r = 0; r < reps; r++) t.push_back(once(run));
        std::sort(t.begin(), t.end());
        return t[t.size() / 2];
    }
};
