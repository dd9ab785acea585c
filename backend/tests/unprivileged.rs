//! The real `sockbypassd` binary runs as an unprivileged user with its sockets in a directory of
//! the README's "Confinement" section: owned by the daemon's user and group, mode 2770, the
//! daemon's umask 007. A frontend whose user is in that group connects and is served (vhost-user
//! handshake and GET_CONFIG); a user outside the group cannot connect at all.
//!
//! Users and groups are numeric IDs with no account (nothing is added to `/etc/passwd`), set
//! with `setpriv` from util-linux. It needs root to switch users, so without root the test says
//! why and does nothing. The frontend is this test binary again, run as the other user
//! ([`frontend_helper`]).

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

/// The daemon's user, and its group: the group the frontend shares.
const DAEMON_ID: u32 = 64_701;
/// A frontend user (QEMU's) that is in the daemon's group.
const FRONTEND_ID: u32 = 64_702;
/// A user outside the group.
const OUTSIDER_ID: u32 = 64_703;

/// Where the helper finds the socket, and what it must see: `served` or `denied`.
const SOCKET_ENV: &str = "SOCKBYPASS_UNPRIVILEGED_TEST_SOCKET";
const EXPECT_ENV: &str = "SOCKBYPASS_UNPRIVILEGED_TEST_EXPECT";

const DEADLINE: Duration = Duration::from_secs(20);

/// The daemon child, killed by PID if the test ends early.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `setpriv` arguments that run the rest as `uid` with primary group `gid` and `groups`.
fn as_user(uid: u32, gid: u32, groups: &[u32]) -> Vec<String> {
    let mut args = vec![format!("--reuid={uid}"), format!("--regid={gid}")];
    if groups.is_empty() {
        args.push("--clear-groups".into());
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        args.push(format!("--groups={}", list.join(",")));
    }
    args.push("--".into());
    args
}

/// Why the test cannot run here, if it cannot.
fn cannot_run(binaries: &[&Path]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("switching users needs root".into());
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        return Some("setpriv (util-linux) is not installed".into());
    }
    for bin in binaries {
        let ok = Command::new("setpriv")
            .args(as_user(OUTSIDER_ID, OUTSIDER_ID, &[]))
            .arg("test")
            .arg("-x")
            .arg(bin)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "{} is not executable by other users (a private home directory?)",
                bin.display()
            ));
        }
    }
    None
}

/// Runs this test binary's [`frontend_helper`] as `uid` with `groups`, expecting `expect`.
fn run_helper(socket: &Path, uid: u32, groups: &[u32], expect: &str) -> Output {
    let me = std::env::current_exe().expect("current_exe");
    Command::new("setpriv")
        .args(as_user(uid, uid, groups))
        .arg(me)
        .args(["--exact", "frontend_helper", "--ignored", "--nocapture"])
        .env(SOCKET_ENV, socket)
        .env(EXPECT_ENV, expect)
        .output()
        .expect("run the helper")
}

fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_owned())
}

#[test]
fn runs_unprivileged_and_serves_only_its_group() {
    let daemon_bin = PathBuf::from(env!("CARGO_BIN_EXE_sockbypassd"));
    let me = std::env::current_exe().expect("current_exe");
    if let Some(why) = cannot_run(&[&daemon_bin, &me]) {
        eprintln!("SKIPPED: runs_unprivileged_and_serves_only_its_group: {why}");
        return;
    }
    let top = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = top.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::os::unix::fs::chown(&run, Some(DAEMON_ID), Some(DAEMON_ID)).expect("chown");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o2770)).expect("chmod");
    let socket = run.join("web.sock");

    // `sh` sets the umask, then becomes setpriv, which becomes the daemon: one PID throughout.
    let child = Command::new("sh")
        .args(["-c", "umask 007; exec setpriv \"$@\"", "sh"])
        .args(as_user(DAEMON_ID, DAEMON_ID, &[]))
        .arg(&daemon_bin)
        .args([
            "--vm",
            &format!(
                "name=web,cid=3,socket={},uds={}",
                socket.display(),
                run.join("web.vsock").display()
            ),
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sockbypassd");
    let mut daemon = Daemon(child);
    let stderr = daemon.0.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("daemon: {line}");
        }
    });
    let pid = daemon.0.id();
    let deadline = Instant::now() + DEADLINE;
    while !(socket.exists() && status_field(pid, "Seccomp:").as_deref() == Some("2")) {
        assert!(
            daemon.0.try_wait().expect("try_wait").is_none(),
            "the daemon exited"
        );
        assert!(Instant::now() < deadline, "the socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        status_field(pid, "Uid:").as_deref(),
        Some(format!("{DAEMON_ID}\t{DAEMON_ID}\t{DAEMON_ID}\t{DAEMON_ID}").as_str()),
        "the daemon runs as its user"
    );
    assert_eq!(
        status_field(pid, "CapEff:").as_deref(),
        Some("0000000000000000")
    );
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (DAEMON_ID, DAEMON_ID, 0o770),
        "the socket belongs to the daemon's user and group, group-writable"
    );

    let member = run_helper(&socket, FRONTEND_ID, &[DAEMON_ID], "served");
    let out = String::from_utf8_lossy(&member.stdout);
    assert!(
        member.status.success() && out.contains("guest_cid=3"),
        "frontend in the group: {}\n{out}\n{}",
        member.status,
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = run_helper(&socket, OUTSIDER_ID, &[], "denied");
    let out = String::from_utf8_lossy(&outsider.stdout);
    assert!(
        outsider.status.success() && out.contains("permission denied"),
        "user outside the group: {}\n{out}\n{}",
        outsider.status,
        String::from_utf8_lossy(&outsider.stderr)
    );

    // Still serving after both, and stops cleanly as its user, removing its sockets.
    let pid_t = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: sending SIGTERM to our own child, whose PID we hold and have not reaped.
    assert_eq!(unsafe { libc::kill(pid_t, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = daemon.0.try_wait().expect("try_wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    assert!(!socket.exists(), "the socket is removed");
}

/// Not a test of its own: the frontend that [`runs_unprivileged_and_serves_only_its_group`]
/// runs as another user. Without its environment it does nothing.
#[test]
#[ignore = "helper process of runs_unprivileged_and_serves_only_its_group"]
fn frontend_helper() {
    let (Some(socket), Some(expect)) =
        (std::env::var_os(SOCKET_ENV), std::env::var(EXPECT_ENV).ok())
    else {
        eprintln!("frontend_helper: only run by runs_unprivileged_and_serves_only_its_group");
        return;
    };
    let connected = std::os::unix::net::UnixStream::connect(&socket);
    match expect.as_str() {
        "denied" => {
            let e = connected.expect_err("an outsider connected");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
            println!("permission denied");
        }
        "served" => {
            let mut fe = Frontend::from_stream(connected.expect("connect"), 2);
            let features = fe.get_features().expect("GET_FEATURES");
            assert_ne!(
                features & (1 << 30),
                0,
                "VHOST_USER_F_PROTOCOL_FEATURES offered"
            );
            let protocol = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
            assert!(
                protocol.contains(VhostUserProtocolFeatures::CONFIG),
                "{protocol:?}"
            );
            fe.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
                .expect("SET_PROTOCOL_FEATURES");
            fe.set_owner().expect("SET_OWNER");
            let (_, config) = fe
                .get_config(0, 8, VhostUserConfigFlags::empty(), &[0u8; 8])
                .expect("GET_CONFIG");
            let cid = u64::from_le_bytes(config.try_into().expect("8 bytes"));
            println!("guest_cid={cid}");
        }
        other => panic!("{EXPECT_ENV}={other}"),
    }
}
