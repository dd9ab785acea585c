//! The seccomp filter that confines `sockbypassd` to the system calls it makes once started.
//!
//! ## Per thread, at each thread's start
//!
//! The filter is not put on the whole process with `SECCOMP_FILTER_FLAG_TSYNC`: the daemon also
//! runs inside other processes (the tests and benchmarks start it in-process with
//! [`crate::daemon::start`]), whose own threads must stay free. Instead every thread the daemon
//! starts installs it first thing ([`ThreadFilter::confine_current_thread`]): the poll threads
//! (after pinning), each VM's vhost-user server thread (whose children, the vhost-user handler
//! and vring worker threads, inherit it), the host I/O thread, the fast-path thread and the
//! metrics thread (`--metrics-listen`). The `sockbypassd` binary's
//! main thread installs it once the daemon has started, before it waits for signals. So by the
//! time a thread reads anything a guest or a host program wrote, it is confined; sockets are
//! bound and the configuration read before that.
//!
//! The control thread (`sb-control`, [`crate::runtime`]) installs a variant of its own
//! ([`ThreadFilter::confine_control_thread`]): the allowlist plus what adding a VM and
//! reloading need ([`control`]: binding sockets, reading the configuration file, and letting
//! the VM threads it starts install the daemon's filter over the one they inherit). Nothing a
//! guest or a host program sends reaches it: it hears only its control socket (mode 0600) and
//! `SIGHUP`.
//!
//! ## The allowlist
//!
//! Found by tracing (`strace -f`) the daemon's threads through the whole test suite in every poll
//! mode, the end-to-end tests with real guests, and the binary's start, `SIGUSR1` report and
//! `SIGTERM` stop; then narrowed by arguments where that is cheap. The groups, and why each call
//! is needed, are documented on the functions that list them: [`memory`], [`threads`],
//! [`time`], [`events`], [`sockets`], [`process`], [`file_lookups`]. Everything else, from
//! `execve`, `bind` and `ptrace` to `socket(AF_INET)`, is refused: [`SeccompMode::Kill`] kills
//! the whole process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`); [`SeccompMode::Log`] lets the
//! call through and the kernel logs it (`SECCOMP_RET_LOG`, seen in `dmesg` or the audit log as
//! `type=1326 ... syscall=N`), so that an operator can find a call this list misses.
//!
//! ## Files: a second filter
//!
//! The daemon opens no file after start-up, but two library paths try to: glibc's `malloc`,
//! when a thread is the first to need more than eight arenas, reads
//! `/sys/devices/system/cpu/online` once to size its limit, and a panic's backtrace (with
//! `RUST_BACKTRACE` set) looks for the executable (`getcwd`, `readlink`) and its debug
//! information. Both cope with failure, so a second filter answers those calls
//! ([`file_lookups`]) with `ENOENT` and allows everything else: glibc then asks
//! `sched_getaffinity`, and the backtrace is printed without symbols. The kernel takes the
//! strictest answer of the two filters, so these calls fail harmlessly and every other call is
//! the allowlist's decision. It is installed first, because once the allowlist is in place the
//! `seccomp` call installing another filter is itself refused.
//!
//! ## The test hook
//!
//! To show that a forbidden call really kills the daemon, the test runs the real binary with
//! [`TEST_FORBIDDEN_CALL_ENV`] set; see there.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::config::SeccompMode;

/// Setting this to `1` in the environment of the `sockbypassd` binary makes its main thread,
/// once confined, make one system call the filter forbids: `socket(AF_INET, SOCK_STREAM)`, the
/// first step of anyone trying to reach the network from a compromised daemon. For the tests of
/// the filter only (`backend/tests/seccomp.rs`). With `--seccomp kill` the daemon then dies
/// with SIGSYS; with `log` or `off` the call succeeds, the socket is closed at once, the daemon
/// logs `made the forbidden test call` and carries on. Only the binary reads it (in
/// [`crate::daemon::run`]), never a daemon started in-process. It gives nothing to whoever sets
/// it that `--seccomp off` would not.
pub const TEST_FORBIDDEN_CALL_ENV: &str = "SOCKBYPASSD_TEST_FORBIDDEN_SYSCALL";

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler has no filters for this CPU architecture.
    #[error("no seccomp filter for the {arch} architecture: run with --seccomp off")]
    UnsupportedArch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
        /// seccompiler's answer.
        #[source]
        source: BackendError,
    },
    /// The rules did not compile to a BPF program.
    #[error("cannot build the seccomp filter")]
    Build(#[source] BackendError),
    /// The kernel refused the filter.
    #[error(
        "cannot install the seccomp filter (run with --seccomp off on kernels without seccomp)"
    )]
    Install(#[source] seccompiler::Error),
    /// The thread that tries the filter at start-up could not be run.
    #[error("cannot start a thread to try the seccomp filter")]
    TrialThread(#[source] std::io::Error),
}

/// The compiled filter, shared by every thread of one daemon; empty in [`SeccompMode::Off`].
#[derive(Clone)]
pub struct ThreadFilter {
    mode: SeccompMode,
    /// In the order of installation: the file filter, then the allowlist.
    programs: Arc<[BpfProgram]>,
    /// The control thread's filter: the allowlist and [`control`], without the file filter.
    control_programs: Arc<[BpfProgram]>,
}

impl std::fmt::Debug for ThreadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadFilter")
            .field("mode", &self.mode)
            .field(
                "instructions",
                &self.programs.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ThreadFilter {
    /// Compiles the filter for `mode`, and tries it on a short-lived thread (which installs it,
    /// then ends under it), so that a kernel refusing it stops the daemon at start-up rather than
    /// in a thread later.
    pub fn build(mode: SeccompMode) -> Result<ThreadFilter, SeccompError> {
        let mismatch = match mode {
            SeccompMode::Off => {
                return Ok(ThreadFilter {
                    mode,
                    programs: Arc::new([]),
                    control_programs: Arc::new([]),
                })
            }
            SeccompMode::Log => SeccompAction::Log,
            SeccompMode::Kill => SeccompAction::KillProcess,
        };
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|source| {
            SeccompError::UnsupportedArch {
                arch: std::env::consts::ARCH,
                source,
            }
        })?;
        let no_files = file_lookups();
        let allowed = allowlist()?;
        let syscalls = allowed.len();
        let for_control = merge(allowed.clone(), control().map_err(SeccompError::Build)?);
        let filter = ThreadFilter {
            mode,
            programs: Arc::new([
                compile(
                    no_files,
                    SeccompAction::Allow,
                    SeccompAction::Errno(libc::ENOENT.unsigned_abs()),
                    arch,
                )?,
                compile(allowed, mismatch.clone(), SeccompAction::Allow, arch)?,
            ]),
            control_programs: Arc::new([compile(
                for_control,
                mismatch,
                SeccompAction::Allow,
                arch,
            )?]),
        };
        for programs in [filter.programs.clone(), filter.control_programs.clone()] {
            std::thread::Builder::new()
                .name("seccomp-trial".into())
                .spawn(move || install(&programs))
                .map_err(SeccompError::TrialThread)?
                .join()
                .unwrap_or_else(|_| {
                    Err(SeccompError::TrialThread(std::io::Error::other("panicked")))
                })?;
        }
        tracing::info!(?mode, syscalls, "seccomp filter ready");
        Ok(filter)
    }

    /// The mode it was built for.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// Installs the filter on the calling thread (nothing in [`SeccompMode::Off`]). The thread
    /// can never drop it, and the threads it starts afterwards inherit it.
    pub fn apply(&self) -> Result<(), SeccompError> {
        install(&self.programs)
    }

    /// Installs the control thread's filter on the calling thread: the allowlist and the calls
    /// that adding a VM and reloading need ([`control`]). Stops the daemon (abort) if it cannot,
    /// as [`ThreadFilter::confine_current_thread`] does.
    pub fn confine_control_thread(&self) {
        if let Err(e) = install(&self.control_programs) {
            tracing::error!(error = %crate::error_chain(&e), "stopping: the control thread cannot be confined");
            std::process::abort();
        }
    }

    /// [`ThreadFilter::apply`] at the start of a daemon thread. The kernel accepted the same
    /// filter at start-up ([`ThreadFilter::build`]), so this fails only if the kernel runs out of
    /// memory; the daemon must not run a thread unconfined, so it then stops at once (abort).
    pub fn confine_current_thread(&self) {
        if let Err(e) = self.apply() {
            tracing::error!(error = %crate::error_chain(&e), "stopping: a daemon thread cannot be confined");
            std::process::abort();
        }
    }
}

/// `base` with the rules of `extra` added: a call in both keeps `base`'s rules and gains
/// `extra`'s (a call that `base` allows whatever its arguments stays so).
fn merge(mut base: Rules, extra: Rules) -> Rules {
    for (call, rules) in extra {
        match base.iter_mut().find(|(n, _)| *n == call) {
            Some((_, existing)) if existing.is_empty() => {}
            Some((_, existing)) => existing.extend(rules),
            None => base.push((call, rules)),
        }
    }
    base
}

/// Installs `programs` on the calling thread, in order.
fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for program in programs {
        seccompiler::apply_filter(program).map_err(SeccompError::Install)?;
    }
    Ok(())
}

/// Makes the forbidden call of [`TEST_FORBIDDEN_CALL_ENV`] if the environment asks for it.
pub fn test_forbidden_call_if_asked() {
    if std::env::var_os(TEST_FORBIDDEN_CALL_ENV).is_some_and(|v| v == "1") {
        let result = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None);
        tracing::warn!(
            env = TEST_FORBIDDEN_CALL_ENV,
            ok = result.is_ok(),
            "made the forbidden test call socket(AF_INET, SOCK_STREAM)"
        );
    }
}

/// Compiles one filter.
fn compile(
    rules: Vec<(i64, Vec<SeccompRule>)>,
    mismatch: SeccompAction,
    matched: SeccompAction,
    arch: TargetArch,
) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<_, _> = rules.into_iter().collect();
    SeccompFilter::new(rules, mismatch, matched, arch)
        .and_then(BpfProgram::try_from)
        .map_err(SeccompError::Build)
}

/// System calls, each with the rules that allow it (none: whatever its arguments).
type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// The whole allowlist: every group.
fn allowlist() -> Result<Rules, SeccompError> {
    let mut all = Vec::new();
    for group in [memory, threads, time, events, sockets, process] {
        all.extend(group().map_err(SeccompError::Build)?);
    }
    all.extend(file_lookups());
    Ok(all)
}

/// File lookups: allowed by the allowlist, but answered `ENOENT` by the filter installed before
/// it (see the module documentation): `openat` (glibc's CPU count, debug information for a
/// backtrace), `readlink` of `/proc/self/exe` and `getcwd` (a backtrace).
fn file_lookups() -> Rules {
    vec![
        (libc::SYS_openat, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_readlink, vec![]),
        (libc::SYS_readlinkat, vec![]),
        (libc::SYS_getcwd, vec![]),
    ]
}

/// A rule: argument `arg` (a 32-bit value) compared with `value` by `op`.
fn arg(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?])
}

/// A rule: argument `index` equal to one of `values`, one rule each.
fn one_of(index: u8, values: &[u64]) -> Result<Vec<SeccompRule>, BackendError> {
    values
        .iter()
        .map(|v| arg(index, SeccompCmpOp::Eq, *v))
        .collect()
}

/// A rule: `PROT_EXEC` clear in argument `index` (a `prot`).
fn not_executable(index: u8) -> Result<Vec<SeccompRule>, BackendError> {
    let exec = libc::PROT_EXEC.unsigned_abs().into();
    Ok(vec![arg(index, SeccompCmpOp::MaskedEq(exec), 0)?])
}

/// Converts a C constant (never negative) to a rule value.
fn c(v: libc::c_int) -> u64 {
    v.unsigned_abs().into()
}

/// Memory: the allocator (`brk`, `mmap`, `munmap`, `mremap` for `realloc`, and
/// `madvise(MADV_DONTNEED)` when `free` trims and when a thread's stack is released), guest memory
/// (`mmap` of the frontend's memory file descriptors, `munmap` when a frontend goes), thread
/// stacks and their guard pages (`mprotect`). No mapping may be executable: `mmap` and
/// `mprotect` with `PROT_EXEC` are refused, so no code can be added to the process.
fn memory() -> Result<Rules, BackendError> {
    Ok(vec![
        (libc::SYS_brk, vec![]),
        (libc::SYS_mmap, not_executable(2)?),
        (libc::SYS_mprotect, not_executable(2)?),
        (libc::SYS_munmap, vec![]),
        (libc::SYS_mremap, vec![]),
        (libc::SYS_madvise, one_of(2, &[c(libc::MADV_DONTNEED)])?),
    ])
}

/// Threads: the vhost-user server threads start a handler thread and vring worker threads per
/// frontend connection, and those end when it goes. glibc starts a thread with `clone3` (or
/// `clone` where the kernel lacks it; only with `CLONE_THREAD` there, so not a new process:
/// `clone3` takes its flags in memory, out of the filter's sight), `set_robust_list`, `rseq`
/// and `rt_sigprocmask`; Rust's thread start names the thread (`prctl(PR_SET_NAME)` only), asks
/// its stack bounds (`sched_getaffinity`, `gettid`) and sets up its overflow handler
/// (`sigaltstack`); a thread ends with `exit`. `futex` backs every lock, condition variable and
/// join; `sched_yield` is a poll thread giving the CPU back when nothing moves; `getrandom` seeds
/// each thread's hash-map keys.
fn threads() -> Result<Rules, BackendError> {
    let clone_thread = libc::CLONE_THREAD.unsigned_abs().into();
    Ok(vec![
        (libc::SYS_clone3, vec![]),
        (
            libc::SYS_clone,
            vec![arg(0, SeccompCmpOp::MaskedEq(clone_thread), clone_thread)?],
        ),
        (libc::SYS_set_robust_list, vec![]),
        (libc::SYS_rseq, vec![]),
        (libc::SYS_rt_sigprocmask, vec![]),
        (libc::SYS_prctl, one_of(0, &[c(libc::PR_SET_NAME)])?),
        (libc::SYS_sched_getaffinity, vec![]),
        (libc::SYS_gettid, vec![]),
        (libc::SYS_sigaltstack, vec![]),
        (libc::SYS_exit, vec![]),
        (libc::SYS_futex, vec![]),
        (libc::SYS_sched_yield, vec![]),
        (libc::SYS_getrandom, vec![]),
    ])
}

/// Time: `clock_gettime` (normally answered in the vDSO without a system call, but not on
/// every clock source) and `clock_nanosleep` (the short waits before a retry).
fn time() -> Result<Rules, BackendError> {
    Ok(vec![
        (libc::SYS_clock_gettime, vec![]),
        (libc::SYS_clock_nanosleep, vec![]),
    ])
}

/// Event loops: the vhost-user handler's `epoll` instance per connection (`epoll_create1`,
/// `epoll_ctl`, `epoll_wait`/`epoll_pwait`), the host I/O thread's, eventfds for kicks, calls
/// and wake-ups (`eventfd2`, `read`, `write`), an adaptive poll thread's sleep on its eventfd
/// (`poll`/`ppoll`), `close`, and `write` to stderr for the log.
fn events() -> Result<Rules, BackendError> {
    Ok(vec![
        (libc::SYS_epoll_create1, vec![]),
        (libc::SYS_epoll_ctl, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_epoll_wait, vec![]),
        (libc::SYS_epoll_pwait, vec![]),
        (libc::SYS_eventfd2, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_poll, vec![]),
        (libc::SYS_ppoll, vec![]),
        (libc::SYS_read, vec![]),
        (libc::SYS_write, vec![]),
        (libc::SYS_close, vec![]),
    ])
}

/// Sockets, Unix only: `accept4` of a frontend on a vhost-user socket and of a host program on
/// a VM's `uds`; `socket(AF_UNIX)` and `connect` for a guest's connection to a host port;
/// `recvmsg`/`sendmsg` for vhost-user messages with file descriptors; `recvfrom`/`sendto` for
/// host streams; `shutdown`; `fcntl(F_GETFD)` and `fcntl(F_DUPFD_CLOEXEC)` as vhost-user keeps
/// and checks descriptors; `ioctl(FIONBIO)` to make an accepted host stream non-blocking. No
/// other socket family, so no network.
///
/// The metrics thread (`--metrics-listen`, [`crate::exporter`]) serves a TCP listener bound
/// before it is confined, so it needs no `socket`, `bind` or `listen`: it takes connections with
/// `accept4`, reads and writes them with `recvfrom`/`sendto`, closes them with `shutdown` and
/// `close` (all allowed above), and bounds each connection in time with
/// `setsockopt(SOL_SOCKET, SO_RCVTIMEO | SO_SNDTIMEO)`, the only `setsockopt` allowed (found by
/// running the daemon under `--seccomp log` and `strace -f` while scraping it).
fn sockets() -> Result<Rules, BackendError> {
    let sol_socket = c(libc::SOL_SOCKET);
    let socket_timeout = |option: libc::c_int| {
        SeccompRule::new(vec![
            SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, sol_socket)?,
            SeccompCondition::new(2, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, c(option))?,
        ])
    };
    Ok(vec![
        (libc::SYS_accept4, vec![]),
        (libc::SYS_socket, one_of(0, &[c(libc::AF_UNIX)])?),
        // The fast path's control connections (a socket pair per guest connection).
        (libc::SYS_socketpair, one_of(0, &[c(libc::AF_UNIX)])?),
        (libc::SYS_connect, vec![]),
        (libc::SYS_recvmsg, vec![]),
        (libc::SYS_sendmsg, vec![]),
        (libc::SYS_recvfrom, vec![]),
        (libc::SYS_sendto, vec![]),
        (libc::SYS_shutdown, vec![]),
        (
            libc::SYS_fcntl,
            one_of(1, &[c(libc::F_GETFD), c(libc::F_DUPFD_CLOEXEC)])?,
        ),
        (libc::SYS_ioctl, one_of(1, &[libc::FIONBIO])?),
        (
            libc::SYS_setsockopt,
            vec![
                socket_timeout(libc::SO_RCVTIMEO)?,
                socket_timeout(libc::SO_SNDTIMEO)?,
            ],
        ),
    ])
}

/// The process: the main thread waits for signals (`rt_sigtimedwait`), removes its sockets
/// when it stops (`unlink`, also a vhost-user listener's own clean-up) and exits (`exit_group`).
/// A thread that panicked wakes the main thread with SIGTERM to the daemon itself (`kill` of
/// its own PID with SIGTERM only, `crate::failure`). A failing thread can still abort
/// (`getpid`, `tgkill` with SIGABRT only) and a crash still reports its own signal
/// (`rt_sigreturn` from Rust's stack-overflow handler), rather than SIGSYS.
fn process() -> Result<Rules, BackendError> {
    // SAFETY: getpid(2) has no preconditions and cannot fail.
    let own = u64::from(unsafe { libc::getpid() }.unsigned_abs());
    let sigterm_to_self = SeccompRule::new(vec![
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, own)?,
        SeccompCondition::new(
            1,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            c(libc::SIGTERM),
        )?,
    ])?;
    Ok(vec![
        (libc::SYS_kill, vec![sigterm_to_self]),
        (libc::SYS_rt_sigtimedwait, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_unlink, vec![]),
        (libc::SYS_unlinkat, vec![]),
        (libc::SYS_exit_group, vec![]),
        (libc::SYS_getpid, vec![]),
        (libc::SYS_tgkill, one_of(2, &[c(libc::SIGABRT)])?),
        (libc::SYS_rt_sigreturn, vec![]),
    ])
}

/// The control thread's calls beyond the allowlist ([`crate::runtime`]): a VM added at run time
/// gets its vhost-user socket and `uds` bound (`bind`, `listen`; `socket(AF_UNIX)` and
/// `unlink` of a stale socket are in the allowlist); a reload reads the configuration file
/// (`openat`, allowed by the allowlist, is not answered `ENOENT` here because the control
/// thread has no file filter; then `fstat`/`statx` for its size, and `newfstatat`/`statx` to
/// check that each VM's socket directory exists and whether a socket path is a stale socket).
/// The server thread of a VM added at run time starts under this filter (threads inherit their
/// creator's) and installs the daemon's own filter first thing, which only narrows what it may
/// do: `prctl(PR_SET_NO_NEW_PRIVS)` and `seccomp(SECCOMP_SET_MODE_FILTER)`.
/// Found by running the daemon with `--seccomp log` through `vm_add`, `vm_remove`, `stats`,
/// reloads by request and by `SIGHUP`, and reading the kernel's log for the threads
/// `sb-control` and `vm-*`.
fn control() -> Result<Rules, BackendError> {
    Ok(vec![
        (libc::SYS_prctl, one_of(0, &[c(libc::PR_SET_NO_NEW_PRIVS)])?),
        (
            libc::SYS_seccomp,
            one_of(0, &[u64::from(libc::SECCOMP_SET_MODE_FILTER)])?,
        ),
        (libc::SYS_bind, vec![]),
        (libc::SYS_listen, vec![]),
        (libc::SYS_fstat, vec![]),
        (libc::SYS_newfstatat, vec![]),
        (libc::SYS_statx, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_stat, vec![]),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_lstat, vec![]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_is_listed_once() {
        let all = allowlist().expect("allowlist");
        let mut numbers: Vec<i64> = all.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        let before = numbers.len();
        numbers.dedup();
        assert_eq!(numbers.len(), before, "a system call is in two groups");
    }

    #[test]
    fn off_builds_no_program() {
        let f = ThreadFilter::build(SeccompMode::Off).expect("off");
        assert_eq!(f.mode(), SeccompMode::Off);
        assert!(f.programs.is_empty());
        assert!(f.control_programs.is_empty());
    }

    #[test]
    fn a_confined_thread_finds_no_file_and_may_use_unix_sockets() {
        let f = ThreadFilter::build(SeccompMode::Kill).expect("kill");
        let dir = tempfile::tempdir().expect("temp dir");
        let (file, missing) = (dir.path().join("file"), dir.path().join("no-listener"));
        std::fs::write(&file, b"x").expect("write");
        let (opened, cwd, connected) = std::thread::spawn(move || {
            f.apply().expect("apply");
            (
                std::fs::File::open(&file).map(drop),
                std::env::current_dir(),
                std::os::unix::net::UnixStream::connect(&missing).map(drop),
            )
        })
        .join()
        .expect("confined thread");
        // Answered by the file filter, not killed by the allowlist.
        assert_eq!(
            opened.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotFound)
        );
        assert!(cwd.is_err());
        // socket(AF_UNIX) and connect are allowed: the connect fails only for want of a listener.
        assert_eq!(
            connected.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn a_confined_thread_may_set_socket_timeouts() {
        let f = ThreadFilter::build(SeccompMode::Kill).expect("kill");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (stream, _) = listener.accept().expect("accept");
        // Under `kill`, a refused call would end this whole test process with SIGSYS.
        std::thread::spawn(move || {
            f.apply().expect("apply");
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .expect("SO_RCVTIMEO");
            stream
                .set_write_timeout(Some(std::time::Duration::from_secs(1)))
                .expect("SO_SNDTIMEO");
        })
        .join()
        .expect("confined thread");
        drop(client);
    }

    #[test]
    fn kill_builds_two_programs() {
        let f = ThreadFilter::build(SeccompMode::Kill).expect("kill");
        assert_eq!(f.programs.len(), 2);
        assert!(f.programs.iter().all(|p| !p.is_empty()));
    }
}
