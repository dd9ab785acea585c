//! [`VmSet`]: the VMs the daemon serves now, each with its vhost-user server thread, and the
//! two changes to it: adding a VM and removing one (SPEC.md §14.3).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use sockbypass_ctl::protocol::{ControlError, ErrorKind, Origin, WindowInfo};

use crate::config::{ConfigError, DaemonConfig, VmConfig};
use crate::device::server::{self, ServerControl};
use crate::fastpath::{pair_window_path, window_path};
use crate::metrics::FastPathCounters;
use crate::poll::PollCounters;
use crate::seccomp::ThreadFilter;
use crate::switch::{Switch, SwitchPort};

/// One VM being served.
#[derive(Debug)]
pub(super) struct RunningVm {
    pub(super) config: VmConfig,
    /// Its switch index.
    pub(super) index: usize,
    pub(super) origin: Origin,
    server: ServerControl,
    thread: Option<JoinHandle<()>>,
}

/// The VMs the daemon serves, and what it needs to add more.
#[derive(Debug)]
pub struct VmSet {
    pub(super) switch: Arc<Switch>,
    filter: ThreadFilter,
    /// In the order they were added. Held while a VM is added or removed, so changes happen one
    /// at a time.
    vms: Mutex<Vec<RunningVm>>,
    /// The configuration last applied (at start, or by the last reload).
    pub(super) applied: Mutex<DaemonConfig>,
    /// Each fast-path VM's windows (fixed at start: only configured VMs have the fast path).
    windows: HashMap<String, Vec<WindowInfo>>,
    /// Each fast-path VM's counters (fixed at start).
    pub(super) fastpath_counters: HashMap<String, Arc<FastPathCounters>>,
    /// Every poll thread's counters, once the engine started.
    pub(super) poll_counters: OnceLock<Vec<Arc<PollCounters>>>,
}

/// Locks `m`, going on with the data of a thread that panicked while holding it (the daemon
/// stops on any panic, [`crate::failure`]).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The control protocol's kind for a configuration problem of a VM added at run time.
pub(super) fn config_error(e: &ConfigError) -> ControlError {
    let kind = match e {
        ConfigError::DuplicateName { .. } => ErrorKind::NameInUse,
        ConfigError::DuplicateCid { .. } => ErrorKind::CidInUse,
        ConfigError::DuplicateSocket { .. }
        | ConfigError::DuplicateUds { .. }
        | ConfigError::UdsIsSocket { .. } => ErrorKind::PathInUse,
        ConfigError::DuplicateAddress { .. } => ErrorKind::IpInUse,
        _ => ErrorKind::InvalidConfig,
    };
    ControlError::new(kind, crate::error_chain(e))
}

impl VmSet {
    /// The VM set of a daemon whose switch already holds the VMs of `config` (at switch indices
    /// 0, 1, ... in configuration order); their servers are started by
    /// [`VmSet::start_configured`].
    pub fn new(
        switch: Arc<Switch>,
        filter: ThreadFilter,
        config: &DaemonConfig,
        fastpath_counters: Vec<Arc<FastPathCounters>>,
    ) -> VmSet {
        let mut windows: HashMap<String, Vec<WindowInfo>> = HashMap::new();
        for vm in &config.vms {
            if let Some(size) = vm.fastpath_size {
                windows
                    .entry(vm.name.clone())
                    .or_default()
                    .push(WindowInfo {
                        path: window_path(&vm.socket, &vm.name),
                        size,
                        pair_with: None,
                    });
            }
        }
        for pair in &config.pairs {
            let [a, b] = &pair.vms;
            let Some(first) = config.vms.iter().find(|vm| &vm.name == a) else {
                continue;
            };
            let path = pair_window_path(&first.socket, a, b);
            for (me, other) in [(a, b), (b, a)] {
                windows.entry(me.clone()).or_default().push(WindowInfo {
                    path: path.clone(),
                    size: pair.size,
                    pair_with: Some(other.clone()),
                });
            }
        }
        let fastpath_counters = config
            .vms
            .iter()
            .map(|vm| vm.name.clone())
            .zip(fastpath_counters)
            .filter(|(name, _)| windows.contains_key(name))
            .collect();
        VmSet {
            switch,
            filter,
            vms: Mutex::new(Vec::new()),
            applied: Mutex::new(config.clone()),
            windows,
            fastpath_counters,
            poll_counters: OnceLock::new(),
        }
    }

    /// Starts the server threads of the configured VMs on the sockets bound at start-up
    /// (`listeners`, in configuration order; the switch gave them indices 0, 1, ...).
    pub fn start_configured(
        &self,
        config: &DaemonConfig,
        listeners: Vec<vhost::vhost_user::Listener>,
    ) -> Result<(), std::io::Error> {
        let mut vms = lock(&self.vms);
        for (index, (vm, listener)) in config.vms.iter().zip(listeners).enumerate() {
            vms.push(self.serve(vm.clone(), index, Origin::Config, listener)?);
        }
        Ok(())
    }

    /// Starts the server thread of `config`, already at switch index `index`.
    fn serve(
        &self,
        config: VmConfig,
        index: usize,
        origin: Origin,
        listener: vhost::vhost_user::Listener,
    ) -> Result<RunningVm, std::io::Error> {
        let control = ServerControl::new()?;
        let port = SwitchPort::new(&self.switch, index).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the switch has no such VM")
        })?;
        let name = format!("vm-{}", config.name);
        let (failure, ctl, filter, thread, vm_name) = (
            self.switch.failure().clone(),
            control.clone(),
            self.filter.clone(),
            name.clone(),
            config.name.clone(),
        );
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            failure.guard(&thread, || {
                server::serve(port, &vm_name, listener, ctl, &filter);
            });
        })?;
        tracing::info!(vm = %config.name, cid = config.cid, socket = %config.socket.display(), ?origin, "serving");
        Ok(RunningVm {
            config,
            index,
            origin,
            server: control,
            thread: Some(handle),
        })
    }

    /// The lowest CID (3 or more) no VM has.
    fn free_cid(vms: &[RunningVm]) -> Option<u64> {
        (3..u64::from(u32::MAX)).find(|cid| vms.iter().all(|vm| vm.config.cid != *cid))
    }

    /// Adds VM `spec` (the syntax of `--vm`; without `cid`, the lowest free CID): checks it
    /// against the VMs served, binds its sockets and starts serving it. Nothing changes when
    /// it fails.
    pub fn add_spec(&self, spec: &str, origin: Origin) -> Result<VmConfig, ControlError> {
        let has_cid = spec
            .split(',')
            .any(|item| item.split_once('=').is_some_and(|(k, _)| k.trim() == "cid"));
        let spec = if has_cid {
            spec.to_owned()
        } else {
            let vms = lock(&self.vms);
            let cid = Self::free_cid(&vms)
                .ok_or_else(|| ControlError::new(ErrorKind::Exhausted, "no free CID is left"))?;
            format!("{spec},cid={cid}")
        };
        let config = VmConfig::from_spec(&spec).map_err(|e| config_error(&e))?;
        self.add(config, origin)
    }

    /// Adds `config`, checked against the VMs served.
    pub(super) fn add(&self, config: VmConfig, origin: Origin) -> Result<VmConfig, ControlError> {
        let mut vms = lock(&self.vms);
        let mut all: Vec<VmConfig> = vms.iter().map(|vm| vm.config.clone()).collect();
        all.push(config.clone());
        crate::config::check_vms(&all).map_err(|e| config_error(&e))?;
        if config.fastpath_size.is_some() {
            return Err(ControlError::new(
                ErrorKind::InvalidConfig,
                format!(
                    "VM `{}`: fastpath=on is for VMs configured at start only; a VM added at run time uses plain vsock",
                    config.name
                ),
            ));
        }
        let internal = |e: &(dyn std::error::Error + 'static)| {
            ControlError::new(ErrorKind::Internal, crate::error_chain(e))
        };
        let listener = server::bind(&config.name, &config.socket).map_err(|e| internal(&e))?;
        let index = match self.switch.add_vm(&config) {
            Ok(index) => index,
            Err(e) => {
                drop(listener);
                remove_file(&config.socket);
                let kind = match e {
                    crate::switch::SwitchError::Full { .. } => ErrorKind::Exhausted,
                    _ => ErrorKind::Internal,
                };
                return Err(ControlError::new(kind, crate::error_chain(&e)));
            }
        };
        match self.serve(config.clone(), index, origin, listener) {
            Ok(running) => vms.push(running),
            Err(e) => {
                self.switch.remove_vm(index, false);
                remove_files(&config);
                return Err(internal(&e));
            }
        }
        Ok(config)
    }

    /// Removes the VM named `name`: its frontend is disconnected, its server stops, every peer
    /// it had a connection with gets an RST, and its sockets are removed.
    pub fn remove(&self, name: &str) -> Result<(), ControlError> {
        let mut vms = lock(&self.vms);
        let i = vms
            .iter()
            .position(|vm| vm.config.name == name)
            .ok_or_else(|| no_such_vm(name))?;
        let vm = vms.remove(i);
        drop(vms);
        self.stop(vm);
        Ok(())
    }

    /// Stops one VM's server and takes it off the switch.
    fn stop(&self, mut vm: RunningVm) {
        vm.server.stop();
        if let Some(t) = vm.thread.take() {
            let _ = t.join();
        }
        let retire = self.windows.contains_key(&vm.config.name);
        self.switch.remove_vm(vm.index, retire);
        remove_files(&vm.config);
        tracing::info!(vm = %vm.config.name, "removed");
    }

    /// Gives VM `name` the addresses `ips` in place: they are not the switch's business, so its
    /// device stays as it is. The caller checked them with the other VMs.
    pub(super) fn set_addresses(
        &self,
        name: &str,
        ips: &[std::net::IpAddr],
    ) -> Result<(), ControlError> {
        let mut vms = lock(&self.vms);
        let vm = vms
            .iter_mut()
            .find(|vm| vm.config.name == name)
            .ok_or_else(|| no_such_vm(name))?;
        vm.config.ips = ips.to_vec();
        tracing::info!(vm = %name, ?ips, "addresses updated");
        Ok(())
    }

    /// Stops every VM (the daemon stops).
    pub fn stop_all(&self) {
        let vms = std::mem::take(&mut *lock(&self.vms));
        for vm in &vms {
            vm.server.stop();
        }
        for mut vm in vms {
            if let Some(t) = vm.thread.take() {
                let _ = t.join();
            }
            remove_files(&vm.config);
        }
    }

    /// The VMs served, with their switch index and origin, in the order they were added.
    pub fn snapshot(&self) -> Vec<(VmConfig, usize, Origin)> {
        lock(&self.vms)
            .iter()
            .map(|vm| (vm.config.clone(), vm.index, vm.origin))
            .collect()
    }

    /// The windows of VM `name` (none for a VM without the fast path).
    pub(super) fn windows_of(&self, name: &str) -> Vec<WindowInfo> {
        self.windows.get(name).cloned().unwrap_or_default()
    }

    /// The fast-path counters of VM `name`; `None` for a VM without the fast path.
    pub fn fastpath_counters(
        &self,
        name: &str,
    ) -> Option<crate::metrics::FastPathCountersSnapshot> {
        self.fastpath_counters.get(name).map(|c| c.snapshot())
    }

    /// The daemon's seccomp filter (the control thread installs its own variant of it).
    pub fn filter(&self) -> &ThreadFilter {
        &self.filter
    }

    /// Records the poll threads' counters (once the engine started).
    pub fn set_poll_counters(&self, counters: Vec<Arc<PollCounters>>) {
        let _ = self.poll_counters.set(counters);
    }
}

/// The error for a name no VM has.
pub(super) fn no_such_vm(name: &str) -> ControlError {
    ControlError::new(ErrorKind::NoSuchVm, format!("no VM is named `{name}`"))
}

/// Removes the sockets the daemon made for `vm`.
fn remove_files(vm: &VmConfig) {
    remove_file(&vm.socket);
    if let Some(uds) = &vm.uds {
        remove_file(uds);
    }
}

fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
        }
    }
}
