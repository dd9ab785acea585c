//! The `sockbypass` binary end to end against a stand-in daemon: usage errors, an unreachable
//! or silent daemon, refusals, and what each command sends and prints.

mod support;

use sockbypass_ctl::protocol::{
    Answer, ControlError, ErrorKind, ReloadReport, Reply, Request, Stats, VmStats,
};
use support::{one_error_line, run, stderr, stdout, vm_info, FakeDaemon};

#[test]
fn usage_errors_are_one_line_and_status_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "requires a subcommand"),
        (&["vm"], "requires a subcommand"),
        (&["bogus"], "unrecognized subcommand 'bogus'"),
        (
            &["qemu-args"],
            "required arguments were not provided: <NAME>",
        ),
        (
            &["qemu-args", "vm1", "--memory", "1T"],
            "\"1T\" is not a size",
        ),
        (&["vm", "list", "--x"], "unexpected argument '--x'"),
        (&["stats", "extra"], "unexpected argument 'extra'"),
        (
            &["qemu-args", "vm1", "--json", "--one-per-line"],
            "cannot be used with",
        ),
    ];
    for (args, says) in cases {
        let line = one_error_line(&run(args), 2);
        assert!(
            line.contains(says),
            "{args:?}: {line:?} does not say {says:?}"
        );
    }
}

#[test]
fn help_is_no_error() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("qemu-args"));
}

#[test]
fn an_unreachable_control_socket_is_one_line_naming_it_and_status_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nobody-here.sock");
    let path = path.to_str().expect("UTF-8");
    let line = one_error_line(&run(&["--control", path, "vm", "list"]), 1);
    assert!(line.contains(path), "{line}");
    assert!(line.contains("No such file or directory"), "{line}");

    // The same through SOCKBYPASS_CONTROL.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sockbypass"))
        .args(["qemu-args", "vm1"])
        .env("SOCKBYPASS_CONTROL", path)
        .output()
        .expect("run sockbypass");
    let line = one_error_line(&out, 1);
    assert!(line.contains(path), "{line}");
}

#[test]
fn a_refusal_is_one_line_with_its_kind_and_status_1() {
    let d = FakeDaemon::start(|_| {
        Reply::Error(ControlError::new(
            ErrorKind::NoSuchVm,
            "no VM is named `ghost`",
        ))
    });
    let line = one_error_line(&d.run(&["qemu-args", "ghost"]), 1);
    assert_eq!(line, "sockbypass: no VM is named `ghost` (no_such_vm)");
    assert_eq!(
        d.requests(),
        [Request::VmGet {
            name: "ghost".into()
        }]
    );
    let line = one_error_line(&d.run(&["vm", "remove", "ghost"]), 1);
    assert_eq!(line, "sockbypass: no VM is named `ghost` (no_such_vm)");
}

#[test]
fn a_wrong_answer_is_an_error() {
    let d = FakeDaemon::start(|_| Reply::Ok(Answer::Removed("x".into())));
    let line = one_error_line(&d.run(&["vm", "list"]), 1);
    assert!(
        line.contains("`vm_list`") && line.contains("`removed`"),
        "{line}"
    );
}

#[test]
fn vm_add_sends_the_spec_as_given_and_prints_the_cid() {
    let d = FakeDaemon::start(|_| {
        Reply::Ok(Answer::Added(vm_info(
            "web",
            7,
            "/run/sockbypass/web.sock",
            &[],
        )))
    });
    let spec = "name=web,socket=/run/sockbypass/web.sock,groups=a+b";
    let out = d.run(&["vm", "add", spec]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "added VM web with CID 7: its VMM attaches to /run/sockbypass/web.sock\n"
    );
    assert_eq!(d.requests(), [Request::VmAdd { spec: spec.into() }]);
    let out = d.run(&["vm", "add", spec, "--json"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["cid"], 7);
}

#[test]
fn vm_list_as_a_table_and_as_json() {
    let d = FakeDaemon::start(|_| {
        let mut b = vm_info("b", 4, "/run/b.sock", &[("/run/b.window", 1 << 24)]);
        b.attached = true;
        b.ips = vec!["10.0.0.4".parse().expect("address")];
        Reply::Ok(Answer::Vms(vec![vm_info("a", 3, "/run/a.sock", &[]), b]))
    });
    let out = d.run(&["vm", "list"]);
    assert_eq!(
        stdout(&out),
        "NAME  CID  ATTACHED  ORIGIN   GROUPS  PORTS  IPS       WINDOWS  SOCKET\n\
         a     3    no        control  prod    any    -         0        /run/a.sock\n\
         b     4    yes       control  prod    any    10.0.0.4  1        /run/b.sock\n"
    );
    let out = d.run(&["vm", "list", "--json"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v[1]["attached"], true);
    assert_eq!(v[1]["ips"], serde_json::json!(["10.0.0.4"]));
    assert!(v[0].get("ips").is_none(), "no ips, no key: {text}");
    assert_eq!(v[1]["windows"][0]["size"], 1 << 24);
}

#[test]
fn stats_readable_and_json() {
    let d = FakeDaemon::start(|_| {
        Reply::Ok(Answer::Stats(Stats {
            vms: vec![VmStats {
                name: "a".into(),
                cid: 3,
                counters: [("tx_packets".to_owned(), 9), ("drop_policy".to_owned(), 0)].into(),
                gauges: [("connections".to_owned(), 2)].into(),
                fastpath: None,
            }],
            poll_threads: vec![[("loops".to_owned(), 100)].into()],
        }))
    });
    let out = d.run(&["stats"]);
    assert_eq!(
        stdout(&out),
        "VM a (CID 3)\n  counters\n    tx_packets  9\n  gauges\n    connections  2\n\
         poll thread 0\n    loops  100\n"
    );
    let text = stdout(&d.run(&["stats", "--json"]));
    assert_eq!(text.lines().count(), 1, "{text}");
    let back: Stats = serde_json::from_str(&text).expect("Stats JSON");
    assert_eq!(back.vms[0].counters["drop_policy"], 0, "JSON keeps zeros");
    assert_eq!(d.requests(), [Request::Stats {}, Request::Stats {}]);
}

#[test]
fn reload_reports_what_changed() {
    let d = FakeDaemon::start(|_| {
        Reply::Ok(Answer::Reloaded(ReloadReport {
            added: vec!["n".into()],
            removed: vec!["o".into()],
            ..ReloadReport::default()
        }))
    });
    let out = d.run(&["reload"]);
    assert_eq!(
        stdout(&out),
        "reloaded: added n; removed o; replaced -; updated -; unchanged -\n"
    );
    assert_eq!(d.requests(), [Request::Reload {}]);
}

fn windowed_daemon() -> FakeDaemon {
    FakeDaemon::start(|r| match r {
        Request::VmGet { name } if name == "vm1" => Reply::Ok(Answer::Vm(vm_info(
            "vm1",
            3,
            "/run/my vms/vm1.sock",
            &[("/run/my vms/vm1.window", 16 << 20)],
        ))),
        _ => Reply::Error(ControlError::new(ErrorKind::NoSuchVm, "no such VM")),
    })
}

#[test]
fn qemu_args_print_what_the_daemon_serves() {
    let d = windowed_daemon();
    let out = d.run(&["qemu-args", "vm1", "--memory", "2G"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "-object memory-backend-memfd,id=sbmem,size=2G,share=on -machine memory-backend=sbmem \
         -chardev 'socket,id=sbvsock,path=/run/my vms/vm1.sock' \
         -device vhost-user-vsock-pci,chardev=sbvsock \
         -object 'memory-backend-file,id=sbwin0,mem-path=/run/my vms/vm1.window,size=16777216,share=on' \
         -device ivshmem-plain,memdev=sbwin0\n"
    );
    assert!(out.stderr.is_empty());
    let lines = stdout(&d.run(&["qemu-args", "vm1", "--one-per-line"]));
    assert_eq!(lines.lines().count(), 12, "{lines}");
    assert_eq!(
        lines.lines().nth(5),
        Some("socket,id=sbvsock,path=/run/my vms/vm1.sock")
    );
    let json: Vec<String> =
        serde_json::from_str(&stdout(&d.run(&["qemu-args", "vm1", "--json"]))).expect("JSON");
    assert_eq!(json, lines.lines().collect::<Vec<_>>());
    assert_eq!(json[1], "memory-backend-memfd,id=sbmem,size=1G,share=on");
}

#[test]
fn ch_args_say_on_stderr_that_windows_are_not_attached() {
    let d = windowed_daemon();
    let out = d.run(&["ch-args", "vm1", "--one-per-line"]);
    assert_eq!(
        stdout(&out),
        "--memory\nsize=1G,shared=on\n--generic-vhost-user\n\
         socket=/run/my vms/vm1.sock,virtio_id=vsock,queue_sizes=[256,256,256]\n"
    );
    let err = stderr(&out);
    assert!(
        err.starts_with("# VM `vm1` has 1 fast-path window(s)"),
        "{err}"
    );
    assert!(err.contains("plain vsock"), "{err}");
}

#[test]
fn libvirt_xml_fragments_name_the_namespace() {
    let d = windowed_daemon();
    let out = d.run(&["libvirt-xml", "vm1"]);
    let xml = stdout(&out);
    assert!(xml.starts_with("<!-- sockbypass: VM vm1 (CID 3)."), "{xml}");
    assert!(
        xml.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"),
        "{xml}"
    );
    assert!(
        xml.contains("<qemu:arg value='ivshmem-plain,memdev=sbwin0'/>"),
        "{xml}"
    );
}

#[test]
fn a_daemon_that_closes_without_answering_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    let t = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        // Read the request, then close without a reply.
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&conn), &mut line)
            .expect("read the request");
        assert_eq!(line, "{\"op\":\"stats\"}\n");
        drop(conn);
    });
    let line = one_error_line(
        &run(&["--control", path.to_str().expect("UTF-8"), "stats"]),
        1,
    );
    t.join().expect("thread");
    assert!(line.contains("closed the control connection"), "{line}");
}
