//! Every example in `manifests/` must validate, alone and together.

use std::fs;
use std::path::Path;

use cutover::spec::parse_services;

#[test]
fn every_example_manifest_is_valid() {
    let mut files = Vec::new();
    for entry in fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            let text = fs::read_to_string(&path).unwrap();
            let source = format!("manifests/{}", path.file_name().unwrap().to_string_lossy());
            files.push((source, text));
        }
    }
    files.sort();
    assert!(files.len() >= 4, "expected the example manifests");
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    if let Err(diagnostics) = parse_services(&borrowed) {
        panic!("{diagnostics}");
    }
}
