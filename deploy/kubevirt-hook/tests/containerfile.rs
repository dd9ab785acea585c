//! Checks deploy/Containerfile against the workspace (images cannot be built here: no
//! registry is reachable): the packages it builds are workspace packages, the binaries it
//! installs are their binary targets, and the default (last) stage runs the hook.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn containerfile() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Containerfile"))
        .expect("deploy/Containerfile")
}

/// (package names, binary target names) of the workspace, from `cargo metadata`.
fn workspace() -> (BTreeSet<String>, BTreeSet<String>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut packages = BTreeSet::new();
    let mut bins = BTreeSet::new();
    for package in meta["packages"].as_array().expect("packages") {
        packages.insert(package["name"].as_str().expect("name").to_owned());
        for target in package["targets"].as_array().expect("targets") {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin {
                bins.insert(target["name"].as_str().expect("name").to_owned());
            }
        }
    }
    (packages, bins)
}

#[test]
fn the_containerfile_builds_workspace_binaries_and_ends_with_the_hook() {
    let text = containerfile();
    let (packages, bins) = workspace();
    // Continuation lines joined, as the shell sees them.
    let joined = text.replace("\\\n", " ");
    let build = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .expect("a cargo build line");
    let words: Vec<&str> = build.split_whitespace().collect();
    let built: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    assert_eq!(
        built,
        ["sockbypassd", "sockbypass-ctl", "sockbypass-kubevirt-hook"]
    );
    for p in &built {
        assert!(packages.contains(*p), "{p} is not a workspace package");
    }
    let installed: Vec<&str> = words
        .iter()
        .filter_map(|w| w.strip_prefix("target/release/"))
        .collect();
    assert_eq!(
        installed,
        ["sockbypassd", "sockbypass", "sockbypass-kubevirt-hook"]
    );
    for b in &installed {
        assert!(bins.contains(*b), "{b} is not a binary of the workspace");
    }

    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(
        froms[0].contains("rust:") && froms[0].contains("bookworm"),
        "{}",
        froms[0]
    );
    assert!(froms.iter().any(|f| f.contains("debian:bookworm-slim")));
    let last_stage = text.rsplit("\nFROM ").next().expect("a last stage");
    assert!(last_stage.starts_with("runtime AS hook"), "{last_stage}");
    assert!(last_stage.contains(r#"ENTRYPOINT ["/usr/local/bin/sockbypass-kubevirt-hook"]"#));
    let daemon_stage = text
        .split("\nFROM ")
        .find(|s| s.starts_with("runtime AS daemon"))
        .expect("a daemon stage");
    assert!(daemon_stage.contains(r#"ENTRYPOINT ["/usr/local/bin/sockbypassd"]"#));
}

#[test]
fn the_manifests_use_the_images_the_containerfile_names() {
    let text = containerfile();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubernetes");
    let daemonset = std::fs::read_to_string(dir.join("daemonset.yaml")).expect("daemonset");
    let vmi = std::fs::read_to_string(dir.join("vmi-example.yaml")).expect("vmi");
    for (image, file) in [
        ("registry.example/sockbypass/sockbypassd:0.1.0", &daemonset),
        ("registry.example/sockbypass/kubevirt-hook:0.1.0", &vmi),
    ] {
        assert!(
            text.contains(image),
            "the Containerfile does not build {image}"
        );
        assert!(file.contains(image), "a manifest does not use {image}");
    }
}
