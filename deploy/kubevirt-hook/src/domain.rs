//! The domain-XML transform: what a VMI's libvirt domain needs to reach the node's
//! sockbypassd. Shared guest memory (`<memoryBacking>` with a memfd source and shared access,
//! existing children such as `<hugepages>` kept) and, through `<qemu:commandline>`, a
//! vhost-user chardev on the VM's socket and a `vhost-user-vsock-pci` device on it.
//!
//! [`attach`] is a pure function of the domain XML, the VMI JSON and the VM as the daemon
//! registered it, with no gRPC in sight, so that a KubeVirt structured plugin (VEP 190) can
//! call it unchanged. Applying it to its own output changes nothing.

use std::path::{Path, PathBuf};

use quick_xml::events::Event;
use sockbypass_ctl::VmInfo;

use crate::annotations::{self, AnnotationError, VmiRequest};
use crate::xml::{self, Element, Node, XmlError};

/// libvirt's namespace for QEMU pass-through elements.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";
/// The prefix given to [`QEMU_NS`] when the domain has not declared it.
pub const QEMU_PREFIX: &str = "qemu";
/// The QEMU id of the vhost-user chardev.
pub const CHARDEV_ID: &str = "sockbypass0";
/// The QEMU device model.
pub const DEVICE_MODEL: &str = "vhost-user-vsock-pci";

/// Why a domain cannot be attached.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The domain XML is not XML.
    #[error("cannot read the domain XML")]
    Xml(#[source] XmlError),
    /// The VMI cannot be attached.
    #[error("cannot attach the VMI")]
    Vmi(#[source] AnnotationError),
    /// The root element is not `<domain>`.
    #[error("the domain XML's root element is <{0}>, not <domain>")]
    NotADomain(String),
    /// The domain is not the VMI's.
    #[error("the domain is named `{found}`, but VMI {vmi}'s domain is `{expected}`")]
    WrongDomain {
        /// `namespace/name`.
        vmi: String,
        /// KubeVirt's domain name for the VMI.
        expected: String,
        /// The domain's `<name>`.
        found: String,
    },
    /// The registered VM is not the VMI's.
    #[error("the daemon's VM is `{found}`, but VMI {vmi}'s is `{expected}`")]
    WrongVm {
        /// `namespace/name`.
        vmi: String,
        /// The VM name the VMI maps to.
        expected: String,
        /// The name in the VmInfo.
        found: String,
    },
    /// The domain already has a virtio-vsock device of libvirt's.
    #[error(
        "domain `{domain}` already has a <vsock> device: a guest may have only one virtio-vsock device \
         (is autoattachVSOCK set?)"
    )]
    LibvirtVsock {
        /// The domain's name.
        domain: String,
    },
    /// Another `qemu:commandline` argument adds a vsock device.
    #[error("domain `{domain}` already passes QEMU another vsock device (`{arg}`): a guest may have only one")]
    ForeignVsock {
        /// The domain's name.
        domain: String,
        /// The argument.
        arg: String,
    },
    /// The `qemu` prefix is bound to another namespace.
    #[error("the domain binds prefix `{QEMU_PREFIX}` to `{uri}`, not to {QEMU_NS}")]
    QemuPrefixTaken {
        /// The other namespace.
        uri: String,
    },
    /// A socket path QEMU's option syntax cannot carry.
    #[error("the vhost-user socket path {0} has a `,`, which QEMU's -chardev option cannot carry")]
    SocketPath(PathBuf),
}

/// Checks that the domain XML is the VMI's and can be attached, without changing it, and
/// returns what the VMI asks for. [`attach`] does the same checks; this is for checking
/// before the VM is registered.
pub fn check(domain_xml: &str, vmi_json: &[u8]) -> Result<VmiRequest, DomainError> {
    let request = annotations::parse(vmi_json).map_err(DomainError::Vmi)?;
    let doc = xml::parse(domain_xml).map_err(DomainError::Xml)?;
    check_domain(&doc.root, &request)?;
    qemu_prefix(&doc.root)?;
    Ok(request)
}

/// The socket path QEMU opens: the daemon's path for `vm`, or the same file name in
/// `qemu_socket_dir` when QEMU sees the directory somewhere else.
pub fn qemu_socket(vm: &VmInfo, qemu_socket_dir: Option<&Path>) -> PathBuf {
    match (qemu_socket_dir, vm.socket.file_name()) {
        (Some(dir), Some(file)) => dir.join(file),
        _ => vm.socket.clone(),
    }
}

/// Returns `domain_xml` changed so that the guest gets the vhost-user-vsock device of `vm`
/// (the VM the daemon registered for the VMI of `vmi_json`), its memory shared with the
/// daemon. `qemu_socket_dir` is the socket directory as QEMU sees it, when that differs from
/// the daemon's. Applying it to its own output returns the same text.
pub fn attach(
    domain_xml: &str,
    vmi_json: &[u8],
    vm: &VmInfo,
    qemu_socket_dir: Option<&Path>,
) -> Result<String, DomainError> {
    let request = annotations::parse(vmi_json).map_err(DomainError::Vmi)?;
    if vm.name != request.vm_name() {
        return Err(DomainError::WrongVm {
            vmi: request.display(),
            expected: request.vm_name(),
            found: vm.name.clone(),
        });
    }
    let socket = qemu_socket(vm, qemu_socket_dir);
    let socket_text = socket.to_string_lossy();
    if socket_text.contains(',') {
        return Err(DomainError::SocketPath(socket));
    }
    let mut doc = xml::parse(domain_xml).map_err(DomainError::Xml)?;
    let domain = &mut doc.root;
    check_domain(domain, &request)?;
    let prefix = match qemu_prefix(domain)? {
        Some(prefix) => prefix,
        None => {
            domain.set_attr(&format!("xmlns:{QEMU_PREFIX}"), QEMU_NS);
            QEMU_PREFIX.to_owned()
        }
    };
    share_memory(domain);
    add_device(domain, &prefix, &socket_text);
    doc.write().map_err(DomainError::Xml)
}

/// The root is a `<domain>` named as KubeVirt names the VMI's, with no libvirt vsock device
/// and no other vsock device passed to QEMU.
fn check_domain(domain: &Element, request: &VmiRequest) -> Result<(), DomainError> {
    if domain.name != "domain" {
        return Err(DomainError::NotADomain(domain.name.clone()));
    }
    let name = domain.child("name").map(Element::text).unwrap_or_default();
    if name != request.domain_name() {
        return Err(DomainError::WrongDomain {
            vmi: request.display(),
            expected: request.domain_name(),
            found: name,
        });
    }
    if domain
        .child("devices")
        .is_some_and(|d| d.child("vsock").is_some())
    {
        return Err(DomainError::LibvirtVsock { domain: name });
    }
    if let Some(prefix) = qemu_prefix(domain)? {
        if let Some(cmdline) = domain.child(&format!("{prefix}:commandline")) {
            let arg = format!("{prefix}:arg");
            for value in cmdline
                .elements()
                .filter(|e| e.name == arg)
                .filter_map(|e| e.attr("value"))
            {
                let vsock =
                    value.starts_with("vhost-user-vsock") || value.starts_with("vhost-vsock");
                if vsock && !is_our_device(value) {
                    return Err(DomainError::ForeignVsock {
                        domain: name,
                        arg: value.to_owned(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The prefix the domain binds to [`QEMU_NS`], if any.
fn qemu_prefix(domain: &Element) -> Result<Option<String>, DomainError> {
    if let Some((name, _)) = domain.attrs.iter().find(|(_, uri)| uri == QEMU_NS) {
        if let Some(prefix) = name.strip_prefix("xmlns:") {
            return Ok(Some(prefix.to_owned()));
        }
    }
    match domain.attr(&format!("xmlns:{QEMU_PREFIX}")) {
        Some(uri) => Err(DomainError::QemuPrefixTaken {
            uri: uri.to_owned(),
        }),
        None => Ok(None),
    }
}

/// Makes guest memory shareable: `<memoryBacking>` gets a memfd `<source>` (a `file` or
/// `memfd` one is kept: both can be shared; `anonymous` cannot) and `<access mode='shared'/>`.
fn share_memory(domain: &mut Element) {
    if domain.child("memoryBacking").is_none() {
        // After <memory>/<currentMemory>, where people look for it.
        let anchor = ["currentMemory", "memory"]
            .iter()
            .find_map(|n| domain.position(n))
            .map_or(Anchor::End, Anchor::After);
        insert(domain, anchor, Element::new("memoryBacking"));
    }
    let Some(backing) = domain.child_mut("memoryBacking") else {
        return;
    };
    match backing.child_mut("source") {
        Some(source) => {
            if !matches!(source.attr("type"), Some("memfd" | "file")) {
                source.set_attr("type", "memfd");
            }
        }
        None => {
            insert(
                backing,
                Anchor::End,
                Element::new("source").with_attr("type", "memfd"),
            );
        }
    }
    match backing.child_mut("access") {
        Some(access) => access.set_attr("mode", "shared"),
        None => {
            let anchor = backing
                .position("source")
                .map_or(Anchor::End, Anchor::After);
            insert(
                backing,
                anchor,
                Element::new("access").with_attr("mode", "shared"),
            );
        }
    }
}

/// Whether a `-device` value is the one [`add_device`] writes.
fn is_our_device(value: &str) -> bool {
    device_value() == value
}

/// The `-device` value.
fn device_value() -> String {
    format!("{DEVICE_MODEL},chardev={CHARDEV_ID}")
}

/// Adds (or updates in place) the `-chardev` and `-device` arguments in the domain's
/// `<qemu:commandline>`.
fn add_device(domain: &mut Element, prefix: &str, socket: &str) {
    let cmdline_name = format!("{prefix}:commandline");
    let arg_name = format!("{prefix}:arg");
    if domain.child(&cmdline_name).is_none() {
        insert(domain, Anchor::End, Element::new(cmdline_name.as_str()));
    }
    let Some(cmdline) = domain.child_mut(&cmdline_name) else {
        return;
    };
    let chardev_prefix = format!("socket,id={CHARDEV_ID},");
    let wanted = [
        ("-chardev", format!("{chardev_prefix}path={socket}")),
        ("-device", device_value()),
    ];
    for (option, value) in wanted {
        let ours = |v: &str| match option {
            "-chardev" => v.starts_with(&chardev_prefix),
            _ => is_our_device(v),
        };
        let found = cmdline.children.iter_mut().find_map(|n| match n {
            Node::Element(e) if e.name == arg_name && e.attr("value").is_some_and(ours) => Some(e),
            _ => None,
        });
        match found {
            Some(arg) => arg.set_attr("value", &value),
            None => {
                for v in [option, value.as_str()] {
                    insert(
                        cmdline,
                        Anchor::End,
                        Element::new(arg_name.as_str()).with_attr("value", v),
                    );
                }
            }
        }
    }
}

/// Where [`insert`] puts an element.
#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// After the child at this index of `children`.
    After(usize),
    /// After the last child element (at the end when there is none).
    End,
}

/// Inserts `element` into `parent` at `anchor`, preceded by a copy of the indentation of the
/// parent's first child element when the parent is indented, so that the output stays
/// readable.
fn insert(parent: &mut Element, anchor: Anchor, element: Element) {
    let last_element = parent
        .children
        .iter()
        .rposition(|n| matches!(n, Node::Element(_)));
    let index = match anchor {
        Anchor::After(i) => Some(i + 1),
        Anchor::End => last_element.map(|i| i + 1),
    };
    let indent = match parent.children.first() {
        Some(node @ Node::Other(Event::Text(t))) if t.trim().is_empty() => Some(node.clone()),
        _ => None,
    };
    match (index, indent) {
        (Some(i), Some(indent)) => {
            parent
                .children
                .splice(i..i, [indent, Node::Element(element)]);
        }
        (Some(i), None) => parent.children.insert(i, Node::Element(element)),
        (None, _) => parent.children.push(Node::Element(element)),
    }
}
