//! GPU backends. The kernels are written once (kernels/gpu/*.cu, in the common subset of CUDA and HIP that
//! `compat.h` defines) and compiled at run time for the exact device (NVRTC on NVIDIA, [`hiprtc`] on
//! AMD), so a new GPU architecture needs no new release. CI compiles the same files ahead of time with
//! nvcc and hipcc (`scripts/check-gpu-kernels.sh`) to prove they build for every target, and through
//! NVRTC and hipRTC as the backends do (kernels/tests/nvrtc.rs, hiprtc.rs).

pub mod backend;
pub mod cuda;
#[cfg(feature = "rocm")]
pub mod hip;
pub mod hiprtc;
pub mod runtime;

/// Whether the comparison switch `var` (`KILN_CUDA_FUSE`, `KILN_CUDA_PDL`, ...) leaves its path on: every
/// one is on unless set to `0`.
pub(crate) fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v != "0")
}

/// The GPU backend of this build: CUDA, or ROCm in a build with the `rocm` feature.
#[cfg(not(feature = "rocm"))]
pub type BuildGpu = cuda::CudaBackend;
#[cfg(feature = "rocm")]
pub type BuildGpu = hip::HipBackend;

/// What [`open_build_gpu`] found.
pub enum Opened {
    Gpu(Box<BuildGpu>),
    /// No GPU of this build's vendor here (no driver or no device), and why.
    Absent(String),
}

/// Opens GPU `ordinal` of this build's vendor for the GPU tests and tools: [`Opened::Absent`] where the
/// machine has none, an error where one is there and the backend fails (its kernels do not compile,
/// say), which must not pass for a skip.
pub fn open_build_gpu(ordinal: usize) -> crate::backend::Result<Opened> {
    #[cfg(not(feature = "rocm"))]
    {
        if !cuda::driver_present() {
            return Ok(Opened::Absent(
                "no NVIDIA driver (libcuda.so) on this machine".into(),
            ));
        }
        match cuda::CudaBackend::new(ordinal) {
            Ok(g) => Ok(Opened::Gpu(Box::new(g))),
            Err(e) if e.to_string().contains("NO_DEVICE") => {
                Ok(Opened::Absent(format!("no CUDA device: {e}")))
            }
            Err(e) => Err(e),
        }
    }
    #[cfg(feature = "rocm")]
    {
        if hip::device_count() <= ordinal {
            return Ok(Opened::Absent(format!(
                "no AMD GPU {ordinal} visible to the HIP runtime on this machine"
            )));
        }
        hip::HipBackend::new(ordinal).map(|g| Opened::Gpu(Box::new(g)))
    }
}

/// The kernel sources in dependency order: headers first, then one file per group of operations.
pub const SOURCES: &[(&str, &str)] = &[
    ("compat.h", include_str!("../../gpu/compat.h")),
    ("quant.h", include_str!("../../gpu/quant.h")),
    ("matvec.cu", include_str!("../../gpu/matvec.cu")),
    ("norm.cu", include_str!("../../gpu/norm.cu")),
    ("elementwise.cu", include_str!("../../gpu/elementwise.cu")),
    ("recurrent.cu", include_str!("../../gpu/recurrent.cu")),
    ("attention.cu", include_str!("../../gpu/attention.cu")),
    ("sampling.cu", include_str!("../../gpu/sampling.cu")),
];

/// One translation unit for a run-time compiler: the files concatenated, their local `#include "…"`
/// and `#pragma once` lines dropped (each header appears once, first). `KILN_KERNEL_DEFINES`
/// (`NAME=VALUE` pairs, space-separated) puts `#define`s first, for measuring a kernel variant without a
/// new build (bench/gpu); the cached code is keyed by the whole source, so each variant compiles once.
pub fn single_source() -> String {
    let mut out = defines_prelude(&std::env::var("KILN_KERNEL_DEFINES").unwrap_or_default());
    for (name, text) in SOURCES {
        out += &format!("// ---- {name}\n");
        for line in text.lines() {
            let t = line.trim_start();
            if !t.starts_with("#include \"") && !t.starts_with("#pragma once") {
                out += line;
                out.push('\n');
            }
        }
    }
    out
}

/// `#define NAME VALUE` lines for `NAME=VALUE` pairs (a bare `NAME` defines it as 1); a token that
/// is not an identifier is left out, with a warning, rather than given to the compiler as source.
fn defines_prelude(spec: &str) -> String {
    let mut out = String::new();
    for token in spec.split_whitespace() {
        let (name, value) = token.split_once('=').unwrap_or((token, "1"));
        let ident = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if ident && plain && !value.is_empty() {
            out += &format!("#define {name} {value}\n");
        } else {
            eprintln!("KILN_KERNEL_DEFINES: {token:?} is not NAME=VALUE (an identifier, a plain value); ignored");
        }
    }
    out
}

/// A stable 64-bit FNV-1a hash: names cached compiled kernels by their source.
pub fn source_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn cache_dir() -> Option<std::path::PathBuf> {
    if let Some(d) = std::env::var_os("KILN_KERNEL_CACHE") {
        return Some(d.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("kiln").join("kernels"))
}

/// Kernels compiled from `src` for one target (`suffix` names it: `compute_90.ptx`, `gfx1100.co`): from
/// the on-disk cache when this exact source was compiled for it before, else from `build` (then cached;
/// a cache that cannot be written is only a slower start).
pub(crate) fn cached_build(
    src: &str,
    suffix: &str,
    build: impl FnOnce() -> crate::backend::Result<Vec<u8>>,
) -> crate::backend::Result<Vec<u8>> {
    let key = format!("{:016x}-{suffix}", source_hash(src));
    let cached = cache_dir().map(|d| d.join(key));
    if let Some(p) = &cached {
        if let Ok(bytes) = std::fs::read(p) {
            return Ok(bytes);
        }
    }
    let bytes = build()?;
    if let Some(p) = &cached {
        if let Some(dir) = p.parent() {
            let tmp = p.with_extension("tmp");
            let _ = std::fs::create_dir_all(dir)
                .and_then(|_| std::fs::write(&tmp, &bytes))
                .and_then(|_| std::fs::rename(&tmp, p));
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::defines_prelude;

    #[test]
    fn kernel_defines_become_define_lines_and_bad_tokens_are_dropped() {
        assert_eq!(defines_prelude(""), "");
        assert_eq!(
            defines_prelude(" KILN_A=1  B_2=-0.5 FLAG "),
            "#define KILN_A 1\n#define B_2 -0.5\n#define FLAG 1\n"
        );
        // Not an identifier, or a value that would inject source: left out.
        assert_eq!(defines_prelude("2X=1 A=1;int Y= =3 C=(1)"), "");
    }
}
