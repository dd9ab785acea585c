//! Reloading (`SIGHUP`, `sockbypass reload`): the configuration is built again from the
//! daemon's command line (re-reading `--config`), and the difference in its VMs is applied.
//! VMs added through the control socket are kept; daemon-wide settings wait for a restart.

use sockbypass_ctl::protocol::{ControlError, ErrorKind, Origin, ReloadReport};

use super::notify::{notify_systemd, Readiness};
use super::vm_set::{config_error, VmSet};
use crate::config::{DaemonConfig, VmConfig};

/// The daemon-wide settings of `new` that differ from `old`.
fn needs_restart(old: &DaemonConfig, new: &DaemonConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_owned());
        }
    };
    check("poll", old.poll != new.poll);
    check(
        "half_open_timeout_ms",
        old.half_open_timeout_ms != new.half_open_timeout_ms,
    );
    check(
        "rx_stall_timeout_ms",
        old.rx_stall_timeout_ms != new.rx_stall_timeout_ms,
    );
    check("seccomp", old.seccomp != new.seccomp);
    check("log_level", old.log_level != new.log_level);
    check("pair", old.pairs != new.pairs);
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    out
}

/// `vm` with the addresses `ips` instead of its own.
fn with_ips(vm: &VmConfig, ips: &[std::net::IpAddr]) -> VmConfig {
    VmConfig {
        ips: ips.to_vec(),
        ..vm.clone()
    }
}

impl VmSet {
    /// Builds the configuration again and applies the difference: VMs gone from it are removed,
    /// new ones added, changed ones removed and added again (those whose `ips` alone changed
    /// are updated in place). The new VM list is checked whole
    /// (with the VMs added at run time) before anything changes.
    pub fn reload(&self) -> Result<ReloadReport, ControlError> {
        let old = super::vm_set::lock(&self.applied).clone();
        let Some(cli) = old.command_line.clone() else {
            return Err(ControlError::new(
                ErrorKind::NoConfigFile,
                "this daemon was not started from a command line: there is nothing to reload",
            ));
        };
        let new = DaemonConfig::from_cli(&cli).map_err(|e| {
            let mut err = config_error(&e);
            err.kind = ErrorKind::InvalidConfig;
            err.message = format!("reload: {}", err.message);
            err
        })?;
        let running = self.snapshot();
        let mut whole: Vec<VmConfig> = new.vms.clone();
        whole.extend(
            running
                .iter()
                .filter(|(_, _, origin)| *origin == Origin::Control)
                .map(|(vm, _, _)| vm.clone()),
        );
        crate::config::check_vms(&whole).map_err(|e| {
            let mut err = config_error(&e);
            err.message = format!("reload: {} (with the VMs added at run time)", err.message);
            err
        })?;
        let configured: Vec<&VmConfig> = running
            .iter()
            .filter(|(_, _, origin)| *origin == Origin::Config)
            .map(|(vm, _, _)| vm)
            .collect();
        let mut report = ReloadReport {
            needs_restart: needs_restart(&old, &new),
            ..ReloadReport::default()
        };
        for vm in &configured {
            match new.vms.iter().find(|n| n.name == vm.name) {
                None => report.removed.push(vm.name.clone()),
                Some(n) if n == *vm => report.unchanged.push(vm.name.clone()),
                Some(n) if *n == with_ips(vm, &n.ips) => report.updated.push(vm.name.clone()),
                Some(_) => report.replaced.push(vm.name.clone()),
            }
        }
        for vm in &new.vms {
            if !configured.iter().any(|c| c.name == vm.name) {
                report.added.push(vm.name.clone());
            }
        }
        // A VM that would be added (or added again) with the fast path cannot be (SPEC.md
        // §14.3): refuse now, before anything is removed.
        if let Some(vm) = report
            .added
            .iter()
            .chain(&report.replaced)
            .filter_map(|name| new.vms.iter().find(|vm| &vm.name == name))
            .find(|vm| vm.fastpath_size.is_some())
        {
            return Err(ControlError::new(
                ErrorKind::InvalidConfig,
                format!(
                    "reload: VM `{}` would be added with fastpath=on, which only a daemon start can do; nothing changed",
                    vm.name
                ),
            ));
        }
        notify_systemd(Readiness::Reloading);
        let result = self.apply(&new, &report);
        notify_systemd(Readiness::Ready);
        result?;
        *super::vm_set::lock(&self.applied) = new;
        tracing::info!(?report, "configuration reloaded");
        Ok(report)
    }

    /// Removes, then adds, what `report` lists, then updates the addresses of the VMs whose
    /// `ips` alone changed. Stops at the first failure, saying what was done before it.
    fn apply(&self, new: &DaemonConfig, report: &ReloadReport) -> Result<(), ControlError> {
        let mut done: Vec<String> = Vec::new();
        let failed = |e: ControlError, done: &[String]| {
            ControlError::new(
                e.kind,
                format!(
                    "reload stopped: {} (already applied: {})",
                    e.message,
                    if done.is_empty() {
                        "nothing".to_owned()
                    } else {
                        done.join(", ")
                    }
                ),
            )
        };
        for name in report.removed.iter().chain(&report.replaced) {
            self.remove(name).map_err(|e| failed(e, &done))?;
            done.push(format!("removed {name}"));
        }
        for name in report.replaced.iter().chain(&report.added) {
            let Some(vm) = new.vms.iter().find(|vm| &vm.name == name) else {
                continue;
            };
            self.add(vm.clone(), Origin::Config)
                .map_err(|e| failed(e, &done))?;
            done.push(format!("added {name}"));
        }
        for name in &report.updated {
            let Some(vm) = new.vms.iter().find(|vm| &vm.name == name) else {
                continue;
            };
            self.set_addresses(name, &vm.ips)
                .map_err(|e| failed(e, &done))?;
            done.push(format!("updated {name}"));
        }
        Ok(())
    }
}
