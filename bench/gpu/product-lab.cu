// A lab for the decode step's quantized products: Kiln's own kernels (kernels/gpu/matvec.cu, built with
// the experiments of product-lab-kernels.cu into one code object, device code only, as NVRTC builds it)
// timed next to experimental variants and a plain read of the same bytes, each in a
// chain of programmatically launched kernels over distinct weight copies (more bytes than L2 holds), as a
// decode step runs them. stream-ceiling.cu showed such a chain of plain reads reaches 96-99% of HBM
// bandwidth; this is where a product kernel's distance from that is taken apart.
//
//   nvcc -cubin -O3 -std=c++17 -arch=sm_90 -I kernels/gpu -o /tmp/lab.cubin bench/gpu/product-lab-kernels.cu
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/product-lab bench/gpu/product-lab.cu
//   /tmp/product-lab /tmp/lab.cubin [reps=9]
#include <cstring>

#include "lab.h"

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned int u32;
typedef unsigned long long u64;

struct Shape {
    const char* name;
    u32 n_out, k;
};

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: product-lab LAB.cubin [reps]\n");
        return 2;
    }
    const int reps = argc > 2 ? atoi(argv[2]) : 9;
    cudaLibrary_t lib;
    CHECK(cudaLibraryLoadFromFile(&lib, argv[1], nullptr, nullptr, 0, nullptr, nullptr, 0));
    auto kernel = [&](const char* name) {
        cudaKernel_t k;
        CHECK(cudaLibraryGetKernel(&k, lib, name));
        return (const void*)k;
    };
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs\n", prop.name, prop.multiProcessorCount);
    cudaStream_t st;
    CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    Timer timer(st);

    const Shape shapes[] = {{"gate+up 34816x5120", 34816, 5120},
                            {"down 5120x17408", 5120, 17408},
                            {"out 5120x6144", 5120, 6144}};
    for (const Shape& s : shapes) {
        const u32 row_bytes = s.k / 256 * 144;
        const size_t bytes = (size_t)row_bytes * s.n_out;
        const int copies = std::max(8, (int)(800e6 / bytes));  // 800 MB: 16x the L2
        std::vector<u8*> w(copies);
        // Random bytes with every super-block's two f16 scales set to small normal values.
        std::vector<u8> host(bytes);
        u32 x = 12345;
        for (size_t i = 0; i < bytes; i++) {
            x = x * 1664525u + 1013904223u;
            host[i] = (u8)(x >> 24);
        }
        for (size_t b = 0; b < bytes; b += 144) {
            host[b] = 0x00, host[b + 1] = 0x1c;  // d = 2^-8
            host[b + 2] = 0x00, host[b + 3] = 0x18;  // dmin = 2^-9
        }
        for (auto& p : w) {
            CHECK(cudaMalloc(&p, bytes));
            CHECK(cudaMemcpy(p, host.data(), bytes, cudaMemcpyHostToDevice));
        }
        // The same weights tiled (by Kiln's tile_qk, as the GPU backend loads them), for the mmqt kernels.
        std::vector<u8*> wt(copies);
        for (int c = 0; c < copies; c++) {
            CHECK(cudaMalloc(&wt[c], bytes));
            u64 pieces = bytes / 8;
            u32 rb = row_bytes, five = 0;
            void* args[] = {&w[c], &wt[c], &pieces, &rb, &five};
            launch_pdl(st, kernel("tile_qk"), dim3((u32)((pieces + 255) / 256)), dim3(256), args);
        }
        CHECK(cudaStreamSynchronize(st));
        i8* yq;
        float2* yd;
        float* out;
        CHECK(cudaMalloc(&out, 8 * s.n_out * sizeof(float)));
        CHECK(cudaMalloc(&yq, 8 * s.k));
        CHECK(cudaMalloc(&yd, 8 * s.k / 32 * sizeof(float2)));
        {
            std::vector<i8> hq(8 * s.k);
            std::vector<float> hd(8 * s.k / 32 * 2);
            for (auto& q : hq) q = (i8)((x = x * 1664525u + 1013904223u) >> 24);
            for (auto& d : hd) d = ((x = x * 1664525u + 1013904223u) >> 8) * (1.0f / (1 << 24)) * 0.01f;
            CHECK(cudaMemcpy(yq, hq.data(), hq.size(), cudaMemcpyHostToDevice));
            CHECK(cudaMemcpy(yd, hd.data(), hd.size() * 4, cudaMemcpyHostToDevice));
        }

        // The median µs a launch of `launch(c)` over every copy c, in one captured graph.
        auto time_chain = [&](const std::function<void(int)>& launch) {
            cudaGraphExec_t ge = capture(st, [&] {
                for (int c = 0; c < copies; c++) launch(c);
            });
            const float ms = timer.median(reps, [&] { CHECK(cudaGraphLaunch(ge, st)); });
            CHECK(cudaGraphExecDestroy(ge));
            return ms * 1e3 / copies;
        };
        // The values of Kiln's `ref` and of `fn` (NR activation rows, copy 0 of the weights; `fw`: fn's
        // weights, else GGUF's layout), one block per 16 rows each (fn's extra blocks, where it holds more
        // rows a block, find no rows and store nothing).
        auto outputs = [&](const void* fn, u32 warps, const void* ref, u32 ref_warps, u32 nr,
                           const std::vector<u8*>* fw) {
            std::vector<float> a(nr * s.n_out), b(nr * s.n_out);
            for (int pass = 0; pass < 2; pass++) {
                CHECK(cudaMemset(out, 0xff, 8 * s.n_out * sizeof(float)));
                const u8* wp = pass && fw ? (*fw)[0] : w[0];
                u32 rb = row_bytes, n = s.n_out, k = s.k;
                void* args[] = {&wp, &rb, &n, &yq, &yd, &k, &out};
                launch_pdl(st, pass ? fn : ref, dim3((s.n_out + 15) / 16), dim3(32 * (pass ? warps : ref_warps)), args);
                CHECK(cudaStreamSynchronize(st));
                CHECK(cudaMemcpy(pass ? b.data() : a.data(), out, a.size() * 4, cudaMemcpyDeviceToHost));
            }
            return std::make_pair(a, b);
        };
        // Whether `fn` computes what `ref` does, to the bit: the values that differ.
        auto same = [&](const void* fn, u32 warps, const void* ref, u32 ref_warps, u32 nr,
                        const std::vector<u8*>* fw = nullptr) {
            const auto [a, b] = outputs(fn, warps, ref, ref_warps, nr, fw);
            size_t diff = 0;
            for (size_t i = 0; i < a.size(); i++) diff += memcmp(&a[i], &b[i], 4) != 0;
            return diff;
        };
        // The largest difference from `ref`'s values relative to its largest value (another order of the
        // same sums: rounding only).
        auto close = [&](const void* fn, u32 warps, const void* ref, u32 ref_warps, u32 nr,
                         const std::vector<u8*>* fw = nullptr) {
            const auto [a, b] = outputs(fn, warps, ref, ref_warps, nr, fw);
            double big = 0, diff = 0;
            for (size_t i = 0; i < a.size(); i++) {
                big = std::max(big, (double)fabsf(a[i]));
                diff = std::max(diff, (double)fabsf(a[i] - b[i]));
            }
            return diff / big;
        };
        // tiles: the 16-row tiles a block holds (1 for Kiln's kernels)
        auto product = [&](const char* name, const void* fn, u32 warps, u32 tiles = 1,
                           const std::vector<u8*>* fw = nullptr) {
            const u32 blocks = ((s.n_out + 15) / 16 + tiles - 1) / tiles;
            const double us = time_chain([&](int c) {
                const u8* wp = fw ? (*fw)[c] : w[c];
                u32 rb = row_bytes, n = s.n_out, k = s.k;
                void* args[] = {&wp, &rb, &n, &yq, &yd, &k, &out};
                launch_pdl(st, fn, dim3(blocks), dim3(32 * warps), args);
            });
            printf("  %-22s %8.1f us %8.0f GB/s\n", name, us, bytes / us / 1e3);
        };
        printf("%s Q4_K: %.1f MB, %d copies\n", s.name, bytes / 1e6, copies);
        {
            const double us = time_chain([&](int c) {
                const uint4* p = (const uint4*)w[c];
                u64 n16 = bytes / 16;
                void* args[] = {&p, &n16, &out};
                launch_pdl(st, kernel("read_stream"), dim3(8 * prop.multiProcessorCount), dim3(256), args);
            });
            printf("  %-22s %8.1f us %8.0f GB/s\n", "read_stream", us, bytes / us / 1e3);
        }
        // Kiln's kernels; the partition (warps a 16-row block) its decode step takes on tiled weights
        // (Matvec::for_tiles).
        const u32 part = 4;
        const char* kiln1 = part == 8 ? "mmq8_q4_k_1" : "mmq_q4_k_1";
        product("mmq_q4_k_1", kernel("mmq_q4_k_1"), 4);
        product("mmq8_q4_k_1", kernel("mmq8_q4_k_1"), 8);
        product("mmq_q4_k_4 (verify)", kernel("mmq_q4_k_4"), 4);
        product("mmq8_q4_k_4 (verify)", kernel("mmq8_q4_k_4"), 8);
        // The same kernels on the tiled layout: 16-byte lane-consecutive loads, the same math (so the same bits).
        for (u32 nr : {1u, 4u})
            for (u32 warps : {4u, 8u}) {
                char name[32], ref[32];
                snprintf(name, sizeof name, "mmqt%s_q4_k_%u", warps == 8 ? "8" : "", nr);
                snprintf(ref, sizeof ref, "mmq%s_q4_k_%u", warps == 8 ? "8" : "", nr);
                product(name, kernel(name), warps, 1, &wt);
                printf("    values differing from %s: %zu\n", ref, same(kernel(name), warps, kernel(ref), warps, nr, &wt));
            }
        // Partition 16 (no untiled kernel to compare with: a row of 4 equals the row alone instead).
        product("mmqt16_q4_k_1", kernel("mmqt16_q4_k_1"), 16, 1, &wt);
        product("mmqt16_q4_k_4", kernel("mmqt16_q4_k_4"), 16, 1, &wt);
        // mmq's loads without the math, with and without the activation loads.
        product("pattern4", kernel("pattern4"), 4);
        product("pattern4_act", kernel("pattern4_act"), 4);
        // The wide loads without the math: (warps, k split, tile-contiguous layout).
        const int wide[][3] = {{4, 4, 0}, {4, 4, 1}, {8, 8, 0}, {8, 8, 1}};
        for (auto& v : wide) {
            char name[64];
            snprintf(name, sizeof name, "pwide_%d_%d_%d", v[0], v[1], v[2]);
            product(name, kernel(name), v[0], v[0] / v[1]);
        }
        // A row a lane with dp4a (session 15).
        const char* mmvt = part == 8 ? "mmvt8_q4_k" : "mmvt4_q4_k";
        product(mmvt, kernel(mmvt), 4, 2);  // 32 rows a block
        printf("    largest difference from %s / its largest value: %.2e\n", kiln1,
               close(kernel(mmvt), 4, kernel(kiln1), part, 1));
        for (auto p : w) CHECK(cudaFree(p));
        for (auto p : wt) CHECK(cudaFree(p));
        CHECK(cudaFree(yq));
        CHECK(cudaFree(yd));
        CHECK(cudaFree(out));
    }
    return 0;
}
