//! Kiln's compute layer. It knows nothing of Kubernetes, HTTP or model files:
//! - [`quant`]: the GGML block formats (layouts, dequantization, activation quantizers);
//! - [`cpu`]: the CPU kernels (quantized dot products with run-time SIMD selection, threaded matmul, ops);
//! - [`backend`]: the interface every compute backend implements (CPU now, CUDA and HIP next).

pub mod backend;
pub mod cpu;
pub mod gpu;
pub mod quant;
