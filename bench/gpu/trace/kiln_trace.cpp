// A CUPTI injection library: the CUDA driver loads it when CUDA_INJECTION64_PATH names it, and it writes
// one CSV line per kernel the process runs (GPU start and end, when the host queued it, grid, name) to
// $KILN_TRACE_OUT; with KILN_TRACE_HOST=1 also one per copy and per driver call (when the host was in
// it), which shows what the GPU waits for between two decode steps. It times kernels where they really
// run, inside a decode step with programmatic dependent launch, where Nsight Compute (kernel-times.sh)
// can only time each kernel alone. Nsight Systems, which would do this, cannot make a report on the GPU
// machine (device README, KINDS.md).
// Built on the GPU machine by step-trace.sh against CUPTI from the CUDA toolkit or PyTorch's wheels.
#include <cupti.h>

#include <cstdio>
#include <cstdlib>

namespace {

FILE* out = nullptr;
constexpr size_t kBufferBytes = 8u << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = static_cast<uint8_t*>(aligned_alloc(8, kBufferBytes));
    *size = *buffer ? kBufferBytes : 0;
    *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
            auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(record);
            std::fprintf(out, "kernel,%llu,%llu,%llu,%u,%u,%u,%u,%s\n", (unsigned long long)k->start,
                         (unsigned long long)k->end, (unsigned long long)k->queued, k->streamId,
                         k->gridX * k->gridY * k->gridZ, k->blockX * k->blockY * k->blockZ,
                         k->registersPerThread, k->name ? k->name : "?");
        } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(record);
            std::fprintf(out, "copy,%llu,%llu,0,%u,%llu,0,0,copy_kind_%u\n", (unsigned long long)m->start,
                         (unsigned long long)m->end, m->streamId, (unsigned long long)m->bytes,
                         (unsigned)m->copyKind);
        } else if (record->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
            auto* a = reinterpret_cast<CUpti_ActivityAPI*>(record);
            const char* name = "?";
            cuptiGetCallbackName(CUPTI_CB_DOMAIN_DRIVER_API, a->cbid, &name);
            std::fprintf(out, "api,%llu,%llu,0,0,0,0,0,%s\n", (unsigned long long)a->start,
                         (unsigned long long)a->end, name ? name : "?");
        }
    }
    std::size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(nullptr, 0, &dropped) == CUPTI_SUCCESS && dropped)
        std::fprintf(stderr, "kiln_trace: %zu records dropped\n", dropped);
    std::free(buffer);
}

void finish() {
    cuptiActivityFlushAll(1);
    if (out) std::fclose(out);
    out = nullptr;
}

bool check(CUptiResult r, const char* what) {
    if (r == CUPTI_SUCCESS) return true;
    const char* msg = "?";
    cuptiGetResultString(r, &msg);
    std::fprintf(stderr, "kiln_trace: %s failed: %s\n", what, msg);
    return false;
}

}  // namespace

extern "C" int InitializeInjection(void) {
    const char* path = std::getenv("KILN_TRACE_OUT");
    out = std::fopen(path ? path : "kiln-trace.csv", "w");
    if (!out) {
        std::perror("kiln_trace: cannot open the output");
        return 0;
    }
    std::fprintf(out, "kind,start_ns,end_ns,queued_ns,stream,blocks,threads,registers,name\n");
    if (!check(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed), "register") ||
        !check(cuptiActivityEnableLatencyTimestamps(1), "latency timestamps") ||
        !check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "kernel activity"))
        return 0;
    const char* host = std::getenv("KILN_TRACE_HOST");
    if (host && host[0] == '1' &&
        (!check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "copy activity") ||
         !check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER), "driver activity")))
        return 0;
    std::atexit(finish);
    return 1;
}
