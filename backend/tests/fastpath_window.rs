//! The real `sockbypassd`, confined by its seccomp filter, creates the fast-path window of a
//! VM with `fastpath=on` beside its vhost-user socket (SPEC.md §13.1): the configured size, a
//! header a guest can check, and a new epoch after a restart. A VM without it gets no window; a
//! `--pair` gets its pair window.

use std::path::Path;
use std::time::Duration;

use sockbypass_wire::fastpath::layout::{WindowHeader, WindowKind};

mod support;
use support::Daemon;

fn start(dir: &Path) -> Daemon {
    let d = dir.display();
    let mut daemon = support::start(&[
        "--vm".into(),
        format!("name=web,cid=3,socket={d}/web.sock,fastpath=on,fastpath_size=2097152"),
        "--vm".into(),
        format!("name=db,cid=4,socket={d}/db.sock"),
        "--vm".into(),
        format!("name=app,cid=9,socket={d}/app.sock,fastpath=on,fastpath_size=1048576"),
        "--pair".into(),
        "app,web,size=1048576".into(),
    ]);
    let sockets = ["web.sock", "db.sock", "app.sock"].map(|s| dir.join(s));
    support::wait_for_files(&mut daemon, &sockets);
    daemon
}

#[test]
fn a_vm_with_fastpath_gets_its_window_and_a_restart_a_new_epoch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let window = dir.path().join("web.window");
    for epoch in 1..=2 {
        let mut daemon = start(dir.path());
        let bytes = std::fs::read(&window).expect("the window file");
        assert_eq!(bytes.len(), 2 << 20);
        let h = WindowHeader::decode(&bytes).expect("a header a guest can read");
        assert_eq!((h.kind, h.cid, h.epoch), (WindowKind::Own, 3, epoch));
        assert_eq!(h.geometry.slots(), 15);
        assert!(
            !dir.path().join("db.window").exists(),
            "db has no fast path"
        );
        let pair = std::fs::read(dir.path().join("app+web.window")).expect("the pair window");
        let h = WindowHeader::decode(&pair).expect("a pair header");
        assert_eq!(
            (h.kind, h.cid, h.peer_cid, h.epoch),
            (WindowKind::Pair, 3, 9, epoch)
        );
        assert_eq!(pair.len(), 1 << 20);
        // Still running under its filter: the window was made before any thread was confined.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            daemon.0.try_wait().expect("wait").is_none(),
            "sockbypassd died"
        );
        drop(daemon);
        // Killed: its socket files stay. Removed, so that the next start is seen by its own.
        for sock in ["web.sock", "db.sock", "app.sock"] {
            std::fs::remove_file(dir.path().join(sock)).expect("remove a socket file");
        }
    }
}
