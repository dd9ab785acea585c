//! The daemon's configuration: `--vm` specs and a `--config` TOML file, merged into one
//! checked [`DaemonConfig`].
//!
//! | file | job |
//! |---|---|
//! | `vm_spec.rs` | one `--vm` string into a [`VmConfig`] ([`VmConfig::from_spec`]) |
//! | `file.rs` | a TOML file into VMs and `log_level`, with `file:line` errors |
//! | `poll.rs` | the poll engine's settings |
//! | `seccomp_mode.rs` | what the seccomp filter does with a forbidden call ([`SeccompMode`]) |
//! | `validate.rs` | rules on the merged VM list (CIDs, names, paths, directories) |
//! | `error.rs` | [`ConfigError`], one variant per problem, one line each |

mod error;
mod file;
mod pair_spec;
mod poll;
mod seccomp_mode;
mod validate;
mod vm_spec;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::cli::Cli;

pub use error::ConfigError;
pub use pair_spec::PairConfig;
pub use poll::{parse_cpu_list, PollConfig, PollMode, DEFAULT_POLL_BUDGET_US};
pub use seccomp_mode::SeccompMode;

/// `max_conns` of a VM that does not set it.
pub const DEFAULT_MAX_CONNS: u32 = 1024;
/// The largest `max_conns` a VM may have (SPEC.md §11).
pub const MAX_CONNS_LIMIT: u32 = 1024;
/// `host_buffer_bytes` of a VM that does not set it: what its host connections may hold in
/// all, waiting for host programs that read slower than the guest writes.
pub const DEFAULT_HOST_BUFFER_BYTES: u64 = 32 << 20;
/// The fast-path window of a VM with `fastpath=on` and no `fastpath_size`: 16 MiB, 124 slots.
pub const DEFAULT_FASTPATH_SIZE: u64 = 16 << 20;
/// The smallest `host_buffer_bytes`: one host connection's smallest grant.
pub const MIN_HOST_BUFFER_BYTES: u64 = 4096;
/// The largest `host_buffer_bytes`.
pub const MAX_HOST_BUFFER_BYTES: u64 = 1 << 30;
/// The most addresses one VM may list in `ips`.
pub const MAX_IPS_PER_VM: usize = 16;
/// How long a VM-to-VM connection may wait for its RESPONSE, unless configured.
pub const DEFAULT_HALF_OPEN_TIMEOUT_MS: u64 = 10_000;
/// The longest half-open timeout.
pub const MAX_HALF_OPEN_TIMEOUT_MS: u64 = 3_600_000;
/// How long data for a VM may wait with no RX buffer posted before its connections are reset,
/// unless configured.
pub const DEFAULT_RX_STALL_TIMEOUT_MS: u64 = 10_000;
/// The longest RX-stall timeout.
pub const MAX_RX_STALL_TIMEOUT_MS: u64 = 3_600_000;

/// Everything the daemon needs to start, already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The VMs to serve: those of `--config` first, then those of `--vm`, in the order given.
    pub vms: Vec<VmConfig>,
    /// The `tracing` filter from `--log-level`, else from the file's `log_level`; `None` means
    /// the logger falls back to `RUST_LOG`.
    pub log_level: Option<String>,
    /// The poll engine: each `--poll-*` flag, else the file's `poll_*` key, else the default.
    pub poll: PollConfig,
    /// How long a VM-to-VM connection may wait for its RESPONSE before the switch frees it and
    /// resets both sides (`--half-open-timeout-ms`, `half_open_timeout_ms`).
    pub half_open_timeout_ms: u64,
    /// How long packets may wait for a VM that posts no RX buffer before the switch resets
    /// their connections (`--rx-stall-timeout-ms`, `rx_stall_timeout_ms`).
    pub rx_stall_timeout_ms: u64,
    /// The seccomp filter's mode: `--seccomp`, else the file's `seccomp`, else
    /// [`SeccompMode::Kill`].
    pub seccomp: SeccompMode,
    /// Fast-path pairs (SPEC.md §13.1): those of `--config` first, then `--pair`.
    pub pairs: Vec<PairConfig>,
    /// Where to serve Prometheus metrics (`--metrics-listen`, else the file's
    /// `metrics_listen`); `None`: no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket (`--control`, SPEC.md §14), if any. With it the daemon may start
    /// with no VM.
    pub control: Option<PathBuf>,
    /// The command line this configuration was built from: a reload (`SIGHUP`, `sockbypass
    /// reload`) builds it again, re-reading `--config`. `None` for a configuration built in
    /// a program (tests), which cannot be reloaded.
    pub command_line: Option<Cli>,
}

/// One VM: its vsock identity and the sockets that serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Unique name, `[A-Za-z0-9_.-]+`; used in logs and messages.
    pub name: String,
    /// Guest CID: unique, 3..=4294967294.
    pub cid: u64,
    /// vhost-user socket the daemon listens on for this VM's VMM.
    pub socket: PathBuf,
    /// Optional host-side Unix socket path for this VM.
    pub uds: Option<PathBuf>,
    /// Group names (non-empty, no `,`).
    pub groups: Vec<String>,
    /// Port list (never 4294967295, `VMADDR_PORT_ANY`); `None` if not given.
    pub ports: Option<Vec<u32>>,
    /// The addresses peers reach this VM at on the ordinary network (SPEC.md §7): the map
    /// from a TCP peer's address to this VM's CID. Unique across VMs, at most
    /// [`MAX_IPS_PER_VM`]; empty if not given.
    pub ips: Vec<IpAddr>,
    /// Connection limit, 1..=[`MAX_CONNS_LIMIT`]; [`DEFAULT_MAX_CONNS`] if not given.
    pub max_conns: u32,
    /// How many of this VM's connections one other VM may open to it; half of `max_conns`
    /// (at least 1) if not given ([`VmConfig::peer_conn_limit`]).
    pub max_conns_per_peer: Option<u32>,
    /// Bytes this VM's host connections may buffer in all ([`DEFAULT_HOST_BUFFER_BYTES`] if
    /// not given).
    pub host_buffer_bytes: u64,
    /// The size of the VM's fast-path window (SPEC.md §13.1) when the fast path is on
    /// (`fastpath=on`, [`DEFAULT_FASTPATH_SIZE`] unless `fastpath_size` says otherwise).
    pub fastpath_size: Option<u64>,
}

impl VmConfig {
    /// A VM with every optional setting at its default.
    pub fn new(name: impl Into<String>, cid: u64, socket: impl Into<PathBuf>) -> Self {
        VmConfig {
            name: name.into(),
            cid,
            socket: socket.into(),
            uds: None,
            groups: Vec::new(),
            ports: None,
            ips: Vec::new(),
            max_conns: DEFAULT_MAX_CONNS,
            max_conns_per_peer: None,
            host_buffer_bytes: DEFAULT_HOST_BUFFER_BYTES,
            fastpath_size: None,
        }
    }

    /// How many of this VM's connections one other VM may have opened to it.
    pub fn peer_conn_limit(&self) -> u32 {
        self.max_conns_per_peer
            .unwrap_or((self.max_conns / 2).max(1))
    }
}

impl DaemonConfig {
    /// A configuration of `vms` with every daemon-wide setting at its default (not yet
    /// checked: call [`DaemonConfig::validate`]).
    pub fn with_vms(vms: Vec<VmConfig>) -> Self {
        DaemonConfig {
            vms,
            log_level: None,
            poll: PollConfig::default(),
            half_open_timeout_ms: DEFAULT_HALF_OPEN_TIMEOUT_MS,
            rx_stall_timeout_ms: DEFAULT_RX_STALL_TIMEOUT_MS,
            seccomp: SeccompMode::default(),
            pairs: Vec::new(),
            metrics_listen: None,
            control: None,
            command_line: None,
        }
    }

    /// Builds the configuration from the command line: reads `--config` (if any), parses every
    /// `--vm`, merges the VMs of both and checks them together.
    pub fn from_cli(cli: &Cli) -> Result<DaemonConfig, ConfigError> {
        let file = match &cli.config {
            Some(path) => file::load(path)?,
            None => file::FileConfig::default(),
        };
        let mut vms = file.vms;
        for spec in &cli.vm {
            vms.push(VmConfig::from_spec(spec)?);
        }
        let mut poll = file.poll;
        if let Some(mode) = &cli.poll_mode {
            poll.mode = mode.parse()?;
        }
        if let Some(n) = &cli.poll_threads {
            poll.threads = n.parse().map_err(|_| ConfigError::InvalidNumber {
                key: "--poll-threads",
                value: n.clone(),
            })?;
        }
        if let Some(us) = &cli.poll_budget_us {
            poll.budget_us = us.parse().map_err(|_| ConfigError::InvalidNumber {
                key: "--poll-budget-us",
                value: us.clone(),
            })?;
        }
        if let Some(list) = &cli.poll_cpus {
            poll.cpus = Some(parse_cpu_list(list)?);
        }
        let half_open_timeout_ms = ms_flag(
            &cli.half_open_timeout_ms,
            "--half-open-timeout-ms",
            file.half_open_timeout_ms,
        )?;
        let rx_stall_timeout_ms = ms_flag(
            &cli.rx_stall_timeout_ms,
            "--rx-stall-timeout-ms",
            file.rx_stall_timeout_ms,
        )?;
        let seccomp = match &cli.seccomp {
            Some(mode) => mode.parse()?,
            None => file.seccomp.unwrap_or_default(),
        };
        let metrics_listen = match &cli.metrics_listen {
            Some(addr) => Some(parse_listen_address(addr, "--metrics-listen")?),
            None => file.metrics_listen,
        };
        let mut pairs = file.pairs;
        for spec in &cli.pair {
            pairs.push(PairConfig::from_spec(spec)?);
        }
        let config = DaemonConfig {
            vms,
            log_level: cli.log_level.clone().or(file.log_level),
            poll,
            half_open_timeout_ms,
            rx_stall_timeout_ms,
            seccomp,
            pairs,
            metrics_listen,
            control: cli.control.clone(),
            command_line: Some(cli.clone()),
        };
        config.validate()?;
        Ok(config)
    }

    /// Builds the configuration from the text of a config file alone; `file` names it in error
    /// messages (`file:line: ...`) and is not opened.
    pub fn from_toml_str(text: &str, file: &Path) -> Result<DaemonConfig, ConfigError> {
        let parsed = file::parse(text, file)?;
        let config = DaemonConfig {
            vms: parsed.vms,
            log_level: parsed.log_level,
            poll: parsed.poll,
            half_open_timeout_ms: parsed.half_open_timeout_ms,
            rx_stall_timeout_ms: parsed.rx_stall_timeout_ms,
            seccomp: parsed.seccomp.unwrap_or_default(),
            pairs: parsed.pairs,
            metrics_listen: parsed.metrics_listen,
            control: None,
            command_line: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the log level (a valid `tracing` filter) and the VMs: at least one; valid names,
    /// CIDs, groups, ports and `max_conns`; unique names, CIDs, socket and uds paths; existing
    /// socket directories.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.poll.validate()?;
        let timeouts = [
            (
                "half-open timeout",
                self.half_open_timeout_ms,
                MAX_HALF_OPEN_TIMEOUT_MS,
            ),
            (
                "RX-stall timeout",
                self.rx_stall_timeout_ms,
                MAX_RX_STALL_TIMEOUT_MS,
            ),
        ];
        for (what, value, max) in timeouts {
            if value == 0 || value > max {
                return Err(ConfigError::InvalidTimeout { what, value, max });
            }
        }
        if let Some(level) = &self.log_level {
            tracing_subscriber::EnvFilter::try_new(level).map_err(|source| {
                ConfigError::InvalidLogLevel {
                    level: level.clone(),
                    source,
                }
            })?;
        }
        if self.vms.is_empty() && self.control.is_none() {
            return Err(ConfigError::NoVms);
        }
        validate::validate(&self.vms)?;
        validate::validate_pairs(&self.vms, &self.pairs)
    }
}

/// A listening address (`--metrics-listen`, `metrics_listen`): an IP address and a port, no
/// host name (nothing is resolved at start-up); `key` names the flag or file key in the error.
fn parse_listen_address(value: &str, key: &'static str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::InvalidListenAddress {
            key,
            value: value.to_owned(),
        })
}

/// Checks a set of VMs as one configuration would (names, CIDs, groups, ports and limits;
/// unique names, CIDs and paths; existing directories), but allows none: what a VM added at
/// run time must pass together with the VMs already served.
pub fn check_vms(vms: &[VmConfig]) -> Result<(), ConfigError> {
    validate::validate(vms)
}

/// A millisecond flag's value, else the file's (or default) `file_value`.
fn ms_flag(flag: &Option<String>, key: &'static str, file_value: u64) -> Result<u64, ConfigError> {
    match flag {
        Some(ms) => ms.parse().map_err(|_| ConfigError::InvalidNumber {
            key,
            value: ms.clone(),
        }),
        None => Ok(file_value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sockbypassd").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn merges_file_and_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let toml = dir.path().join("sb.toml");
        std::fs::write(
            &toml,
            format!(
                "log_level = \"warn\"\npoll_mode = \"event\"\npoll_budget_us = 200\n[[vm]]\nname = \"web\"\ncid = 3\nsocket = \"{d}/web.sock\"\ngroups = [\"prod\"]\nports = [22]\n"
            ),
        )
        .unwrap();
        let db_spec = format!("name=db,cid=4,socket={d}/db.sock,uds={d}/db.vsock,max_conns=8");
        let command_line = cli(&[
            "--config",
            toml.to_str().unwrap(),
            "--vm",
            &db_spec,
            "--poll-budget-us",
            "75",
        ]);
        let config = DaemonConfig::from_cli(&command_line).unwrap();
        assert_eq!(
            config,
            DaemonConfig {
                vms: vec![
                    VmConfig {
                        groups: vec!["prod".to_owned()],
                        ports: Some(vec![22]),
                        ..VmConfig::new("web", 3, dir.path().join("web.sock"))
                    },
                    VmConfig {
                        uds: Some(dir.path().join("db.vsock")),
                        max_conns: 8,
                        ..VmConfig::new("db", 4, dir.path().join("db.sock"))
                    },
                ],
                log_level: Some("warn".to_owned()),
                poll: PollConfig {
                    mode: PollMode::Event,
                    budget_us: 75,
                    ..PollConfig::default()
                },
                half_open_timeout_ms: DEFAULT_HALF_OPEN_TIMEOUT_MS,
                rx_stall_timeout_ms: DEFAULT_RX_STALL_TIMEOUT_MS,
                seccomp: SeccompMode::Kill,
                pairs: Vec::new(),
                metrics_listen: None,
                control: None,
                command_line: Some(command_line.clone()),
            }
        );
    }

    #[test]
    fn seccomp_mode_from_command_line_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("sb.toml");
        std::fs::write(&toml, "seccomp = \"log\"\n").unwrap();
        let spec = format!("name=a,cid=3,socket={}/a.sock", dir.path().display());
        let file = toml.to_str().unwrap();
        let mode = |args: &[&str]| DaemonConfig::from_cli(&cli(args)).map(|c| c.seccomp);
        assert_eq!(mode(&["--vm", &spec]).ok(), Some(SeccompMode::Kill));
        assert_eq!(
            mode(&["--vm", &spec, "--config", file]).ok(),
            Some(SeccompMode::Log)
        );
        assert_eq!(
            mode(&["--vm", &spec, "--config", file, "--seccomp", "off"]).ok(),
            Some(SeccompMode::Off)
        );
        let e = mode(&["--vm", &spec, "--seccomp", "strict"]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::InvalidSeccompMode { value } if value == "strict"),
            "{e:?}"
        );
    }

    #[test]
    fn metrics_listen_from_command_line_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("sb.toml");
        std::fs::write(&toml, "metrics_listen = \"127.0.0.1:9464\"\n").unwrap();
        let spec = format!("name=a,cid=3,socket={}/a.sock", dir.path().display());
        let file = toml.to_str().unwrap();
        let listen = |args: &[&str]| DaemonConfig::from_cli(&cli(args)).map(|c| c.metrics_listen);
        assert_eq!(listen(&["--vm", &spec]).ok(), Some(None));
        assert_eq!(
            listen(&["--vm", &spec, "--config", file]).ok(),
            Some(Some("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            listen(&[
                "--vm",
                &spec,
                "--config",
                file,
                "--metrics-listen",
                "[::1]:0"
            ])
            .ok(),
            Some(Some("[::1]:0".parse().unwrap()))
        );
        let e = listen(&["--vm", &spec, "--metrics-listen", "localhost:9464"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--metrics-listen: `localhost:9464` is not an IP address and port such as 127.0.0.1:9464 or [::1]:9464"
        );
        std::fs::write(&toml, "metrics_listen = \"9464\"\n").unwrap();
        let e = listen(&["--vm", &spec, "--config", file]).unwrap_err();
        assert!(
            matches!(&e, ConfigError::InvalidListenAddress { key: "metrics_listen", value } if value == "9464"),
            "{e:?}"
        );
    }

    #[test]
    fn log_level_from_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let toml = dir.path().join("sb.toml");
        std::fs::write(&toml, "log_level = \"warn\"\n").unwrap();
        let spec = format!("name=a,cid=3,socket={}/a.sock", dir.path().display());
        let config = DaemonConfig::from_cli(&cli(&[
            "--config",
            toml.to_str().unwrap(),
            "--vm",
            &spec,
            "--log-level",
            "sockbypassd=debug",
        ]))
        .unwrap();
        assert_eq!(config.log_level.as_deref(), Some("sockbypassd=debug"));

        let config = DaemonConfig::from_cli(&cli(&["--vm", &spec])).unwrap();
        assert_eq!(config.log_level, None);
    }

    #[test]
    fn duplicates_across_file_and_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let toml = dir.path().join("sb.toml");
        std::fs::write(
            &toml,
            format!("[[vm]]\nname = \"web\"\ncid = 3\nsocket = \"{d}/web.sock\"\n"),
        )
        .unwrap();
        let spec = format!("name=db,cid=3,socket={d}/db.sock");
        let e = DaemonConfig::from_cli(&cli(&["--config", toml.to_str().unwrap(), "--vm", &spec]))
            .unwrap_err();
        assert!(
            matches!(&e, ConfigError::DuplicateCid { cid: 3, first, second } if first == "web" && second == "db"),
            "{e:?}"
        );
    }

    #[test]
    fn nothing_configured() {
        let e = DaemonConfig::from_cli(&cli(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::NoVms), "{e:?}");
    }

    #[test]
    fn from_toml_str_validates() {
        let e = DaemonConfig::from_toml_str(
            "[[vm]]\nname = \"a\"\ncid = 2\nsocket = \"/a.sock\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::ReservedCid { cid: 2, .. }),
            "{e:?}"
        );

        let config = DaemonConfig::from_toml_str(
            "[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/a.sock\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(config.vms.len(), 1);

        let e =
            DaemonConfig::from_toml_str("[[vm]]\nname = \"a\"\n\ncidd = 3\n", Path::new("x.toml"))
                .unwrap_err();
        assert_eq!(e.to_string(), "x.toml:4: unknown key `cidd` in [[vm]]");
    }
}
