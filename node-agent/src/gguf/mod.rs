//! GGUF (v2/v3) reader over a memory map: metadata, tensor infos and zero-copy tensor views.
//!
//! Every count and length in the file is checked against the bytes that remain before anything is sized
//! by it, so a truncated or hostile file ends in a [`GgufError`] naming the field and its byte offset —
//! never a panic and never an allocation sized by an unchecked field.

mod metadata;
mod reader;
pub mod writer;

pub use metadata::{Metadata, Value};

use kiln_kernels::quant::GgmlType;
use memmap2::Mmap;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// ggml's limit on tensor rank.
pub const MAX_DIMS: usize = 4;
/// Alignment of the tensor data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

#[derive(Debug, Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed GGUF at byte {offset}: {field}: {reason}")]
    Malformed {
        offset: u64,
        field: String,
        reason: String,
    },
    #[error("GGUF metadata key `{key}`: {reason}")]
    Metadata { key: String, reason: String },
    #[error("tensor `{0}` is not in the file")]
    MissingTensor(String),
}

impl GgufError {
    pub(crate) fn malformed(
        offset: u64,
        field: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        GgufError::Malformed {
            offset,
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One tensor as the file describes it.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the contiguous dimension (the length of one row).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file (checked in bounds and aligned).
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Length of one row (`dims[0]`) and number of rows (the product of the other dims).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims[0] as usize;
        let rows = self.dims[1..].iter().product::<u64>() as usize;
        (rows, cols)
    }
}

/// An open GGUF file. Cheap to clone (the map is shared).
#[derive(Clone)]
pub struct GgufFile {
    map: Arc<Mmap>,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only. Kiln never writes model files in place (fetch renames complete files
        // into the cache), so the bytes do not change under us in normal operation.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::from_map(Arc::new(map))
    }

    pub fn from_map(map: Arc<Mmap>) -> Result<Self, GgufError> {
        let parsed = reader::parse(&map)?;
        let mut by_name = HashMap::with_capacity(parsed.tensors.len());
        for (i, t) in parsed.tensors.iter().enumerate() {
            by_name.insert(t.name.clone(), i);
        }
        Ok(GgufFile {
            map,
            version: parsed.version,
            metadata: parsed.metadata,
            tensors: parsed.tensors,
            by_name,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    pub fn require_tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// The tensor's bytes, straight from the map (no copy). Bounds were checked at open.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }

    /// The shared map, for backends that keep zero-copy views of the weights.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.metadata.get_str("general.architecture")
    }

    /// Total bytes of tensor data (what a backend must hold for the weights).
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }
}

#[cfg(test)]
mod tests;
