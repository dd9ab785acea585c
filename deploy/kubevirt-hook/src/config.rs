//! The hook's command line and the settings it yields.

use std::path::PathBuf;

use clap::Parser;

/// The callback API versions the hook serves, in the order announced.
pub const VERSIONS: [&str; 2] = ["v1alpha2", "v1alpha3"];

/// `sockbypass-kubevirt-hook`: KubeVirt hook sidecar attaching VMIs to the node's sockbypassd.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sockbypass-kubevirt-hook",
    disable_version_flag = true,
    about = "KubeVirt hook sidecar: gives a VMI a vhost-user-vsock device served by the node's sockbypassd",
    long_about = "KubeVirt hook sidecar: gives a VMI a vhost-user-vsock device served by the node's \
sockbypassd.\n\nOn OnDefineDomain it reads the VMI's annotations sockbypass.io/groups (required, `a,b` or \
`a+b`), sockbypass.io/cid and sockbypass.io/ports (optional), registers the VM NAMESPACE.NAME with the \
daemon through its control socket, and adds shared memfd guest memory and the vhost-user-vsock-pci device \
to the domain XML. It serves KubeVirt's hook API v1alpha2 and v1alpha3 on HOOK_DIR/SOCKET_NAME."
)]
pub struct Args {
    /// The directory in which the daemon creates each VM's vhost-user socket
    /// (NAMESPACE.NAME.sock), as the daemon sees it.
    #[arg(long, value_name = "DIR", default_value = "/var/run/sockbypass")]
    pub socket_dir: PathBuf,
    /// The same directory as QEMU in the compute container sees it, when it is mounted at
    /// another path there (default: the same as --socket-dir).
    #[arg(long, value_name = "DIR")]
    pub qemu_socket_dir: Option<PathBuf>,
    /// The daemon's control socket (`sockbypassd --control`).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/var/run/sockbypass/control.sock"
    )]
    pub control: PathBuf,
    /// The directory virt-launcher looks for hook sockets in.
    #[arg(long, value_name = "DIR", default_value = "/var/run/kubevirt-hooks")]
    pub hook_dir: PathBuf,
    /// The hook socket's file name in --hook-dir.
    #[arg(long, value_name = "NAME", default_value = "sockbypass.sock")]
    pub socket_name: String,
    /// The hook's name, announced to virt-launcher.
    #[arg(long, value_name = "NAME", default_value = "sockbypass")]
    pub name: String,
    /// The OnDefineDomain priority (hooks with a higher one run first).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i32,
    /// Announce only this callback API version (KubeVirt's sidecar examples pass
    /// `--version v1alpha2`); both are announced by default.
    #[arg(long, value_name = "VERSION", value_parser = clap::builder::PossibleValuesParser::new(VERSIONS))]
    pub version: Option<String>,
}

/// What the gRPC service needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The daemon's control socket.
    pub control: PathBuf,
    /// The VM socket directory, as the daemon sees it.
    pub socket_dir: PathBuf,
    /// The VM socket directory as QEMU sees it, if elsewhere.
    pub qemu_socket_dir: Option<PathBuf>,
    /// The hook's name.
    pub name: String,
    /// The OnDefineDomain priority.
    pub priority: i32,
    /// The versions announced.
    pub versions: Vec<String>,
}

impl Settings {
    /// The default settings with the control socket and the socket directory given (tests,
    /// plugins).
    pub fn new(control: impl Into<PathBuf>, socket_dir: impl Into<PathBuf>) -> Settings {
        Settings {
            control: control.into(),
            socket_dir: socket_dir.into(),
            qemu_socket_dir: None,
            name: "sockbypass".into(),
            priority: 0,
            versions: VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

impl Args {
    /// The hook socket: `--hook-dir/--socket-name`.
    pub fn hook_socket(&self) -> PathBuf {
        self.hook_dir.join(&self.socket_name)
    }

    /// The service's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            control: self.control.clone(),
            socket_dir: self.socket_dir.clone(),
            qemu_socket_dir: self.qemu_socket_dir.clone(),
            name: self.name.clone(),
            priority: self.priority,
            versions: match &self.version {
                Some(v) => vec![v.clone()],
                None => VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubevirts_and_the_daemons_paths() {
        let args = Args::parse_from(["hook"]);
        assert_eq!(
            args.hook_socket(),
            PathBuf::from("/var/run/kubevirt-hooks/sockbypass.sock")
        );
        let s = args.settings();
        assert_eq!(
            s,
            Settings::new("/var/run/sockbypass/control.sock", "/var/run/sockbypass")
        );
    }

    #[test]
    fn version_narrows_what_is_announced() {
        let args = Args::parse_from(["hook", "--version", "v1alpha2", "--priority", "-5"]);
        assert_eq!(args.settings().versions, ["v1alpha2"]);
        assert_eq!(args.settings().priority, -5);
        assert!(Args::try_parse_from(["hook", "--version", "v1"]).is_err());
    }
}
