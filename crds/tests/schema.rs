//! The generated OpenAPI schema carries the validation the API server enforces: enums, ranges, patterns,
//! required fields and defaults. (The real API server's messages are checked in operator/tests/k8s.rs.)

use kiln_crds::InferenceService;
use serde_json::{json, Value};

fn schema() -> Value {
    let crd = serde_json::to_value(kiln_crds::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn spec_prop(path: &[&str]) -> Value {
    let mut at = schema()["properties"]["spec"].clone();
    for p in path {
        at = at["properties"][p].clone();
    }
    at
}

#[test]
fn names_columns_and_subresources() {
    let crd = serde_json::to_value(kiln_crds::crd()).unwrap();
    assert_eq!(crd["metadata"]["name"], "inferenceservices.kiln.dev");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["kis"]));
    let v = &crd["spec"]["versions"][0];
    assert_eq!(v["name"], "v1alpha1");
    assert_eq!(v["subresources"]["status"], json!({}));
    let cols: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        cols,
        [
            "Phase",
            "Requested-Ctx",
            "Effective-Ctx",
            "Ready",
            "Status",
            "Age",
            "Endpoint"
        ]
    );
}

#[test]
fn enums_ranges_and_required_fields() {
    assert_eq!(
        spec_prop(&["context", "kvCacheType"])["enum"],
        json!(["f16", "q8_0", "q4_0"])
    );
    assert_eq!(
        spec_prop(&["gpu", "vendor"])["enum"],
        json!(["amd", "nvidia", "cpu"])
    );
    assert_eq!(
        spec_prop(&["speculative", "type"])["enum"],
        json!(["none", "mtp"])
    );
    assert_eq!(spec_prop(&["reasoning"])["enum"], json!(["off", "on"]));
    assert_eq!(
        spec_prop(&["context", "size"])["minimum"].as_f64(),
        Some(512.0)
    );
    assert_eq!(
        spec_prop(&["speculative", "draftMax"])["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        spec_prop(&["speculative", "draftMax"])["maximum"].as_f64(),
        Some(8.0)
    );
    assert_eq!(spec_prop(&["replicas"])["minimum"].as_f64(), Some(0.0));
    let required = schema()["properties"]["spec"]["required"].clone();
    assert_eq!(required, json!(["model"]));
    assert_eq!(spec_prop(&["model"])["required"], json!(["uri"]));
}

#[test]
fn defaults_are_in_the_schema() {
    assert_eq!(spec_prop(&["speculative", "draftMax"])["default"], json!(3));
    assert_eq!(spec_prop(&["reasoning"])["default"], json!("off"));
    assert_eq!(spec_prop(&["replicas"])["default"], json!(1));
    assert_eq!(
        spec_prop(&["context", "autoDownsize"])["default"],
        json!(true)
    );
    // Parents default to {} so the nested defaults apply when the user omits the whole block.
    assert!(spec_prop(&["speculative"])["default"].is_object());
    assert!(spec_prop(&["context"])["default"].is_object());
}

#[test]
fn the_uri_pattern_accepts_the_four_schemes_only() {
    let pattern = spec_prop(&["model", "uri"])["pattern"]
        .as_str()
        .unwrap()
        .to_string();
    let re = fancy_regex::Regex::new(&pattern).unwrap();
    for good in [
        "hf://unsloth/Qwen3.6-27B-GGUF/Qwen3.6-27B-Q4_K_M.gguf",
        "hf://org/repo/sub/dir/model.gguf",
        "https://models.example.com/m.gguf",
        "https://host:8443/path/model?sig=abc",
        "file:///models/m.gguf",
        "pvc://model-store/qwen/m.gguf",
    ] {
        assert!(re.is_match(good).unwrap(), "rejected {good}");
    }
    for bad in [
        "http://insecure.example/m.gguf",
        "ftp://x/m.gguf",
        "hf://org/m.gguf",
        "hf://org/repo/m.bin",
        "file://relative/m.gguf",
        "pvc://Bad_Claim/m.gguf",
        "s3://bucket/m.gguf",
        "",
    ] {
        assert!(!re.is_match(bad).unwrap(), "accepted {bad}");
    }
}

#[test]
fn a_minimal_object_round_trips_with_defaults() {
    let obj: InferenceService = serde_json::from_value(json!({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "m"}, "spec": {"model": {"uri": "hf://o/r/m.gguf"}}
    }))
    .unwrap();
    assert_eq!(obj.spec.speculative.draft_max, 3);
    assert_eq!(obj.spec.replicas, 1);
    assert!(obj.spec.context.auto_downsize);
    let back: InferenceService =
        serde_json::from_value(serde_json::to_value(&obj).unwrap()).unwrap();
    assert_eq!(back, obj);
}
