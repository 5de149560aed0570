//! GGUF metadata values and typed accessors with errors that name the key.

use super::GgufError;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }

    /// Any integer type that fits in u64 (GGUF writers disagree on integer widths).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }
}

/// Metadata in file order-independent form.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub(crate) entries: BTreeMap<String, Value>,
}

fn wrong(key: &str, want: &str, got: &Value) -> GgufError {
    GgufError::Metadata {
        key: key.to_string(),
        reason: format!("expected {want}, found {}", got.type_name()),
    }
}

fn missing(key: &str) -> GgufError {
    GgufError::Metadata {
        key: key.to_string(),
        reason: "missing".to_string(),
    }
}

impl FromIterator<(String, Value)> for Metadata {
    /// Metadata from key/value pairs (a writer's plan, a test's hand-made header).
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Self {
        Metadata {
            entries: iter.into_iter().collect(),
        }
    }
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(wrong(key, "string", v)),
            None => Err(missing(key)),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_str(key).map(Some),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_u64()
            .ok_or_else(|| wrong(key, "non-negative integer", v))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_u64(key).map(Some),
        }
    }

    /// An integer that must fit `usize` and lie in `1..=max` — the form every model dimension takes.
    pub fn get_dim(&self, key: &str, max: u64) -> Result<usize, GgufError> {
        let v = self.get_u64(key)?;
        if v == 0 || v > max {
            return Err(GgufError::Metadata {
                key: key.to_string(),
                reason: format!("{v} is outside 1..={max}"),
            });
        }
        Ok(v as usize)
    }

    pub fn opt_dim(&self, key: &str, max: u64) -> Result<Option<usize>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_dim(key, max).map(Some),
        }
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.get(key).ok_or_else(|| missing(key))?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| wrong(key, "float", v))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_f32(key).map(Some),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(key, "bool", v)),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(v) => Err(wrong(key, "array", v)),
            None => Err(missing(key)),
        }
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.get_array(key).map(Some),
        }
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(wrong(key, "array of strings", v)),
            })
            .collect()
    }

    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| wrong(key, "array of floats", v))
            })
            .collect()
    }

    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| wrong(key, "array of integers", v)))
            .collect()
    }
}
