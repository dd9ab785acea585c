//! The real `sockbypassd` binary's control socket (SPEC.md §14): mode 0600; a daemon started
//! with no VM; `vm_add`, `vm_list`, `vm_get`, `vm_remove` and `stats` through the client
//! library; a bad line answered without losing the connection; an overlong line and one
//! connection too many refused; a VM added at run time confined by seccomp; reloads by request
//! and by `SIGHUP` that apply a changed file's difference and leave run-time VMs alone, and a
//! broken file that changes nothing; `ips` listed, held by one VM, and updated in place by a
//! reload.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sockbypass_ctl::protocol::{Answer, ErrorKind, Origin, Reply, Request, VmInfo};
use sockbypass_ctl::{Client, ClientError};
use support::{start, wait_for_files, Daemon};

const DEADLINE: Duration = Duration::from_secs(20);

fn call(path: &Path, request: Request) -> Result<Answer, ClientError> {
    Client::connect(path).expect("connect").call(&request)
}

fn list(path: &Path) -> Vec<VmInfo> {
    match call(path, Request::VmList {}).expect("vm_list") {
        Answer::Vms(v) => v,
        other => panic!("vm_list answered {other:?}"),
    }
}

fn names(path: &Path) -> Vec<String> {
    list(path).into_iter().map(|v| v.name).collect()
}

fn refused(result: Result<Answer, ClientError>) -> ErrorKind {
    match result {
        Err(ClientError::Refused(e)) => {
            assert!(!e.message.is_empty() && !e.message.contains('\n'), "{e:?}");
            e.kind
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The daemon, started with `args` plus `--control DIR/control.sock`.
fn daemon(dir: &Path, args: &[String]) -> (Daemon, PathBuf) {
    let control = dir.join("control.sock");
    let mut all = args.to_vec();
    all.extend(["--control".into(), control.display().to_string()]);
    let mut d = start(&all);
    wait_for_files(&mut d, std::slice::from_ref(&control));
    (d, control)
}

fn signal(d: &Daemon, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(d.0.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child process, whose PID we hold.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Waits until the daemon's thread named `name` exists and shows seccomp mode `mode` (a
/// thread confines itself first thing, just after it starts); returns the mode last seen.
fn wait_thread_seccomp(pid: u32, name: &str, mode: u32) -> Option<u32> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = None;
    while Instant::now() < deadline {
        seen = seccomp_of_thread(pid, name);
        if seen == Some(mode) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// `Seccomp:` of the daemon's thread named `name`, if it exists.
fn seccomp_of_thread(pid: u32, name: &str) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in tasks.filter_map(Result::ok) {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_owned())
        };
        if field("Name:").as_deref() == Some(name) {
            return field("Seccomp:").and_then(|v| v.parse().ok());
        }
    }
    None
}

#[test]
fn vms_come_and_go_through_the_control_socket_of_a_daemon_started_with_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut d, control) = daemon(dir.path(), &[]);
    let meta = std::fs::metadata(&control).expect("control socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(list(&control).is_empty());

    let web = dir.path().join("web.sock");
    let spec = format!("name=web,socket={},groups=prod,ports=80+443", web.display());
    let added = match call(&control, Request::VmAdd { spec }).expect("vm_add") {
        Answer::Added(info) => info,
        other => panic!("vm_add answered {other:?}"),
    };
    assert_eq!((added.name.as_str(), added.cid), ("web", 3));
    assert_eq!(added.origin, Origin::Control);
    assert_eq!(added.ports, Some(vec![80, 443]));
    assert!(!added.attached);
    wait_for_files(&mut d, std::slice::from_ref(&web));
    // Its vhost-user server thread, started by the control thread, is confined, and so is the
    // control thread (by its own variant of the filter): the kill-mode filter let both do
    // their work, or the daemon would be dead.
    assert_eq!(wait_thread_seccomp(d.0.id(), "vm-web", 2), Some(2));
    assert_eq!(seccomp_of_thread(d.0.id(), "sb-control"), Some(2));

    let db = dir.path().join("db.sock");
    let spec = format!("name=db,cid=9,socket={}", db.display());
    call(&control, Request::VmAdd { spec }).expect("db added");
    assert_eq!(names(&control), ["web", "db"]);
    let spec = format!("name=x,cid=9,socket={}/x.sock", dir.path().display());
    assert_eq!(
        refused(call(&control, Request::VmAdd { spec })),
        ErrorKind::CidInUse
    );

    match call(&control, Request::Stats {}).expect("stats") {
        Answer::Stats(s) => {
            assert_eq!(s.vms.len(), 2);
            assert!(s.vms[0].counters.contains_key("drop_spoofed_src"));
            assert!(s.vms[0].gauges.contains_key("peer_conns"));
            assert_eq!(s.poll_threads.len(), 1, "adaptive mode, one thread");
            assert!(s.poll_threads[0].contains_key("loops"));
        }
        other => panic!("stats answered {other:?}"),
    }
    match call(&control, Request::VmRemove { name: "web".into() }).expect("remove") {
        Answer::Removed(name) => assert_eq!(name, "web"),
        other => panic!("vm_remove answered {other:?}"),
    }
    assert!(!web.exists(), "the removed VM's socket is gone");
    assert_eq!(
        refused(call(&control, Request::VmGet { name: "web".into() })),
        ErrorKind::NoSuchVm
    );
    // SIGTERM: a clean stop that removes the control socket.
    signal(&d, libc::SIGTERM);
    let status = d.0.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!control.exists());
}

#[test]
fn bad_lines_are_answered_and_the_socket_stays_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_d, control) = daemon(dir.path(), &[]);
    // One connection more than the limit is told so and closed; the others still serve.
    let max = sockbypassd::runtime::MAX_CLIENTS;
    let mut held: Vec<Client> = (0..max)
        .map(|_| Client::connect(&control).expect("connect"))
        .collect();
    for c in &mut held {
        c.call(&Request::VmList {}).expect("served");
    }
    let mut extra = Client::connect(&control).expect("connect");
    match extra.read_reply() {
        Ok(Reply::Error(e)) => assert_eq!(e.kind, ErrorKind::Exhausted, "{e:?}"),
        other => panic!("connection {}: {other:?}", max + 1),
    }
    drop(held);
    // Once they close, new connections are served again: this one, once one is.
    let deadline = Instant::now() + DEADLINE;
    let (mut reader, mut writer) = loop {
        let stream = UnixStream::connect(&control).expect("connect");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut reply = String::new();
        let served = writer.write_all(b"{\"op\":\"vm_list\"}\n").is_ok()
            && reader.read_line(&mut reply).is_ok()
            && matches!(serde_json::from_str(&reply), Ok(Reply::Ok(_)));
        if served {
            break (reader, writer);
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    };

    let mut ask = |line: &[u8]| -> Option<Reply> {
        writer.write_all(line).expect("write");
        let mut reply = String::new();
        let n = reader.read_line(&mut reply).expect("read");
        (n > 0).then(|| serde_json::from_str(&reply).expect("a reply"))
    };
    for bad in [
        &b"not json\n"[..],
        b"{\"op\":\"format_disk\"}\n",
        b"{\"op\":\"vm_remove\"}\n",
    ] {
        match ask(bad) {
            Some(Reply::Error(e)) => assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // The connection still serves.
    assert!(matches!(
        ask(b"{\"op\":\"vm_list\"}\n"),
        Some(Reply::Ok(Answer::Vms(_)))
    ));
    // A line over the limit: refused, then the connection is closed.
    let mut long = vec![b'x'; sockbypass_ctl::protocol::MAX_LINE_BYTES + 10];
    long.push(b'\n');
    match ask(&long) {
        Some(Reply::Error(e)) => assert_eq!(e.kind, ErrorKind::BadRequest),
        other => panic!("overlong line: {other:?}"),
    }
    assert!(
        ask(b"{\"op\":\"vm_list\"}\n").is_none(),
        "closed after the overlong line"
    );
}

/// A config file with one `[[vm]]` table per (name, cid, groups).
fn write_config(path: &Path, dir: &Path, vms: &[(&str, u64, &str)]) {
    let mut text = String::from("log_level = \"info\"\n");
    for (name, cid, group) in vms {
        text.push_str(&format!(
            "[[vm]]\nname = \"{name}\"\ncid = {cid}\nsocket = \"{}/{name}.sock\"\ngroups = [\"{group}\"]\n",
            dir.display()
        ));
    }
    std::fs::write(path, text).expect("write config");
}

#[test]
fn reload_applies_the_files_difference_and_keeps_run_time_vms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d_path = dir.path();
    let file = d_path.join("sockbypassd.toml");
    write_config(
        &file,
        d_path,
        &[("a", 3, "g"), ("b", 4, "g"), ("c", 5, "g")],
    );
    let (d, control) = daemon(d_path, &["--config".into(), file.display().to_string()]);
    let spec = format!("name=rt,socket={}/rt.sock", d_path.display());
    call(&control, Request::VmAdd { spec }).expect("rt added");
    assert_eq!(names(&control), ["a", "b", "c", "rt"]);

    // a unchanged, b gone, c's groups changed, d new.
    write_config(
        &file,
        d_path,
        &[("a", 3, "g"), ("c", 5, "h"), ("d", 7, "g")],
    );
    let report = match call(&control, Request::Reload {}).expect("reload") {
        Answer::Reloaded(r) => r,
        other => panic!("reload answered {other:?}"),
    };
    assert_eq!(report.unchanged, ["a"]);
    assert_eq!(report.removed, ["b"]);
    assert_eq!(report.replaced, ["c"]);
    assert_eq!(report.added, ["d"]);
    assert!(report.needs_restart.is_empty(), "{report:?}");
    let vms = list(&control);
    let mut got: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    got.sort_unstable();
    assert_eq!(got, ["a", "c", "d", "rt"]);
    let c = vms.iter().find(|v| v.name == "c").expect("c");
    assert_eq!(c.groups, ["h"]);
    assert!(!d_path.join("b.sock").exists());

    // A broken file changes nothing.
    std::fs::write(&file, "[[vm]]\nname = \"a\"\ncid = \"three\"\n").expect("write");
    let kind = refused(call(&control, Request::Reload {}));
    assert_eq!(kind, ErrorKind::InvalidConfig);
    // A file naming a run-time VM's CID changes nothing either.
    write_config(&file, d_path, &[("a", 3, "g"), ("z", 6, "g")]);
    let rt_cid = list(&control)
        .into_iter()
        .find(|v| v.name == "rt")
        .expect("rt")
        .cid;
    assert_eq!(rt_cid, 6, "rt got the lowest free CID");
    assert_eq!(
        refused(call(&control, Request::Reload {})),
        ErrorKind::CidInUse
    );
    let mut got = names(&control);
    got.sort_unstable();
    assert_eq!(got, ["a", "c", "d", "rt"]);

    // A file that would add a VM with the fast path (only a start can) changes nothing.
    write_config(
        &file,
        d_path,
        &[("a", 3, "g"), ("c", 5, "h"), ("d", 7, "g")],
    );
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str(&format!(
        "[[vm]]\nname = \"f\"\ncid = 20\nsocket = \"{}/f.sock\"\nfastpath = true\n",
        d_path.display()
    ));
    std::fs::write(&file, text).expect("write");
    assert_eq!(
        refused(call(&control, Request::Reload {})),
        ErrorKind::InvalidConfig
    );
    let mut got = names(&control);
    got.sort_unstable();
    assert_eq!(got, ["a", "c", "d", "rt"]);

    // SIGHUP does the same as the request: e goes in, the rest of the file's VMs go out.
    write_config(&file, d_path, &[("e", 8, "g")]);
    signal(&d, libc::SIGHUP);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut got = names(&control);
        got.sort_unstable();
        if got == ["e", "rt"] {
            break;
        }
        assert!(Instant::now() < deadline, "after SIGHUP: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d_path.join("e.sock").exists());
}

/// The inode of the file at `path`: a VM whose socket was bound again has a new one.
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).expect("socket exists").ino()
}

#[test]
fn addresses_are_listed_held_by_one_vm_and_updated_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d_path = dir.path();
    let file = d_path.join("sockbypassd.toml");
    let write = |ips: &str| {
        let text = format!(
            "[[vm]]\nname = \"a\"\ncid = 3\nsocket = \"{}/a.sock\"\ngroups = [\"g\"]\nips = [{ips}]\n",
            d_path.display()
        );
        std::fs::write(&file, text).expect("write config");
    };
    write("\"10.0.0.3\", \"fd00::3\"");
    let (_d, control) = daemon(d_path, &["--config".into(), file.display().to_string()]);
    let a = || {
        list(&control)
            .into_iter()
            .find(|v| v.name == "a")
            .expect("a listed")
    };
    let ips = |v: &VmInfo| v.ips.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(ips(&a()), ["10.0.0.3", "fd00::3"]);

    // An address another VM has is refused with its own kind; a free one is taken.
    let spec = |ips: &str| format!("name=rt,socket={}/rt.sock,ips={ips}", d_path.display());
    assert_eq!(
        refused(call(
            &control,
            Request::VmAdd {
                spec: spec("10.0.0.3")
            }
        )),
        ErrorKind::IpInUse
    );
    assert_eq!(
        refused(call(
            &control,
            Request::VmAdd {
                spec: spec("127.0.0.1")
            }
        )),
        ErrorKind::InvalidConfig
    );
    assert_eq!(names(&control), ["a"]);
    match call(
        &control,
        Request::VmAdd {
            spec: spec("10.0.0.9"),
        },
    )
    .expect("rt added")
    {
        Answer::Added(v) => assert_eq!(ips(&v), ["10.0.0.9"]),
        other => panic!("vm_add answered {other:?}"),
    }

    // Only the addresses changed: updated in place, the socket is not bound again.
    let before = inode(&d_path.join("a.sock"));
    write("\"10.0.0.4\"");
    let report = match call(&control, Request::Reload {}).expect("reload") {
        Answer::Reloaded(r) => r,
        other => panic!("reload answered {other:?}"),
    };
    assert_eq!(report.updated, ["a"], "{report:?}");
    assert!(report.replaced.is_empty(), "{report:?}");
    assert_eq!(ips(&a()), ["10.0.0.4"]);
    assert_eq!(inode(&d_path.join("a.sock")), before, "a was bound again");

    // A file taking the run-time VM's address changes nothing.
    write("\"10.0.0.9\"");
    assert_eq!(
        refused(call(&control, Request::Reload {})),
        ErrorKind::IpInUse
    );
    assert_eq!(ips(&a()), ["10.0.0.4"]);
}
