//! kiln-agent: the data plane of Kiln.

pub mod chat;
pub mod gguf;
pub mod tokenizer;
