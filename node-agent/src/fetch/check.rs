//! Checks before load: a model file is refused here, with a clear reason, before any GPU memory is spent
//! on it. Run after every download and on local files (`file://`, `pvc://`, a cached copy).
//!
//! - The GGUF header parses (magic, version, every count and string in bounds).
//! - The file is complete: the reader checks every tensor's data range lies inside the file, so a
//!   truncated download fails here naming the first tensor that runs past the end.
//! - The architecture is one Kiln runs, and every tensor type is one its kernels compute with.
//! - The quantization the spec declares (llama.cpp's names: `Q4_K_M`, `Q8_0`, …) matches the file: its
//!   `general.file_type` when present, and the most common type of its weight matrices.
//! - For a split GGUF, the shards are the ones the first shard announces (`split.count`, `split.no`).

use crate::gguf::{GgufError, GgufFile};
use crate::model::SUPPORTED_ARCHS;
use kiln_kernels::quant::GgmlType;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CheckError {
    #[error("{path} is not a usable GGUF file: {source}")]
    Gguf { path: PathBuf, source: GgufError },
    #[error("{path}: architecture `{arch}` is not supported (supported: {SUPPORTED_ARCHS})")]
    UnsupportedArch { path: PathBuf, arch: String },
    #[error("{path}: tensor `{tensor}` has type {ty}, which Kiln cannot compute with")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("unknown quantization `{0}` (llama.cpp names such as Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, Q4_1, F16, BF16)")]
    UnknownQuantization(String),
    #[error("the spec says quantization {expected} but {path} {found}")]
    QuantizationMismatch {
        expected: String,
        path: PathBuf,
        found: String,
    },
    #[error("{path}: split GGUF shard mismatch: {reason}")]
    Split { path: PathBuf, reason: String },
}

/// One of llama.cpp's file types (`general.file_type`, `LLAMA_FTYPE_*`) and the tensor types its weight
/// matrices are mostly stored in: the main type and the fallback llama.cpp uses for rows that are not a
/// multiple of the K-quant super-block (256), e.g. Q4_K → Q5_0.
struct FileType {
    id: u32,
    name: &'static str,
    majority: &'static [GgmlType],
}

const FILE_TYPES: &[FileType] = {
    use GgmlType::*;
    &[
        FileType {
            id: 0,
            name: "F32",
            majority: &[F32],
        },
        FileType {
            id: 1,
            name: "F16",
            majority: &[F16],
        },
        FileType {
            id: 2,
            name: "Q4_0",
            majority: &[Q4_0],
        },
        FileType {
            id: 3,
            name: "Q4_1",
            majority: &[Q4_1],
        },
        FileType {
            id: 7,
            name: "Q8_0",
            majority: &[Q8_0],
        },
        FileType {
            id: 8,
            name: "Q5_0",
            majority: &[Q5_0],
        },
        FileType {
            id: 9,
            name: "Q5_1",
            majority: &[Q5_1],
        },
        FileType {
            id: 10,
            name: "Q2_K",
            majority: &[Q2_K, Q4_0],
        },
        FileType {
            id: 11,
            name: "Q3_K_S",
            majority: &[Q3_K, Q4_0],
        },
        FileType {
            id: 12,
            name: "Q3_K_M",
            majority: &[Q3_K, Q4_0],
        },
        FileType {
            id: 13,
            name: "Q3_K_L",
            majority: &[Q3_K, Q4_0],
        },
        FileType {
            id: 14,
            name: "Q4_K_S",
            majority: &[Q4_K, Q5_0],
        },
        FileType {
            id: 15,
            name: "Q4_K_M",
            majority: &[Q4_K, Q5_0],
        },
        FileType {
            id: 16,
            name: "Q5_K_S",
            majority: &[Q5_K, Q5_1],
        },
        FileType {
            id: 17,
            name: "Q5_K_M",
            majority: &[Q5_K, Q5_1],
        },
        FileType {
            id: 18,
            name: "Q6_K",
            majority: &[Q6_K, Q8_0],
        },
        FileType {
            id: 21,
            name: "Q2_K_S",
            majority: &[Q2_K, Q4_0],
        },
        FileType {
            id: 32,
            name: "BF16",
            majority: &[BF16],
        },
    ]
};

/// llama.cpp marks a file type it guessed (rather than read) with this bit.
const FTYPE_GUESSED: u32 = 1024;

fn file_type_by_name(name: &str) -> Option<&'static FileType> {
    FILE_TYPES
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
}

fn file_type_name(id: u32) -> String {
    FILE_TYPES
        .iter()
        .find(|f| f.id == id)
        .map_or_else(|| format!("file type {id}"), |f| f.name.to_string())
}

/// What the checks found.
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub arch: String,
    /// `general.file_type`, by llama.cpp name, when the file declares it.
    pub file_type: Option<String>,
    /// The most common type among the weight matrices (tensors of rank ≥ 2).
    pub majority_type: Option<GgmlType>,
    pub n_tensors: usize,
    pub tensor_bytes: u64,
}

/// Checks the model made of `shards` (one path, or every shard of a split GGUF in order) against the
/// declared `quantization`, if any.
pub fn check_model(
    shards: &[PathBuf],
    quantization: Option<&str>,
) -> Result<ModelSummary, CheckError> {
    let expected = quantization
        .map(|q| {
            file_type_by_name(q.trim()).ok_or_else(|| CheckError::UnknownQuantization(q.into()))
        })
        .transpose()?;
    let first_path = shards
        .first()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new(""));
    let mut files = Vec::with_capacity(shards.len());
    for p in shards {
        let f = GgufFile::open(p).map_err(|source| CheckError::Gguf {
            path: p.clone(),
            source,
        })?;
        files.push(f);
    }
    let first = files.first().ok_or_else(|| CheckError::Split {
        path: first_path.into(),
        reason: "no files".into(),
    })?;
    check_split(shards, &files)?;

    let arch = first
        .architecture()
        .map_err(|source| CheckError::Gguf {
            path: first_path.into(),
            source,
        })?
        .to_string();
    // SUPPORTED_ARCHS is the list `model::load` dispatches on (and names in its own error).
    if !SUPPORTED_ARCHS.split(", ").any(|a| a == arch) {
        return Err(CheckError::UnsupportedArch {
            path: first_path.into(),
            arch,
        });
    }

    let mut counts: BTreeMap<u32, (GgmlType, usize)> = BTreeMap::new();
    let (mut n_tensors, mut tensor_bytes) = (0, 0);
    for (path, f) in shards.iter().zip(&files) {
        for t in &f.tensors {
            if !t.ty.is_supported() {
                return Err(CheckError::UnsupportedType {
                    path: path.clone(),
                    tensor: t.name.clone(),
                    ty: t.ty,
                });
            }
            if t.dims.len() >= 2 {
                counts.entry(t.ty as u32).or_insert((t.ty, 0)).1 += 1;
            }
            n_tensors += 1;
            tensor_bytes += t.n_bytes;
        }
    }
    // Ties go to the type with the larger id: the quantized one, never a leftover f32/f16 matrix.
    let majority_type = counts
        .values()
        .max_by_key(|(ty, n)| (*n, *ty as u32))
        .map(|&(ty, _)| ty);
    let declared = first
        .metadata
        .get("general.file_type")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32 & !FTYPE_GUESSED);

    if let Some(want) = expected {
        if let Some(id) = declared {
            if id != want.id {
                return Err(CheckError::QuantizationMismatch {
                    expected: want.name.into(),
                    path: first_path.into(),
                    found: format!("declares {} (general.file_type {id})", file_type_name(id)),
                });
            }
        }
        match majority_type {
            Some(ty) if want.majority.contains(&ty) => {}
            found => {
                return Err(CheckError::QuantizationMismatch {
                    expected: want.name.into(),
                    path: first_path.into(),
                    found: match found {
                        Some(ty) => format!(
                            "stores most weight matrices as {ty} ({} expects {})",
                            want.name,
                            want.majority
                                .iter()
                                .map(|t| t.name())
                                .collect::<Vec<_>>()
                                .join(" or ")
                        ),
                        None => "has no weight matrices".into(),
                    },
                });
            }
        }
    }
    Ok(ModelSummary {
        arch,
        file_type: declared.map(file_type_name),
        majority_type,
        n_tensors,
        tensor_bytes,
    })
}

/// Each shard's `split.no` is its position and `split.count` the number of shards given.
fn check_split(shards: &[PathBuf], files: &[GgufFile]) -> Result<(), CheckError> {
    let n = files.len();
    for (i, (path, f)) in shards.iter().zip(files).enumerate() {
        let count = f.metadata.get("split.count").and_then(|v| v.as_u64());
        let no = f.metadata.get("split.no").and_then(|v| v.as_u64());
        let err = |reason: String| CheckError::Split {
            path: path.clone(),
            reason,
        };
        match (count, no) {
            (None, None) if n == 1 => {}
            (Some(c), Some(k)) if c == n as u64 && k == i as u64 => {}
            (Some(c), Some(k)) => {
                return Err(err(format!(
                    "it says shard {} of {c}, expected shard {} of {n}",
                    k + 1,
                    i + 1
                )))
            }
            _ if n == 1 => {
                return Err(err(
                    "it is one shard of a split model: fetch the -00001-of-… file to get them all"
                        .into(),
                ))
            }
            _ => return Err(err("it has no split.count/split.no metadata".into())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_type_name_is_unique_and_maps_back() {
        for f in FILE_TYPES {
            assert_eq!(file_type_by_name(&f.name.to_lowercase()).unwrap().id, f.id);
            assert_eq!(file_type_name(f.id), f.name);
        }
        assert!(file_type_by_name("Q4_K_X").is_none());
        assert_eq!(file_type_name(99), "file type 99");
    }
}
