//! Kiln's kernels through hipRTC — the compiler the ROCm backend runs for the exact AMD GPU — as the one
//! translation unit and with the options the backend uses, for an RDNA target (gfx1030, wave32, the
//! family of the RX 7900 XTX's gfx1100) and a CDNA one (gfx90a, wave64). hipcc accepting each file does
//! not prove hipRTC accepts the concatenated source without system headers. Needs the ROCm runtime
//! libraries, no GPU (`scripts/gpu-toolchains.sh hip-runtime`; scripts/test.sh puts them on the library
//! path and sets `KILN_REQUIRE_HIPRTC=1`); elsewhere it prints why it skipped. (gfx1100 itself needs a
//! newer ROCm than the 5.2 CI has: its device libraries start with ROCm 5.3.)

mod common;

use kiln_kernels::gpu::hiprtc::{compile_kernels, hiprtc_present};

#[test]
fn every_kernel_compiles_with_hiprtc() {
    if !hiprtc_present() {
        assert!(
            std::env::var_os("KILN_REQUIRE_HIPRTC").is_none_or(|v| v != "1"),
            "hipRTC is missing and KILN_REQUIRE_HIPRTC=1 (scripts/gpu-toolchains.sh hip-runtime)"
        );
        eprintln!("skipping: no hipRTC (libhiprtc.so / libamdhip64.so) on the library path");
        return;
    }
    let results = common::compile_each(&["gfx1030", "gfx90a"], compile_kernels);
    // A kernel's name, NUL-terminated, in the code object's symbol strings.
    let has = |code: &[u8], name: &str| {
        code.windows(name.len() + 1)
            .any(|w| w[..name.len()] == *name.as_bytes() && w[name.len()] == 0)
    };
    for (arch, r) in results {
        let code = r.unwrap_or_else(|e| panic!("hipRTC for {arch}: {e}"));
        assert_eq!(&code[..4], b"\x7fELF", "{arch}: not an ELF code object");
        let mut entries = vec![
            "mmvw_q4_k_1",
            "attn_split_q4_0_256",
            "argmax_split",
            "argmax_rows",
            "top_k_rows",
        ];
        if arch.starts_with("gfx10") || arch.starts_with("gfx11") {
            // The tiled attention is built for 32-lane warps only.
            entries.push("attn_tile_q4_0_256");
        }
        for entry in entries {
            assert!(has(&code, entry), "{arch}: no {entry} in the code object");
        }
    }
    // A name that is not an architecture is refused before the compiler sees it.
    assert!(compile_kernels("gfx1100; rm").is_err());
}
