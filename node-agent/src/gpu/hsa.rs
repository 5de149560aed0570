//! The ROCm environment for the GPUs this pod was given, decided before any HIP call:
//!
//! - `HSA_OVERRIDE_GFX_VERSION` only where the card needs it: ROCm's libraries ship kernels for a few
//!   targets per family (gfx1100, gfx1030, …); a sibling target they do not list (gfx1101–1103,
//!   gfx1031–1036) runs the family's kernels when told to report the family's version. Natively
//!   supported targets get nothing. The variable is process-wide, so every visible GPU must share one
//!   family value.
//! - `ROCR_VISIBLE_DEVICES` when some GPUs ROCm would enumerate must be hidden: an APU's iGPU next to a
//!   discrete card (ROCm enumerates both, and the override would apply to the iGPU too).
//! - The recipe's extras (`HSA_ENABLE_SDMA=0`).
//!
//! A variable the user already set wins: it is kept and reported next to what Kiln would have set.

use super::{GpuInfo, Vendor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// What ROCm needs for one gfx target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchSupport {
    /// ROCm ships kernels for this target: no override.
    Native,
    /// Runs the family's kernels with `HSA_OVERRIDE_GFX_VERSION` = this value.
    Override(&'static str),
    /// No override makes this target work (RDNA1, pre-Vega).
    Unsupported,
}

/// The per-architecture table (targets not listed are treated as unknown: no override, a warning).
pub fn arch_support(gfx: &str) -> Option<ArchSupport> {
    use ArchSupport::*;
    Some(match gfx {
        // RDNA4, RDNA3 flagship, Strix Halo (ROCm 6.4.1+), RDNA2 flagship, CDNA 1-3, Vega 20.
        "gfx1200" | "gfx1201" | "gfx1100" | "gfx1151" | "gfx1030" | "gfx942" | "gfx950"
        | "gfx90a" | "gfx908" | "gfx906" => Native,
        // The other RDNA3 dies and the RDNA3.5 Strix Point iGPU run gfx1100 kernels.
        "gfx1101" | "gfx1102" | "gfx1103" | "gfx1150" => Override("11.0.0"),
        // The other RDNA2 dies (Navi 22/23/24, Rembrandt, Raphael, Mendocino, Van Gogh) run gfx1030's.
        "gfx1031" | "gfx1032" | "gfx1033" | "gfx1034" | "gfx1035" | "gfx1036" | "gfx1037" => {
            Override("10.3.0")
        }
        // Renoir/Cezanne iGPUs run Vega 10 kernels.
        "gfx90c" | "gfx902" | "gfx909" => Override("9.0.0"),
        "gfx1010" | "gfx1011" | "gfx1012" | "gfx803" | "gfx900" => Unsupported,
        _ => return None,
    })
}

/// The family value a target runs as: its override, or its own version when native (gfx1100 →
/// 11.0.0), so a native card and an overridden sibling can share one process-wide value.
fn family_value(gfx: &str) -> Option<String> {
    match arch_support(gfx)? {
        ArchSupport::Override(v) => Some(v.to_string()),
        ArchSupport::Native => {
            let digits = gfx.strip_prefix("gfx")?;
            let (major, rest) = digits.split_at(digits.len().checked_sub(2)?);
            let mut it = rest.chars().map(|c| c.to_digit(16));
            Some(format!("{major}.{}.{}", it.next()??, it.next()??))
        }
        ArchSupport::Unsupported => None,
    }
}

/// The recipe's extras for AMD GPUs: system DMA off (the copy engines caused hangs and corrupted
/// transfers on consumer RDNA under ROCm; blit kernels are used instead).
pub const RECIPE_EXTRAS: &[(&str, &str, &str)] = &[(
    "HSA_ENABLE_SDMA",
    "0",
    "recipe: copy through blit kernels instead of the SDMA engines (hangs on consumer RDNA)",
)];

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KeptVar {
    pub name: String,
    /// The user's value, which wins.
    pub value: String,
    /// What Kiln would have set.
    pub would_set: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct EnvPlan {
    /// Variables Kiln sets.
    pub set: Vec<EnvVar>,
    /// Variables the user set that Kiln leaves alone.
    pub kept: Vec<KeptVar>,
    /// The GPUs (probe indexes) the process will use.
    pub gpus: Vec<usize>,
    pub notes: Vec<String>,
}

/// The AMD GPUs this pod was given: the device plugin mounts only their render nodes, so a GPU whose
/// `/dev/dri/renderD<minor>` is absent belongs to someone else. Without a `/dev/dri` (a probe run
/// outside a container, a test tree without it) every GPU counts as given.
pub fn given_gpus<'a>(gpus: &'a [GpuInfo], root: &Path, sysfs_root: &Path) -> Vec<&'a GpuInfo> {
    let dri = root.join("dev/dri");
    let Ok(entries) = std::fs::read_dir(&dri) else {
        return gpus.iter().collect();
    };
    let present: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("renderD"))
        .collect();
    if present.is_empty() {
        return gpus.iter().collect();
    }
    gpus.iter()
        .filter(|g| {
            let Some(card) = &g.card else { return true };
            let drm = sysfs_root
                .join("sys/class/drm")
                .join(card)
                .join("device/drm");
            match std::fs::read_dir(drm) {
                Ok(es) => es
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("renderD"))
                    .any(|n| present.contains(&n)),
                Err(_) => true,
            }
        })
        .collect()
}

/// Decides the environment for `given` (the AMD GPUs the pod may use, in ROCm's enumeration order).
/// `env` is the current environment; `extras` the recipe's extra variables.
pub fn plan_env(
    given: &[&GpuInfo],
    env: &HashMap<String, String>,
    extras: &[(&str, &str, &str)],
) -> EnvPlan {
    let mut plan = EnvPlan::default();
    let amd: Vec<&GpuInfo> = given
        .iter()
        .copied()
        .filter(|g| g.vendor == Vendor::Amd)
        .collect();
    if amd.is_empty() {
        plan.notes
            .push("no AMD GPU: nothing to set for ROCm".to_string());
        plan.gpus = given.iter().map(|g| g.index).collect();
        return plan;
    }
    let mut want: Vec<EnvVar> = Vec::new();

    // Hide iGPUs when a discrete card is there: they are slower, share system memory, and a global
    // override chosen for the discrete card would be applied to them as well.
    let has_discrete = amd.iter().any(|g| !g.integrated);
    let mut selected: Vec<(usize, &GpuInfo)> = amd
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, g)| !(has_discrete && g.integrated))
        .collect();

    // One process-wide override: keep the GPUs of the first selected GPU's family.
    let first_family = selected.iter().find_map(|(_, g)| family_value(&g.arch));
    let before = selected.len();
    selected.retain(|(_, g)| match (family_value(&g.arch), &first_family) {
        (Some(f), Some(first)) => &f == first,
        _ => true,
    });
    if selected.len() < before {
        plan.notes.push(format!(
            "GPUs of another family than {} hidden: HSA_OVERRIDE_GFX_VERSION is process-wide",
            first_family.clone().unwrap_or_default()
        ));
    }
    if selected.len() < amd.len() {
        let hidden: Vec<String> = amd
            .iter()
            .enumerate()
            .filter(|(i, _)| !selected.iter().any(|(j, _)| j == i))
            .map(|(i, g)| format!("{i} ({} {})", g.name, g.arch))
            .collect();
        want.push(EnvVar {
            name: "ROCR_VISIBLE_DEVICES".into(),
            value: selected
                .iter()
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
                .join(","),
            reason: format!("hide {}", hidden.join(", ")),
        });
    }

    for (_, g) in &selected {
        match arch_support(&g.arch) {
            Some(ArchSupport::Unsupported) => plan.notes.push(format!(
                "{} ({}) is not supported by ROCm and no override makes it work",
                g.name, g.arch
            )),
            None => plan.notes.push(format!(
                "{} ({}): unknown target, no override set",
                g.name, g.arch
            )),
            _ => {}
        }
    }
    let needs: Vec<(&GpuInfo, &'static str)> = selected
        .iter()
        .filter_map(|(_, g)| match arch_support(&g.arch) {
            Some(ArchSupport::Override(v)) => Some((*g, v)),
            _ => None,
        })
        .collect();
    if let Some((g, v)) = needs.first() {
        want.push(EnvVar {
            name: "HSA_OVERRIDE_GFX_VERSION".into(),
            value: v.to_string(),
            reason: format!(
                "{} is {}, which ROCm's libraries do not ship: run the {v} family's kernels",
                g.name, g.arch
            ),
        });
    } else {
        let archs: Vec<&str> = selected.iter().map(|(_, g)| g.arch.as_str()).collect();
        plan.notes.push(format!(
            "no HSA_OVERRIDE_GFX_VERSION needed ({} native)",
            archs.join(", ")
        ));
    }
    for (name, value, reason) in extras {
        want.push(EnvVar {
            name: name.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        });
    }

    for v in want {
        match env.get(&v.name) {
            Some(user) => plan.kept.push(KeptVar {
                name: v.name,
                value: user.clone(),
                would_set: v.value,
                reason: v.reason,
            }),
            None => plan.set.push(v),
        }
    }
    plan.gpus = selected.iter().map(|(_, g)| g.index).collect();
    plan
}

/// Applies the plan to this process's environment and logs every decision. Call it before any
/// thread starts and before any HIP call (the HSA runtime reads these once, at its initialisation).
pub fn apply(plan: &EnvPlan) {
    for v in &plan.set {
        tracing::info!("setting {}={} ({})", v.name, v.value, v.reason);
        std::env::set_var(&v.name, &v.value);
    }
    for k in &plan.kept {
        tracing::info!(
            "keeping the user's {}={} (Kiln would set {}: {})",
            k.name,
            k.value,
            k.would_set,
            k.reason
        );
    }
    for n in &plan.notes {
        tracing::info!("gpu: {n}");
    }
}
