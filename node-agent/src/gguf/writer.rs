//! A streaming GGUF (v3) writer: the header (metadata and tensor infos) is written from a plan, then each
//! tensor's data is produced row by row by the caller, so a file of any size is written in constant memory.

use super::{Value, DEFAULT_ALIGNMENT};
use kiln_kernels::quant::{quantize_row, GgmlType};
use std::io::{self, Write};

/// One tensor of the plan: ggml dims (`dims[0]` contiguous) and its stored type.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn cols(&self) -> usize {
        self.dims[0] as usize
    }
    pub fn rows(&self) -> usize {
        self.dims[1..].iter().product::<u64>() as usize
    }
    /// Bytes of the tensor's data, or `None` when a row does not fill whole blocks of its type.
    pub fn n_bytes(&self) -> Option<u64> {
        Some(self.ty.bytes_for(self.cols())? as u64 * self.rows() as u64)
    }
}

pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorPlan>,
}

fn pad(n: u64) -> u64 {
    n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

fn w_str(w: &mut impl Write, s: &str) -> io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn w_value(w: &mut impl Write, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes()),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => w_str(w, s),
        Value::Array(a) => {
            let elem = a.first().map_or(4, type_id);
            if a.iter()
                .any(|v| type_id(v) != elem || matches!(v, Value::Array(_)))
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "GGUF arrays hold one scalar or string type",
                ));
            }
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|v| w_value(w, v))
        }
    }
}

impl GgufWriter {
    /// Data bytes of every tensor, aligned as they are laid out (the file's size less its header).
    pub fn data_bytes(&self) -> io::Result<u64> {
        let mut off = 0;
        for t in &self.tensors {
            off = pad(off) + self.bytes_of(t)?;
        }
        Ok(off)
    }

    fn bytes_of(&self, t: &TensorPlan) -> io::Result<u64> {
        t.n_bytes().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: rows of {} do not fit {} blocks",
                    t.name,
                    t.cols(),
                    t.ty
                ),
            )
        })
    }

    /// Writes the file. `row(i, r, buf)` fills `buf` (cols values) with row r of tensor i.
    pub fn write(
        &self,
        w: &mut impl Write,
        mut row: impl FnMut(usize, usize, &mut [f32]),
    ) -> io::Result<u64> {
        self.write_tensors(w, |i, t, w| {
            let cols = t.cols();
            let row_bytes = t.ty.bytes_for(cols).expect("checked by bytes_of");
            let mut vals = vec![0f32; cols];
            let mut bytes = vec![0u8; row_bytes];
            for r in 0..t.rows() {
                row(i, r, &mut vals);
                quantize_row(t.ty, &vals, &mut bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                w.write_all(&bytes)?;
            }
            Ok(())
        })
    }

    /// Writes the header, then lets `tensor(i, plan, w)` write the data of tensor i (exactly its
    /// `n_bytes`, checked), padding between tensors.
    pub fn write_tensors(
        &self,
        w: &mut impl Write,
        mut tensor: impl FnMut(usize, &TensorPlan, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut header = Vec::new();
        header.write_all(b"GGUF")?;
        header.write_all(&3u32.to_le_bytes())?;
        header.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        header.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in &self.metadata {
            w_str(&mut header, k)?;
            header.write_all(&type_id(v).to_le_bytes())?;
            w_value(&mut header, v)?;
        }
        let mut off = 0u64;
        for t in &self.tensors {
            off = pad(off);
            w_str(&mut header, &t.name)?;
            header.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                header.write_all(&d.to_le_bytes())?;
            }
            header.write_all(&(t.ty as u32).to_le_bytes())?;
            header.write_all(&off.to_le_bytes())?;
            off += self.bytes_of(t)?;
        }
        let header_len = pad(header.len() as u64);
        header.resize(header_len as usize, 0);
        w.write_all(&header)?;
        let mut written = 0u64;
        let zeros = [0u8; DEFAULT_ALIGNMENT as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            let aligned = pad(written);
            w.write_all(&zeros[..(aligned - written) as usize])?;
            written = aligned;
            let mut counted = CountingWriter {
                inner: &mut *w,
                n: 0,
            };
            tensor(i, t, &mut counted)?;
            let want = self.bytes_of(t)?;
            if counted.n != want {
                return Err(io::Error::other(format!(
                    "{}: {} data bytes written, {want} planned",
                    t.name, counted.n
                )));
            }
            written += want;
        }
        Ok(header_len + written)
    }
}

/// Counts the bytes that pass through, so each tensor's data can be checked against its plan.
struct CountingWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write + ?Sized> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
