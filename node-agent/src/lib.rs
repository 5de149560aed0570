//! kiln-agent: the data plane of Kiln.

pub mod chat;
pub mod device;
pub mod engine;
pub mod fetch;
pub mod gguf;
pub mod gpu;
pub mod model;
pub mod plan;
pub mod server;
pub mod synth;
pub mod tokenizer;
