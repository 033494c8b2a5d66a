//! Golden files: each `testdata/resources/<x>.yaml` parses, validates, renders to the golden
//! JSON and YAML, and the rendering parses back to the same resource.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p meshzone-model --test golden_round_trip`.

use std::path::{Path, PathBuf};

use meshzone_model::{Resource, ResourceType, parse_documents, validate};

fn check_golden(path: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|_| panic!("{} missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

#[test]
fn every_type_round_trips_through_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/resources");
    let mut seen = std::collections::BTreeSet::new();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p.to_string_lossy().ends_with(".golden.yaml")
        })
        .collect();
    inputs.sort();
    for input in inputs {
        let text = std::fs::read_to_string(&input).expect("read");
        let value = parse_documents(&text).expect("yaml").remove(0);
        let resource = Resource::from_value(value).expect("parses");
        validate(&resource).unwrap_or_else(|v| panic!("{}: {v}", input.display()));
        seen.insert(resource.resource_type());

        let json = serde_json::to_string_pretty(&resource.to_value()).expect("json") + "\n";
        let yaml = resource.to_yaml();
        let stem = input.with_extension("");
        check_golden(&stem.with_extension("golden.json"), &json);
        check_golden(&stem.with_extension("golden.yaml"), &yaml);

        for rendered in [json, yaml] {
            let back = Resource::from_value(parse_documents(&rendered).expect("parse").remove(0))
                .expect("round trip parses");
            assert_eq!(back, resource, "{} does not round-trip", input.display());
        }
    }
    let all: std::collections::BTreeSet<ResourceType> = ResourceType::all().collect();
    assert_eq!(seen, all, "every type needs a golden input");
}
