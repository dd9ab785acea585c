//! What the control socket answers about the VMs: a VM's [`VmInfo`] (`vm_list`, `vm_get`) and
//! the counters of every VM and poll thread (`stats`).

use sockbypass_ctl::protocol::{ControlError, CounterMap, Stats, VmInfo, VmStats};

use super::vm_set::{no_such_vm, VmSet};

/// Counters as a name → value map.
fn counter_map(pairs: Vec<(&'static str, u64)>) -> CounterMap {
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

impl VmSet {
    /// Every VM, in the order they were added.
    pub fn list(&self) -> Vec<VmInfo> {
        self.snapshot()
            .into_iter()
            .map(|(config, index, origin)| VmInfo {
                attached: self.switch.vm(index).is_some_and(|vm| vm.is_attached()),
                windows: self.windows_of(&config.name),
                name: config.name,
                cid: config.cid,
                socket: config.socket,
                uds: config.uds,
                groups: config.groups,
                ports: config.ports,
                ips: config.ips,
                origin,
            })
            .collect()
    }

    /// The VM named `name`.
    pub fn get(&self, name: &str) -> Result<VmInfo, ControlError> {
        self.list()
            .into_iter()
            .find(|vm| vm.name == name)
            .ok_or_else(|| no_such_vm(name))
    }

    /// The counters and gauges of every VM, and every poll thread's counters.
    pub fn stats(&self) -> Stats {
        let vms = self
            .snapshot()
            .into_iter()
            .filter_map(|(config, index, _)| {
                let vm = self.switch.vm(index)?;
                let gauges = self.switch.gauges(&config.name).unwrap_or_default();
                Some(VmStats {
                    name: config.name.clone(),
                    cid: config.cid,
                    counters: counter_map(vm.counters.snapshot().pairs()),
                    gauges: counter_map(gauges.pairs()),
                    fastpath: self
                        .fastpath_counters
                        .get(&config.name)
                        .map(|c| counter_map(c.snapshot().pairs())),
                })
            })
            .collect();
        let poll_threads = self
            .poll_counters
            .get()
            .map(|threads| {
                threads
                    .iter()
                    .map(|c| counter_map(c.snapshot().pairs()))
                    .collect()
            })
            .unwrap_or_default();
        Stats { vms, poll_threads }
    }
}
