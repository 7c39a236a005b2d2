//! Fails when the committed `crds/*.yaml` differ from what the Rust types generate.

#[test]
fn committed_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for crd in tether_api::crds() {
        let path = dir.join(tether_api::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        let generated = tether_api::crd_yaml(&crd).unwrap();
        assert!(
            committed == generated,
            "{} is out of date: run `cargo run -p tether-api --bin crdgen` and commit the result",
            path.display()
        );
    }
}

#[test]
fn crds_carry_the_invariants() {
    let yaml: String = tether_api::crds()
        .iter()
        .map(|c| tether_api::crd_yaml(c).unwrap())
        .collect();
    for needle in [
        "self == oldSelf",
        "duration(self) >= duration('1m')",
        "self.maxReplicas >= self.minReplicas",
        "x-kubernetes-list-type: map",
        "subresources",
        ".status.conditions[?(@.type==\"Ready\")].status",
    ] {
        assert!(yaml.contains(needle), "generated CRDs lack {needle:?}");
    }
}

#[test]
fn schemas_use_only_formats_the_api_server_knows() {
    // `kubectl apply` warns about every unknown format (schemars writes uint32/uint64).
    for crd in tether_api::crds() {
        let yaml = tether_api::crd_yaml(&crd).unwrap();
        for line in yaml.lines().filter(|l| l.trim_start().starts_with("format:")) {
            let format = line.trim_start().trim_start_matches("format:").trim();
            assert!(
                [
                    "int32",
                    "int64",
                    "date-time",
                    "double",
                    "float",
                    "byte",
                    "date",
                    "password"
                ]
                .contains(&format),
                "{}: unknown format {format}",
                tether_api::crd_file_name(&crd)
            );
        }
    }
}
