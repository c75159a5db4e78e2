//! The `cutover` binary against a real Consul agent.

mod support;

use std::time::Duration;

use tokio::time::Instant;

use support::{TempDir, agent, cutover_command, manifest, unique_prefix};

/// A manifest that sets every field, to check that nothing is lost on the way.
const EVERY_FIELD: &str = "\
apiVersion: cutover.dev/v1
kind: Service
metadata:
  name: books
  labels: {team: shelf}
spec:
  image: books:1.4.2
  imagePullPolicy: Always
  replicas: 3
  port: 8080
  env: {LOG: debug}
  command: [/bin/books, --serve]
  resources: {memory: 256Mi, cpus: 0.5}
  health: {path: /healthz, interval: 2s, timeout: 1s, healthyThreshold: 2, unhealthyThreshold: 5, startPeriod: 10s}
  routes:
    - pathPrefix: /books
    - host: books.example.com
  strategy:
    blueGreen: {autoPromote: false, previewReplicas: 1, scaleDownDelay: 30s, progressDeadline: 5m, revisionHistoryLimit: 4}
  sideTargets:
    - {name: db, image: 'postgres:15', env: {A: b}, command: [postgres], volumes: ['books-db:/data']}
";

fn replicas_of(prefix: &str, name: &str) -> u32 {
    let run = agent()
        .cutover(prefix)
        .args(["get", name, "-o", "json"])
        .succeeds();
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    json["spec"]["replicas"].as_u64().unwrap() as u32
}

/// Every key under the prefix with its ModifyIndex, to prove nothing was written.
fn snapshot(prefix: &str) -> Vec<(String, u64)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listing = runtime
        .block_on(agent().client().list(&format!("{prefix}/")))
        .unwrap();
    listing
        .entries
        .into_iter()
        .map(|e| (e.key, e.modify_index))
        .collect()
}

#[test]
fn help_shows_examples() {
    let run = cutover_command().arg("--help").output().unwrap();
    assert!(run.status.success());
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(text.contains("Examples:"), "{text}");
    assert!(text.contains("cutover scale books +2"), "{text}");
}

#[test]
fn validate_needs_no_consul() {
    let dir = TempDir::new();
    dir.write("books.yaml", &manifest("books", "books:1", 2));
    dir.write("users.yml", &manifest("users", "users:1", 1));
    dir.write("README.md", "not a manifest");
    let run = cutover_command()
        .args([
            "--consul-addr",
            &format!("127.0.0.1:{}", support::unused_port()),
        ])
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(run.status.success());
    assert_eq!(String::from_utf8_lossy(&run.stdout), "ok: 2 services\n");
}

#[test]
fn validate_reports_every_invalid_file() {
    let dir = TempDir::new();
    let good = dir.write("books.yaml", &manifest("books", "books:1", 2));
    let bad = dir.write(
        "bad.yaml",
        "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: bad}\nspec: {replicas: 2}\n",
    );
    let worse = dir.write("worse.yaml", "spec: [\n");
    let run = agent()
        .cutover("unused")
        .arg("validate")
        .args([&good, &bad, &worse])
        .fails();
    assert!(
        run.stderr.contains(&bad.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&worse.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("problem(s) in the manifests"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn validate_refuses_duplicates_and_empty_directories() {
    let dir = TempDir::new();
    dir.write("a.yaml", &manifest("books", "books:1", 1));
    dir.write("b.yaml", &manifest("books", "books:2", 1));
    let run = cutover_command()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("service books is also defined in"),
        "{stderr}"
    );

    let empty = TempDir::new();
    let run = cutover_command()
        .arg("validate")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no .yaml or .yml files"));
}

#[test]
fn apply_creates_configures_and_leaves_equal_content_alone() {
    let prefix = unique_prefix("apply");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:1", 2));

    let run = cutover().arg("apply").arg("-f").arg(&file).succeeds();
    assert_eq!(run.stdout, "service/books created\n");
    let run = cutover().arg("apply").arg("-f").arg(&file).succeeds();
    assert_eq!(run.stdout, "service/books unchanged\n");

    // Formatting and comments alone are not a change: the stored text stays as it was.
    let before = snapshot(&prefix);
    dir.write(
        "books.yaml",
        "# books\napiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: books}\nspec: {image: 'books:1', replicas: 2}\n",
    );
    let run = cutover().arg("apply").arg("-f").arg(&file).succeeds();
    assert_eq!(run.stdout, "service/books unchanged\n");
    assert_eq!(snapshot(&prefix), before);

    dir.write("books.yaml", &manifest("books", "books:2", 2));
    dir.write("users.yaml", &manifest("users", "users:1", 1));
    let run = cutover().arg("apply").arg("-f").arg(dir.path()).succeeds();
    assert_eq!(
        run.stdout,
        "service/books configured\nservice/users created\n"
    );
    assert_eq!(
        cutover().args(["get", "books"]).succeeds().stdout,
        manifest("books", "books:2", 2)
    );
}

#[test]
fn apply_writes_nothing_when_anything_is_invalid() {
    let prefix = unique_prefix("apply-invalid");
    let dir = TempDir::new();
    dir.write("books.yaml", &manifest("books", "books:1", 2));
    dir.write("broken.yaml", "apiVersion: cutover.dev/v1\nkind: Service\nmetadata: {name: broken}\nspec: {image: 'x', replicas: many}\n");
    let run = agent()
        .cutover(&prefix)
        .arg("apply")
        .arg("-f")
        .arg(dir.path())
        .fails();
    assert!(run.stderr.contains("broken.yaml"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert!(snapshot(&prefix).is_empty());
}

#[test]
fn apply_refuses_values_over_consuls_limit() {
    let prefix = unique_prefix("apply-huge");
    let dir = TempDir::new();
    let padding = format!("# {}\n", "x".repeat(cutover::spec::MAX_VALUE_BYTES));
    let file = dir.write("books.yaml", &(manifest("books", "books:1", 1) + &padding));
    let run = agent()
        .cutover(&prefix)
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .fails();
    assert!(
        run.stderr.contains("more than Consul's limit"),
        "{}",
        run.stderr
    );
    assert!(snapshot(&prefix).is_empty());
}

#[test]
fn consul_kv_put_and_apply_read_the_same() {
    let dir = TempDir::new();
    let file = dir.write("books.yaml", EVERY_FIELD);

    let by_consul = unique_prefix("kv-put");
    agent().kv_put_file(&format!("{by_consul}/services/books"), &file);
    let by_apply = unique_prefix("apply-put");
    agent()
        .cutover(&by_apply)
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .succeeds();

    for args in [vec!["get", "books"], vec!["get", "books", "-o", "json"]] {
        let consul_view = agent().cutover(&by_consul).args(&args).succeeds().stdout;
        let apply_view = agent().cutover(&by_apply).args(&args).succeeds().stdout;
        let normalize = |text: &str| text.replace(&by_consul, "P").replace(&by_apply, "P");
        let (consul_view, apply_view) = (normalize(&consul_view), normalize(&apply_view));
        // The modify indexes differ; everything else must not.
        let strip_index = |text: &str| {
            text.lines()
                .filter(|l| !l.contains("modifyIndex"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip_index(&consul_view),
            strip_index(&apply_view),
            "{args:?}"
        );
    }
    assert_eq!(
        agent()
            .cutover(&by_consul)
            .args(["get", "books"])
            .succeeds()
            .stdout,
        EVERY_FIELD
    );
    // And applying the same file over the consul-written key changes nothing.
    let run = agent()
        .cutover(&by_consul)
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .succeeds();
    assert_eq!(run.stdout, "service/books unchanged\n");
}

#[test]
fn get_lists_a_table_and_reports_missing_services() {
    let prefix = unique_prefix("get");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    dir.write("books.yaml", EVERY_FIELD);
    dir.write("users.yaml", &manifest("users", "users:7", 1));
    cutover().arg("apply").arg("-f").arg(dir.path()).succeeds();

    let run = cutover().arg("get").succeeds();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "IMAGE", "REPLICAS", "STRATEGY", "ROUTES", "INDEX"]
    );
    let books: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        books[..5],
        [
            "books",
            "books:1.4.2",
            "3",
            "blueGreen",
            "/books,books.example.com"
        ]
    );
    assert!(lines[2].starts_with("users"), "{}", run.stdout);

    // -o yaml and -o json: the same object, shaped like kubectl's.
    let yaml: serde_json::Value =
        serde_yaml::from_str(&cutover().args(["get", "-o", "yaml"]).succeeds().stdout).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&cutover().args(["get", "-o", "json"]).succeeds().stdout).unwrap();
    assert_eq!(yaml, json);
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["metadata"]["name"], "books");
    assert_eq!(json["items"][0]["spec"]["health"]["path"], "/healthz");
    assert_eq!(json["items"][1]["metadata"]["name"], "users");
    // Defaults are filled in.
    assert_eq!(json["items"][1]["spec"]["health"]["path"], "/");
    let one: serde_json::Value = serde_json::from_str(
        &cutover()
            .args(["get", "users", "-o", "json"])
            .succeeds()
            .stdout,
    )
    .unwrap();
    assert_eq!(one, json["items"][1]);
    let one_yaml: serde_json::Value = serde_yaml::from_str(
        &cutover()
            .args(["get", "users", "-o", "yaml"])
            .succeeds()
            .stdout,
    )
    .unwrap();
    assert_eq!(one_yaml, one);
    // What jq users reach for.
    let jq = std::process::Command::new("jq")
        .args(["-r", ".items[].metadata.name"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("jq (scripts/install-deps installs it)");
    let mut jq_stdin = jq.stdin.as_ref().expect("jq stdin");
    std::io::Write::write_all(&mut jq_stdin, json.to_string().as_bytes()).unwrap();
    let jq = jq.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&jq.stdout), "books\nusers\n");
    let run = cutover().args(["get", "-o", "name"]).succeeds();
    assert_eq!(run.stdout, "service/books\nservice/users\n");
    let run = cutover().args(["get", "-o", "wide"]).succeeds();
    let header: Vec<&str> = run
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "IMAGE",
            "REPLICAS",
            "STRATEGY",
            "AUTOPROMOTE",
            "ROUTES",
            "PORT",
            "HEALTH",
            "INDEX"
        ]
    );
    assert!(
        run.stdout.lines().nth(1).unwrap().contains("false"),
        "{run}"
    );

    // An invalid manifest is an item with its name and errors.
    let broken = dir.write("broken", "spec: {replicas: two}\n");
    agent().kv_put_file(&format!("{prefix}/services/broken"), &broken);
    let json: serde_json::Value =
        serde_json::from_str(&cutover().args(["get", "-o", "json"]).succeeds().stdout).unwrap();
    assert_eq!(json["items"][1]["metadata"]["name"], "broken");
    assert!(
        json["items"][1]["errors"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e.to_string().contains("spec.replicas"))),
        "{json:#}"
    );

    let run = cutover().args(["get", "nope"]).fails();
    assert_eq!(
        run.stderr,
        format!("error: service nope not found ({prefix}/services/nope does not exist)\n")
    );
    cutover().args(["get", "Not/A/Name"]).fails();
}

#[test]
fn delete_removes_and_complains_about_missing_services() {
    let prefix = unique_prefix("delete");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:1", 1));
    cutover().arg("apply").arg("-f").arg(&file).succeeds();

    assert_eq!(
        cutover().args(["delete", "books"]).succeeds().stdout,
        "service/books deleted\n"
    );
    // Only the intent the deletion recorded for the daemon's guard is left.
    let keys: Vec<String> = snapshot(&prefix).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, [format!("{prefix}/control/deleted/books")]);
    let run = cutover().args(["delete", "books"]).fails();
    assert!(
        run.stderr.contains("service books not found"),
        "{}",
        run.stderr
    );
}

#[test]
fn scale_sets_adds_subtracts_and_clamps() {
    let prefix = unique_prefix("scale");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    let file = dir.write("books.yaml", EVERY_FIELD);
    cutover().arg("apply").arg("-f").arg(&file).succeeds();

    assert_eq!(
        cutover().args(["scale", "books", "5"]).succeeds().stdout,
        "books: 3 -> 5\n"
    );
    assert_eq!(
        cutover().args(["scale", "books", "+2"]).succeeds().stdout,
        "books: 5 -> 7\n"
    );
    assert_eq!(
        cutover().args(["scale", "books", "-1"]).succeeds().stdout,
        "books: 7 -> 6\n"
    );
    assert_eq!(
        cutover().args(["scale", "books", "-10"]).succeeds().stdout,
        "books: 6 -> 0 (clamped: replicas cannot go below 0)\n"
    );
    assert_eq!(replicas_of(&prefix, "books"), 0);

    // Every other field survived the rewrites.
    let scaled = cutover().args(["get", "books"]).succeeds().stdout;
    let mut expected = cutover::spec::parse_service("books.yaml", EVERY_FIELD).unwrap();
    expected.spec.replicas = 0;
    assert_eq!(
        cutover::spec::parse_service("kv", &scaled).unwrap(),
        expected
    );

    let run = cutover().args(["scale", "nope", "+1"]).fails();
    assert!(
        run.stderr.contains("service nope not found"),
        "{}",
        run.stderr
    );
    let run = cutover().args(["scale", "books", "lots"]).fails();
    assert!(
        run.stderr.contains("is not a replica count"),
        "{}",
        run.stderr
    );
}

#[test]
fn scale_refuses_an_invalid_manifest_in_kv() {
    let prefix = unique_prefix("scale-invalid");
    let dir = TempDir::new();
    let file = dir.write("books.yaml", "spec: [\n");
    agent().kv_put_file(&format!("{prefix}/services/books"), &file);
    let run = agent()
        .cutover(&prefix)
        .args(["scale", "books", "+1"])
        .fails();
    assert!(
        run.stderr.contains("is invalid, fix it with cutover apply"),
        "{}",
        run.stderr
    );
}

#[test]
fn twenty_concurrent_scales_all_count() {
    let prefix = unique_prefix("scale-race");
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:1", 3));
    agent()
        .cutover(&prefix)
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .succeeds();

    let children: Vec<_> = (0..20)
        .map(|_| {
            agent()
                .cutover(&prefix)
                .args(["scale", "books", "+1"])
                .spawn()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "a scale failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(replicas_of(&prefix, "books"), 23);
}

#[test]
fn sync_creates_configures_and_reports_drift() {
    let prefix = unique_prefix("sync");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    dir.write("books.yaml", &manifest("books", "books:1", 2));
    dir.write("users.yaml", &manifest("users", "users:1", 1));

    let run = cutover().arg("sync").arg(dir.path()).succeeds();
    assert_eq!(
        run.stdout,
        format!(
            "+ books created\n+ users created\ndrift: 2 service(s) differed from {}: \
             2 created, 0 configured, 0 deleted, 0 only in KV\n",
            dir.path().display()
        )
    );

    // Drift made outside the directory: a scale and an extra service.
    cutover().args(["scale", "books", "5"]).succeeds();
    let extra = TempDir::new();
    let extra_file = extra.write("extra.yaml", &manifest("extra", "extra:1", 1));
    cutover().arg("apply").arg("-f").arg(&extra_file).succeeds();
    dir.write("users.yaml", &manifest("users", "users:2", 1));

    let run = cutover().arg("sync").arg(dir.path()).succeeds();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "~ books configured: spec.replicas: 5 -> 2");
    assert_eq!(lines[1], "? extra is only in KV (sync --prune deletes it)");
    assert_eq!(
        lines[2],
        "~ users configured: spec.image: users:1 -> users:2"
    );
    assert!(
        lines[3].starts_with("drift: 3 service(s)"),
        "{}",
        run.stdout
    );

    let run = cutover()
        .arg("sync")
        .arg(dir.path())
        .arg("--prune")
        .succeeds();
    assert!(
        run.stdout
            .contains("= books unchanged\n- extra deleted\n= users unchanged\n"),
        "{}",
        run.stdout
    );

    let run = cutover()
        .arg("sync")
        .arg(dir.path())
        .arg("--prune")
        .succeeds();
    assert!(
        run.stdout.ends_with(&format!(
            "no drift: KV matches {} (2 services)\n",
            dir.path().display()
        )),
        "{}",
        run.stdout
    );
}

#[test]
fn sync_dry_run_writes_nothing() {
    let prefix = unique_prefix("sync-dry");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    dir.write("books.yaml", &manifest("books", "books:1", 2));
    dir.write("users.yaml", &manifest("users", "users:1", 1));
    cutover().arg("sync").arg(dir.path()).succeeds();

    dir.write("books.yaml", &manifest("books", "books:2", 2));
    dir.write("new.yaml", &manifest("new", "new:1", 1));
    dir.remove("users.yaml");
    let before = snapshot(&prefix);
    let run = cutover()
        .arg("sync")
        .arg(dir.path())
        .args(["--prune", "--dry-run", "--force"])
        .succeeds();
    assert_eq!(snapshot(&prefix), before, "a dry run wrote to KV");
    assert!(
        run.stdout
            .contains("~ books would be configured: spec.image: books:1 -> books:2\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("+ new would be created\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("- users would be deleted\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("(dry run: nothing was written)"),
        "{}",
        run.stdout
    );

    // The real run does what the dry run said.
    let real = cutover()
        .arg("sync")
        .arg(dir.path())
        .args(["--prune", "--force"])
        .succeeds();
    let changes = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with("drift"))
            .map(|l| l.replacen(" would be ", " ", 1))
            .collect()
    };
    assert_eq!(changes(&real.stdout), changes(&run.stdout));
}

#[test]
fn sync_refuses_to_prune_most_services_without_force() {
    let prefix = unique_prefix("sync-prune");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    for name in ["a", "b", "c"] {
        dir.write(&format!("{name}.yaml"), &manifest(name, "img:1", 1));
    }
    cutover().arg("sync").arg(dir.path()).succeeds();

    // A broken checkout with one file left would delete two of three.
    dir.remove("b.yaml");
    dir.remove("c.yaml");
    let before = snapshot(&prefix);
    // A dry run names every service it would delete, and says the prune would be refused.
    let run = cutover()
        .arg("sync")
        .arg(dir.path())
        .args(["--prune", "--dry-run"])
        .fails();
    assert!(
        run.stdout
            .contains("= a unchanged\n- b would be deleted\n- c would be deleted\n"),
        "{run}"
    );
    assert!(
        run.stderr
            .contains("refusing to prune 2 of the 3 services in KV (more than half: b, c)"),
        "{run}"
    );
    assert_eq!(snapshot(&prefix), before);

    let run = cutover().arg("sync").arg(dir.path()).arg("--prune").fails();
    assert!(
        run.stderr.contains("refusing to prune 2 of the 3 services"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("a broken checkout must not wipe production"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(snapshot(&prefix), before);

    let run = cutover()
        .arg("sync")
        .arg(dir.path())
        .args(["--prune", "--force"])
        .succeeds();
    assert!(
        run.stdout.contains("- b deleted\n- c deleted\n"),
        "{}",
        run.stdout
    );
    // a's spec, and the intents of the two deletions.
    let keys: Vec<String> = snapshot(&prefix).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            format!("{prefix}/control/deleted/b"),
            format!("{prefix}/control/deleted/c"),
            format!("{prefix}/services/a"),
        ]
    );
}

#[test]
fn sync_overwrites_invalid_services_in_kv() {
    let prefix = unique_prefix("sync-invalid");
    let dir = TempDir::new();
    let broken = TempDir::new();
    let file = broken.write("books.yaml", "spec: [\n");
    agent().kv_put_file(&format!("{prefix}/services/books"), &file);
    dir.write("books.yaml", &manifest("books", "books:1", 1));

    let run = agent()
        .cutover(&prefix)
        .arg("sync")
        .arg(dir.path())
        .succeeds();
    assert!(
        run.stdout
            .contains(&format!("! invalid in KV: {prefix}/services/books")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("~ books configured: was invalid: "),
        "{}",
        run.stdout
    );
    assert_eq!(
        agent()
            .cutover(&prefix)
            .args(["get", "books"])
            .succeeds()
            .stdout,
        manifest("books", "books:1", 1)
    );
}

#[test]
fn status_says_when_the_daemon_has_not_reported() {
    let prefix = unique_prefix("status-none");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:1", 1));
    cutover().arg("apply").arg("-f").arg(&file).succeeds();

    let expected =
        "no status yet: the daemon has not reported on books (is cutover run running?)\n";
    assert_eq!(
        cutover().args(["status", "books"]).succeeds().stdout,
        expected
    );
    assert_eq!(cutover().arg("status").succeeds().stdout, expected);
    assert_eq!(
        cutover()
            .args(["status", "books", "-o", "json"])
            .succeeds()
            .stdout,
        "null\n"
    );

    let run = cutover().args(["status", "nope"]).fails();
    assert!(
        run.stderr.contains("service nope not found"),
        "{}",
        run.stderr
    );
}

#[test]
fn status_prints_what_the_daemon_wrote() {
    let prefix = unique_prefix("status");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:2", 3));
    cutover().arg("apply").arg("-f").arg(&file).succeeds();
    let status = r#"{
  "observedIndex": 1,
  "phase": "Progressing",
  "activeColor": "blue",
  "previewColor": "green",
  "colors": {
    "blue": {"image": "books:1", "revision": "r1", "ready": 3, "desired": 3},
    "green": {"image": "books:2", "revision": "r2", "ready": 1, "desired": 3}
  },
  "conditions": [{"type": "Progressing", "status": "True", "reason": "NewColorStarting",
                  "message": "green is starting", "lastTransitionTime": "2024-05-01T10:00:00Z"}],
  "events": [{"time": "2024-05-01T10:00:00Z", "reason": "Started", "message": "started green"}]
}"#;
    let status_file = dir.write("status.json", status);
    agent().kv_put_file(&format!("{prefix}/status/books"), &status_file);

    let run = cutover().arg("status").succeeds();
    let lines: Vec<&str> = run.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "ACTIVE",
            "PREVIEW",
            "READY/DESIRED",
            "IMAGE",
            "INDEX"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..6],
        ["books", "Progressing", "blue", "green", "3/3", "books:1"]
    );
    assert!(
        row[6].starts_with("1/"),
        "the spec index is newer than the observed one: {}",
        run.stdout
    );

    let run = cutover().args(["status", "books"]).succeeds();
    assert!(run.stdout.contains("NewColorStarting"), "{}", run.stdout);
    assert!(run.stdout.contains("started green"), "{}", run.stdout);

    let run = cutover().args(["status", "books", "-o", "json"]).succeeds();
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(printed["colors"]["green"]["ready"], 1);
    assert_eq!(printed["phase"], "Progressing");
}

#[test]
fn an_unreadable_status_is_named_and_the_others_are_still_shown() {
    let prefix = unique_prefix("status-junk");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    for name in ["books", "users"] {
        let file = dir.write(&format!("{name}.yaml"), &manifest(name, "books:1", 1));
        cutover().arg("apply").arg("-f").arg(&file).succeeds();
    }
    let good = dir.write(
        "good.json",
        r#"{"observedIndex": 1, "phase": "Available", "activeColor": "blue",
            "colors": {"blue": {"image": "books:1", "revision": "r1", "ready": 1, "desired": 1}}}"#,
    );
    agent().kv_put_file(&format!("{prefix}/status/books"), &good);
    let junk = dir.write("junk.json", "junk");
    let users_key = format!("{prefix}/status/users");
    agent().kv_put_file(&users_key, &junk);
    // A status left behind by a deleted spec, unreadable too.
    agent().kv_put_file(&format!("{prefix}/status/ghost"), &junk);

    // Every service is listed; the unreadable ones as Unknown, with their key and error.
    // The exit code is 1, so that scripts notice.
    let run = cutover().arg("status").fails();
    let rows: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.len() >= 4, "a header and three rows: {run}");
    assert_eq!(rows[1][..3], ["books", "Available", "blue"], "{run}");
    assert_eq!(rows[2][..2], ["ghost", "Unknown"], "{run}");
    assert_eq!(rows[3][..2], ["users", "Unknown"], "{run}");
    assert!(
        run.stdout.contains(&format!("users: {users_key} (index "))
            && run
                .stdout
                .contains("does not hold a valid status: expected value at line 1 column 1"),
        "{run}"
    );
    assert!(
        run.stderr.contains(&users_key) && run.stderr.contains(&format!("{prefix}/status/ghost")),
        "{run}"
    );

    let run = cutover().args(["status", "users"]).fails();
    assert!(run.stdout.contains("users   Unknown"), "{run}");
    assert!(run.stdout.contains(&users_key), "{run}");
    assert!(run.stderr.contains(&users_key), "{run}");
    cutover().args(["status", "books"]).succeeds();

    let run = cutover().args(["status", "-o", "json"]).fails();
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(printed["books"]["phase"], "Available", "{run}");
    assert_eq!(printed["users"], serde_json::Value::Null, "{run}");
    assert!(run.stderr.contains(&users_key), "{run}");

    // --wait waits for the daemon to rewrite it, and says why it waits.
    let run = cutover()
        .args(["status", "users", "--wait", "--timeout", "2s"])
        .fails();
    assert!(run.stderr.contains(&users_key), "{run}");
    assert!(run.stderr.contains("timed out waiting for users"), "{run}");

    // A request needs the revision from the status: refused, naming the key.
    let run = cutover().args(["promote", "users"]).fails();
    assert!(
        run.stderr.contains(&users_key) && run.stderr.contains("does not hold a valid status"),
        "{run}"
    );
    assert!(
        agent()
            .kv_get(&format!("{prefix}/requests/users"))
            .is_none()
    );

    // prune still sees the statuses without a spec.
    let run = cutover().arg("prune").succeeds();
    assert_eq!(
        run.stdout,
        "would remove ghost\nrun again with --confirm to let the daemon remove them\n"
    );
}

#[test]
fn an_unreachable_consul_is_one_line_naming_the_address() {
    let address = format!("127.0.0.1:{}", support::unused_port());
    let started = Instant::now();
    let run = support::Cutover {
        command: cutover_command(),
    }
    .args(["--consul-addr", &address, "--consul-timeout", "2s", "get"])
    .fails();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the retries should stop after about 2 s"
    );
    assert_eq!(
        run.stderr,
        format!(
            "error: cannot reach Consul at http://{address} (GET cutover/services/): connection refused\n"
        )
    );
    assert!(run.stdout.is_empty());

    // The address also comes from CONSUL_HTTP_ADDR.
    let mut command = cutover_command();
    command.env("CONSUL_HTTP_ADDR", format!("http://{address}"));
    let run = support::Cutover { command }
        .args(["--consul-timeout", "1s", "status", "books"])
        .fails();
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot reach Consul at http://{address}")),
        "{}",
        run.stderr
    );
}

#[test]
fn a_bad_consul_address_is_reported() {
    let run = support::Cutover {
        command: cutover_command(),
    }
    .args(["--consul-addr", "ftp://consul:21", "get"])
    .fails();
    assert!(
        run.stderr
            .starts_with("error: invalid Consul address \"ftp://consul:21\""),
        "{}",
        run.stderr
    );
}

#[test]
fn the_acl_token_comes_from_consul_http_token() {
    // An agent of its own: ACLs on, everything denied without the master token.
    let acl =
        r#"acl { enabled = true, default_policy = "deny", tokens { master = "root-token" } }"#;
    let agent = support::Agent::start_with(&["-hcl", acl]);
    agent.wait_for_token("root-token");
    let dir = TempDir::new();
    let file = dir.write("books.yaml", &manifest("books", "books:1", 1));

    let started = Instant::now();
    let run = agent
        .cutover("acl")
        .arg("apply")
        .arg("-f")
        .arg(&file)
        .fails();
    assert_eq!(
        run.stderr,
        format!(
            "error: permission denied by Consul at http://{} (GET acl/services/books): check CONSUL_HTTP_TOKEN\n",
            agent.address()
        )
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "a 403 is not retried"
    );

    let mut with_token = agent.cutover("acl");
    with_token.command.env("CONSUL_HTTP_TOKEN", "root-token");
    let run = with_token.arg("apply").arg("-f").arg(&file).succeeds();
    assert_eq!(run.stdout, "service/books created\n");

    // Or from a file, like the consul CLI (a trailing newline is not part of the token).
    let token_file = dir.write("token", "root-token\n");
    let mut from_file = agent.cutover("acl");
    from_file.command.env("CONSUL_HTTP_TOKEN_FILE", &token_file);
    let run = from_file.args(["get", "books", "-o", "yaml"]).succeeds();
    assert!(run.stdout.contains("name: books"), "{run}");
    let mut missing = agent.cutover("acl");
    missing
        .command
        .env("CONSUL_HTTP_TOKEN_FILE", dir.path().join("nope"));
    let run = missing.args(["get", "books"]).fails();
    assert!(
        run.stderr
            .starts_with("error: cannot read the token file (CONSUL_HTTP_TOKEN_FILE)"),
        "{run}"
    );
}

#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    use std::io::Read;
    use std::process::Stdio;
    let prefix = unique_prefix("pipe");
    let dir = TempDir::new();
    // Far more than a pipe's buffer (64 KiB), so that printing meets the closed pipe.
    for i in 0..150 {
        let name = format!("svc{i}");
        dir.write(
            &format!("{name}.yaml"),
            &EVERY_FIELD.replace("books", &name),
        );
    }
    agent()
        .cutover(&prefix)
        .arg("apply")
        .arg("-f")
        .arg(dir.path())
        .succeeds();
    let mut cutover = agent().cutover(&prefix).args(["get", "-o", "yaml"]);
    cutover
        .command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cutover.command.spawn().expect("start cutover");
    let mut head = [0u8; 64];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut head)
        .expect("the first bytes");
    // The read end is closed here, as `| head` does.
    let output = child.wait_with_output().expect("cutover ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(String::from_utf8_lossy(&head).starts_with("apiVersion"));
}

#[test]
fn get_and_status_watch_print_again_on_every_change() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let prefix = unique_prefix("watch");
    let dir = TempDir::new();
    let apply = |name: &str| {
        let file = dir.write(&format!("{name}.yaml"), &manifest(name, "books:1", 1));
        agent()
            .cutover(&prefix)
            .arg("apply")
            .arg("-f")
            .arg(file)
            .succeeds();
    };
    // `args` with -w, its stdout line by line.
    let watch = |args: &[&str]| {
        let mut watch = agent().cutover(&prefix).args(args);
        watch.command.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = watch.command.spawn().expect("start cutover with -w");
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let seen = |rx: &std::sync::mpsc::Receiver<String>, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(what) => return,
                Ok(_) => {}
                Err(e) => panic!("-w never printed {what:?}: {e}"),
            }
        }
    };
    apply("books");
    let (mut get, lines) = watch(&["get", "-w"]);
    seen(&lines, "books");
    apply("users");
    seen(&lines, "users");
    let _ = get.kill();
    let _ = get.wait();

    let (mut status, lines) = watch(&["status", "-w"]);
    seen(&lines, "books");
    let junk = dir.write("junk", "junk");
    agent().kv_put_file(&format!("{prefix}/status/books"), &junk);
    seen(&lines, "Unknown");
    let _ = status.kill();
    let _ = status.wait();
}

/// `status --wait` without a name waits for every service and, off a terminal, says how far
/// it got on a plain line at each change: how many are Available, which still progress and
/// why.
#[test]
fn status_wait_without_a_name_shows_progress_as_plain_lines() {
    let prefix = unique_prefix("status-progress");
    let cutover = || agent().cutover(&prefix);
    let dir = TempDir::new();
    for name in ["books", "users"] {
        let file = dir.write(&format!("{name}.yaml"), &manifest(name, "books:1", 1));
        cutover().arg("apply").arg("-f").arg(&file).succeeds();
    }
    let index = |name: &str| {
        let key = format!("{prefix}/services/{name}");
        snapshot(&prefix)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, index)| index)
            .expect("the spec's key")
    };
    let status = |name: &str, phase: &str, reason: &str| {
        let file = dir.write(
            &format!("{name}-status.json"),
            &format!(
                r#"{{"observedIndex": {}, "phase": "{phase}", "activeColor": "blue",
                    "conditions": [{{"type": "Progressing", "status": "True", "reason": "{reason}",
                                     "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}}]}}"#,
                index(name)
            ),
        );
        agent().kv_put_file(&format!("{prefix}/status/{name}"), &file);
    };
    // sync --wait: written, then waited on, before any daemon reported.
    let run = cutover()
        .args([
            "sync",
            &dir.path().to_string_lossy(),
            "--wait",
            "--timeout",
            "2s",
        ])
        .fails();
    assert_eq!(
        run.stderr.lines().next(),
        Some("0/2 Available; progressing: books (not reconciled yet), users (not reconciled yet)"),
        "{run}"
    );
    status("books", "Available", "RolloutComplete");
    status("users", "Progressing", "WaitingForHealthy");
    let run = cutover()
        .args(["status", "--wait", "--timeout", "2s"])
        .fails();
    assert_eq!(
        run.stderr.lines().next(),
        Some("1/2 Available; progressing: users (WaitingForHealthy)"),
        "{run}"
    );
    assert!(
        run.stderr.contains("timed out waiting for every service"),
        "{run}"
    );
    assert!(
        !run.stderr.contains('\r'),
        "no terminal, no rewriting: {run}"
    );

    status("users", "Available", "RolloutComplete");
    let run = cutover()
        .args(["status", "--wait", "-o", "json"])
        .succeeds();
    assert_eq!(run.stderr, "2/2 Available\n", "{run}");
    let printed: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(printed["users"]["phase"], "Available", "{run}");
}
