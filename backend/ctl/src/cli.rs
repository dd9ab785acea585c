//! The `clap` command line of `sockbypass`.

use std::path::PathBuf;

use crate::generate::MemorySize;

/// Where `sockbypassd --control` listens unless told otherwise.
pub const DEFAULT_CONTROL: &str = "/run/sockbypass/control.sock";

/// Text shown after the commands in `--help`.
const AFTER_HELP: &str = "\
EXAMPLES:
  sockbypass vm add name=web,socket=/run/sockbypass/web.sock,groups=prod
  sockbypass vm list
  eval \"qemu-system-x86_64 $(sockbypass qemu-args web --memory 2G) -kernel ...\"
  mapfile -t args < <(sockbypass qemu-args web --one-per-line); qemu-system-x86_64 \"${args[@]}\" ...
  sockbypass libvirt-xml web --domain-template > web.xml

Exit status: 0 done, 1 the daemon refused or could not be reached, 2 usage error.";

/// Command line of `sockbypass`.
#[derive(clap::Parser, Debug, Clone, PartialEq, Eq)]
#[command(
    name = "sockbypass",
    version,
    about = "Control a running sockbypassd, and print what QEMU, cloud-hypervisor or libvirt need to attach a VM to it",
    after_help = AFTER_HELP,
    // A missing command is a usage error (one line, status 2), not a help page.
    arg_required_else_help = false
)]
pub struct Cli {
    /// The daemon's control socket (sockbypassd --control)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "SOCKBYPASS_CONTROL",
        default_value = DEFAULT_CONTROL
    )]
    pub control: PathBuf,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Add, remove or list VMs
    #[command(arg_required_else_help = false)]
    Vm {
        /// What to do with VMs.
        #[command(subcommand)]
        command: VmCommand,
    },
    /// The counters of every VM and every poll thread (readable: the non-zero ones)
    Stats {
        /// One JSON object instead
        #[arg(long)]
        json: bool,
    },
    /// Re-read the daemon's configuration file and apply the difference (as SIGHUP does)
    Reload {
        /// The daemon's report as JSON
        #[arg(long)]
        json: bool,
    },
    /// Print the QEMU arguments that attach VM NAME: shared memfd RAM, the vhost-user-vsock-pci device, and an ivshmem-plain device per fast-path window
    QemuArgs(QemuArgs),
    /// Print the cloud-hypervisor arguments that attach VM NAME: --memory shared=on and --generic-vhost-user
    ChArgs(ChArgs),
    /// Print the libvirt domain XML that attaches VM NAME: <memoryBacking> and <qemu:commandline>
    LibvirtXml(LibvirtXml),
}

/// `sockbypass vm ...`.
#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VmCommand {
    /// Add a VM: name=NAME,socket=PATH[,cid=CID][,groups=G1+G2][,ports=P1+P2][,ips=IP1+IP2][,uds=PATH]... (the keys of sockbypassd --vm; without cid the daemon picks the lowest free one)
    Add {
        /// The VM's spec
        #[arg(value_name = "SPEC")]
        spec: String,
        /// The VM added, as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove a VM: its socket closes and its peers' connections get an RST
    Remove {
        /// The VM's name
        #[arg(value_name = "NAME")]
        name: String,
        /// The name removed, as JSON
        #[arg(long)]
        json: bool,
    },
    /// List the VMs
    List {
        /// A JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
}

/// `sockbypass qemu-args`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct QemuArgs {
    /// The VM's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Guest RAM (the memfd backend's size): digits and K, M or G
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    pub memory: MemorySize,
    /// One raw argument per line (for `mapfile -t`) instead of one shell-quoted line
    #[arg(long, conflicts_with = "json")]
    pub one_per_line: bool,
    /// A JSON array of the arguments
    #[arg(long)]
    pub json: bool,
}

/// `sockbypass ch-args`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct ChArgs {
    /// The VM's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Guest RAM: digits and K, M or G
    #[arg(long, value_name = "SIZE", default_value = "1G")]
    pub memory: MemorySize,
    /// Write device_type=vsock (cloud-hypervisor v53 and later) instead of virtio_id=vsock (v52; deprecated from v53)
    #[arg(long)]
    pub device_type_key: bool,
    /// One raw argument per line (for `mapfile -t`) instead of one shell-quoted line
    #[arg(long, conflicts_with = "json")]
    pub one_per_line: bool,
    /// A JSON array of the arguments
    #[arg(long)]
    pub json: bool,
}

/// `sockbypass libvirt-xml`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct LibvirtXml {
    /// The VM's name
    #[arg(value_name = "NAME")]
    pub name: String,
    /// A complete minimal domain with the fragments in place, instead of the fragments alone
    #[arg(long)]
    pub domain_template: bool,
    /// The template's guest RAM: digits and K, M or G
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "1G",
        requires = "domain_template"
    )]
    pub memory: MemorySize,
    /// The template's domain type
    #[arg(long, value_enum, default_value = "kvm", requires = "domain_template")]
    pub domain_type: DomainTypeArg,
}

/// `--domain-type`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainTypeArg {
    /// Hardware virtualisation
    Kvm,
    /// QEMU's emulator (TCG)
    Qemu,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn control_defaults_and_is_global() {
        let cli = Cli::try_parse_from(["sockbypass", "vm", "list"]).expect("parses");
        // SOCKBYPASS_CONTROL may be set where the tests run; only the explicit value is checked.
        let _ = cli.control;
        let cli = Cli::try_parse_from(["sockbypass", "vm", "list", "--control", "/x.sock"])
            .expect("parses");
        assert_eq!(cli.control, PathBuf::from("/x.sock"));
        assert_eq!(
            cli.command,
            Command::Vm {
                command: VmCommand::List { json: false }
            }
        );
    }

    #[test]
    fn generator_options() {
        let cli = Cli::try_parse_from(["sockbypass", "qemu-args", "vm1", "--memory", "2G"])
            .expect("parses");
        let Command::QemuArgs(q) = cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(q.memory.to_string(), "2G");
        assert!(!q.one_per_line);
        assert!(Cli::try_parse_from(["sockbypass", "qemu-args", "vm1", "--memory", "2g"]).is_err());
        assert!(Cli::try_parse_from([
            "sockbypass",
            "qemu-args",
            "vm1",
            "--json",
            "--one-per-line"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["sockbypass", "libvirt-xml", "vm1", "--memory", "2G"]).is_err(),
            "--memory without --domain-template does nothing, so it is refused"
        );
    }
}
