//! The transformed KubeVirt-shaped domain is valid libvirt domain XML: checked with
//! `virt-xml-validate` (Debian's libvirt-clients, installed by ci/install-deps.sh) against
//! libvirt's own schema. A broken copy must fail, so the check is known to look at the
//! elements the hook adds.

use std::path::Path;
use std::process::Command;

use sockbypass_ctl::protocol::Origin;
use sockbypass_ctl::VmInfo;
use sockbypass_kubevirt_hook::domain;

const DOMAIN: &str = include_str!("fixtures/domain-default_vmi-x.xml");
const VMI: &str = include_str!("fixtures/vmi-x.json");

/// Whether virt-xml-validate can run; in CI (`CI=true`) its absence is a failure.
fn have_validator() -> bool {
    let found = Command::new("virt-xml-validate")
        .arg("--help")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "virt-xml-validate is missing: ci/install-deps.sh installs libvirt-clients"
        );
        eprintln!("skipped: virt-xml-validate is not installed (apt-get install libvirt-clients libxml2-utils)");
    }
    found
}

/// Runs virt-xml-validate on `xml`: (success, output).
fn validate(dir: &Path, xml: &str) -> (bool, String) {
    let file = dir.join("domain.xml");
    std::fs::write(&file, xml).expect("write domain");
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn attach(xml: &str) -> String {
    let vm = VmInfo {
        name: "default.vmi-x".into(),
        cid: 3,
        socket: "/var/run/sockbypass/default.vmi-x.sock".into(),
        uds: None,
        groups: vec!["db".into(), "web".into()],
        ports: None,
        ips: Vec::new(),
        windows: Vec::new(),
        attached: false,
        origin: Origin::Control,
    };
    domain::attach(xml, VMI.as_bytes(), &vm, None).expect("attaches")
}

#[test]
fn the_attached_domain_is_valid_libvirt_xml() {
    if !have_validator() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, text) = validate(dir.path(), DOMAIN);
    assert!(ok, "the fixture itself: {text}");

    let hugepages = DOMAIN.replace(
        "  <os>",
        "  <memoryBacking>\n    <hugepages>\n      <page size=\"2\" unit=\"M\"></page>\n    </hugepages>\n  </memoryBacking>\n  <os>",
    );
    let bare = DOMAIN.replace(
        " xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\"",
        "",
    );
    let with_env = DOMAIN.replace(
        "</domain>",
        "  <qemu:commandline>\n    <qemu:env name=\"X\" value=\"1\"/>\n  </qemu:commandline>\n</domain>",
    );
    for (what, xml) in [
        ("plain", DOMAIN.to_owned()),
        ("hugepages", hugepages),
        ("no namespace", bare),
        ("existing commandline", with_env),
    ] {
        let attached = attach(&xml);
        let (ok, text) = validate(dir.path(), &attached);
        assert!(ok, "{what}: {text}\n{attached}");
    }

    // The validator does check what the hook adds.
    let broken = attach(DOMAIN).replace("mode=\"shared\"", "mode=\"everyone\"");
    let (ok, _) = validate(dir.path(), &broken);
    assert!(!ok, "an invalid access mode passed the schema");
}
