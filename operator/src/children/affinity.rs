//! Node affinity from `gpu.vendor` / `gpu.arch`, using the labels the vendors' node labellers publish:
//! AMD's `amd.com/gpu.device-id` (PCI device id, lower-case hex) and NVIDIA GPU feature discovery's
//! `nvidia.com/gpu.compute.major` / `.minor` (the compute capability is exactly what `sm_XY` names; the
//! `nvidia.com/gpu.product` strings vary by board and driver, so they are not used).

use crate::resolve::Resolved;
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Toleration,
};
use kiln_crds::GpuVendor;

/// AMD architectures the operator can place, and the PCI device ids of the boards that carry them.
const AMD_DEVICE_IDS: &[(&str, &[&str])] = &[
    // RX 7900 XTX / XT / GRE, Radeon PRO W7900, W7800
    ("gfx1100", &["744c", "7448", "745e"]),
    // RX 7800 XT / 7700 XT, Radeon PRO W7700
    ("gfx1101", &["747e", "7470"]),
    // RX 7600 / 7600 XT, Radeon PRO W7600 / W7500
    ("gfx1102", &["7480", "7489"]),
    // RX 6800 / 6800 XT / 6900 XT / 6950 XT, Radeon PRO W6800
    ("gfx1030", &["73bf", "73a5", "73a3"]),
    // Instinct MI210 / MI250 / MI250X
    ("gfx90a", &["740f", "740c", "7408"]),
    // Instinct MI300X / MI300A / MI325X
    ("gfx942", &["74a1", "74a0", "74a5"]),
];

/// The AMD architectures with a device-id table, for error messages.
pub const KNOWN_AMD_ARCHS: &[&str] = &[
    "gfx1100", "gfx1101", "gfx1102", "gfx1030", "gfx90a", "gfx942",
];

/// PCI device ids for an AMD architecture.
pub fn amd_device_ids(arch: &str) -> Option<&'static [&'static str]> {
    AMD_DEVICE_IDS
        .iter()
        .find(|(a, _)| *a == arch)
        .map(|(_, ids)| *ids)
}

/// `sm_90` → ("9", "0"); `sm_120a` → ("12", "0").
fn compute_capability(arch: &str) -> Option<(String, String)> {
    let digits: String = arch
        .strip_prefix("sm_")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.len() < 2 {
        return None;
    }
    let (major, minor) = digits.split_at(digits.len() - 1);
    Some((major.to_string(), minor.to_string()))
}

fn requirement(key: &str, values: Vec<String>) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.to_string(),
        operator: "In".to_string(),
        values: Some(values),
    }
}

/// Required node affinity for the resolved GPU; None when any node will do (CPU, or no arch given).
pub fn node_affinity(resolved: &Resolved) -> Option<Affinity> {
    let arch = resolved.arch.as_deref()?;
    let expressions = match resolved.vendor {
        GpuVendor::Amd => vec![requirement(
            "amd.com/gpu.device-id",
            amd_device_ids(arch)?
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )],
        GpuVendor::Nvidia => {
            let (major, minor) = compute_capability(arch)?;
            vec![
                requirement("nvidia.com/gpu.compute.major", vec![major]),
                requirement("nvidia.com/gpu.compute.minor", vec![minor]),
            ]
        }
        GpuVendor::Cpu => return None,
    };
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(expressions),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// GPU nodes are commonly tainted with their resource name; GPU pods tolerate that taint.
pub fn gpu_toleration(vendor: GpuVendor) -> Option<Toleration> {
    Some(Toleration {
        key: Some(vendor.resource_name()?.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some("NoSchedule".to_string()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_capability_splits_the_last_digit() {
        assert_eq!(compute_capability("sm_90"), Some(("9".into(), "0".into())));
        assert_eq!(
            compute_capability("sm_120a"),
            Some(("12".into(), "0".into()))
        );
        assert_eq!(compute_capability("sm_9"), None);
        assert_eq!(compute_capability("gfx1100"), None);
    }

    #[test]
    fn every_known_amd_arch_has_ids() {
        for a in KNOWN_AMD_ARCHS {
            assert!(amd_device_ids(a).is_some_and(|ids| !ids.is_empty()), "{a}");
        }
        assert!(amd_device_ids("gfx9999").is_none());
    }
}
