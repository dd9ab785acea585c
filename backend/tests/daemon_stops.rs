//! The real `sockbypassd` stops within a second of SIGTERM whatever happened to its files: here
//! its socket directory is deleted first (as a service manager's or an admin's clean-up may),
//! so nothing can reach its listeners through the file system.

use std::time::{Duration, Instant};

mod support;

#[test]
fn sigterm_stops_the_daemon_even_with_its_sockets_deleted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path().join("run");
    std::fs::create_dir(&run).expect("socket dir");
    let d = run.display();
    let mut daemon = support::start(&[
        "--vm".into(),
        format!("name=web,cid=3,socket={d}/web.sock,uds={d}/web.vsock"),
        "--vm".into(),
        format!("name=db,cid=4,socket={d}/db.sock"),
    ]);
    support::wait_for_files(&mut daemon, &[run.join("web.sock"), run.join("db.sock")]);
    std::fs::remove_dir_all(&run).expect("delete the socket directory");

    let pid = libc::pid_t::try_from(daemon.0.id()).expect("pid fits");
    // SAFETY: sending a signal to our own child process, whose PID we hold.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let status = loop {
        if let Some(status) = daemon.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(5),
            "sockbypassd still runs {:?} after SIGTERM",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    println!("stopped {:?} after SIGTERM: {status}", sent.elapsed());
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "took {:?}",
        sent.elapsed()
    );
}
