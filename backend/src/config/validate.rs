//! Checks on the merged VM list: value rules per VM, uniqueness across VMs, the directories
//! that must hold the sockets, and the fast-path pairs.

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use sockbypass_wire::consts::{CID_ANY, MIN_GUEST_CID};
use sockbypass_wire::fastpath::layout::Geometry;

use super::{
    ConfigError, PairConfig, VmConfig, MAX_CONNS_LIMIT, MAX_HOST_BUFFER_BYTES, MAX_IPS_PER_VM,
    MIN_HOST_BUFFER_BYTES,
};

/// `VMADDR_PORT_ANY`: never a real port.
const PORT_ANY: u32 = u32::MAX;

/// Runs every check, in this order: each VM's own values, uniqueness across VMs, then the
/// filesystem. Returns the first problem found.
pub fn validate(vms: &[VmConfig]) -> Result<(), ConfigError> {
    for vm in vms {
        check_vm(vm)?;
    }
    check_unique(vms)?;
    for vm in vms {
        check_parent_dir(vm, "socket", &vm.socket)?;
        if let Some(uds) = &vm.uds {
            check_parent_dir(vm, "uds", uds)?;
        }
    }
    Ok(())
}

/// Each pair names two different VMs that have `fastpath=on`, at most once (in either order),
/// with a window size the layout takes.
pub fn validate_pairs(vms: &[VmConfig], pairs: &[PairConfig]) -> Result<(), ConfigError> {
    for (i, pair) in pairs.iter().enumerate() {
        let [a, b] = &pair.vms;
        let invalid = |why| ConfigError::InvalidPair {
            a: a.clone(),
            b: b.clone(),
            why,
        };
        if a == b {
            return Err(invalid("a VM cannot pair with itself"));
        }
        for name in [a, b] {
            match vms.iter().find(|vm| vm.name == *name) {
                None => return Err(invalid("no VM has that name")),
                Some(vm) if vm.fastpath_size.is_none() => {
                    return Err(invalid("both VMs need fastpath=on"))
                }
                Some(_) => {}
            }
        }
        let same = |p: &PairConfig| {
            let [c, d] = &p.vms;
            (c == a && d == b) || (c == b && d == a)
        };
        if pairs[..i].iter().any(same) {
            return Err(invalid("given twice"));
        }
        Geometry::new(pair.size).map_err(|source| ConfigError::InvalidPairSize {
            a: a.clone(),
            b: b.clone(),
            source,
        })?;
    }
    Ok(())
}

/// The rules one VM must follow on its own.
fn check_vm(vm: &VmConfig) -> Result<(), ConfigError> {
    let name_ok = !vm.name.is_empty()
        && vm
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(ConfigError::InvalidName {
            name: vm.name.clone(),
        });
    }
    let name = || vm.name.clone();
    match vm.cid {
        cid if cid < MIN_GUEST_CID => return Err(ConfigError::ReservedCid { vm: name(), cid }),
        CID_ANY => {
            return Err(ConfigError::CidAny {
                vm: name(),
                cid: CID_ANY,
            })
        }
        cid if cid > CID_ANY => return Err(ConfigError::CidTooLarge { vm: name(), cid }),
        _ => {}
    }
    if vm.socket.as_os_str().is_empty() {
        return Err(ConfigError::EmptyPath {
            vm: name(),
            key: "socket",
        });
    }
    if vm
        .uds
        .as_ref()
        .is_some_and(|uds| uds.as_os_str().is_empty())
    {
        return Err(ConfigError::EmptyPath {
            vm: name(),
            key: "uds",
        });
    }
    if let Some(group) = vm.groups.iter().find(|g| g.is_empty() || g.contains(',')) {
        return Err(ConfigError::InvalidGroup {
            vm: name(),
            group: group.clone(),
        });
    }
    if let Some(port) = vm.ports.iter().flatten().find(|p| **p == PORT_ANY) {
        return Err(ConfigError::InvalidPort {
            vm: name(),
            port: *port,
        });
    }
    if vm.ips.len() > MAX_IPS_PER_VM {
        return Err(ConfigError::TooManyAddresses {
            vm: name(),
            count: vm.ips.len(),
            max: MAX_IPS_PER_VM,
        });
    }
    for ip in &vm.ips {
        if let Some(kind) = unreachable_kind(*ip) {
            return Err(ConfigError::InvalidAddress {
                vm: name(),
                ip: *ip,
                kind,
            });
        }
    }
    if vm.max_conns == 0 || vm.max_conns > MAX_CONNS_LIMIT {
        return Err(ConfigError::InvalidMaxConns {
            vm: name(),
            max_conns: vm.max_conns,
            max: MAX_CONNS_LIMIT,
        });
    }
    if let Some(per_peer) = vm.max_conns_per_peer {
        if per_peer == 0 || per_peer > vm.max_conns {
            return Err(ConfigError::InvalidMaxConnsPerPeer {
                vm: name(),
                value: per_peer,
                max_conns: vm.max_conns,
            });
        }
    }
    if let Some(size) = vm.fastpath_size {
        Geometry::new(size)
            .map_err(|source| ConfigError::InvalidFastpathSize { vm: name(), source })?;
    }
    if !(MIN_HOST_BUFFER_BYTES..=MAX_HOST_BUFFER_BYTES).contains(&vm.host_buffer_bytes) {
        return Err(ConfigError::InvalidHostBuffer {
            vm: name(),
            value: vm.host_buffer_bytes,
            min: MIN_HOST_BUFFER_BYTES,
            max: MAX_HOST_BUFFER_BYTES,
        });
    }
    Ok(())
}

/// Why no peer could connect to `ip`, if none could.
fn unreachable_kind(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else {
        None
    }
}

/// Names, CIDs, socket paths, uds paths and addresses are unique (an IPv4-mapped IPv6 address
/// is its IPv4 address); no uds path is a socket path.
fn check_unique(vms: &[VmConfig]) -> Result<(), ConfigError> {
    let mut ips: HashMap<IpAddr, &str> = HashMap::new();
    for vm in vms {
        for ip in &vm.ips {
            if let Some(first) = ips.insert(ip.to_canonical(), &vm.name) {
                return Err(ConfigError::DuplicateAddress {
                    ip: *ip,
                    first: first.to_owned(),
                    second: vm.name.clone(),
                });
            }
        }
    }
    let mut names = HashMap::new();
    let mut cids = HashMap::new();
    let mut sockets = HashMap::new();
    let mut udss = HashMap::new();
    for vm in vms {
        if first_owner(&mut names, &vm.name, vm).is_some() {
            return Err(ConfigError::DuplicateName {
                name: vm.name.clone(),
            });
        }
        if let Some(first) = first_owner(&mut cids, &vm.cid, vm) {
            return Err(ConfigError::DuplicateCid {
                cid: vm.cid,
                first,
                second: vm.name.clone(),
            });
        }
        if let Some(first) = first_owner(&mut sockets, &vm.socket, vm) {
            return Err(ConfigError::DuplicateSocket {
                path: vm.socket.clone(),
                first,
                second: vm.name.clone(),
            });
        }
        if let Some(uds) = &vm.uds {
            if let Some(first) = first_owner(&mut udss, uds, vm) {
                return Err(ConfigError::DuplicateUds {
                    path: uds.clone(),
                    first,
                    second: vm.name.clone(),
                });
            }
        }
    }
    for vm in vms {
        if let Some(uds) = &vm.uds {
            if let Some(other) = sockets.get(uds) {
                return Err(ConfigError::UdsIsSocket {
                    vm: vm.name.clone(),
                    path: uds.clone(),
                    other: (*other).to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Records `vm` as the owner of `key`; returns the earlier owner's name if there was one.
fn first_owner<'a, K: Eq + Hash + ?Sized>(
    seen: &mut HashMap<&'a K, &'a str>,
    key: &'a K,
    vm: &'a VmConfig,
) -> Option<String> {
    seen.insert(key, &vm.name).map(str::to_owned)
}

/// The directory that will hold the socket at `path` exists.
fn check_parent_dir(vm: &VmConfig, key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        // `web.sock` is created in the working directory; `/` has no parent.
        _ => Path::new("."),
    };
    let (name, dir_buf) = (vm.name.clone(), dir.to_path_buf());
    Err(match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => ConfigError::NotADirectory {
            vm: name,
            key,
            dir: dir_buf,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => ConfigError::MissingDirectory {
            vm: name,
            key,
            dir: dir_buf,
        },
        Err(source) => ConfigError::DirectoryUnusable {
            vm: name,
            key,
            dir: dir_buf,
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A valid VM whose sockets live in `dir`.
    fn vm(dir: &Path, name: &str, cid: u64) -> VmConfig {
        VmConfig {
            uds: Some(dir.join(format!("{name}.vsock"))),
            groups: vec!["prod".to_owned()],
            ports: Some(vec![0, 22, u32::MAX - 1]),
            ..VmConfig::new(name, cid, dir.join(format!("{name}.sock")))
        }
    }

    fn check(vms: &[VmConfig]) -> ConfigError {
        validate(vms).unwrap_err()
    }

    #[test]
    fn pairs_need_two_known_vms_with_the_fast_path_once() {
        let dir = tempfile::tempdir().unwrap();
        let fast = |name: &str, cid| VmConfig {
            fastpath_size: Some(1 << 20),
            ..vm(dir.path(), name, cid)
        };
        let vms = [fast("a", 3), fast("b", 4), vm(dir.path(), "c", 5)];
        let pair = |a: &str, b: &str, size| PairConfig {
            vms: [a.to_owned(), b.to_owned()],
            size,
        };
        assert!(validate_pairs(&vms, &[pair("a", "b", 1 << 20)]).is_ok());
        for (pairs, message) in [
            (vec![pair("a", "a", 1 << 20)], "pair a+a: a VM cannot pair with itself"),
            (vec![pair("a", "x", 1 << 20)], "pair a+x: no VM has that name"),
            (vec![pair("a", "c", 1 << 20)], "pair a+c: both VMs need fastpath=on"),
            (
                vec![pair("a", "b", 1 << 20), pair("b", "a", 1 << 20)],
                "pair b+a: given twice",
            ),
            (
                vec![pair("a", "b", 5 << 20)],
                "pair a+b: size: window size 5242880 bytes: must be a power of two from 1 MiB to 1 GiB",
            ),
        ] {
            let e = validate_pairs(&vms, &pairs).unwrap_err();
            assert_eq!(e.to_string(), message);
        }
    }

    #[test]
    fn valid_vms_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = vm(dir.path(), "b.2_x-Y", 4_294_967_294);
        b.uds = None;
        b.groups.clear();
        b.ports = None;
        b.max_conns = 1;
        validate(&[vm(dir.path(), "a", 3), b]).unwrap();
    }

    #[test]
    fn relative_socket_in_working_directory_passes() {
        let mut a = vm(Path::new("/"), "a", 3);
        a.socket = PathBuf::from("a.sock");
        a.uds = None;
        validate(&[a]).unwrap();
    }

    #[test]
    fn no_vms_without_a_control_socket() {
        let e = crate::config::DaemonConfig::with_vms(vec![])
            .validate()
            .unwrap_err();
        assert!(matches!(e, ConfigError::NoVms), "{e:?}");
        assert_eq!(
            e.to_string(),
            "no VMs configured: give --vm or --config, or --control to add VMs at run time"
        );
        let with_control = crate::config::DaemonConfig {
            control: Some("/run/sockbypass/control.sock".into()),
            ..crate::config::DaemonConfig::with_vms(vec![])
        };
        with_control.validate().unwrap();
    }

    #[test]
    fn bad_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "we b", "a/b", "a,b", "é"] {
            let mut a = vm(dir.path(), "a", 3);
            a.name = bad.to_owned();
            let e = check(&[a]);
            assert!(
                matches!(&e, ConfigError::InvalidName { name } if name == bad),
                "{e:?}"
            );
        }
    }

    #[test]
    fn reserved_cids() {
        let dir = tempfile::tempdir().unwrap();
        for cid in [0, 1, 2] {
            let e = check(&[vm(dir.path(), "a", cid)]);
            assert!(
                matches!(&e, ConfigError::ReservedCid { vm, cid: c } if vm == "a" && *c == cid),
                "{e:?}"
            );
        }
    }

    #[test]
    fn cid_any() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&[vm(dir.path(), "a", u64::from(u32::MAX))]);
        assert!(
            matches!(&e, ConfigError::CidAny { vm, cid: 4_294_967_295 } if vm == "a"),
            "{e:?}"
        );
        assert!(e.to_string().contains("4294967295"), "{e}");
    }

    #[test]
    fn cid_too_large() {
        let dir = tempfile::tempdir().unwrap();
        for cid in [u64::from(u32::MAX) + 1, u64::MAX] {
            let e = check(&[vm(dir.path(), "a", cid)]);
            assert!(
                matches!(&e, ConfigError::CidTooLarge { vm, cid: c } if vm == "a" && *c == cid),
                "{e:?}"
            );
        }
    }

    fn with_ips(dir: &Path, name: &str, cid: u64, ips: &[&str]) -> VmConfig {
        VmConfig {
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ..vm(dir, name, cid)
        }
    }

    #[test]
    fn addresses_peers_can_reach_pass() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<String> = (1..=MAX_IPS_PER_VM)
            .map(|i| format!("10.1.0.{i}"))
            .collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        validate(&[
            with_ips(dir.path(), "a", 3, &all),
            with_ips(dir.path(), "b", 4, &["192.168.7.4", "fd00::4", "fe80::4"]),
            vm(dir.path(), "c", 5),
        ])
        .unwrap();
    }

    #[test]
    fn addresses_no_peer_can_reach_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (ip, kind) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("127.0.0.53", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let e = check(&[with_ips(dir.path(), "a", 3, &["10.0.0.3", ip])]);
            assert!(
                matches!(&e, ConfigError::InvalidAddress { kind: k, .. } if *k == kind),
                "{ip}: {e:?}"
            );
            assert_eq!(
                e.to_string(),
                format!(
                    "VM `a`: address {ip} in ips is {kind}, not an address peers can connect to"
                )
            );
        }
    }

    #[test]
    fn at_most_sixteen_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<String> = (0..=MAX_IPS_PER_VM)
            .map(|i| format!("10.1.0.{i}"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = check(&[with_ips(dir.path(), "a", 3, &many)]);
        assert_eq!(
            e.to_string(),
            "VM `a`: 17 addresses in ips, at most 16 allowed"
        );
    }

    #[test]
    fn an_address_belongs_to_one_vm() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&[
            with_ips(dir.path(), "a", 3, &["10.0.0.3"]),
            with_ips(dir.path(), "b", 4, &["10.0.0.4", "10.0.0.3"]),
        ]);
        assert_eq!(
            e.to_string(),
            "address 10.0.0.3 is in the ips of both VM `a` and VM `b`"
        );
        // The same address in IPv4-mapped IPv6 form is the same address.
        let e = check(&[
            with_ips(dir.path(), "a", 3, &["10.0.0.3"]),
            with_ips(dir.path(), "b", 4, &["::ffff:10.0.0.3"]),
        ]);
        assert!(matches!(e, ConfigError::DuplicateAddress { .. }), "{e:?}");
        // Twice in one VM.
        let e = check(&[with_ips(dir.path(), "a", 3, &["fd00::3", "fd00::3"])]);
        assert_eq!(
            e.to_string(),
            "address fd00::3 is in the ips of both VM `a` and VM `a`"
        );
    }

    #[test]
    fn duplicate_cid() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(&[
            vm(dir.path(), "a", 3),
            vm(dir.path(), "b", 5),
            vm(dir.path(), "c", 5),
        ]);
        assert!(
            matches!(&e, ConfigError::DuplicateCid { cid: 5, first, second } if first == "b" && second == "c"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "CID 5 is used by both VM `b` and VM `c`");
    }

    #[test]
    fn duplicate_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut second = vm(dir.path(), "a", 4);
        second.socket = dir.path().join("other.sock");
        second.uds = None;
        let e = check(&[vm(dir.path(), "a", 3), second]);
        assert!(
            matches!(&e, ConfigError::DuplicateName { name } if name == "a"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_socket() {
        let dir = tempfile::tempdir().unwrap();
        let a = vm(dir.path(), "a", 3);
        let mut b = vm(dir.path(), "b", 4);
        b.socket = a.socket.clone();
        let e = check(&[a.clone(), b]);
        assert!(
            matches!(&e, ConfigError::DuplicateSocket { path, first, second } if *path == a.socket && first == "a" && second == "b"),
            "{e:?}"
        );
    }

    #[test]
    fn duplicate_uds() {
        let dir = tempfile::tempdir().unwrap();
        let a = vm(dir.path(), "a", 3);
        let mut b = vm(dir.path(), "b", 4);
        b.uds = a.uds.clone();
        let e = check(&[a.clone(), b]);
        assert!(
            matches!(&e, ConfigError::DuplicateUds { path, first, second } if Some(path) == a.uds.as_ref() && first == "a" && second == "b"),
            "{e:?}"
        );
    }

    #[test]
    fn uds_equal_to_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        // Another VM's socket, even if that VM comes later.
        let mut a = vm(dir.path(), "a", 3);
        let b = vm(dir.path(), "b", 4);
        a.uds = Some(b.socket.clone());
        let e = check(&[a, b.clone()]);
        assert!(
            matches!(&e, ConfigError::UdsIsSocket { vm, path, other } if vm == "a" && *path == b.socket && other == "b"),
            "{e:?}"
        );
        // Its own socket.
        let mut c = vm(dir.path(), "c", 5);
        c.uds = Some(c.socket.clone());
        let e = check(&[c]);
        assert!(
            matches!(&e, ConfigError::UdsIsSocket { vm, other, .. } if vm == "c" && other == "c"),
            "{e:?}"
        );
    }

    #[test]
    fn empty_paths() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = vm(dir.path(), "a", 3);
        a.socket = PathBuf::new();
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::EmptyPath { key: "socket", .. }),
            "{e:?}"
        );
        let mut a = vm(dir.path(), "a", 3);
        a.uds = Some(PathBuf::new());
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::EmptyPath { key: "uds", .. }),
            "{e:?}"
        );
    }

    #[test]
    fn missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let mut a = vm(dir.path(), "a", 3);
        a.uds = Some(missing.join("a.vsock"));
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::MissingDirectory { vm, key: "uds", dir } if vm == "a" && *dir == missing),
            "{e:?}"
        );
        assert!(e.to_string().contains(&missing.display().to_string()));

        let mut a = vm(dir.path(), "a", 3);
        a.socket = missing.join("a.sock");
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::MissingDirectory { key: "socket", dir, .. } if *dir == missing),
            "{e:?}"
        );
    }

    #[test]
    fn parent_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let mut a = vm(dir.path(), "a", 3);
        a.socket = file.join("a.sock");
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::NotADirectory { key: "socket", dir, .. } if *dir == file),
            "{e:?}"
        );
    }

    #[test]
    fn bad_groups() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "a,b"] {
            let mut a = vm(dir.path(), "a", 3);
            a.groups.push(bad.to_owned());
            let e = check(&[a]);
            assert!(
                matches!(&e, ConfigError::InvalidGroup { vm, group } if vm == "a" && group == bad),
                "{e:?}"
            );
        }
    }

    #[test]
    fn port_any() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = vm(dir.path(), "a", 3);
        a.ports = Some(vec![22, u32::MAX]);
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::InvalidPort { vm, port: u32::MAX } if vm == "a"),
            "{e:?}"
        );
    }

    #[test]
    fn zero_max_conns() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = vm(dir.path(), "a", 3);
        a.max_conns = 0;
        let e = check(&[a]);
        assert!(
            matches!(&e, ConfigError::InvalidMaxConns { vm, max_conns: 0, .. } if vm == "a"),
            "{e:?}"
        );
    }
}
