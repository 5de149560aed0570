//! `kiln-agent gpus` and `kiln-agent plan` as a user runs them: the real binary, JSON on stdout, against
//! a fake sysfs tree, a real qwen35 GGUF from tests/models, and the synthetic 27B's header.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn agent(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(args)
        .env_remove("HSA_OVERRIDE_GFX_VERSION")
        .env_remove("HSA_ENABLE_SDMA")
        .env_remove("ROCR_VISIBLE_DEVICES")
        .output()
        .expect("running kiln-agent");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (out.status.success(), json, stderr)
}

fn w(p: &Path, text: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// One RX 7800 XT (gfx1101) as amdgpu and KFD show it.
fn rx7800_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("sys/class/drm/card1/device");
    w(&dev.join("vendor"), "0x1002\n");
    w(&dev.join("device"), "0x747e\n");
    w(
        &dev.join("uevent"),
        "DRIVER=amdgpu\nPCI_SLOT_NAME=0000:0a:00.0\n",
    );
    w(&dev.join("mem_info_vram_total"), "17163091968\n");
    w(&dev.join("mem_info_vram_used"), "1073741824\n");
    w(&dev.join("gpu_busy_percent"), "3\n");
    fs::create_dir_all(dev.join("drm/renderD129")).unwrap();
    w(
        &t.path()
            .join("sys/class/kfd/kfd/topology/nodes/1/properties"),
        "gfx_target_version 110001\nlocation_id 2560\ndomain 0\ndrm_render_minor 129\n",
    );
    t
}

#[test]
fn gpus_lists_the_card_and_its_environment() {
    let t = rx7800_tree();
    let root = t.path().to_str().unwrap();
    let (ok, j, err) = agent(&["gpus", "--root", root, "--no-nvml"]);
    assert!(ok, "{err}");
    let g = &j["gpus"][0];
    assert_eq!(g["arch"], "gfx1101");
    assert_eq!(g["vendor"], "amd");
    assert_eq!(g["vram_total_bytes"], 17163091968u64);
    assert_eq!(g["busy_ratio"], 0.03);
    let (ok, j, err) = agent(&["gpus", "--env", "--root", root, "--no-nvml"]);
    assert!(ok, "{err}");
    let set = j["set"].as_array().unwrap();
    let hsa = set
        .iter()
        .find(|v| v["name"] == "HSA_OVERRIDE_GFX_VERSION")
        .expect("the override is set");
    assert_eq!(hsa["value"], "11.0.0");
    assert!(hsa["reason"].as_str().unwrap().contains("gfx1101"));
    // No GPU at all: an empty list, not an error.
    let empty = tempfile::tempdir().unwrap();
    let (ok, j, _) = agent(&[
        "gpus",
        "--root",
        empty.path().to_str().unwrap(),
        "--no-nvml",
    ]);
    assert!(ok);
    assert_eq!(j["gpus"], Value::Array(vec![]));
}

#[test]
fn plan_for_the_27b_shape_at_128k() {
    let (ok, j, err) = agent(&[
        "plan",
        "--synth",
        "qwen3.6-27b:q4_k_m",
        "--ctx",
        "131072",
        "--kv-type",
        "q4_0",
        "--spec",
        "mtp",
        "--spec-draft-n-max",
        "3",
        "--vram",
        "24GiB",
    ]);
    assert!(ok, "{err}");
    assert_eq!(j["context"], 131072);
    let total = j["total_bytes"].as_u64().unwrap() as f64;
    assert!((total / 21e9 - 1.0).abs() < 0.05, "{total}");
    assert_eq!(j["attention_kv"]["bytes_per_token"], 18432);
    assert_eq!(j["recurrent_state"]["rollback_copies"], 4);
    // Less memory: one rung down; far less: a clear error that says what is missing.
    let (ok, j, _) = agent(&[
        "plan",
        "--synth",
        "qwen3.6-27b:q4_k_m",
        "--ctx",
        "131072",
        "--kv-type",
        "q4_0",
        "--spec",
        "mtp",
        "--vram",
        "21500M",
    ]);
    assert!(ok);
    assert_eq!(j["context"], 98304);
    let (ok, _, err) = agent(&["plan", "--synth", "qwen3.6-27b:q4_k_m", "--vram", "16G"]);
    assert!(!ok);
    assert!(err.contains("missing"), "{err}");
    let (ok, _, err) = agent(&["plan", "--synth", "qwen3.6-27b:q4_k_m", "--vram", "lots"]);
    assert!(!ok && err.contains("not a byte count"), "{err}");
}

#[test]
fn plan_reads_a_real_gguf_header() {
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models/qwen35-tiny-q8_0.gguf");
    let (ok, j, err) = agent(&[
        "plan",
        "--model",
        model.to_str().unwrap(),
        "--ctx",
        "2048",
        "--ctx-min",
        "512",
        "--vram",
        "8GiB",
    ]);
    assert!(ok, "{err}");
    assert_eq!(j["arch"], "qwen35");
    assert_eq!(j["context"], 2048);
    assert_eq!(j["attention_kv"]["layers"], 2);
    assert_eq!(j["recurrent_state"]["layers"], 6);
    let file_len = fs::metadata(&model).unwrap().len();
    let weights = j["weights"]["file_bytes"].as_u64().unwrap();
    assert!(
        weights < file_len && weights > file_len / 2,
        "{weights} of {file_len}"
    );
    let (ok, _, err) = agent(&["plan", "--model", "/nonexistent.gguf", "--vram", "1G"]);
    assert!(!ok && err.contains("/nonexistent.gguf"), "{err}");
}

/// A node cache directory the agent's user cannot write (what the kubelet makes of a missing hostPath:
/// root's, 0755): `kiln-agent fetch`, run as uid 65532 like the init container, fails before any download
/// and says how to fix it. Needs root to switch users (skipped with a printed reason otherwise).
#[test]
fn fetch_into_a_cache_the_agent_cannot_write_says_how_to_fix_it() {
    let root_owned = tempfile::tempdir().unwrap();
    fs::set_permissions(
        root_owned.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let cache = root_owned.path().join("models");
    let out = Command::new("setpriv")
        .args(["--reuid=65532", "--regid=65532", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_kiln-agent"))
        .args(["fetch", "https://127.0.0.1:9/m.gguf", "--to"])
        .arg(&cache)
        .output();
    let out = match out {
        Ok(o) if !String::from_utf8_lossy(&o.stderr).contains("setpriv:") => o,
        Ok(o) => {
            eprintln!(
                "skipped: setpriv cannot switch to uid 65532 here (not root?): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: no setpriv: {e}");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("permission denied")
            && stderr.contains("uid 65532")
            && stderr.contains("install -d -o 65532 -g 65532"),
        "{stderr}"
    );
    assert!(!cache.exists());
}
