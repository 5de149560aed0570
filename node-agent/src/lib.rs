//! kiln-agent: the data plane of Kiln.

pub mod gguf;
pub mod tokenizer;
