//! libvirt domain XML for a VM of `sockbypassd`:
//!
//! - `<memoryBacking>` with a memfd source and shared access, so that libvirt gives QEMU a
//!   shared memfd guest RAM (vhost-user needs it);
//! - `<qemu:commandline>` with the chardev and `vhost-user-vsock-pci` device, and each
//!   fast-path window's `ivshmem-plain`: the arguments of [`super::qemu::device_args`]. libvirt
//!   has no element for a vhost-user vsock device, hence the QEMU namespace, which must be
//!   declared on `<domain>` (`xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'`).
//!
//! [`fragments`] prints the two elements after a comment naming that declaration;
//! [`domain_template`] prints a complete minimal domain with them in place.

use super::qemu::device_args;
use super::xml::{comment, escape};
use super::{GenerateError, MemorySize};
use crate::protocol::VmInfo;

/// The namespace of libvirt's QEMU command-line passthrough.
pub const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// libvirt's domain `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator (TCG).
    Qemu,
}

impl DomainType {
    /// The `type` attribute's value.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainType::Kvm => "kvm",
            DomainType::Qemu => "qemu",
        }
    }
}

/// Options of [`domain_template`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainOptions {
    /// The guest's RAM.
    pub memory: MemorySize,
    /// KVM or TCG.
    pub domain_type: DomainType,
}

/// The `<memoryBacking>` and `<qemu:commandline>` elements, each line indented by `indent`.
fn elements(vm: &VmInfo, indent: &str) -> Result<String, GenerateError> {
    let mut out = String::new();
    let mut line = |depth: usize, text: &str| {
        out.push_str(indent);
        out.push_str(&"  ".repeat(depth));
        out.push_str(text);
        out.push('\n');
    };
    line(0, "<memoryBacking>");
    line(1, "<source type='memfd'/>");
    line(1, "<access mode='shared'/>");
    line(0, "</memoryBacking>");
    line(0, "<qemu:commandline>");
    for arg in device_args(vm)? {
        line(1, &format!("<qemu:arg value='{}'/>", escape(&arg)?));
    }
    line(0, "</qemu:commandline>");
    Ok(out)
}

/// The fragments to put inside `<domain>`, after a comment naming the namespace declaration
/// `<domain>` needs.
pub fn fragments(vm: &VmInfo) -> Result<String, GenerateError> {
    let mut out = comment(&format!(
        "sockbypass: VM {} (CID {}). Put these elements inside <domain>, and declare the \
         QEMU namespace on it: <domain type='kvm' xmlns:qemu='{QEMU_NAMESPACE}'>",
        vm.name, vm.cid
    ));
    out.push('\n');
    out.push_str(&elements(vm, "")?);
    Ok(out)
}

/// A complete minimal domain (q35, one vCPU, no disk) with the fragments in place: a starting
/// point to add disks and NICs to, and what the tests validate with `virt-xml-validate`.
pub fn domain_template(vm: &VmInfo, options: &DomainOptions) -> Result<String, GenerateError> {
    let mut out = format!(
        "<domain type='{}' xmlns:qemu='{QEMU_NAMESPACE}'>\n",
        options.domain_type.as_str()
    );
    out.push_str(&format!("  <name>{}</name>\n", escape(&vm.name)?));
    out.push_str(&format!(
        "  <memory unit='KiB'>{}</memory>\n",
        options.memory.kib()
    ));
    out.push_str("  <vcpu>1</vcpu>\n");
    out.push_str("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n");
    out.push_str(&format!(
        "  {}\n",
        comment(&format!("sockbypass: VM {} (CID {})", vm.name, vm.cid))
    ));
    out.push_str(&elements(vm, "  ")?);
    out.push_str("  <devices>\n    <console type='pty'/>\n  </devices>\n");
    out.push_str("</domain>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{test_vm, test_vm_with_windows};

    #[test]
    fn fragments_of_a_vm_without_windows() {
        let xml = fragments(&test_vm()).expect("xml");
        assert_eq!(
            xml,
            "<!-- sockbypass: VM vm1 (CID 3). Put these elements inside <domain>, and declare \
             the QEMU namespace on it: <domain type='kvm' \
             xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'> -->\n\
             <memoryBacking>\n  <source type='memfd'/>\n  <access mode='shared'/>\n</memoryBacking>\n\
             <qemu:commandline>\n  <qemu:arg value='-chardev'/>\n  \
             <qemu:arg value='socket,id=sbvsock,path=/run/sockbypass/vm1.sock'/>\n  \
             <qemu:arg value='-device'/>\n  \
             <qemu:arg value='vhost-user-vsock-pci,chardev=sbvsock'/>\n</qemu:commandline>\n"
        );
    }

    #[test]
    fn windows_become_ivshmem_arguments() {
        let xml = fragments(&test_vm_with_windows()).expect("xml");
        assert!(xml.contains(
            "  <qemu:arg value='memory-backend-file,id=sbwin1,mem-path=/run/sockbypass/vm1+vm2.window,size=1048576,share=on'/>\n  <qemu:arg value='-device'/>\n  <qemu:arg value='ivshmem-plain,memdev=sbwin1'/>\n"
        ), "{xml}");
        assert_eq!(xml.matches("<qemu:arg ").count(), 12);
    }

    #[test]
    fn paths_are_escaped_and_names_cannot_break_the_comment() {
        let mut vm = test_vm();
        vm.name = "a--b".into();
        vm.socket = "/run/<x>&'y'.sock".into();
        let xml = fragments(&vm).expect("xml");
        assert!(
            xml.starts_with("<!-- sockbypass: VM a- -b (CID 3)."),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<qemu:arg value='socket,id=sbvsock,path=/run/&lt;x&gt;&amp;&apos;y&apos;.sock'/>"
            ),
            "{xml}"
        );
        vm.socket = "/run/\u{1}.sock".into();
        assert!(matches!(
            fragments(&vm),
            Err(GenerateError::NotXml { code: 1, .. })
        ));
    }

    #[test]
    fn the_template_is_a_whole_domain() {
        let options = DomainOptions {
            memory: "512M".parse().expect("size"),
            domain_type: DomainType::Qemu,
        };
        let xml = domain_template(&test_vm(), &options).expect("xml");
        assert!(xml.starts_with(
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n  <name>vm1</name>\n  <memory unit='KiB'>524288</memory>\n"
        ), "{xml}");
        assert!(
            xml.contains("\n  <memoryBacking>\n    <source type='memfd'/>\n"),
            "{xml}"
        );
        assert!(
            xml.contains("\n  <qemu:commandline>\n    <qemu:arg value='-chardev'/>\n"),
            "{xml}"
        );
        assert!(xml.ends_with("</domain>\n"));
    }
}
