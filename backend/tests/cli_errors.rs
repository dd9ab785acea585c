//! The real `sockbypassd` binary rejects bad configurations with exit status 2 and exactly one
//! line on stderr that starts with `sockbypassd: ` and names the problem.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a refused configuration may take to exit: a configuration accepted by mistake
/// starts a daemon that would otherwise run forever.
const EXIT_WITHIN: Duration = Duration::from_secs(20);

/// Runs the binary with `args` until it exits; kills it and fails after [`EXIT_WITHIN`].
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sockbypassd"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sockbypassd");
    let deadline = Instant::now() + EXIT_WITHIN;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("args {args:?}: still running after {EXIT_WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("sockbypassd's output")
}

/// Runs the binary with `args` and returns its stderr after checking status 2 and one line.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8(out.stderr).expect("stderr is UTF-8");
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}, stderr {stderr:?}"
    );
    assert!(out.stdout.is_empty(), "args {args:?}: unexpected stdout");
    let line = stderr
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("stderr does not end in a newline: {stderr:?}"));
    assert!(!line.contains('\n'), "stderr is not one line: {stderr:?}");
    assert!(line.starts_with("sockbypassd: "), "stderr: {stderr:?}");
    line.to_owned()
}

/// A valid `--vm` spec whose sockets live in `dir`.
fn spec(dir: &Path, name: &str, cid: u64) -> String {
    format!(
        "name={name},cid={cid},socket={d}/{name}.sock,uds={d}/{name}.vsock",
        d = dir.display()
    )
}

fn assert_mentions(line: &str, fact: &str) {
    assert!(line.contains(fact), "{line:?} does not mention {fact:?}");
}

#[test]
fn duplicate_cid() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&[
        "--vm",
        &spec(dir.path(), "web", 7),
        "--vm",
        &spec(dir.path(), "db", 7),
    ]);
    assert_eq!(
        line,
        "sockbypassd: CID 7 is used by both VM `web` and VM `db`"
    );
}

#[test]
fn cid_2_is_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["--vm", &spec(dir.path(), "web", 2)]);
    assert_mentions(&line, "VM `web`");
    assert_mentions(&line, "CID 2 ");
}

#[test]
fn cid_u32_max_is_vmaddr_cid_any() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&["--vm", &spec(dir.path(), "web", u64::from(u32::MAX))]);
    assert_mentions(&line, "VM `web`");
    assert_mentions(&line, "4294967295");
}

#[test]
fn duplicate_name() {
    let dir = tempfile::tempdir().unwrap();
    let second = format!("name=web,cid=4,socket={}/other.sock", dir.path().display());
    let line = fails(&["--vm", &spec(dir.path(), "web", 3), "--vm", &second]);
    assert_mentions(&line, "VM name `web`");
}

#[test]
fn duplicate_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("shared.sock");
    let a = format!("name=a,cid=3,socket={}", socket.display());
    let b = format!("name=b,cid=4,socket={}", socket.display());
    let line = fails(&["--vm", &a, "--vm", &b]);
    assert_eq!(
        line,
        format!(
            "sockbypassd: socket path {} is used by both VM `a` and VM `b`",
            socket.display()
        )
    );
}

#[test]
fn missing_uds_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let a = format!(
        "name=a,cid=3,socket={}/a.sock,uds={}/a.vsock",
        dir.path().display(),
        missing.display()
    );
    let line = fails(&["--vm", &a]);
    assert_mentions(&line, "VM `a`");
    assert_mentions(&line, "uds directory");
    assert_mentions(&line, &missing.display().to_string());
}

#[test]
fn unknown_key_in_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sockbypass.toml");
    let d = dir.path().display();
    std::fs::write(
        &file,
        format!(
            "log_level = \"info\"\n\n[[vm]]\nname = \"web\"\ncid = 3\nsocket = \"{d}/web.sock\"\n\n[[vm]]\nname = \"db\"\ncidd = 4\nsocket = \"{d}/db.sock\"\n"
        ),
    )
    .unwrap();
    let line = fails(&["--config", file.to_str().unwrap()]);
    assert_eq!(
        line,
        format!(
            "sockbypassd: {}:10: unknown key `cidd` in [[vm]]",
            file.display()
        )
    );
}

#[test]
fn unknown_key_in_vm_spec() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!(
        "name=a,cid=3,socket={}/a.sock,colour=blue",
        dir.path().display()
    );
    let line = fails(&["--vm", &a]);
    assert_mentions(&line, "unknown key `colour`");
}

#[test]
fn missing_cid_in_vm_spec() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("name=a,socket={}/a.sock", dir.path().display());
    let line = fails(&["--vm", &a]);
    assert_mentions(&line, "missing required key `cid`");
}

#[test]
fn no_vms() {
    let line = fails(&[]);
    assert_eq!(
        line,
        "sockbypassd: no VMs configured: give --vm or --config, or --control to add VMs at run time"
    );
}

#[test]
fn invalid_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails(&[
        "--vm",
        &spec(dir.path(), "web", 3),
        "--log-level",
        "sockbypassd=loud",
    ]);
    assert_mentions(&line, "invalid log level `sockbypassd=loud`");
}

#[test]
fn invalid_poll_settings() {
    let dir = tempfile::tempdir().unwrap();
    let vm = spec(dir.path(), "web", 3);
    let line = fails(&["--vm", &vm, "--poll-mode", "spin"]);
    assert_mentions(&line, "invalid poll mode `spin`");
    let line = fails(&["--vm", &vm, "--poll-threads", "0"]);
    assert_mentions(&line, "poll threads must be at least 1");
    let line = fails(&["--vm", &vm, "--poll-threads", "many"]);
    assert_mentions(&line, "--poll-threads: `many` is not a number");
    let line = fails(&["--vm", &vm, "--poll-cpus", "4-2"]);
    assert_mentions(&line, "invalid CPU list `4-2`");
    let line = fails(&["--vm", &vm, "--poll-cpus", "4096"]);
    assert_mentions(&line, "CPU 4096");
}

#[test]
fn huge_cpu_ranges_fail_before_they_are_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let vm = spec(dir.path(), "web", 3);
    // Expanded first, this range would need about 800 GB.
    let line = fails(&["--vm", &vm, "--poll-cpus", "0-99999999999"]);
    assert_mentions(&line, "CPU 99999999999");
    assert_mentions(&line, "below 1024");
    let line = fails(&["--vm", &vm, "--poll-cpus", "0-1024"]);
    assert_mentions(&line, "CPU 1024");
}

#[test]
fn limits_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock,max_conns=5000"),
    ]);
    assert_mentions(&line, "max_conns must be in 1..=1024, got 5000");
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock,max_conns=8,max_conns_per_peer=9"),
    ]);
    assert_mentions(&line, "max_conns_per_peer must be in 1..=8");
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock,fastpath=on"),
        "--pair",
        "web,db",
    ]);
    assert_mentions(&line, "pair web+db: no VM has that name");
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock"),
        "--pair",
        "web",
    ]);
    assert_mentions(&line, "--pair `web`: expected VM,VM[,size=BYTES]");
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock,fastpath=on,fastpath_size=3145728"),
    ]);
    assert_mentions(
        &line,
        "VM `web`: fastpath_size: window size 3145728 bytes: must be a power of two from 1 MiB to 1 GiB",
    );
    let line = fails(&[
        "--vm",
        &format!("name=web,cid=3,socket={d}/w.sock,host_buffer_bytes=100"),
    ]);
    assert_mentions(
        &line,
        "host_buffer_bytes must be in 4096..=1073741824, got 100",
    );
    let vm = spec(dir.path(), "web", 3);
    let line = fails(&["--vm", &vm, "--half-open-timeout-ms", "0"]);
    assert_mentions(&line, "half-open timeout must be in 1..=3600000 ms, got 0");
    let line = fails(&["--vm", &vm, "--half-open-timeout-ms", "soon"]);
    assert_mentions(&line, "--half-open-timeout-ms: `soon` is not a number");
    let line = fails(&["--vm", &vm, "--rx-stall-timeout-ms", "99999999"]);
    assert_mentions(
        &line,
        "RX-stall timeout must be in 1..=3600000 ms, got 99999999",
    );
}

#[test]
fn invalid_seccomp_mode() {
    let dir = tempfile::tempdir().unwrap();
    let vm = spec(dir.path(), "web", 3);
    let line = fails(&["--vm", &vm, "--seccomp", "strict"]);
    assert_eq!(
        line,
        "sockbypassd: invalid seccomp mode `strict`: expected off, log or kill"
    );
    let file = dir.path().join("sockbypass.toml");
    std::fs::write(
        &file,
        format!(
            "seccomp = \"on\"\n[[vm]]\nname = \"web\"\ncid = 3\nsocket = \"{}/web.sock\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let line = fails(&["--config", file.to_str().unwrap()]);
    assert_mentions(&line, "invalid seccomp mode `on`");
}
