//! `GET /status`: the agent status contract the operator polls (phase, context requested/effective and
//! downsizes, GPUs with their memory). See the team's status contract; unknown fields are ignored by
//! readers, so `memory` (the watcher's view) is extra.

use super::AppState;
use crate::gpu::GpuInfo;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the node layer knows while serving, shared by the loader, the memory watcher and `/status`.
#[derive(Default)]
pub struct NodeState {
    pub requested: AtomicUsize,
    pub effective: AtomicUsize,
    pub downsizes: AtomicU64,
    /// A downsize is in progress (admission paused).
    pub downsizing: AtomicBool,
    /// The agent's own planned device bytes at the effective context.
    pub resident: Arc<AtomicU64>,
    pub headroom: AtomicU64,
    /// The last memory sample.
    pub gpus: Mutex<Vec<GpuInfo>>,
    /// `sysfs:/`, `nvml`, `fake:FILE`, or None when nothing is watched.
    pub source: Mutex<Option<String>>,
    pub auto_downsize: AtomicBool,
    /// The device the engine runs on (`cpu`, `cuda:0`), once loaded.
    pub device: Mutex<Option<String>>,
    /// The last resize, for people reading the status.
    pub message: Mutex<Option<String>>,
}

impl NodeState {
    pub fn set_message(&self, m: String) {
        *self.message.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
    }
}

pub async fn status(State(st): State<Arc<AppState>>) -> Json<Value> {
    let node = &st.node;
    let loaded = st.core.get().is_some();
    let phase = if !loaded || (!st.ready() && !st.shutting_down.load(Ordering::SeqCst)) {
        "Loading"
    } else if node.downsizing.load(Ordering::SeqCst) {
        "Downsizing"
    } else {
        "Ready"
    };
    let message = if st.shutting_down.load(Ordering::SeqCst) {
        Some("shutting down".to_string())
    } else if !loaded {
        Some("loading the model".to_string())
    } else {
        node.message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    };
    let gpus: Vec<Value> = node
        .gpus
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|g| {
            json!({
                "index": g.index,
                "vendor": g.vendor.as_str(),
                "arch": g.arch,
                "name": g.name,
                "pci_bus": g.pci_bus,
                "uuid": g.uuid,
                "vram_used_bytes": g.vram_used_bytes,
                "vram_total_bytes": g.vram_total_bytes,
            })
        })
        .collect();
    let mut out = json!({
        "phase": phase,
        "model": st.model_id,
        "device": node.device.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        "gpus": gpus,
        "memory": {
            "source": node.source.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "auto_downsize": node.auto_downsize.load(Ordering::SeqCst),
            "resident_bytes": node.resident.load(Ordering::SeqCst),
            "headroom_bytes": node.headroom.load(Ordering::SeqCst),
        },
    });
    if let Some(m) = message {
        out["message"] = json!(m);
    }
    if loaded {
        out["context"] = json!({
            "requested": node.requested.load(Ordering::SeqCst),
            "effective": node.effective.load(Ordering::SeqCst),
            "downsizes_total": node.downsizes.load(Ordering::SeqCst),
        });
    }
    Json(out)
}
