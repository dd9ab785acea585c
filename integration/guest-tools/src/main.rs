//! `sbtool`: the guest side of sockbypass's end-to-end tests and benchmark.
//!
//! It runs inside small Linux guests (busybox initramfs) and speaks AF_VSOCK or TCP:
//! `sbtool serve` offers an echo and a sink service; the clients `rtt`, `bulk`, `verify`,
//! `many` and `connect` measure or check a path to such a server; `stream` runs one verified
//! echo stream until the connection breaks (fault tests), and `soak` keeps hundreds of
//! verified connections busy for a long time. Addresses are
//! `vsock:CID:PORT` or `tcp:IPV4:PORT`. With `--fastpath`, `serve`, `rtt`, `bulk`, `verify`
//! and `many` also use sockbypass's shared-memory fast path (see below).
//!
//! Every command prints exactly one result line on stdout, `SBRESULT {json}`, so a host can
//! grep it out of a serial console log; anything else goes to stderr. A failed command prints
//! `SBRESULT {"mode":..,"ok":false,"error":"..","errno":N|null}` and exits with status 1
//! (`errno` is the raw OS errno, e.g. 104 for ECONNRESET; for the fast-path library, its
//! errno). Usage errors exit with status 2 (clap's errors without a result line; the others,
//! such as `--fastpath` with a `tcp:` address, with a result line and a one-line message on
//! stderr).
//!
//! Every result of `rtt`, `bulk`, `verify` and `many` names the path its data took:
//! `"path"` is `"vsock"`, `"tcp"`, `"fastpath_host_copied"`, `"fastpath_direct"` or
//! `"fastpath_fallback_vsock"` (`many`: the path of its first connection, and `"paths"`, the
//! number of connections per path, e.g. `{"fastpath_direct":64}`).
//!
//! # Fast path (`--fastpath`)
//!
//! `--fastpath` uses sockbypass's guest fast-path library (`sockbypass-guest`, SPEC.md
//! chapter 13): shared-memory windows (ivshmem BARs found in sysfs) and a control channel to
//! the daemon (AF_VSOCK to CID 2, port `0x5342_5000`). Addresses stay `vsock:CID:PORT`;
//! `--fastpath` with a `tcp:` address, without `--vsock-port` for `serve`, or for `stream` or
//! `soak` is a usage error (exit status 2).
//!
//! - `serve --vsock-port P --fastpath` keeps its plain vsock listener (for peers without a
//!   window and those the daemon sends back to vsock) and also listens on `P` through the
//!   library; accepted fast-path streams get the same echo and sink services, each in its
//!   own thread. If the library cannot open (no window, no daemon) `serve` fails with an
//!   `SBRESULT` error (`"error":"open the fast path: .."`, the library's errno). Its result
//!   line says `"fastpath":true,"fastpath_port":P`.
//! - `rtt`, `bulk`, `verify` and `many` with `--fastpath` open the library once per process
//!   and connect through it (`many`: all its connections through the one library handle): a
//!   fast-path stream if the daemon sets one up (`"path":"fastpath_host_copied"` or
//!   `"fastpath_direct"`), the plain vsock connection when the daemon answers with a reason
//!   that falls back (`"path":"fastpath_fallback_vsock"`, `"fallback_reason"` e.g.
//!   `"NoListener"`, `"NoWindow"` or `"WindowFull"`; `null` for a fast-path stream; the key
//!   is there only with `--fastpath`), a failure (`ECONNREFUSED`) for a hard refusal. The measurement is the same code whatever the path. `verify` over a
//!   fast-path stream uses one thread (non-blocking writes and reads in turn) instead of a
//!   writer thread, as a fast-path stream serves one thread at a time.
//! - Timeouts: fast-path streams have no SO_RCVTIMEO. A watchdog thread bounds each blocking
//!   fast-path read or write by `--io-timeout-ms`, and opening the library and each connect
//!   through it by `--connect-timeout-ms`; when one expires the command prints its failure
//!   line (errno 11, `"read (fast path): ... (no progress within the I/O timeout)"`, as for a
//!   socket; errno 110 for `"open (fast path)"` or `"connect (fast path)"`) and exits with
//!   status 1 (up to about 40 ms late). For `many` a stalled fast-path connection therefore
//!   ends the whole command (a socket's timeout fails only that connection). `serve` has no
//!   I/O timeouts, as for its sockets.
//!
//! # Static build (for the guests)
//!
//! From the workspace root:
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build --release -p sockbypass-guest-tools --target x86_64-unknown-linux-gnu
//! ```
//!
//! gives a statically linked (static-pie) `target/x86_64-unknown-linux-gnu/release/sbtool`.
//! `integration/guest-tools/build.sh` runs exactly this, checks that the result has no
//! program interpreter, and prints on its last line the path of a stripped copy for the
//! guests, `target/x86_64-unknown-linux-gnu/release/guest/sbtool` (about 2 MB instead of
//! 12 MB: the workspace's release profile keeps debug info).

mod addr;
mod bulk;
mod checksum;
mod client;
mod conn;
mod connect;
mod error;
mod many;
mod net;
mod outcome;
mod pattern;
mod report;
mod rtt;
mod server;
mod soak;
mod stats;
mod stream;
mod verify;
mod watchdog;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::addr::Addr;
use crate::client::ClientOpts;
use crate::error::{Error, Result};
use crate::outcome::Outcome;

/// Largest message or write: keeps allocations sane whatever the command line says.
const MAX_BUF: u64 = 64 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "sbtool",
    version,
    about = "sockbypass guest tools: echo/sink server and measuring clients over AF_VSOCK or TCP",
    after_help = "Addresses: vsock:CID:PORT or tcp:IPV4:PORT. Each command prints one \
                  `SBRESULT {json}` line on stdout; exit status 0 on success, 1 on failure."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve echo ('E') and sink ('S') connections until killed.
    Serve {
        /// Listen on this vsock port (any CID).
        #[arg(long)]
        vsock_port: Option<u32>,
        /// Listen on this TCP port of 0.0.0.0 (0: any free port; the result line tells which).
        #[arg(long)]
        tcp_port: Option<u16>,
        /// Also serve the vsock port through the fast path (sockbypass-guest); fails if the
        /// library cannot open (no window). Needs --vsock-port.
        #[arg(long)]
        fastpath: bool,
    },
    /// Round-trip latency over one echo connection.
    Rtt {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// Bytes per message.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=MAX_BUF))]
        size: u64,
        /// Timed round trips.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        count: u64,
        /// Untimed round trips first.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
        warmup: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Throughput to a sink, verified by the receiver's byte count and checksum.
    Bulk {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// How long to write, in seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Bytes per write.
        #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=MAX_BUF))]
        write_size: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Send seeded data over an echo connection and compare the echo byte for byte.
    Verify {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// Bytes to send.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: u64,
        /// Seed of the data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Many echo connections at once, each with its own data.
    Many {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// Connections (all connected before any data moves).
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        conns: u64,
        /// Bytes per connection.
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// One echo stream, every byte compared, until the connection breaks or --seconds pass;
    /// reports how it ended ("reset", "done", "mismatch", "error") and when.
    Stream {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// Stop sending after this long (then the whole echo must come back).
        #[arg(long, default_value_t = 3600.0)]
        seconds: f64,
        /// Print SB-STREAM-FLOWING on stderr once this many bytes came back intact.
        #[arg(long, default_value_t = 1 << 20)]
        flowing_after: u64,
        /// Seed of the data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Many connections at once for a while: echo messages of mixed sizes and bulk streams to
    /// sinks, every byte verified, each connection replaced by a new one after its session.
    Soak {
        /// Targets (vsock:CID:PORT or tcp:IPV4:PORT); slot i uses target i mod their number.
        #[arg(required = true)]
        targets: Vec<String>,
        /// Connections open at once.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        conns: u64,
        /// How long to run.
        #[arg(long, default_value_t = 60.0)]
        seconds: f64,
        /// Every this-many-th connection streams bulk data to a sink (0: none).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=65_536))]
        bulk_every: u64,
        /// Largest bulk session, bytes.
        #[arg(long, default_value_t = 4 << 20)]
        bulk_max: u64,
        /// Base seed of the data (give each guest its own).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Only connect; exit 0 if connected, 1 if not.
    Connect {
        /// vsock:CID:PORT or tcp:IPV4:PORT.
        addr: String,
        /// Give up after this many ms (0: the kernel's own limit).
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

/// Converts an already range-checked count to usize.
fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::Usage(format!("{what} {v} is too large")))
}

impl Command {
    fn mode(&self) -> &'static str {
        match self {
            Command::Serve { .. } => "serve",
            Command::Rtt { .. } => "rtt",
            Command::Bulk { .. } => "bulk",
            Command::Verify { .. } => "verify",
            Command::Many { .. } => "many",
            Command::Stream { .. } => "stream",
            Command::Soak { .. } => "soak",
            Command::Connect { .. } => "connect",
        }
    }

    fn addr(&self) -> Option<&str> {
        match self {
            Command::Serve { .. } | Command::Soak { .. } => None,
            Command::Rtt { addr, .. }
            | Command::Bulk { addr, .. }
            | Command::Verify { addr, .. }
            | Command::Many { addr, .. }
            | Command::Stream { addr, .. }
            | Command::Connect { addr, .. } => Some(addr),
        }
    }

    fn run(&self) -> Result<Outcome> {
        let target = self.addr().map(Addr::parse).transpose()?;
        match (self, &target) {
            (
                Command::Serve {
                    vsock_port,
                    tcp_port,
                    fastpath,
                },
                _,
            ) => match server::run(*vsock_port, *tcp_port, *fastpath)? {},
            (
                Command::Rtt {
                    addr,
                    size,
                    count,
                    warmup,
                    opts,
                },
                Some(a),
            ) => {
                let p = rtt::Params {
                    size: to_usize(*size, "--size")?,
                    count: to_usize(*count, "--count")?,
                    warmup: to_usize(*warmup, "--warmup")?,
                };
                rtt::run(addr, a, p, opts)
            }
            (
                Command::Bulk {
                    addr,
                    seconds,
                    write_size,
                    opts,
                },
                Some(a),
            ) => {
                let p = bulk::Params {
                    seconds: *seconds,
                    write_size: to_usize(*write_size, "--write-size")?,
                };
                bulk::run(addr, a, p, opts)
            }
            (
                Command::Verify {
                    addr,
                    bytes,
                    seed,
                    opts,
                },
                Some(a),
            ) => {
                let p = verify::Params {
                    bytes: *bytes,
                    seed: *seed,
                };
                verify::run(addr, a, p, opts)
            }
            (
                Command::Many {
                    addr,
                    conns,
                    bytes,
                    opts,
                },
                Some(a),
            ) => {
                let p = many::Params {
                    conns: to_usize(*conns, "--conns")?,
                    bytes: *bytes,
                };
                many::run(addr, a, p, opts)
            }
            (
                Command::Stream {
                    addr,
                    seconds,
                    flowing_after,
                    seed,
                    opts,
                },
                Some(a),
            ) => {
                opts.no_fastpath("stream")?;
                let p = stream::Params {
                    seconds: *seconds,
                    flowing_after: *flowing_after,
                    seed: *seed,
                };
                stream::run(addr, a, p, opts)
            }
            (
                Command::Soak {
                    targets,
                    conns,
                    seconds,
                    bulk_every,
                    bulk_max,
                    seed,
                    opts,
                },
                _,
            ) => {
                opts.no_fastpath("soak")?;
                let targets = targets
                    .iter()
                    .map(|t| Addr::parse(t).map(|a| (t.clone(), a)))
                    .collect::<Result<Vec<_>>>()?;
                let p = soak::Params {
                    conns: to_usize(*conns, "--conns")?,
                    seconds: *seconds,
                    bulk_every: to_usize(*bulk_every, "--bulk-every")?,
                    bulk_max: (*bulk_max).clamp(1, 1 << 40),
                    seed: *seed,
                };
                soak::run(&targets, p, opts)
            }
            (Command::Connect { addr, timeout_ms }, Some(a)) => {
                Ok(connect::run(addr, a, *timeout_ms))
            }
            (_, None) => Err(Error::Usage("missing address".into())),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = &cli.command;
    watchdog::identify(cmd.mode(), cmd.addr());
    match cmd.run() {
        Ok(o) => {
            report::emit(&o.value);
            if o.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            report::emit(&report::failure(cmd.mode(), cmd.addr(), &e));
            if matches!(e, Error::Usage(_)) {
                eprintln!("sbtool {}: {e}", cmd.mode());
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Outcome> {
        let cli = Cli::try_parse_from(std::iter::once("sbtool").chain(args.iter().copied()))
            .map_err(|e| Error::Usage(e.to_string()))?;
        cli.command.run()
    }

    fn is_usage(r: Result<Outcome>) -> bool {
        matches!(r, Err(Error::Usage(m)) if m.contains("fastpath"))
    }

    #[test]
    fn fastpath_flag_parses_for_serve_and_the_clients() {
        for args in [
            &["serve", "--vsock-port", "5000", "--fastpath"][..],
            &["rtt", "vsock:4:5000", "--fastpath"][..],
            &["bulk", "vsock:4:5000", "--fastpath", "--seconds", "1"][..],
            &["verify", "vsock:4:5000", "--fastpath"][..],
            &["many", "vsock:4:5000", "--conns", "8", "--fastpath"][..],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("sbtool").chain(args.iter().copied()));
            let fast = match cli.map(|c| c.command) {
                Ok(Command::Serve { fastpath, .. }) => fastpath,
                Ok(
                    Command::Rtt { opts, .. }
                    | Command::Bulk { opts, .. }
                    | Command::Verify { opts, .. }
                    | Command::Many { opts, .. },
                ) => opts.fastpath,
                other => panic!("{args:?}: {other:?}"),
            };
            assert!(fast, "{args:?}");
        }
        let cli = Cli::try_parse_from(["sbtool", "rtt", "vsock:4:5000"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Rtt { opts, .. }) if !opts.fastpath));
        // connect has no --fastpath at all.
        assert!(Cli::try_parse_from(["sbtool", "connect", "vsock:4:5000", "--fastpath"]).is_err());
    }

    #[test]
    fn fastpath_with_tcp_or_without_a_vsock_port_is_a_usage_error() {
        // Checked before anything is opened: no window or socket is needed for this test.
        for mode in ["rtt", "bulk", "verify", "many"] {
            assert!(
                is_usage(run(&[mode, "tcp:127.0.0.1:1", "--fastpath"])),
                "{mode}"
            );
        }
        assert!(is_usage(run(&["serve", "--tcp-port", "0", "--fastpath"])));
        assert!(is_usage(run(&["stream", "vsock:3:1", "--fastpath"])));
        assert!(is_usage(run(&["soak", "vsock:3:1", "--fastpath"])));
    }
}
