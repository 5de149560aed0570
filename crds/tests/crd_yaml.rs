//! The committed CRD YAML must be what the types generate: a stale file fails CI.
//! Regenerate with `cargo run -p kiln-operator -- crd > crds/inferenceservice.yaml`.

use std::path::Path;

#[test]
fn committed_crd_yaml_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inferenceservice.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (generate it with `kiln-operator crd`)",
            path.display()
        )
    });
    let generated = kiln_crds::crd_yaml().expect("the CRD serializes");
    assert!(
        committed == generated,
        "{} is stale: regenerate it with `cargo run -p kiln-operator -- crd > crds/inferenceservice.yaml`",
        path.display()
    );
}
