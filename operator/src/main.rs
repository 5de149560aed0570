//! kiln-operator: not implemented yet (see the operator issue). It exits non-zero so nothing mistakes it
//! for a working controller.

fn main() {
    eprintln!(
        "kiln-operator: the controller for {}/{} is not implemented yet",
        kiln_crds::GROUP,
        kiln_crds::VERSION
    );
    std::process::exit(2);
}
