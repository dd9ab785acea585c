//! Parse-checks deploy/kubernetes: every YAML document parses and names its apiVersion, kind
//! and metadata.name; the DaemonSet mounts the hostPath socket directory and puts its control
//! socket there; the ConfigMap's configuration file is accepted by the real sockbypassd; the
//! example VMI's hookSidecars annotation is JSON naming the hook image and a claim bound to
//! that directory, and its sockbypass.io annotations are accepted by the hook's own parser.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;
use sockbypass_ctl::{Answer, Client, Request};
use sockbypass_kubevirt_hook::annotations;
use support::Daemon;

const HOST_SOCKET_DIR: &str = "/run/sockbypass";

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kubernetes")
}

/// Every document of every YAML file, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifest_dir())
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| matches!(p.extension().and_then(OsStr::to_str), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "manifests found: {files:?}");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for key in path {
        v = v.get(*key)?;
    }
    v.as_str()
}

fn seq<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| str_at(d, &["kind"]) == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn every_document_names_its_api_version_kind_and_name() {
    let docs = documents();
    for (file, doc) in &docs {
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            assert!(
                str_at(doc, field).is_some_and(|s| !s.is_empty()),
                "{file}: a document has no {}",
                field.join(".")
            );
        }
    }
    let kinds: Vec<&str> = docs
        .iter()
        .filter_map(|(_, d)| str_at(d, &["kind"]))
        .collect();
    for kind in [
        "DaemonSet",
        "ConfigMap",
        "VirtualMachineInstance",
        "PersistentVolume",
        "PersistentVolumeClaim",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
}

#[test]
fn the_daemonset_mounts_the_host_socket_dir_and_serves_control_there() {
    let docs = documents();
    let sets = find(&docs, "DaemonSet");
    assert_eq!(sets.len(), 1);
    let pod = sets[0]
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("spec"))
        .expect("pod template");
    let volume = seq(pod, "volumes")
        .iter()
        .find(|v| str_at(v, &["hostPath", "path"]) == Some(HOST_SOCKET_DIR))
        .expect("a hostPath volume on /run/sockbypass");
    let volume_name = str_at(volume, &["name"]).expect("volume name");
    let containers = seq(pod, "containers");
    let daemon = containers
        .iter()
        .find(|c| str_at(c, &["name"]) == Some("sockbypassd"))
        .expect("a sockbypassd container");
    let mount = seq(daemon, "volumeMounts")
        .iter()
        .find(|m| str_at(m, &["name"]) == Some(volume_name))
        .and_then(|m| str_at(m, &["mountPath"]))
        .expect("the daemon mounts the socket dir");
    let args: Vec<&str> = seq(daemon, "args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let control = args
        .iter()
        .position(|a| *a == "--control")
        .and_then(|i| args.get(i + 1))
        .expect("--control PATH");
    assert_eq!(*control, "/run/sockbypass/control.sock");
    assert!(
        control.starts_with(&format!("{mount}/")),
        "{control} is outside {mount}"
    );

    // --config names the ConfigMap's file, mounted from the ConfigMap.
    let config = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1))
        .expect("--config FILE");
    let config = Path::new(config);
    let config_volume = seq(pod, "volumes")
        .iter()
        .find(|v| v.get("configMap").is_some())
        .expect("a configMap volume");
    let config_mount = seq(daemon, "volumeMounts")
        .iter()
        .find(|m| str_at(m, &["name"]) == str_at(config_volume, &["name"]))
        .and_then(|m| str_at(m, &["mountPath"]))
        .expect("the config volume is mounted");
    assert_eq!(config.parent(), Some(Path::new(config_mount)));
    let map_name = str_at(config_volume, &["configMap", "name"]).expect("configMap name");
    let map = find(&docs, "ConfigMap")
        .into_iter()
        .find(|m| str_at(m, &["metadata", "name"]) == Some(map_name))
        .expect("the ConfigMap the DaemonSet mounts");
    let file = config
        .file_name()
        .and_then(OsStr::to_str)
        .expect("file name");
    assert!(
        str_at(map, &["data", file]).is_some(),
        "ConfigMap has no {file}"
    );
}

#[test]
fn the_configmaps_file_runs_the_real_daemon() {
    let docs = documents();
    let map = find(&docs, "ConfigMap")
        .into_iter()
        .find(|m| str_at(m, &["metadata", "name"]) == Some("sockbypassd"))
        .expect("ConfigMap sockbypassd");
    let toml = str_at(map, &["data", "sockbypassd.toml"]).expect("sockbypassd.toml");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sockbypassd.toml");
    std::fs::write(&file, toml).expect("write config");
    let daemon = Daemon::start_with(dir.path(), &[OsStr::new("--config"), file.as_os_str()]);
    let answer = Client::connect(&daemon.control)
        .expect("control")
        .call(&Request::VmList {})
        .expect("vm_list");
    assert_eq!(answer, Answer::Vms(Vec::new()));
}

#[test]
fn the_example_vmi_names_the_hook_and_a_claim_on_the_socket_dir() {
    let docs = documents();
    let vmis = find(&docs, "VirtualMachineInstance");
    assert_eq!(vmis.len(), 1);
    let vmi = vmis[0];
    let sidecars = str_at(
        vmi,
        &["metadata", "annotations", "hooks.kubevirt.io/hookSidecars"],
    )
    .expect("hookSidecars annotation");
    let sidecars: serde_json::Value = serde_json::from_str(sidecars).expect("hookSidecars is JSON");
    let sidecar = sidecars
        .as_array()
        .and_then(|a| a.first())
        .expect("a list of one sidecar");
    let image = sidecar["image"].as_str().expect("image");
    assert!(image.contains("kubevirt-hook"), "image {image}");
    let pvc = &sidecar["pvc"];
    let claim = pvc["name"].as_str().expect("pvc.name");
    let shared = pvc["sharedComputePath"]
        .as_str()
        .expect("pvc.sharedComputePath");
    let volume_path = pvc["volumePath"].as_str().expect("pvc.volumePath");
    // The hook's arguments point into the directory it mounts.
    let args: Vec<&str> = sidecar["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    let control = arg("--control").unwrap_or("/var/run/sockbypass/control.sock");
    assert!(control.starts_with(&format!("{volume_path}/")), "{control}");
    let qemu_dir = arg("--qemu-socket-dir")
        .or(arg("--socket-dir"))
        .unwrap_or("/var/run/sockbypass");
    assert_eq!(
        qemu_dir, shared,
        "QEMU's socket dir is where the compute container mounts the claim"
    );

    // The claim is in the VMI's namespace and bound to a hostPath PV on the daemon's dir.
    let namespace = str_at(vmi, &["metadata", "namespace"]).unwrap_or("default");
    let pvc_doc = find(&docs, "PersistentVolumeClaim")
        .into_iter()
        .find(|p| {
            str_at(p, &["metadata", "name"]) == Some(claim)
                && str_at(p, &["metadata", "namespace"]) == Some(namespace)
        })
        .expect("the claim, in the VMI's namespace");
    let pv_name = str_at(pvc_doc, &["spec", "volumeName"]).expect("volumeName");
    let pv = find(&docs, "PersistentVolume")
        .into_iter()
        .find(|p| str_at(p, &["metadata", "name"]) == Some(pv_name))
        .expect("the PersistentVolume");
    assert_eq!(
        str_at(pv, &["spec", "hostPath", "path"]),
        Some(HOST_SOCKET_DIR)
    );
    assert_eq!(str_at(pv, &["spec", "claimRef", "name"]), Some(claim));
    assert_eq!(
        str_at(pv, &["spec", "claimRef", "namespace"]),
        Some(namespace)
    );

    // The hook's own parser accepts the VMI as it would reach it (as JSON).
    let json = serde_json::to_vec(vmi).expect("VMI as JSON");
    let request = annotations::parse(&json).expect("the hook accepts the example VMI");
    assert_eq!(request.vm_name(), "default.vmi-db");
    assert_eq!(request.groups, ["db", "web"]);
    assert_eq!(request.ports, Some(vec![5432]));
}

#[test]
fn labels_and_annotations_are_strings() {
    // Kubernetes rejects a non-string label or annotation value (`cid: 12` unquoted).
    for (file, doc) in documents() {
        for key in ["labels", "annotations"] {
            if let Some(map) = doc.get("metadata").and_then(|m| m.get(key)) {
                let map: BTreeMap<String, Value> =
                    serde_yaml_ng::from_value(map.clone()).expect("a map");
                for (k, v) in map {
                    assert!(v.is_string(), "{file}: {key} {k} is not a string");
                }
            }
        }
    }
}
