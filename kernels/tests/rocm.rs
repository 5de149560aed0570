//! The ROCm backend where no AMD GPU is present (CI, this machine): opening it is a clear error naming
//! the missing device, not a crash, and the HIP runtime it links loads. Where an AMD GPU is present the
//! kernels themselves are checked by gpu_ops (built with `--features rocm`, it tests the ROCm backend).
#![cfg(feature = "rocm")]

use kiln_kernels::gpu::hip::{device_count, HipBackend};

#[test]
fn opening_without_an_amd_gpu_says_so() {
    if device_count() > 0 {
        eprintln!("skipping: this machine has an AMD GPU (gpu_ops checks the backend there)");
        return;
    }
    let e = HipBackend::new(0)
        .err()
        .expect("no device, no backend")
        .to_string();
    assert!(e.starts_with("rocm: no AMD GPU"), "{e}");
}
