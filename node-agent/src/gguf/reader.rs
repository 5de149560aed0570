//! The GGUF byte-level parser. A cursor over the mapped bytes; every read is bounds-checked and every
//! error carries the offset where the bad field starts.

use super::metadata::{Metadata, Value};
use super::{GgufError, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
use kiln_kernels::quant::GgmlType;
use std::collections::HashSet;

pub(super) struct Parsed {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

/// Nested arrays are legal GGUF but no model uses more than one level; the cap stops recursion bombs.
const MAX_ARRAY_DEPTH: usize = 3;
/// Longest string accepted (keys, tensor names and values; chat templates are the longest real ones).
const MAX_STRING_LEN: u64 = 64 << 20;

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.remaining() {
            return Err(GgufError::malformed(
                self.pos as u64,
                field,
                format!(
                    "needs {n} bytes but the file ends after {}",
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], GgufError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, field: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count that sizes a collection whose elements take at least `min_elem_bytes` each: it cannot
    /// exceed what the rest of the file could hold, so no allocation is sized by a lie.
    fn count(&mut self, field: &str, min_elem_bytes: u64) -> Result<usize, GgufError> {
        let at = self.pos as u64;
        let n = self.u64(field)?;
        let fits = self.remaining() / min_elem_bytes.max(1);
        if n > fits {
            return Err(GgufError::malformed(
                at,
                field,
                format!(
                    "count {n} cannot fit in the {} bytes that remain",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, field: &str) -> Result<String, GgufError> {
        let at = self.pos as u64;
        let len = self.u64(field)?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::malformed(
                at,
                field,
                format!("string length {len} exceeds the {MAX_STRING_LEN}-byte limit"),
            ));
        }
        let bytes = self.take(len as usize, field)?;
        // Values may hold arbitrary bytes (some vocabularies do); keys and names must be text, checked by
        // the caller where it matters. Lossy decoding keeps every valid character exact.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, field: &str, depth: usize) -> Result<Value, GgufError> {
        let at = self.pos as u64;
        Ok(match ty {
            0 => Value::U8(self.array::<1>(field)?[0]),
            1 => Value::I8(self.array::<1>(field)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(field)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(field)?)),
            4 => Value::U32(self.u32(field)?),
            5 => Value::I32(i32::from_le_bytes(self.array(field)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(field)?)),
            7 => {
                let b = self.array::<1>(field)?[0];
                if b > 1 {
                    return Err(GgufError::malformed(
                        at,
                        field,
                        format!("bool byte is {b}, not 0 or 1"),
                    ));
                }
                Value::Bool(b == 1)
            }
            8 => Value::String(self.string(field)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::malformed(
                        at,
                        field,
                        format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"),
                    ));
                }
                let elem_ty = self.u32(field)?;
                let min = min_value_bytes(elem_ty).ok_or_else(|| {
                    GgufError::malformed(at, field, format!("unknown array element type {elem_ty}"))
                })?;
                let n = self.count(field, min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, field, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(field)?),
            11 => Value::I64(i64::from_le_bytes(self.array(field)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(field)?)),
            other => {
                return Err(GgufError::malformed(
                    at,
                    field,
                    format!("unknown value type {other}"),
                ))
            }
        })
    }
}

/// The fewest bytes a value of this type can occupy (strings and arrays: their length prefix).
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

pub(super) fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.take(4, "magic")?;
    if magic != b"GGUF" {
        return Err(GgufError::malformed(
            0,
            "magic",
            format!("expected \"GGUF\", found {magic:02x?} (not a GGUF file)"),
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::malformed(
            4,
            "version",
            format!("version {version} is not supported (2 and 3 are)"),
        ));
    }
    // A tensor info is at least: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    let n_tensors = c.count("tensor_count", 32)?;
    // A key-value pair is at least: key length (8) + type (4) + one byte of value.
    let n_kv = c.count("metadata_kv_count", 13)?;

    let mut metadata = Metadata::default();
    for i in 0..n_kv {
        let at = c.pos as u64;
        let key = c.string(&format!("metadata key #{i}"))?;
        let ty = c.u32(&format!("metadata `{key}` type"))?;
        let value = c.value(ty, &format!("metadata `{key}`"), 0)?;
        if metadata.entries.insert(key.clone(), value).is_some() {
            return Err(GgufError::malformed(
                at,
                format!("metadata `{key}`"),
                "duplicate key",
            ));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::Metadata {
                    key: "general.alignment".into(),
                    reason: format!("{v:?} is not a power of two"),
                })
            }
        },
    };

    struct Raw {
        at: u64,
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
        rel_offset: u64,
    }
    let mut raws = Vec::with_capacity(n_tensors);
    let mut names = HashSet::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let at = c.pos as u64;
        let name = c.string(&format!("tensor #{i} name"))?;
        let field = |what: &str| format!("tensor `{name}` {what}");
        let n_dims_at = c.pos as u64;
        let n_dims = c.u32(&field("n_dims"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::malformed(
                n_dims_at,
                field("n_dims"),
                format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)"),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            let dim_at = c.pos as u64;
            let v = c.u64(&field(&format!("dim {d}")))?;
            if v == 0 || v > i64::MAX as u64 {
                return Err(GgufError::malformed(
                    dim_at,
                    field(&format!("dim {d}")),
                    format!("{v} is not a valid dimension"),
                ));
            }
            dims.push(v);
        }
        let ty_at = c.pos as u64;
        let ty_id = c.u32(&field("type"))?;
        let ty = GgmlType::from_u32(ty_id).ok_or_else(|| {
            GgufError::malformed(ty_at, field("type"), format!("unknown ggml type {ty_id}"))
        })?;
        let off_at = c.pos as u64;
        let rel_offset = c.u64(&field("offset"))?;
        if rel_offset % alignment != 0 {
            return Err(GgufError::malformed(
                off_at,
                field("offset"),
                format!("{rel_offset} is not a multiple of the alignment {alignment}"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(GgufError::malformed(
                at,
                field("name"),
                "duplicate tensor name",
            ));
        }
        raws.push(Raw {
            at,
            name,
            dims,
            ty,
            rel_offset,
        });
    }

    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    let mut tensors = Vec::with_capacity(raws.len());
    for r in raws {
        let field = |what: &str| format!("tensor `{}` {what}", r.name);
        let n_elements = r
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| GgufError::malformed(r.at, field("dims"), "element count overflows"))?;
        if r.dims[0] % r.ty.block_size() as u64 != 0 {
            return Err(GgufError::malformed(
                r.at,
                field("dims"),
                format!(
                    "row length {} is not a multiple of the {} block size {}",
                    r.dims[0],
                    r.ty,
                    r.ty.block_size()
                ),
            ));
        }
        let n_bytes = (n_elements / r.ty.block_size() as u64)
            .checked_mul(r.ty.type_size() as u64)
            .ok_or_else(|| GgufError::malformed(r.at, field("dims"), "byte size overflows"))?;
        let offset = data_offset
            .checked_add(r.rel_offset)
            .filter(|o| o.checked_add(n_bytes).is_some_and(|end| end <= file_len))
            .ok_or_else(|| {
                GgufError::malformed(
                    r.at,
                    field("data"),
                    format!(
                        "{n_bytes} bytes at data offset {} run past the end of the {file_len}-byte file (truncated?)",
                        r.rel_offset
                    ),
                )
            })?;
        tensors.push(TensorInfo {
            name: r.name,
            dims: r.dims,
            ty: r.ty,
            offset,
            n_bytes,
        });
    }

    Ok(Parsed {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
