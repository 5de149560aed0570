//! The probe, the HSA table and the memory sources against fake sysfs trees built in temp dirs: an RX
//! 7900 XTX (gfx1100), an RX 7800 XT (gfx1101), an RX 6800 (gfx1030), an MI300X (gfx942), an APU, and
//! a machine with none — the files amdgpu and KFD really expose, with the values those cards report.

use super::hsa::{self, ArchSupport};
use super::vram;
use super::*;
use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

const GIB: u64 = 1 << 30;

struct Card {
    vendor: u32,
    device: u32,
    pci: &'static str,
    render_minor: u64,
    vram_total: u64,
    vram_used: u64,
    busy: Option<u64>,
    temp_mc: Option<u64>,
    power_uw: Option<u64>,
    /// KFD `gfx_target_version`, or None when the node has no KFD topology for it.
    kfd_gfx: Option<u64>,
}

fn card(device: u32, pci: &'static str, minor: u64, total: u64, kfd_gfx: Option<u64>) -> Card {
    Card {
        vendor: 0x1002,
        device,
        pci,
        render_minor: minor,
        vram_total: total,
        vram_used: total / 10,
        busy: Some(37),
        temp_mc: Some(45_000),
        power_uw: Some(211_000_000),
        kfd_gfx,
    }
}

fn w(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// Writes `cards` as /sys/class/drm/card<N> and, for those with a gfx version, KFD nodes (node 0 is
/// the CPU, as on a real machine). Also a connector entry (`card0-DP-1`) that must be ignored.
fn tree(cards: &[Card]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let kfd = root.join("sys/class/kfd/kfd/topology/nodes");
    w(
        &kfd.join("0/properties"),
        "cpu_cores_count 16\nsimd_count 0\ngfx_target_version 0\nlocation_id 0\ndomain 0\ndrm_render_minor 0\n",
    );
    let mut node = 1;
    for (i, c) in cards.iter().enumerate() {
        let dev = root.join(format!("sys/class/drm/card{i}/device"));
        w(&dev.join("vendor"), &format!("{:#06x}\n", c.vendor));
        w(&dev.join("device"), &format!("{:#06x}\n", c.device));
        w(
            &dev.join("uevent"),
            &format!(
                "DRIVER=amdgpu\nPCI_ID=1002:{:04X}\nPCI_SLOT_NAME={}\n",
                c.device, c.pci
            ),
        );
        w(
            &dev.join("mem_info_vram_total"),
            &format!("{}\n", c.vram_total),
        );
        w(
            &dev.join("mem_info_vram_used"),
            &format!("{}\n", c.vram_used),
        );
        fs::create_dir_all(dev.join(format!("drm/renderD{}", c.render_minor))).unwrap();
        fs::create_dir_all(dev.join(format!("drm/card{i}"))).unwrap();
        if let Some(b) = c.busy {
            w(&dev.join("gpu_busy_percent"), &format!("{b}\n"));
        }
        let hw = dev.join("hwmon/hwmon3");
        if let Some(t) = c.temp_mc {
            // junction first, edge second: the probe must pick the edge sensor by its label.
            w(&hw.join("temp2_input"), &format!("{}\n", t + 20_000));
            w(&hw.join("temp2_label"), "junction\n");
            w(&hw.join("temp1_input"), &format!("{t}\n"));
            w(&hw.join("temp1_label"), "edge\n");
        }
        if let Some(p) = c.power_uw {
            w(&hw.join("power1_average"), &format!("{p}\n"));
        }
        fs::create_dir_all(root.join(format!("sys/class/drm/card{i}-DP-1"))).unwrap();
        if let Some(g) = c.kfd_gfx {
            let (dom, loc) = {
                let (d, rest) = c.pci.split_once(':').unwrap();
                let (b, rest) = rest.split_once(':').unwrap();
                let (dv, f) = rest.split_once('.').unwrap();
                let h = |s: &str| u64::from_str_radix(s, 16).unwrap();
                (h(d), h(b) << 8 | h(dv) << 3 | h(f))
            };
            w(
                &kfd.join(format!("{node}/properties")),
                &format!(
                    "cpu_cores_count 0\nsimd_count 192\ngfx_target_version {g}\n\
                     location_id {loc}\ndomain {dom}\ndrm_render_minor {}\n",
                    c.render_minor
                ),
            );
            node += 1;
        }
    }
    dir
}

fn xtx() -> Card {
    card(0x744c, "0000:03:00.0", 128, 24 * GIB, Some(110000))
}
fn rx7800() -> Card {
    card(0x747e, "0000:0a:00.0", 129, 16 * GIB, Some(110001))
}
fn rx6800() -> Card {
    card(0x73bf, "0000:0b:00.0", 130, 16 * GIB, Some(100300))
}
fn mi300x() -> Card {
    card(0x74a1, "0000:1b:00.0", 136, 192 * GIB, Some(90402))
}
/// A Phoenix APU (Radeon 780M): a 512 MiB carve-out, no power sensor, no KFD node here.
fn apu() -> Card {
    Card {
        power_uw: None,
        vram_used: 100 << 20,
        ..card(0x15bf, "0000:c5:00.0", 131, 512 << 20, None)
    }
}

fn probe(root: &Path) -> Vec<GpuInfo> {
    probe_all(&ProbeOptions {
        sysfs_root: root.to_path_buf(),
        nvml: false,
    })
}

fn env_for(gpus: &[GpuInfo], env: &[(&str, &str)]) -> hsa::EnvPlan {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let given: Vec<&GpuInfo> = gpus.iter().collect();
    hsa::plan_env(&given, &env, hsa::RECIPE_EXTRAS)
}

fn set_value(plan: &hsa::EnvPlan, name: &str) -> Option<String> {
    plan.set
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.value.clone())
}

#[test]
fn rx_7900_xtx_is_gfx1100_native() {
    let t = tree(&[xtx()]);
    let gpus = probe(t.path());
    assert_eq!(gpus.len(), 1, "{gpus:?}");
    let g = &gpus[0];
    assert_eq!(g.arch, "gfx1100");
    assert_eq!(g.vendor, Vendor::Amd);
    assert_eq!(g.device_id, Some(0x744c));
    assert!(g.name.contains("7900 XTX"), "{}", g.name);
    assert_eq!(g.pci_bus.as_deref(), Some("0000:03:00.0"));
    assert_eq!(g.card.as_deref(), Some("card0"));
    assert_eq!(g.vram_total_bytes, 24 * GIB);
    assert_eq!(g.vram_used_bytes, 24 * GIB / 10);
    assert_eq!(g.busy_ratio, Some(0.37));
    assert_eq!(g.temperature_celsius, Some(45.0), "the edge sensor");
    assert_eq!(g.power_watts, Some(211.0));
    assert!(!g.integrated);
    let plan = env_for(&gpus, &[]);
    assert_eq!(set_value(&plan, "HSA_OVERRIDE_GFX_VERSION"), None);
    assert_eq!(set_value(&plan, "ROCR_VISIBLE_DEVICES"), None);
    assert_eq!(set_value(&plan, "HSA_ENABLE_SDMA").as_deref(), Some("0"));
    assert_eq!(plan.gpus, vec![0]);
}

#[test]
fn rx_7800_xt_gets_the_gfx1100_override() {
    let t = tree(&[rx7800()]);
    let gpus = probe(t.path());
    assert_eq!(gpus[0].arch, "gfx1101");
    let plan = env_for(&gpus, &[]);
    assert_eq!(
        set_value(&plan, "HSA_OVERRIDE_GFX_VERSION").as_deref(),
        Some("11.0.0")
    );
    let reason = &plan.set[0].reason;
    assert!(reason.contains("gfx1101"), "{reason}");
}

#[test]
fn rx_6800_is_gfx1030_native_and_its_siblings_are_overridden() {
    let t = tree(&[rx6800()]);
    let gpus = probe(t.path());
    assert_eq!(gpus[0].arch, "gfx1030");
    assert_eq!(
        set_value(&env_for(&gpus, &[]), "HSA_OVERRIDE_GFX_VERSION"),
        None
    );
    assert_eq!(
        hsa::arch_support("gfx1031"),
        Some(ArchSupport::Override("10.3.0"))
    );
    assert_eq!(
        hsa::arch_support("gfx1036"),
        Some(ArchSupport::Override("10.3.0"))
    );
    assert_eq!(
        hsa::arch_support("gfx1103"),
        Some(ArchSupport::Override("11.0.0"))
    );
    assert_eq!(hsa::arch_support("gfx1010"), Some(ArchSupport::Unsupported));
}

#[test]
fn mi300x_from_kfd_and_from_the_id_table() {
    let t = tree(&[mi300x()]);
    let gpus = probe(t.path());
    assert_eq!(gpus[0].arch, "gfx942");
    assert_eq!(gpus[0].vram_total_bytes, 192 * GIB);
    assert_eq!(
        set_value(&env_for(&gpus, &[]), "HSA_OVERRIDE_GFX_VERSION"),
        None
    );
    // Without /sys/class/kfd (a container that does not mount it) the id table names the target.
    fs::remove_dir_all(t.path().join("sys/class/kfd")).unwrap();
    assert_eq!(probe(t.path())[0].arch, "gfx942");
}

#[test]
fn kfd_gfx_version_wins_over_the_id_table() {
    // Same id as a 7900 XTX, but KFD says gfx1101: KFD is what the runtime will use.
    let t = tree(&[Card {
        kfd_gfx: Some(110001),
        ..xtx()
    }]);
    assert_eq!(probe(t.path())[0].arch, "gfx1101");
    assert_eq!(
        amd_ids::gfx_from_target_version(90010).as_deref(),
        Some("gfx90a")
    );
    assert_eq!(amd_ids::gfx_from_target_version(0), None);
}

#[test]
fn apu_alone_is_used_with_its_override() {
    let t = tree(&[apu()]);
    let gpus = probe(t.path());
    let g = &gpus[0];
    assert!(g.integrated);
    assert_eq!(g.arch, "gfx1103");
    assert_eq!(g.vram_total_bytes, 512 << 20);
    assert_eq!(g.power_watts, None);
    let plan = env_for(&gpus, &[]);
    assert_eq!(
        set_value(&plan, "HSA_OVERRIDE_GFX_VERSION").as_deref(),
        Some("11.0.0")
    );
    assert_eq!(plan.gpus, vec![0]);
}

#[test]
fn apu_next_to_a_discrete_card_is_hidden() {
    let t = tree(&[apu(), rx7800()]);
    let gpus = probe(t.path());
    assert_eq!(gpus.len(), 2);
    let plan = env_for(&gpus, &[]);
    assert_eq!(
        set_value(&plan, "ROCR_VISIBLE_DEVICES").as_deref(),
        Some("1")
    );
    assert_eq!(
        set_value(&plan, "HSA_OVERRIDE_GFX_VERSION").as_deref(),
        Some("11.0.0")
    );
    assert_eq!(plan.gpus, vec![1]);
}

#[test]
fn mixed_families_keep_the_first_family() {
    // gfx1100 and gfx1101 share 11.0.0; the gfx1030 card cannot run under it and is hidden.
    let t = tree(&[xtx(), rx7800(), rx6800()]);
    let plan = env_for(&probe(t.path()), &[]);
    assert_eq!(
        set_value(&plan, "ROCR_VISIBLE_DEVICES").as_deref(),
        Some("0,1")
    );
    assert_eq!(
        set_value(&plan, "HSA_OVERRIDE_GFX_VERSION").as_deref(),
        Some("11.0.0")
    );
}

#[test]
fn the_users_setting_wins_and_is_reported() {
    let t = tree(&[rx7800()]);
    let plan = env_for(&probe(t.path()), &[("HSA_OVERRIDE_GFX_VERSION", "11.0.1")]);
    assert_eq!(set_value(&plan, "HSA_OVERRIDE_GFX_VERSION"), None);
    assert_eq!(plan.kept.len(), 1);
    assert_eq!(plan.kept[0].value, "11.0.1");
    assert_eq!(plan.kept[0].would_set, "11.0.0");
}

#[test]
fn only_the_render_nodes_the_pod_was_given_count() {
    let t = tree(&[xtx(), rx7800()]);
    let gpus = probe(t.path());
    // No /dev/dri in the tree: every GPU is given.
    assert_eq!(hsa::given_gpus(&gpus, t.path(), t.path()).len(), 2);
    // The device plugin mounted only the 7800 XT's render node.
    fs::create_dir_all(t.path().join("dev/dri/renderD129")).unwrap();
    let given = hsa::given_gpus(&gpus, t.path(), t.path());
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].arch, "gfx1101");
}

#[test]
fn machine_without_gpus() {
    let t = tempfile::tempdir().unwrap();
    assert!(probe(t.path()).is_empty());
    let plan = env_for(&[], &[]);
    assert!(plan.set.is_empty());
    assert!(!plan.notes.is_empty());
    assert!(vram::from_spec(
        "auto",
        &ProbeOptions {
            sysfs_root: t.path().into(),
            nvml: false
        },
        Arc::default()
    )
    .unwrap()
    .is_none());
    let err = vram::from_spec(
        "sysfs",
        &ProbeOptions {
            sysfs_root: t.path().into(),
            nvml: false,
        },
        Arc::default(),
    );
    assert!(err.is_err());
}

#[test]
fn non_amd_cards_and_garbage_files_are_skipped_not_fatal() {
    let t = tree(&[
        Card {
            vendor: 0x10de,
            ..xtx()
        },
        Card {
            busy: None,
            temp_mc: None,
            ..rx6800()
        },
    ]);
    fs::write(
        t.path()
            .join("sys/class/drm/card1/device/mem_info_vram_used"),
        "garbage\n",
    )
    .unwrap();
    let gpus = probe(t.path());
    assert_eq!(gpus.len(), 1);
    assert_eq!(gpus[0].index, 0);
    assert_eq!(gpus[0].arch, "gfx1030");
    assert_eq!(gpus[0].vram_used_bytes, 0);
    assert_eq!(gpus[0].busy_ratio, None);
    assert_eq!(gpus[0].temperature_celsius, None);
}

#[test]
fn sysfs_source_follows_the_counters() {
    let t = tree(&[xtx()]);
    let opts = ProbeOptions {
        sysfs_root: t.path().into(),
        nvml: false,
    };
    let src = vram::from_spec("auto", &opts, Arc::default())
        .unwrap()
        .unwrap();
    assert!(src.describe().starts_with("sysfs:"));
    assert_eq!(src.sample().unwrap()[0].vram_used_bytes, 24 * GIB / 10);
    fs::write(
        t.path()
            .join("sys/class/drm/card0/device/mem_info_vram_used"),
        format!("{}\n", 20 * GIB),
    )
    .unwrap();
    assert_eq!(src.sample().unwrap()[0].vram_free_bytes(), 4 * GIB);
}

#[test]
fn fake_source_adds_the_agents_own_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mem");
    fs::write(&f, "# used total\n1000 10000\n").unwrap();
    let resident = Arc::new(AtomicU64::new(500));
    let spec = format!("fake:{}", f.display());
    let src = vram::from_spec(&spec, &ProbeOptions::default(), resident.clone())
        .unwrap()
        .unwrap();
    let g = &src.sample().unwrap()[0];
    assert_eq!((g.vram_used_bytes, g.vram_total_bytes), (1500, 10000));
    resident.store(100, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(src.sample().unwrap()[0].vram_used_bytes, 1100);
    for bad in ["", "12", "5 4", "a 10", "1 2 3"] {
        assert!(vram::parse_fake(bad).is_err(), "`{bad}` must be refused");
    }
    assert!(vram::from_spec("fake:", &ProbeOptions::default(), Arc::default()).is_err());
    assert!(vram::from_spec("cuda", &ProbeOptions::default(), Arc::default()).is_err());
}
