//! Kiln's kernels through NVRTC — the compiler the CUDA backend runs on a GPU machine — as the one
//! translation unit and with the options the backend uses, for the oldest and the newest NVIDIA targets
//! CI checks with nvcc (sm_80, sm_90). nvcc accepting a file does not prove NVRTC does: NVRTC has no system
//! headers, and a kernel it rejects leaves the backend unable to open on every GPU. Needs libnvrtc.so, no
//! GPU (`scripts/gpu-toolchains.sh nvrtc`; scripts/test.sh puts it on the library path and sets
//! `KILN_REQUIRE_NVRTC=1`); elsewhere it prints why it skipped.

mod common;

use kiln_kernels::gpu::cuda::{compile_kernels, nvrtc_present};

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_present() {
        assert!(
            std::env::var_os("KILN_REQUIRE_NVRTC").is_none_or(|v| v != "1"),
            "libnvrtc.so is missing and KILN_REQUIRE_NVRTC=1 (scripts/gpu-toolchains.sh nvrtc)"
        );
        eprintln!("skipping: no NVRTC (libnvrtc.so) on the library path");
        return;
    }
    let results = common::compile_each(&["compute_80", "compute_90"], compile_kernels);
    for (arch, r) in results {
        let ptx = r.unwrap_or_else(|e| panic!("NVRTC for {arch}: {e}"));
        for entry in [
            "mmvw_q4_k_1",
            "attn_tile_q4_0_256",
            "argmax_split",
            "argmax_rows",
            "top_k_rows",
            "mmq_q4_k_4",
            "mmqg_4",
            "mmqg8_1",
            "mmv2_q6_k_4",
            "rms_norm_split",
            "attn_tile2_q4_0_256",
        ] {
            assert!(
                ptx.contains(&format!(".entry {entry}(")),
                "{arch}: no {entry} in the PTX"
            );
        }
    }
}
