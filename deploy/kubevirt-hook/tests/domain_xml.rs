//! The domain-XML transform on a KubeVirt-shaped domain (what virt-launcher hands the hook):
//! the result is checked structurally with an independent, namespace-aware XML reader.

use std::path::Path;

use sockbypass_ctl::protocol::Origin;
use sockbypass_ctl::VmInfo;
use sockbypass_kubevirt_hook::domain::{self, DomainError, QEMU_NS};

const DOMAIN: &str = include_str!("fixtures/domain-default_vmi-x.xml");
const VMI: &str = include_str!("fixtures/vmi-x.json");
const SOCKET: &str = "/var/run/sockbypass/default.vmi-x.sock";

fn vm() -> VmInfo {
    VmInfo {
        name: "default.vmi-x".into(),
        cid: 3,
        socket: SOCKET.into(),
        uds: None,
        groups: vec!["db".into(), "web".into()],
        ports: None,
        ips: Vec::new(),
        windows: Vec::new(),
        attached: false,
        origin: Origin::Control,
    }
}

fn attach(xml: &str) -> String {
    domain::attach(xml, VMI.as_bytes(), &vm(), None).expect("attaches")
}

fn attach_err(xml: &str, vmi: &str) -> DomainError {
    domain::attach(xml, vmi.as_bytes(), &vm(), None).expect_err("refused")
}

/// The child elements of `node` with this local name (any namespace but QEMU's unless asked).
fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn one<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &'a str) -> roxmltree::Node<'a, 'i> {
    let all: Vec<_> = children(node, name).collect();
    assert_eq!(all.len(), 1, "expected one <{name}>, found {}", all.len());
    all[0]
}

/// The values of the `<qemu:arg>` elements of the domain's one `<qemu:commandline>`.
fn qemu_args(doc: &roxmltree::Document<'_>) -> Vec<String> {
    let root = doc.root_element();
    let cmdlines: Vec<_> = root
        .children()
        .filter(|c| {
            c.tag_name().namespace() == Some(QEMU_NS) && c.tag_name().name() == "commandline"
        })
        .collect();
    assert_eq!(cmdlines.len(), 1, "one qemu:commandline");
    cmdlines[0]
        .children()
        .filter(|c| c.tag_name().namespace() == Some(QEMU_NS) && c.tag_name().name() == "arg")
        .map(|c| c.attribute("value").expect("arg value").to_owned())
        .collect()
}

fn expected_args(socket: &str) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=sockbypass0,path={socket}"),
        "-device".into(),
        "vhost-user-vsock-pci,chardev=sockbypass0".into(),
    ]
}

/// `<memoryBacking>` has a memfd source and shared access.
fn assert_shared_memfd<'a, 'i>(root: roxmltree::Node<'a, 'i>) -> roxmltree::Node<'a, 'i> {
    let backing = one(root, "memoryBacking");
    assert_eq!(one(backing, "source").attribute("type"), Some("memfd"));
    assert_eq!(one(backing, "access").attribute("mode"), Some("shared"));
    backing
}

#[test]
fn kubevirt_domain_gets_shared_memory_and_the_device() {
    let out = attach(DOMAIN);
    let doc = roxmltree::Document::parse(&out).expect("output is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "domain");
    assert_eq!(root.attribute("type"), Some("kvm"));
    assert_eq!(root.lookup_namespace_uri(Some("qemu")), Some(QEMU_NS));
    assert_eq!(one(root, "name").text(), Some("default_vmi-x"));
    assert_shared_memfd(root);
    assert_eq!(qemu_args(&doc), expected_args(SOCKET));

    // Nothing else was lost: the same devices, metadata and CPU.
    let original = roxmltree::Document::parse(DOMAIN).expect("fixture is XML");
    let names = |d: &roxmltree::Document<'_>| -> Vec<String> {
        d.descendants()
            .filter(|n| n.is_element())
            .filter(|n| {
                !matches!(
                    n.tag_name().name(),
                    "memoryBacking" | "source" | "access" | "commandline" | "arg"
                ) || n.ancestors().any(|a| a.tag_name().name() == "devices")
            })
            .map(|n| {
                format!(
                    "{}{:?}",
                    n.tag_name().name(),
                    n.attributes()
                        .map(|a| (a.name().to_owned(), a.value().to_owned()))
                        .collect::<Vec<_>>()
                )
            })
            .collect()
    };
    assert_eq!(names(&doc), names(&original));
    let devices = one(root, "devices");
    assert_eq!(children(devices, "disk").count(), 2);
    assert_eq!(children(devices, "interface").count(), 1);
    // <memoryBacking> sits right after <memory>.
    let elements: Vec<&str> = root
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    let memory = elements
        .iter()
        .position(|n| *n == "memory")
        .expect("memory");
    assert_eq!(elements[memory + 1], "memoryBacking");
    assert_eq!(elements.last(), Some(&"commandline"));
}

#[test]
fn applying_twice_gives_the_same_xml() {
    let once = attach(DOMAIN);
    assert_eq!(attach(&once), once);
    let hugepages = DOMAIN.replace(
        "  <os>",
        "  <memoryBacking>\n    <hugepages>\n      <page size=\"2\" unit=\"M\"></page>\n    </hugepages>\n  </memoryBacking>\n  <os>",
    );
    let once = attach(&hugepages);
    assert_eq!(attach(&once), once);
}

#[test]
fn existing_hugepages_are_kept() {
    let xml = DOMAIN.replace(
        "  <os>",
        "  <memoryBacking>\n    <hugepages>\n      <page size=\"2\" unit=\"M\"></page>\n    </hugepages>\n  </memoryBacking>\n  <os>",
    );
    let out = attach(&xml);
    let doc = roxmltree::Document::parse(&out).expect("XML");
    let backing = assert_shared_memfd(doc.root_element());
    let page = one(one(backing, "hugepages"), "page");
    assert_eq!(
        (page.attribute("size"), page.attribute("unit")),
        (Some("2"), Some("M"))
    );
}

#[test]
fn an_existing_source_and_access_are_made_shareable() {
    // anonymous memory cannot be shared: it becomes memfd; private access becomes shared.
    let xml = DOMAIN.replace(
        "  <os>",
        "<memoryBacking><source type=\"anonymous\"/><access mode=\"private\"/></memoryBacking><os>",
    );
    let doc_text = attach(&xml);
    let doc = roxmltree::Document::parse(&doc_text).expect("XML");
    assert_shared_memfd(doc.root_element());
    // A file source is shareable and stays.
    let xml = DOMAIN.replace(
        "  <os>",
        "<memoryBacking><source type=\"file\"/></memoryBacking><os>",
    );
    let doc_text = attach(&xml);
    let doc = roxmltree::Document::parse(&doc_text).expect("XML");
    let backing = one(doc.root_element(), "memoryBacking");
    assert_eq!(one(backing, "source").attribute("type"), Some("file"));
    assert_eq!(one(backing, "access").attribute("mode"), Some("shared"));
}

#[test]
fn the_namespace_is_declared_when_missing_and_an_existing_commandline_is_reused() {
    let bare = DOMAIN.replace(
        " xmlns:qemu=\"http://libvirt.org/schemas/domain/qemu/1.0\"",
        "",
    );
    assert!(!bare.contains("xmlns:qemu"));
    let out = attach(&bare);
    let doc = roxmltree::Document::parse(&out).expect("XML");
    assert_eq!(
        doc.root_element().lookup_namespace_uri(Some("qemu")),
        Some(QEMU_NS)
    );
    assert_eq!(qemu_args(&doc), expected_args(SOCKET));

    // Another prefix for the same namespace, with an env entry already there.
    let other = DOMAIN.replace("xmlns:qemu=", "xmlns:q=").replace(
        "</domain>",
        "  <q:commandline>\n    <q:env name=\"X\" value=\"1\"/>\n  </q:commandline>\n</domain>",
    );
    let out = attach(&other);
    assert!(!out.contains("xmlns:qemu"), "no second declaration");
    let doc = roxmltree::Document::parse(&out).expect("XML");
    assert_eq!(qemu_args(&doc), expected_args(SOCKET));
    let cmdline = doc
        .root_element()
        .children()
        .find(|c| c.tag_name().name() == "commandline")
        .expect("commandline");
    assert_eq!(one(cmdline, "env").attribute("name"), Some("X"));
    assert_eq!(attach(&out), out);
}

#[test]
fn a_changed_socket_path_updates_the_arguments_in_place() {
    let once = attach(DOMAIN);
    let mut moved = vm();
    moved.socket = "/run/elsewhere/default.vmi-x.sock".into();
    let again = domain::attach(&once, VMI.as_bytes(), &moved, None).expect("attaches");
    let doc = roxmltree::Document::parse(&again).expect("XML");
    assert_eq!(
        qemu_args(&doc),
        expected_args("/run/elsewhere/default.vmi-x.sock")
    );
}

#[test]
fn qemu_may_see_the_socket_directory_elsewhere() {
    let out = domain::attach(DOMAIN, VMI.as_bytes(), &vm(), Some(Path::new("/mnt/sb")))
        .expect("attaches");
    let doc = roxmltree::Document::parse(&out).expect("XML");
    assert_eq!(qemu_args(&doc), expected_args("/mnt/sb/default.vmi-x.sock"));
}

#[test]
fn autoattach_vsock_is_refused_with_a_clear_error() {
    let vmi = VMI.replace(
        "\"interfaces\":",
        "\"autoattachVSOCK\": true, \"interfaces\":",
    );
    let e = attach_err(DOMAIN, &vmi);
    let text = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
    assert!(text.contains("autoattachVSOCK"), "{text}");
    assert!(text.contains("only one virtio-vsock device"), "{text}");
    assert!(domain::check(DOMAIN, vmi.as_bytes()).is_err());

    // libvirt's own <vsock> in the domain is refused too.
    let xml = DOMAIN.replace(
        "  </devices>",
        "    <vsock model=\"virtio-non-transitional\"><cid auto=\"no\" address=\"3\"></cid></vsock>\n  </devices>",
    );
    let e = attach_err(&xml, VMI);
    assert!(matches!(e, DomainError::LibvirtVsock { .. }), "{e}");
    assert!(e.to_string().contains("only one virtio-vsock device"));

    // So is another vsock device passed to QEMU.
    let xml = DOMAIN.replace(
        "</domain>",
        "<qemu:commandline><qemu:arg value=\"-device\"/><qemu:arg value=\"vhost-vsock-pci,guest-cid=9\"/></qemu:commandline></domain>",
    );
    let e = attach_err(&xml, VMI);
    assert!(matches!(e, DomainError::ForeignVsock { .. }), "{e}");
    assert!(e.to_string().contains("vhost-vsock-pci,guest-cid=9"));
}

#[test]
fn bad_input_is_a_clear_error() {
    // Missing groups annotation.
    let vmi = VMI.replace("\"sockbypass.io/groups\": \"db,web\"", "\"other\": \"x\"");
    let e = attach_err(DOMAIN, &vmi);
    let text = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
    assert!(
        text.contains("has no `sockbypass.io/groups` annotation"),
        "{text}"
    );

    // Bad CID annotation.
    let vmi = VMI.replace("\"db,web\"", "\"db,web\", \"sockbypass.io/cid\": \"three\"");
    let e = attach_err(DOMAIN, &vmi);
    let text = format!("{e}: {}", std::error::Error::source(&e).expect("source"));
    assert!(
        text.contains("`sockbypass.io/cid` = `three` is not a number"),
        "{text}"
    );

    // Another VMI's domain.
    let e = attach_err(&DOMAIN.replace("default_vmi-x", "default_vmi-y"), VMI);
    assert_eq!(
        e.to_string(),
        "the domain is named `default_vmi-y`, but VMI default/vmi-x's domain is `default_vmi-x`"
    );

    // Not a domain; not XML.
    assert!(matches!(
        attach_err("<network/>", VMI),
        DomainError::NotADomain(_)
    ));
    assert!(matches!(
        attach_err("<domain><name>", VMI),
        DomainError::Xml(_)
    ));

    // The qemu prefix bound elsewhere.
    let xml = DOMAIN.replace(QEMU_NS, "urn:other");
    assert!(matches!(
        attach_err(&xml, VMI),
        DomainError::QemuPrefixTaken { .. }
    ));

    // A VmInfo of another VM, a socket QEMU cannot be given.
    let mut other = vm();
    other.name = "default.vmi-y".into();
    let e = domain::attach(DOMAIN, VMI.as_bytes(), &other, None).expect_err("wrong VM");
    assert!(matches!(e, DomainError::WrongVm { .. }));
    let mut comma = vm();
    comma.socket = "/a,b/default.vmi-x.sock".into();
    let e = domain::attach(DOMAIN, VMI.as_bytes(), &comma, None).expect_err("comma");
    assert!(matches!(e, DomainError::SocketPath(_)));
}
