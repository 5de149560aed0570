//! kiln-agent: the data plane of Kiln.

pub mod chat;
pub mod engine;
pub mod fetch;
pub mod gguf;
pub mod model;
pub mod server;
pub mod synth;
pub mod tokenizer;
