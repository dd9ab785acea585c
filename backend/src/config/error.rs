//! [`ConfigError`]: every way the configuration can be rejected, each as one line of text.

use std::io;
use std::num::ParseIntError;
use std::path::{Path, PathBuf};

/// A configuration the daemon refuses to start with.
///
/// Every message is one line that names the bad value; causes such as [`io::Error`] are kept as
/// [`std::error::Error::source`], so `crate::error_chain` prints `message: cause`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // ---- `--vm` spec syntax ----
    /// An item of a `--vm` spec is not `KEY=VALUE`.
    #[error("--vm `{spec}`: expected KEY=VALUE, found `{item}`")]
    SpecMalformed {
        /// The whole spec.
        spec: String,
        /// The item without `=`.
        item: String,
    },
    /// A `--vm` spec names a key that does not exist.
    #[error("--vm `{spec}`: unknown key `{key}` (known keys: {known})")]
    SpecUnknownKey {
        /// The whole spec.
        spec: String,
        /// The unknown key.
        key: String,
        /// Every key a spec may have, comma-separated.
        known: String,
    },
    /// A `--vm` spec lacks a required key.
    #[error("--vm `{spec}`: missing required key `{key}`")]
    SpecMissingKey {
        /// The whole spec.
        spec: String,
        /// The missing key.
        key: &'static str,
    },
    /// A `--vm` spec gives the same key twice.
    #[error("--vm `{spec}`: key `{key}` given more than once")]
    SpecDuplicateKey {
        /// The whole spec.
        spec: String,
        /// The repeated key.
        key: String,
    },
    /// A `--vm` spec has `KEY=` with nothing after the `=`.
    #[error("--vm `{spec}`: empty value for key `{key}`")]
    SpecEmptyValue {
        /// The whole spec.
        spec: String,
        /// The key without value.
        key: String,
    },
    /// A `+`-separated list in a `--vm` spec has an empty element.
    #[error("--vm `{spec}`: empty element in `{key}={value}`")]
    SpecEmptyListItem {
        /// The whole spec.
        spec: String,
        /// The list key.
        key: String,
        /// The whole list value.
        value: String,
    },
    /// A numeric value in a `--vm` spec is not a number of the right range.
    #[error("--vm `{spec}`: bad number `{value}` for key `{key}`")]
    SpecBadNumber {
        /// The whole spec.
        spec: String,
        /// The key.
        key: String,
        /// The text that is not a number.
        value: String,
        /// Why it did not parse.
        #[source]
        source: ParseIntError,
    },
    /// An element of `ips` is not an IPv4 or IPv6 address.
    #[error(
        "--vm `{spec}`: bad address `{value}` in `ips` (IPv4 or IPv6, such as 10.0.0.3 or fd00::3)"
    )]
    SpecBadAddress {
        /// The whole spec.
        spec: String,
        /// The text that is not an address.
        value: String,
        /// Why it did not parse.
        #[source]
        source: std::net::AddrParseError,
    },

    /// An on/off key with another value.
    #[error("--vm `{spec}`: `{key}` must be on or off, got `{value}`")]
    SpecBadSwitch {
        /// The whole spec.
        spec: String,
        /// The key.
        key: &'static str,
        /// What it got.
        value: String,
    },
    /// A `--pair` value that does not parse.
    #[error("--pair `{spec}`: expected VM,VM[,size=BYTES]")]
    PairSpec {
        /// The value.
        spec: String,
    },
    /// A pair that names an unknown VM, the same VM twice, a VM without the fast path, or a
    /// pair given twice.
    #[error("pair {a}+{b}: {why}")]
    InvalidPair {
        /// The first VM.
        a: String,
        /// The second VM.
        b: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A pair window size that ivshmem or the layout cannot take.
    #[error("pair {a}+{b}: size: {source}")]
    InvalidPairSize {
        /// The first VM.
        a: String,
        /// The second VM.
        b: String,
        /// Why.
        #[source]
        source: sockbypass_wire::fastpath::layout::LayoutError,
    },
    /// `fastpath_size` without `fastpath=on`.
    #[error("--vm `{spec}`: fastpath_size needs fastpath=on")]
    SpecFastpathSizeWithoutFastpath {
        /// The whole spec.
        spec: String,
    },

    // ---- config file ----
    /// The config file could not be read.
    #[error("cannot read config file {}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// The config file has a key that does not exist.
    #[error("{}: unknown key `{key}` in {table}", location(path, *line))]
    UnknownFileKey {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key, if known.
        line: Option<usize>,
        /// The unknown key.
        key: String,
        /// Where the key is: `[[vm]]` or `the top-level table`.
        table: &'static str,
    },
    /// The config file is not valid TOML or has a value of the wrong type.
    #[error("{}: {message}", location(path, *line))]
    FileSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem, if known.
        line: Option<usize>,
        /// One-line description from the TOML parser.
        message: String,
    },

    // ---- checks on the merged VM list ----
    /// Neither `--vm` nor `--config` gave a VM.
    #[error("no VMs configured: give --vm or --config, or --control to add VMs at run time")]
    NoVms,
    /// A VM name is empty or has characters outside `[A-Za-z0-9_.-]`.
    #[error("invalid VM name `{name}`: names must be non-empty and use only A-Z, a-z, 0-9, `_`, `.` and `-`")]
    InvalidName {
        /// The bad name.
        name: String,
    },
    /// Two VMs have the same name.
    #[error("VM name `{name}` is used more than once")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// A CID below 3 (0 and 1 are reserved, 2 is the host).
    #[error("VM `{vm}`: CID {cid} is reserved (guest CIDs start at 3)")]
    ReservedCid {
        /// The VM.
        vm: String,
        /// The bad CID.
        cid: u64,
    },
    /// CID 4294967295 (`VMADDR_CID_ANY`).
    #[error("VM `{vm}`: CID {cid} is VMADDR_CID_ANY and cannot be a guest CID")]
    CidAny {
        /// The VM.
        vm: String,
        /// The bad CID.
        cid: u64,
    },
    /// A CID that does not fit in 32 bits.
    #[error("VM `{vm}`: CID {cid} is larger than 32 bits (highest guest CID is 4294967294)")]
    CidTooLarge {
        /// The VM.
        vm: String,
        /// The bad CID.
        cid: u64,
    },
    /// Two VMs have the same CID.
    #[error("CID {cid} is used by both VM `{first}` and VM `{second}`")]
    DuplicateCid {
        /// The repeated CID.
        cid: u64,
        /// The VM that has it first.
        first: String,
        /// The VM that has it again.
        second: String,
    },
    /// A `socket` or `uds` path is empty.
    #[error("VM `{vm}`: {key} path is empty")]
    EmptyPath {
        /// The VM.
        vm: String,
        /// `socket` or `uds`.
        key: &'static str,
    },
    /// Two VMs have the same vhost-user socket path.
    #[error("socket path {} is used by both VM `{first}` and VM `{second}`", .path.display())]
    DuplicateSocket {
        /// The repeated path.
        path: PathBuf,
        /// The VM that has it first.
        first: String,
        /// The VM that has it again.
        second: String,
    },
    /// Two VMs have the same `uds` path.
    #[error("uds path {} is used by both VM `{first}` and VM `{second}`", .path.display())]
    DuplicateUds {
        /// The repeated path.
        path: PathBuf,
        /// The VM that has it first.
        first: String,
        /// The VM that has it again.
        second: String,
    },
    /// A `uds` path equals a vhost-user socket path.
    #[error("VM `{vm}`: uds path {} is also the socket path of VM `{other}`", .path.display())]
    UdsIsSocket {
        /// The VM whose `uds` it is.
        vm: String,
        /// The path.
        path: PathBuf,
        /// The VM whose `socket` it is (may be `vm` itself).
        other: String,
    },
    /// The directory that should hold a socket does not exist.
    #[error("VM `{vm}`: {key} directory {} does not exist", .dir.display())]
    MissingDirectory {
        /// The VM.
        vm: String,
        /// `socket` or `uds`.
        key: &'static str,
        /// The missing directory.
        dir: PathBuf,
    },
    /// The parent of a socket path exists but is not a directory.
    #[error("VM `{vm}`: {key} directory {} is not a directory", .dir.display())]
    NotADirectory {
        /// The VM.
        vm: String,
        /// `socket` or `uds`.
        key: &'static str,
        /// The path that is not a directory.
        dir: PathBuf,
    },
    /// The directory that should hold a socket could not be examined.
    #[error("VM `{vm}`: cannot access {key} directory {}", .dir.display())]
    DirectoryUnusable {
        /// The VM.
        vm: String,
        /// `socket` or `uds`.
        key: &'static str,
        /// The directory.
        dir: PathBuf,
        /// Why it could not be examined.
        #[source]
        source: io::Error,
    },
    /// An address in `ips` no peer could connect to: unspecified, loopback, multicast or
    /// broadcast.
    #[error("VM `{vm}`: address {ip} in ips is {kind}, not an address peers can connect to")]
    InvalidAddress {
        /// The VM.
        vm: String,
        /// The address.
        ip: std::net::IpAddr,
        /// What it is: `unspecified`, `loopback`, `multicast` or `broadcast`.
        kind: &'static str,
    },
    /// More than [`super::MAX_IPS_PER_VM`] addresses in `ips`.
    #[error("VM `{vm}`: {count} addresses in ips, at most {max} allowed")]
    TooManyAddresses {
        /// The VM.
        vm: String,
        /// How many it lists.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Two VMs (or one VM twice) list the same address in `ips`.
    #[error("address {ip} is in the ips of both VM `{first}` and VM `{second}`")]
    DuplicateAddress {
        /// The repeated address.
        ip: std::net::IpAddr,
        /// The VM that has it first.
        first: String,
        /// The VM that has it again (may be `first`).
        second: String,
    },
    /// Port 4294967295 (`VMADDR_PORT_ANY`) in `ports`.
    #[error("VM `{vm}`: port {port} is VMADDR_PORT_ANY and cannot be listed in ports")]
    InvalidPort {
        /// The VM.
        vm: String,
        /// The bad port.
        port: u32,
    },
    /// `max_conns` is 0 or above [`super::MAX_CONNS_LIMIT`].
    #[error("VM `{vm}`: max_conns must be in 1..={max}, got {max_conns}")]
    InvalidMaxConns {
        /// The VM.
        vm: String,
        /// The bad limit.
        max_conns: u32,
        /// The largest allowed.
        max: u32,
    },
    /// `max_conns_per_peer` is 0 or above the VM's `max_conns`.
    #[error(
        "VM `{vm}`: max_conns_per_peer must be in 1..={max_conns} (its max_conns), got {value}"
    )]
    InvalidMaxConnsPerPeer {
        /// The VM.
        vm: String,
        /// The bad value.
        value: u32,
        /// The VM's `max_conns`.
        max_conns: u32,
    },
    /// `fastpath_size` in a `[[vm]]` table without `fastpath = true`.
    #[error("{path}: VM `{vm}`: fastpath_size needs fastpath = true")]
    FileFastpathSizeWithoutFastpath {
        /// The config file.
        path: PathBuf,
        /// The VM.
        vm: String,
    },
    /// A fast-path window size that ivshmem or the layout cannot take.
    #[error("VM `{vm}`: fastpath_size: {source}")]
    InvalidFastpathSize {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: sockbypass_wire::fastpath::layout::LayoutError,
    },
    /// `host_buffer_bytes` outside its range.
    #[error("VM `{vm}`: host_buffer_bytes must be in {min}..={max}, got {value}")]
    InvalidHostBuffer {
        /// The VM.
        vm: String,
        /// The bad value.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A timeout (`--half-open-timeout-ms`, `--rx-stall-timeout-ms` or their file keys)
    /// outside its range.
    #[error("{what} must be in 1..={max} ms, got {value}")]
    InvalidTimeout {
        /// Which timeout.
        what: &'static str,
        /// The bad value.
        value: u64,
        /// The largest allowed.
        max: u64,
    },
    /// A numeric flag that is not a number.
    #[error("{key}: `{value}` is not a number")]
    InvalidNumber {
        /// The flag.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// `--metrics-listen` / `metrics_listen` is not a socket address.
    #[error("{key}: `{value}` is not an IP address and port such as 127.0.0.1:9464 or [::1]:9464")]
    InvalidListenAddress {
        /// The flag or file key.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// `--poll-mode` / `poll_mode` is not a known mode.
    #[error("invalid poll mode `{value}`: expected poll, event or adaptive")]
    InvalidPollMode {
        /// The value given.
        value: String,
    },
    /// `--poll-threads` / `poll_threads` is 0.
    #[error("poll threads must be at least 1, got {threads}")]
    InvalidPollThreads {
        /// The value given.
        threads: u32,
    },
    /// `--poll-budget-us` / `poll_budget_us` out of range.
    #[error("poll budget must be 1..={max} µs, got {budget_us}")]
    InvalidPollBudget {
        /// The value given.
        budget_us: u64,
        /// The largest allowed.
        max: u64,
    },
    /// `--poll-cpus` / `poll_cpus` does not parse.
    #[error("invalid CPU list `{value}`: expected numbers and ranges such as `0,2-3`")]
    InvalidCpuList {
        /// The value given.
        value: String,
    },
    /// A CPU number in `--poll-cpus` at or above the CPU set size (checked before a range is
    /// expanded).
    #[error("CPU {cpu} in the poll CPU list is too large: CPU numbers are below {limit}")]
    CpuBeyondLimit {
        /// The number given (as text: it may not even fit a machine word).
        cpu: String,
        /// The limit.
        limit: usize,
    },
    /// A CPU in `--poll-cpus` is not one this process may run on.
    #[error("CPU {cpu} in the poll CPU list is not available to this process (it may use CPUs {allowed})")]
    CpuNotAvailable {
        /// The CPU.
        cpu: usize,
        /// The CPUs the process may use, as a list (`0-3,6`).
        allowed: String,
    },
    /// `--seccomp` / `seccomp` is not a known mode.
    #[error("invalid seccomp mode `{value}`: expected off, log or kill")]
    InvalidSeccompMode {
        /// The value given.
        value: String,
    },
    /// `--log-level` or `log_level` is not a valid `tracing` filter.
    #[error("invalid log level `{level}`: expected a tracing filter such as `info` or `sockbypassd=debug`")]
    InvalidLogLevel {
        /// The filter as given.
        level: String,
        /// Why `tracing` rejected it.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A group name is empty or contains a comma.
    #[error(
        "VM `{vm}`: invalid group name `{group}`: group names must be non-empty and contain no `,`"
    )]
    InvalidGroup {
        /// The VM.
        vm: String,
        /// The bad group name.
        group: String,
    },
}

/// `file:line` if the line is known, else `file`.
fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{}:{line}", path.display()),
        None => path.display().to_string(),
    }
}
