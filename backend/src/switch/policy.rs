//! Who may open a connection to whom (SPEC.md §7): groups and port lists, from the
//! configuration only. Guests cannot change any of it.

use crate::config::VmConfig;

/// Why the policy refused a REQUEST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The two VMs share no group.
    NoSharedGroup,
    /// The destination lists its ports, and this one is not among them.
    PortNotListed,
}

/// The policy facts of one VM.
#[derive(Debug, Clone)]
pub struct VmPolicy {
    groups: Vec<String>,
    ports: Option<Vec<u32>>,
}

impl VmPolicy {
    /// The policy of `vm` as configured.
    pub fn new(vm: &VmConfig) -> Self {
        VmPolicy {
            groups: vm.groups.clone(),
            ports: vm.ports.clone(),
        }
    }

    /// Whether `self` may open a connection to `port` on `dst`.
    pub fn may_connect(&self, dst: &VmPolicy, port: u32) -> Result<(), Refusal> {
        if !self.groups.iter().any(|g| dst.groups.contains(g)) {
            return Err(Refusal::NoSharedGroup);
        }
        match &dst.ports {
            Some(list) if !list.contains(&port) => Err(Refusal::PortNotListed),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(groups: &[&str], ports: Option<&[u32]>) -> VmPolicy {
        VmPolicy {
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ports: ports.map(<[u32]>::to_vec),
        }
    }

    #[test]
    fn shared_group_allows_any_port_without_a_list() {
        let a = policy(&["web", "db"], None);
        let b = policy(&["db"], None);
        assert_eq!(a.may_connect(&b, 1), Ok(()));
        assert_eq!(b.may_connect(&a, 65000), Ok(()));
    }

    #[test]
    fn no_shared_group_is_refused() {
        let a = policy(&["web"], None);
        let b = policy(&["db"], None);
        assert_eq!(a.may_connect(&b, 1), Err(Refusal::NoSharedGroup));
        let none = policy(&[], None);
        assert_eq!(none.may_connect(&none, 1), Err(Refusal::NoSharedGroup));
    }

    #[test]
    fn port_list_limits_the_destination_only() {
        let a = policy(&["g"], Some(&[22]));
        let b = policy(&["g"], Some(&[80, 443]));
        assert_eq!(a.may_connect(&b, 80), Ok(()));
        assert_eq!(a.may_connect(&b, 22), Err(Refusal::PortNotListed));
        assert_eq!(b.may_connect(&a, 22), Ok(()));
    }
}
