//! `KILN_NO_SIMD=1` selects the scalar kernels (its own test binary: the choice is made once per process).

use kiln_kernels::cpu::dot::Simd;

#[test]
fn env_var_forces_scalar_path() {
    std::env::set_var("KILN_NO_SIMD", "1");
    assert_eq!(Simd::detect(), Simd::Scalar);
}
