//! Registering a VMI's VM with the node's sockbypassd over its control socket (`vm_add`),
//! idempotently: a VM of the same name with the same settings is taken as already registered
//! (virt-launcher may call the hook again), one with other settings is an error. And removing
//! it (`vm_remove`) when virt-launcher is done with the VM.

use std::path::{Path, PathBuf};

use sockbypass_ctl::{Answer, Client, ClientError, ErrorKind, Request, VmInfo};

use crate::annotations::VmiRequest;

/// Why a VM could not be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The socket directory cannot be written into a VM spec.
    #[error("the socket directory {0} has a `,`, which a VM spec cannot carry")]
    SocketDir(PathBuf),
    /// The daemon could not be reached or refused the request.
    #[error("registering VM `{vm}` with sockbypassd failed")]
    Control {
        /// The VM's name.
        vm: String,
        /// Cause.
        #[source]
        source: ClientError,
    },
    /// Another VM of the node has the CID asked for.
    #[error(
        "VM `{vm}`: CID {cid} (annotation sockbypass.io/cid) is taken on this node: {message}"
    )]
    CidInUse {
        /// The VM's name.
        vm: String,
        /// The CID asked for.
        cid: u64,
        /// The daemon's message.
        message: String,
    },
    /// A VM of this name is registered with other settings.
    #[error("VM `{vm}` is already registered with sockbypassd with other settings: {differences}")]
    Conflict {
        /// The VM's name.
        vm: String,
        /// What differs, `field: registered X, asked Y; ...`.
        differences: String,
    },
    /// The daemon answered with something that is not an answer to the request.
    #[error("sockbypassd answered `{request}` for VM `{vm}` with {answer}")]
    UnexpectedAnswer {
        /// The VM's name.
        vm: String,
        /// The request's op.
        request: &'static str,
        /// The answer, debug-printed.
        answer: String,
    },
}

/// The daemon's socket path for `request`'s VM: `SOCKET_DIR/NAMESPACE.NAME.sock`.
pub fn socket_path(socket_dir: &Path, request: &VmiRequest) -> PathBuf {
    socket_dir.join(format!("{}.sock", request.vm_name()))
}

/// The `vm_add` spec for `request`:
/// `name=NS.NAME,socket=DIR/NS.NAME.sock,groups=a+b[,cid=N][,ports=p1+p2]`.
pub fn spec(socket_dir: &Path, request: &VmiRequest) -> Result<String, RegisterError> {
    let socket = socket_path(socket_dir, request);
    let socket = socket.to_str().filter(|s| !s.contains(','));
    let Some(socket) = socket else {
        return Err(RegisterError::SocketDir(socket_dir.to_owned()));
    };
    let mut spec = format!(
        "name={},socket={socket},groups={}",
        request.vm_name(),
        request.groups.join("+")
    );
    if let Some(cid) = request.cid {
        spec.push_str(&format!(",cid={cid}"));
    }
    if let Some(ports) = &request.ports {
        let ports: Vec<String> = ports.iter().map(u32::to_string).collect();
        spec.push_str(&format!(",ports={}", ports.join("+")));
    }
    Ok(spec)
}

/// Registers `request`'s VM with the daemon at `control`, its socket in `socket_dir`, and
/// returns the VM as the daemon serves it (with its CID). When a VM of that name is already
/// there with the same socket, groups, ports and (when asked for) CID, that VM is returned.
pub fn register(
    control: &Path,
    socket_dir: &Path,
    request: &VmiRequest,
) -> Result<VmInfo, RegisterError> {
    let vm = request.vm_name();
    let spec = spec(socket_dir, request)?;
    let control_error = |source| RegisterError::Control {
        vm: vm.clone(),
        source,
    };
    let mut client = Client::connect(control).map_err(control_error)?;
    match client.call(&Request::VmAdd { spec }) {
        Ok(Answer::Added(info)) => {
            tracing::info!(vm = %info.name, cid = info.cid, socket = %info.socket.display(), "registered");
            Ok(info)
        }
        Ok(other) => Err(RegisterError::UnexpectedAnswer {
            vm,
            request: "vm_add",
            answer: format!("{other:?}"),
        }),
        Err(ClientError::Refused(e)) => match (e.kind, request.cid) {
            (ErrorKind::NameInUse, _) => {
                let info = existing(&mut client, &vm)?;
                let differences = differences(&info, socket_dir, request);
                if differences.is_empty() {
                    tracing::info!(vm = %info.name, cid = info.cid, "already registered with the same settings");
                    Ok(info)
                } else {
                    Err(RegisterError::Conflict {
                        vm,
                        differences: differences.join("; "),
                    })
                }
            }
            // The daemon reports a CID conflict only for a CID that was asked for.
            (ErrorKind::CidInUse, Some(cid)) => Err(RegisterError::CidInUse {
                vm,
                cid,
                message: e.message,
            }),
            _ => Err(control_error(ClientError::Refused(e))),
        },
        Err(source) => Err(control_error(source)),
    }
}

/// The registered VM named `vm` (`vm_get`).
fn existing(client: &mut Client, vm: &str) -> Result<VmInfo, RegisterError> {
    let answer = client
        .call(&Request::VmGet {
            name: vm.to_owned(),
        })
        .map_err(|source| RegisterError::Control {
            vm: vm.to_owned(),
            source,
        })?;
    match answer {
        Answer::Vm(info) => Ok(info),
        other => Err(RegisterError::UnexpectedAnswer {
            vm: vm.to_owned(),
            request: "vm_get",
            answer: format!("{other:?}"),
        }),
    }
}

/// Removes VM `vm` from the daemon at `control`: `true` when it was removed, `false` when the
/// daemon had no such VM.
pub fn unregister(control: &Path, vm: &str) -> Result<bool, RegisterError> {
    let control_error = |source| RegisterError::Control {
        vm: vm.to_owned(),
        source,
    };
    let mut client = Client::connect(control).map_err(control_error)?;
    match client.call(&Request::VmRemove {
        name: vm.to_owned(),
    }) {
        Ok(Answer::Removed(_)) => {
            tracing::info!(vm, "removed from sockbypassd");
            Ok(true)
        }
        Ok(other) => Err(RegisterError::UnexpectedAnswer {
            vm: vm.to_owned(),
            request: "vm_remove",
            answer: format!("{other:?}"),
        }),
        Err(ClientError::Refused(e)) if e.kind == ErrorKind::NoSuchVm => Ok(false),
        Err(source) => Err(control_error(source)),
    }
}

/// How a registered VM differs from what `request` asks: one `field: registered X, asked Y`
/// per difference. Groups are compared as sets.
fn differences(info: &VmInfo, socket_dir: &Path, request: &VmiRequest) -> Vec<String> {
    let mut out = Vec::new();
    let socket = socket_path(socket_dir, request);
    if info.socket != socket {
        out.push(format!(
            "socket: registered {}, asked {}",
            info.socket.display(),
            socket.display()
        ));
    }
    let mut registered = info.groups.clone();
    let mut asked = request.groups.clone();
    registered.sort();
    asked.sort();
    if registered != asked {
        out.push(format!(
            "groups: registered {}, asked {}",
            info.groups.join("+"),
            request.groups.join("+")
        ));
    }
    if info.ports != request.ports {
        out.push(format!(
            "ports: registered {:?}, asked {:?}",
            info.ports, request.ports
        ));
    }
    if let Some(cid) = request.cid {
        if info.cid != cid {
            out.push(format!("cid: registered {}, asked {cid}", info.cid));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> VmiRequest {
        VmiRequest {
            namespace: "default".into(),
            name: "vmi-x".into(),
            groups: vec!["db".into(), "web".into()],
            cid: None,
            ports: None,
        }
    }

    #[test]
    fn spec_has_the_daemons_syntax() {
        let dir = Path::new("/var/run/sockbypass");
        assert_eq!(
            spec(dir, &request()).expect("spec"),
            "name=default.vmi-x,socket=/var/run/sockbypass/default.vmi-x.sock,groups=db+web"
        );
        let mut r = request();
        r.cid = Some(7);
        r.ports = Some(vec![22, 80]);
        assert_eq!(
            spec(dir, &r).expect("spec"),
            "name=default.vmi-x,socket=/var/run/sockbypass/default.vmi-x.sock,groups=db+web,cid=7,ports=22+80"
        );
        assert!(matches!(
            spec(Path::new("/a,b"), &r),
            Err(RegisterError::SocketDir(_))
        ));
    }

    #[test]
    fn differences_name_each_field() {
        let dir = Path::new("/d");
        let mut info = VmInfo {
            name: "default.vmi-x".into(),
            cid: 3,
            socket: "/d/default.vmi-x.sock".into(),
            uds: None,
            groups: vec!["web".into(), "db".into()],
            ports: None,
            ips: Vec::new(),
            windows: Vec::new(),
            attached: false,
            origin: sockbypass_ctl::protocol::Origin::Control,
        };
        assert!(differences(&info, dir, &request()).is_empty());
        info.socket = "/other.sock".into();
        info.groups = vec!["db".into()];
        info.ports = Some(vec![1]);
        let mut r = request();
        r.cid = Some(9);
        let d = differences(&info, dir, &r).join("; ");
        for field in ["socket:", "groups:", "ports:", "cid: registered 3, asked 9"] {
            assert!(d.contains(field), "{d}");
        }
    }

    #[test]
    fn an_absent_daemon_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = register(&dir.path().join("control.sock"), dir.path(), &request())
            .expect_err("no daemon");
        assert!(e.to_string().contains("default.vmi-x"));
        let source = std::error::Error::source(&e).expect("source").to_string();
        assert!(
            source.contains("is sockbypassd running with --control"),
            "{source}"
        );
    }
}
