//! Reader tests on hand-built GGUF bytes: well-formed files round-trip, and every kind of damage ends in an
//! error that names the field (never a panic).

use super::*;
use std::io::Write;

/// A tiny GGUF writer for tests (the real writer, for synthetic models, lives with `synth`).
struct Builder {
    kv: Vec<u8>,
    n_kv: u64,
    infos: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            kv: vec![],
            n_kv: 0,
            infos: vec![],
            n_tensors: 0,
            data: vec![],
        }
    }
    fn str_bytes(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn kv_str(mut self, k: &str, v: &str) -> Self {
        Self::str_bytes(&mut self.kv, k);
        self.kv.extend(8u32.to_le_bytes());
        Self::str_bytes(&mut self.kv, v);
        self.n_kv += 1;
        self
    }
    fn kv_u32(mut self, k: &str, v: u32) -> Self {
        Self::str_bytes(&mut self.kv, k);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_str_array(mut self, k: &str, vs: &[&str]) -> Self {
        Self::str_bytes(&mut self.kv, k);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((vs.len() as u64).to_le_bytes());
        for v in vs {
            Self::str_bytes(&mut self.kv, v);
        }
        self.n_kv += 1;
        self
    }
    fn tensor_f32(mut self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        while !self.data.len().is_multiple_of(32) {
            self.data.push(0);
        }
        Self::str_bytes(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(0u32.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        for v in values {
            self.data.extend(v.to_le_bytes());
        }
        self.n_tensors += 1;
        self
    }
    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        out.extend(&self.infos);
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

fn open_bytes(bytes: &[u8]) -> Result<GgufFile, GgufError> {
    let mut f = tempfile();
    f.1.write_all(bytes).unwrap();
    f.1.flush().unwrap();
    let r = GgufFile::open(&f.0);
    // The map (if any) stays valid after the unlink.
    std::fs::remove_file(&f.0).unwrap();
    r
}

fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "kiln-gguf-test-{}-{}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::File::create(&p).unwrap();
    (p, f)
}

fn sample() -> Builder {
    Builder::new()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 2)
        .kv_str_array("tokenizer.ggml.tokens", &["a", "b", "<s>"])
        .tensor_f32("w", &[4, 2], &[1., 2., 3., 4., 5., 6., 7., 8.])
        .tensor_f32("b", &[3], &[9., 10., 11.])
}

#[test]
fn reads_metadata_and_tensors() {
    let f = open_bytes(&sample().build()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.metadata.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(
        f.metadata.get_str_array("tokenizer.ggml.tokens").unwrap(),
        vec!["a", "b", "<s>"]
    );
    let w = f.require_tensor("w").unwrap();
    assert_eq!(w.rows_cols(), (2, 4));
    let vals: Vec<f32> = f
        .tensor_data(w)
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(vals, vec![1., 2., 3., 4., 5., 6., 7., 8.]);
    let b = f.require_tensor("b").unwrap();
    assert_eq!(b.offset % 32, 0);
    assert!(matches!(
        f.require_tensor("nope"),
        Err(GgufError::MissingTensor(_))
    ));
    assert!(f.metadata.get_str("llama.block_count").is_err());
}

fn err_of(bytes: &[u8]) -> String {
    match open_bytes(bytes) {
        Ok(_) => panic!("accepted a malformed file"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_truncation_is_a_clean_error() {
    let good = sample().build();
    for len in 0..good.len() {
        let msg = err_of(&good[..len]);
        assert!(msg.contains("malformed GGUF at byte"), "len {len}: {msg}");
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = sample().build();
    b[0] = b'X';
    assert!(err_of(&b).contains("not a GGUF file"));
    let mut b = sample().build();
    b[4] = 1;
    assert!(err_of(&b).contains("version 1 is not supported"));
}

#[test]
fn hostile_counts_do_not_allocate() {
    // tensor_count = u64::MAX: rejected before any allocation.
    let mut b = sample().build();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_of(&b).contains("tensor_count"));
    let mut b = sample().build();
    b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err_of(&b).contains("metadata_kv_count"));
    // First key's string length huge.
    let mut b = sample().build();
    b[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    let msg = err_of(&b);
    assert!(msg.contains("metadata key #0"), "{msg}");
}

#[test]
fn hostile_array_length() {
    let bytes = Builder::new()
        .kv_str_array("tokenizer.ggml.tokens", &["a"])
        .build();
    // Patch the array count (after key len+key, type, elem type).
    let key_len = "tokenizer.ggml.tokens".len();
    let at = 24 + 8 + key_len + 4 + 4;
    let mut b = bytes.clone();
    b[at..at + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let msg = err_of(&b);
    assert!(msg.contains("cannot fit"), "{msg}");
}

#[test]
fn tensor_past_end_and_bad_dims() {
    let good = sample().build();
    // Cut the data section: tensor `b` runs past the end.
    let msg = err_of(&good[..good.len() - 4]);
    assert!(msg.contains("tensor `b` data"), "{msg}");
    // Unknown type.
    let b = Builder::new().tensor_f32("t", &[2], &[1., 2.]);
    let mut bytes = b.build();
    let type_at = 24 + 8 + 1 + 4 + 8;
    bytes[type_at..type_at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(err_of(&bytes).contains("unknown ggml type 77"));
    // n_dims 9.
    let mut bytes = b.build();
    bytes[24 + 8 + 1..24 + 8 + 1 + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(err_of(&bytes).contains("n_dims"));
    // zero dim.
    let mut bytes = b.build();
    bytes[24 + 8 + 1 + 4..24 + 8 + 1 + 12].copy_from_slice(&0u64.to_le_bytes());
    assert!(err_of(&bytes).contains("not a valid dimension"));
}

#[test]
fn duplicate_keys_and_names() {
    let b = Builder::new().kv_u32("a", 1).kv_u32("a", 2).build();
    assert!(err_of(&b).contains("duplicate key"));
    let b = Builder::new()
        .tensor_f32("t", &[1], &[1.])
        .tensor_f32("t", &[1], &[1.])
        .build();
    assert!(err_of(&b).contains("duplicate tensor name"));
}

#[test]
fn random_corruption_never_panics() {
    // A deterministic xorshift fuzz over the sample: flip bytes, truncate, and require Ok or a clean Err.
    let good = sample().build();
    let mut s = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..2000 {
        let mut b = good.clone();
        for _ in 0..(1 + next() % 4) {
            let i = (next() as usize) % b.len();
            b[i] = next() as u8;
        }
        let cut = b.len() - (next() as usize % 8);
        let _ = open_bytes(&b[..cut]);
    }
}
