//! Loading a `--config` TOML file: `[[vm]]` tables with the `--vm` keys, and `log_level`.
//!
//! Only the syntax and types are checked here; value rules are in [`super::validate`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::poll::{parse_cpu_list, PollConfig};
use super::{
    ConfigError, PairConfig, SeccompMode, VmConfig, DEFAULT_FASTPATH_SIZE,
    DEFAULT_HALF_OPEN_TIMEOUT_MS, DEFAULT_HOST_BUFFER_BYTES, DEFAULT_MAX_CONNS,
    DEFAULT_RX_STALL_TIMEOUT_MS,
};

/// The contents of a config file, before the checks of [`super::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// The `[[vm]]` tables, in file order.
    pub vms: Vec<VmConfig>,
    /// Top-level `log_level`, if present.
    pub log_level: Option<String>,
    /// Top-level `poll_*` keys over the defaults.
    pub poll: PollConfig,
    /// Top-level `half_open_timeout_ms`, else the default.
    pub half_open_timeout_ms: u64,
    /// Top-level `rx_stall_timeout_ms`, else the default.
    pub rx_stall_timeout_ms: u64,
    /// Top-level `seccomp`, if present.
    pub seccomp: Option<SeccompMode>,
    /// The `[[pair]]` tables, in file order.
    pub pairs: Vec<PairConfig>,
    /// Top-level `metrics_listen`, if present.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            vms: Vec::new(),
            log_level: None,
            poll: PollConfig::default(),
            half_open_timeout_ms: DEFAULT_HALF_OPEN_TIMEOUT_MS,
            rx_stall_timeout_ms: DEFAULT_RX_STALL_TIMEOUT_MS,
            seccomp: None,
            pairs: Vec::new(),
            metrics_listen: None,
        }
    }
}

/// The top level of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    vm: Vec<RawVm>,
    #[serde(default)]
    pair: Vec<RawPair>,
    log_level: Option<String>,
    poll_mode: Option<String>,
    poll_threads: Option<u32>,
    poll_budget_us: Option<u64>,
    poll_cpus: Option<String>,
    half_open_timeout_ms: Option<u64>,
    rx_stall_timeout_ms: Option<u64>,
    seccomp: Option<String>,
    metrics_listen: Option<String>,
}

/// One `[[pair]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    vms: [String; 2],
    size: Option<u64>,
}

/// One `[[vm]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    cid: u64,
    socket: PathBuf,
    uds: Option<PathBuf>,
    #[serde(default)]
    groups: Vec<String>,
    ports: Option<Vec<u32>>,
    #[serde(default)]
    ips: Vec<std::net::IpAddr>,
    max_conns: Option<u32>,
    max_conns_per_peer: Option<u32>,
    host_buffer_bytes: Option<u64>,
    #[serde(default)]
    fastpath: bool,
    fastpath_size: Option<u64>,
}

impl From<RawVm> for VmConfig {
    fn from(raw: RawVm) -> VmConfig {
        VmConfig {
            name: raw.name,
            cid: raw.cid,
            socket: raw.socket,
            uds: raw.uds,
            groups: raw.groups,
            ports: raw.ports,
            ips: raw.ips,
            max_conns: raw.max_conns.unwrap_or(DEFAULT_MAX_CONNS),
            max_conns_per_peer: raw.max_conns_per_peer,
            host_buffer_bytes: raw.host_buffer_bytes.unwrap_or(DEFAULT_HOST_BUFFER_BYTES),
            // `parse` refused a size without `fastpath = true`.
            fastpath_size: raw
                .fastpath
                .then(|| raw.fastpath_size.unwrap_or(DEFAULT_FASTPATH_SIZE)),
        }
    }
}

/// Reads and parses the config file at `path`.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses config file contents; `path` is only used in error messages.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(text, path, &e))?;
    let mut poll = PollConfig::default();
    if let Some(mode) = &raw.poll_mode {
        poll.mode = mode.parse()?;
    }
    if let Some(n) = raw.poll_threads {
        poll.threads = n;
    }
    if let Some(us) = raw.poll_budget_us {
        poll.budget_us = us;
    }
    if let Some(list) = &raw.poll_cpus {
        poll.cpus = Some(parse_cpu_list(list)?);
    }
    let seccomp = raw.seccomp.as_deref().map(str::parse).transpose()?;
    let metrics_listen = raw
        .metrics_listen
        .as_deref()
        .map(|v| super::parse_listen_address(v, "metrics_listen"))
        .transpose()?;
    if let Some(vm) = raw
        .vm
        .iter()
        .find(|vm| !vm.fastpath && vm.fastpath_size.is_some())
    {
        return Err(ConfigError::FileFastpathSizeWithoutFastpath {
            path: path.to_owned(),
            vm: vm.name.clone(),
        });
    }
    Ok(FileConfig {
        vms: raw.vm.into_iter().map(VmConfig::from).collect(),
        log_level: raw.log_level,
        poll,
        half_open_timeout_ms: raw
            .half_open_timeout_ms
            .unwrap_or(DEFAULT_HALF_OPEN_TIMEOUT_MS),
        rx_stall_timeout_ms: raw
            .rx_stall_timeout_ms
            .unwrap_or(DEFAULT_RX_STALL_TIMEOUT_MS),
        seccomp,
        metrics_listen,
        pairs: raw
            .pair
            .into_iter()
            .map(|p| PairConfig {
                vms: p.vms,
                size: p.size.unwrap_or(DEFAULT_FASTPATH_SIZE),
            })
            .collect(),
    })
}

/// Turns a TOML error into a one-line [`ConfigError`] with `file:line`.
fn toml_error(text: &str, path: &Path, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|span| line_of(text, span.start));
    let message = e.message();
    if let Some(key) = unknown_field(message) {
        // serde lists the expected fields after the key; only `[[vm]]` expects `socket`.
        let table = if message.contains("`socket`") {
            "[[vm]]"
        } else {
            "the top-level table"
        };
        return ConfigError::UnknownFileKey {
            path: path.to_owned(),
            line,
            key: key.to_owned(),
            table,
        };
    }
    ConfigError::FileSyntax {
        path: path.to_owned(),
        line,
        message: one_line(message),
    }
}

/// The 1-based line that byte `offset` of `text` is on.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
}

/// The key of serde's "unknown field `KEY`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find("`, expected").or_else(|| rest.rfind('`'))?;
    Some(&rest[..end])
}

/// Flattens a parser message to one line: its first non-blank line, plus what the parser
/// expected if it says so on a later line (`invalid string, expected `"`, `'``).
fn one_line(message: &str) -> String {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines.next().unwrap_or("invalid TOML").to_owned();
    if let Some(expected) = lines.find(|l| l.starts_with("expected ")) {
        out.push_str(", ");
        out.push_str(expected);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/sockbypass.toml";

    fn parse_ok(text: &str) -> FileConfig {
        parse(text, Path::new(FILE)).unwrap()
    }

    fn parse_err(text: &str) -> ConfigError {
        parse(text, Path::new(FILE)).unwrap_err()
    }

    #[test]
    fn full_file() {
        let text = r#"
log_level = "sockbypassd=debug"

[[vm]]
name = "web"
cid = 3
socket = "/run/sb/web.sock"
uds = "/run/sb/web.vsock"
groups = ["prod", "db"]
ports = [22, 80]
ips = ["10.0.0.3", "fd00::3"]
max_conns = 16

[[vm]]
name = "db"
cid = 4
socket = "/run/sb/db.sock"
"#;
        assert_eq!(
            parse_ok(text),
            FileConfig {
                vms: vec![
                    VmConfig {
                        uds: Some(PathBuf::from("/run/sb/web.vsock")),
                        groups: vec!["prod".to_owned(), "db".to_owned()],
                        ports: Some(vec![22, 80]),
                        ips: vec!["10.0.0.3".parse().unwrap(), "fd00::3".parse().unwrap()],
                        max_conns: 16,
                        ..VmConfig::new("web", 3, "/run/sb/web.sock")
                    },
                    VmConfig::new("db", 4, "/run/sb/db.sock"),
                ],
                log_level: Some("sockbypassd=debug".to_owned()),
                ..FileConfig::default()
            }
        );
    }

    #[test]
    fn a_bad_address_names_its_line() {
        let e = parse_err("[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/s\"\nips = [\"10.0.0\"]\n");
        let text = e.to_string();
        assert!(text.contains(":5:"), "{text}");
        assert!(text.contains("invalid IP address syntax"), "{text}");
    }

    #[test]
    fn fastpath_keys() {
        let vm = |extra: &str| format!("[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/s\"\n{extra}");
        assert_eq!(parse_ok(&vm("")).vms[0].fastpath_size, None);
        assert_eq!(
            parse_ok(&vm("fastpath = true\n")).vms[0].fastpath_size,
            Some(DEFAULT_FASTPATH_SIZE)
        );
        assert_eq!(
            parse_ok(&vm("fastpath = true\nfastpath_size = 2097152\n")).vms[0].fastpath_size,
            Some(2 << 20)
        );
        let pair = parse_ok(&format!(
            "{}[[pair]]\nvms = [\"a\", \"b\"]\nsize = 2097152\n",
            vm("fastpath = true\n")
        ));
        assert_eq!(
            pair.pairs,
            vec![PairConfig {
                vms: ["a".into(), "b".into()],
                size: 2 << 20
            }]
        );
        let e = parse_err(&vm("fastpath_size = 2097152\n"));
        assert_eq!(
            e.to_string(),
            format!("{FILE}: VM `a`: fastpath_size needs fastpath = true")
        );
    }

    #[test]
    fn seccomp_key() {
        assert_eq!(
            parse_ok("seccomp = \"off\"\n").seccomp,
            Some(SeccompMode::Off)
        );
        let e = parse_err("seccomp = \"on\"\n");
        assert_eq!(
            e.to_string(),
            "invalid seccomp mode `on`: expected off, log or kill"
        );
    }

    #[test]
    fn empty_file() {
        assert_eq!(parse_ok(""), FileConfig::default());
    }

    #[test]
    fn unknown_key_in_vm() {
        let text = "[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/s\"\n\n[[vm]]\ncidd = 4\n";
        let e = parse_err(text);
        assert!(
            matches!(&e, ConfigError::UnknownFileKey { line: Some(7), key, table: "[[vm]]", .. } if key == "cidd"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "/etc/sockbypass.toml:7: unknown key `cidd` in [[vm]]"
        );
    }

    #[test]
    fn unknown_key_at_top_level() {
        let e = parse_err("log_level = \"info\"\nloglevel = \"debug\"\n");
        assert!(
            matches!(&e, ConfigError::UnknownFileKey { line: Some(2), key, table: "the top-level table", .. } if key == "loglevel"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "/etc/sockbypass.toml:2: unknown key `loglevel` in the top-level table"
        );
    }

    #[test]
    fn syntax_error_is_one_line_with_line_number() {
        let e = parse_err("[[vm]]\nname = \"a\ncid = 3\n");
        assert!(
            matches!(&e, ConfigError::FileSyntax { line: Some(2), .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/sockbypass.toml:2: "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = parse_err("[[vm]]\nname = \"a\"\ncid = \"3\"\nsocket = \"/s\"\n");
        assert!(
            matches!(&e, ConfigError::FileSyntax { line: Some(3), .. }),
            "{e:?}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn missing_field() {
        let e = parse_err("[[vm]]\nname = \"a\"\nsocket = \"/s\"\n");
        assert!(matches!(&e, ConfigError::FileSyntax { .. }), "{e:?}");
        assert!(e.to_string().contains("missing field `cid`"), "{e}");
    }

    #[test]
    fn out_of_range_numbers() {
        for text in [
            "[[vm]]\nname = \"a\"\ncid = -1\nsocket = \"/s\"\n",
            "[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/s\"\nports = [4294967296]\n",
            "[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"/s\"\nmax_conns = -1\n",
        ] {
            let e = parse_err(text);
            assert!(matches!(&e, ConfigError::FileSyntax { .. }), "{e:?}");
        }
    }

    #[test]
    fn unreadable_file_keeps_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        let e = load(&path).unwrap_err();
        match &e {
            ConfigError::ReadFile { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(crate::error_chain(&e)
            .starts_with(&format!("cannot read config file {}: ", path.display())));
    }

    #[test]
    fn line_numbers() {
        assert_eq!(line_of("abc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\n", 99), 2);
    }
}
