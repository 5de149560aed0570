//! AMD PCI device ids → marketing name, gfx target and whether the part is an APU. Used when the KFD
//! topology (which states the gfx target exactly) is not mounted, e.g. in a container without
//! /sys/class/kfd. One id can cover several boards (a 7900 XTX and XT share Navi 31's 0x744c).

pub struct AmdPart {
    pub device_id: u32,
    pub name: &'static str,
    pub gfx: &'static str,
    pub integrated: bool,
}

const fn dgpu(device_id: u32, name: &'static str, gfx: &'static str) -> AmdPart {
    AmdPart {
        device_id,
        name,
        gfx,
        integrated: false,
    }
}

const fn apu(device_id: u32, name: &'static str, gfx: &'static str) -> AmdPart {
    AmdPart {
        device_id,
        name,
        gfx,
        integrated: true,
    }
}

pub const PARTS: &[AmdPart] = &[
    // RDNA4
    dgpu(0x7550, "Radeon RX 9070 / 9070 XT (Navi 48)", "gfx1201"),
    dgpu(0x7590, "Radeon RX 9060 XT (Navi 44)", "gfx1200"),
    // RDNA3
    dgpu(0x744c, "Radeon RX 7900 XTX / XT / GRE (Navi 31)", "gfx1100"),
    dgpu(0x7448, "Radeon Pro W7900 (Navi 31)", "gfx1100"),
    dgpu(0x745e, "Radeon Pro W7800 (Navi 31)", "gfx1100"),
    dgpu(0x747e, "Radeon RX 7800 XT / 7700 XT (Navi 32)", "gfx1101"),
    dgpu(0x7480, "Radeon RX 7600 / 7600 XT (Navi 33)", "gfx1102"),
    // RDNA2
    dgpu(0x73a5, "Radeon RX 6950 XT (Navi 21)", "gfx1030"),
    dgpu(
        0x73bf,
        "Radeon RX 6800 / 6800 XT / 6900 XT (Navi 21)",
        "gfx1030",
    ),
    dgpu(0x73df, "Radeon RX 6700 XT / 6750 XT (Navi 22)", "gfx1031"),
    dgpu(0x73ff, "Radeon RX 6600 / 6600 XT (Navi 23)", "gfx1032"),
    dgpu(0x743f, "Radeon RX 6500 XT / 6400 (Navi 24)", "gfx1034"),
    // CDNA
    dgpu(0x74a1, "Instinct MI300X", "gfx942"),
    dgpu(0x74a5, "Instinct MI325X", "gfx942"),
    apu(0x74a0, "Instinct MI300A", "gfx942"),
    dgpu(0x7408, "Instinct MI250X", "gfx90a"),
    dgpu(0x740c, "Instinct MI250 / MI250X", "gfx90a"),
    dgpu(0x740f, "Instinct MI210", "gfx90a"),
    dgpu(0x738c, "Instinct MI100", "gfx908"),
    dgpu(0x66a1, "Instinct MI50 / MI60 (Vega 20)", "gfx906"),
    // APUs
    apu(0x1586, "Radeon 8060S (Strix Halo)", "gfx1151"),
    apu(0x150e, "Radeon 890M (Strix Point)", "gfx1150"),
    apu(0x15bf, "Radeon 780M (Phoenix)", "gfx1103"),
    apu(0x15c8, "Radeon 740M (Phoenix 2)", "gfx1103"),
    apu(0x1681, "Radeon 680M (Rembrandt)", "gfx1035"),
    apu(0x164e, "Radeon Graphics (Raphael)", "gfx1036"),
    apu(0x1506, "Radeon 610M (Mendocino)", "gfx1037"),
    apu(0x163f, "Van Gogh (Steam Deck)", "gfx1033"),
    apu(0x1638, "Radeon Vega (Cezanne)", "gfx90c"),
    apu(0x1636, "Radeon Vega (Renoir)", "gfx90c"),
];

pub fn lookup(device_id: u32) -> Option<&'static AmdPart> {
    PARTS.iter().find(|p| p.device_id == device_id)
}

/// KFD's `gfx_target_version` (major·10000 + minor·100 + stepping, e.g. 110001, 90402, 90010) as the
/// target name (`gfx1101`, `gfx942`, `gfx90a`): minor and stepping are single hex digits.
pub fn gfx_from_target_version(v: u64) -> Option<String> {
    let (major, minor, step) = (v / 10000, (v / 100) % 100, v % 100);
    if major == 0 || minor > 15 || step > 15 {
        return None;
    }
    Some(format!("gfx{major}{minor:x}{step:x}"))
}
