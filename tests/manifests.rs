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

/// `docs/manifest.md` states each default in its field's table row; this keeps it honest.
#[test]
fn the_documented_defaults_are_the_real_ones() {
    use cutover::spec::defaults;

    let docs =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/manifest.md")).unwrap();
    for (field, default) in [
        ("replicas", defaults::replicas().to_string()),
        ("port", defaults::port().to_string()),
        ("path", defaults::health_path()),
        ("interval", defaults::health_interval().to_string()),
        ("timeout", defaults::health_timeout().to_string()),
        (
            "healthyThreshold",
            defaults::healthy_threshold().to_string(),
        ),
        (
            "unhealthyThreshold",
            defaults::unhealthy_threshold().to_string(),
        ),
        ("startPeriod", defaults::start_period().to_string()),
        ("autoPromote", defaults::auto_promote().to_string()),
        ("scaleDownDelay", defaults::scale_down_delay().to_string()),
        (
            "progressDeadline",
            defaults::progress_deadline().to_string(),
        ),
        (
            "revisionHistoryLimit",
            defaults::revision_history_limit().to_string(),
        ),
        ("imagePullPolicy", "IfNotPresent".to_owned()),
    ] {
        let row_start = format!("| `{field}` |");
        let row = docs
            .lines()
            .find(|line| line.starts_with(&row_start))
            .unwrap_or_else(|| panic!("docs/manifest.md has no row for {field}"));
        let default_cell = row.split('|').nth(3).unwrap().trim();
        assert_eq!(default_cell, format!("`{default}`"), "default of {field}");
    }
}
