//! The `clap` command line of `sockbypassd`.
//!
//! `--vm` values are kept as raw strings here and parsed by [`crate::config`], so that a bad spec
//! is reported like every other configuration error: one line on stderr and exit status 2.

use std::path::PathBuf;

/// Text shown after the options in `--help`.
const AFTER_HELP: &str = "\
VM SPEC:
  name=NAME,cid=CID,socket=PATH[,uds=PATH][,groups=G1+G2][,ports=P1+P2][,ips=IP1+IP2]
      [,max_conns=N][,max_conns_per_peer=N][,host_buffer_bytes=N][,fastpath=on|off][,fastpath_size=N]

  name       VM name: letters, digits, `_`, `.`, `-`
  cid        guest CID, 3..=4294967294, unique across VMs
  socket     vhost-user socket this daemon listens on for the VMM
  uds        optional host-side Unix socket path for this VM, unique
  groups     `+`-separated group names
  ports      `+`-separated vsock port numbers (0..=4294967294)
  ips        `+`-separated IPv4/IPv6 addresses peers reach this VM at on the ordinary
             network (for the guest shim's address map), unique across VMs, at most 16
  max_conns  connection limit of this VM, 1..=1024 (default: 1024)
  max_conns_per_peer
             connections one other VM may open to this one (default: max_conns / 2)
  host_buffer_bytes
             bytes this VM's host connections may buffer in all, 4096..=1073741824
             (default: 33554432)
  fastpath   on: the VM gets a fast-path window, NAME.window beside its socket, for QEMU's
             ivshmem-plain, and its guests may open fast-path connections (SPEC.md §13)
  fastpath_size
             the window's size: a power of two, 1048576..=1073741824 (default: 16777216)

EXAMPLE:
  sockbypassd \\
    --vm name=web,cid=3,socket=/run/sockbypass/web.sock,uds=/run/sockbypass/web.vsock,groups=prod \\
    --vm name=db,cid=4,socket=/run/sockbypass/db.sock,groups=prod

CONFIG FILE (--config):
  log_level = \"info\"
  poll_mode = \"adaptive\"      # poll_threads, poll_budget_us, poll_cpus = \"2-3\" too
  half_open_timeout_ms = 10000
  rx_stall_timeout_ms = 10000
  seccomp = \"kill\"
  metrics_listen = \"127.0.0.1:9464\"   # Prometheus text on /metrics

  [[vm]]
  name = \"web\"
  cid = 3
  socket = \"/run/sockbypass/web.sock\"
  uds = \"/run/sockbypass/web.vsock\"
  groups = [\"prod\"]
  ports = [22, 80]

  [[vm]]
  name = \"db\"
  cid = 4
  socket = \"/run/sockbypass/db.sock\"
  groups = [\"prod\"]
  max_conns = 256

  # fast path, direct pair: fastpath = true in both [[vm]] tables, then
  # [[pair]]
  # vms = [\"web\", \"db\"]

VMs from --vm and --config are merged and checked together.";

/// Command line of `sockbypassd`.
#[derive(clap::Parser, Debug, Clone, Default, PartialEq, Eq)]
#[command(
    name = "sockbypassd",
    version,
    about = "vhost-user virtio-vsock backend that switches streams between VMs on one host",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// A VM to serve (repeatable): name=NAME,cid=CID,socket=PATH[,uds=PATH][,groups=G1+G2][,ports=P1+P2][,max_conns=N]
    #[arg(long = "vm", value_name = "SPEC")]
    pub vm: Vec<String>,

    /// Two VMs with fastpath=on that share a fast-path pair window (repeatable): VM,VM[,size=BYTES]
    #[arg(long = "pair", value_name = "VM,VM")]
    pub pair: Vec<String>,

    /// TOML file with `[[vm]]` tables (same keys as --vm) and an optional `log_level`
    #[arg(long = "config", value_name = "FILE.toml")]
    pub config: Option<PathBuf>,

    /// Log filter, e.g. `info` or `sockbypassd=debug` (default: `log_level` of --config, else RUST_LOG)
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// How the switch finds work: poll (always spin), event (only kicks), adaptive (spin, then sleep when idle) [default: adaptive]
    #[arg(long = "poll-mode", value_name = "MODE")]
    pub poll_mode: Option<String>,

    /// Poll threads; VMs are spread over them [default: 1]
    #[arg(long = "poll-threads", value_name = "N")]
    pub poll_threads: Option<String>,

    /// Idle microseconds before an adaptive poll thread sleeps until a kick [default: 50]
    #[arg(long = "poll-budget-us", value_name = "US")]
    pub poll_budget_us: Option<String>,

    /// CPUs to pin poll threads to, e.g. `2,3` or `2-5` [default: no pinning]
    #[arg(long = "poll-cpus", value_name = "LIST")]
    pub poll_cpus: Option<String>,

    /// Milliseconds a VM-to-VM connection may wait for its RESPONSE before both sides get an RST [default: 10000]
    #[arg(long = "half-open-timeout-ms", value_name = "MS")]
    pub half_open_timeout_ms: Option<String>,

    /// Milliseconds packets may wait for a VM that posts no RX buffer before their connections are reset [default: 10000]
    #[arg(long = "rx-stall-timeout-ms", value_name = "MS")]
    pub rx_stall_timeout_ms: Option<String>,
    /// Control socket for `sockbypass` (add and remove VMs, stats, reload; SPEC.md §14), made with mode 0600
    #[arg(long = "control", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// System calls outside the daemon's allowlist: kill (the daemon dies with SIGSYS), log (the kernel logs them), off (no filter) [default: kill]
    #[arg(long = "seccomp", value_name = "MODE")]
    pub seccomp: Option<String>,

    /// Serve Prometheus metrics on http://ADDR/metrics, ADDR an IP address and port such as 127.0.0.1:9464 (port 0: any free port, logged) [default: no metrics]
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
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
    fn parses_repeated_vm_and_options() {
        let cli = Cli::try_parse_from([
            "sockbypassd",
            "--vm",
            "name=a,cid=3,socket=/tmp/a.sock",
            "--vm",
            "name=b,cid=4,socket=/tmp/b.sock",
            "--config",
            "/etc/sockbypass.toml",
            "--log-level",
            "sockbypassd=debug",
        ])
        .unwrap();
        assert_eq!(
            cli,
            Cli {
                vm: vec![
                    "name=a,cid=3,socket=/tmp/a.sock".to_owned(),
                    "name=b,cid=4,socket=/tmp/b.sock".to_owned(),
                ],
                config: Some(PathBuf::from("/etc/sockbypass.toml")),
                log_level: Some("sockbypassd=debug".to_owned()),
                ..Cli::default()
            }
        );
    }

    #[test]
    fn help_shows_example() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("sockbypassd \\"));
        assert!(help.contains("--vm name=web,cid=3,socket=/run/sockbypass/web.sock"));
        assert!(help.contains("[[vm]]"));
        assert!(help.contains("metrics_listen = \"127.0.0.1:9464\""));
        assert!(help.contains("--metrics-listen <ADDR>"));
    }
}
