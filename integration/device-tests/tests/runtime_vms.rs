//! VMs added and removed while the daemon runs (SPEC.md §14.3): a VM added at run time talks to
//! its group while two others stream on, and they never notice; a VM removed at run time resets
//! every connection its peers had with it, its CID is unreachable afterwards, and its name, CID
//! and socket can be used again; requests that would clash with a running VM change nothing.

use std::time::{Duration, Instant};

use harness::peers::{assert_same_bytes, connect_peers, drive};
use harness::transfer::{run, Job};
use harness::{random_bytes, wait_until, Harness, VmSpec};
use sockbypass_ctl::protocol::{ErrorKind, Origin};
use sockbypass_frontend::{StreamState, TestVm};
use sockbypassd::runtime::VmSet;
use std::sync::Arc;

const T: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

fn vm_set(h: &Harness) -> Arc<VmSet> {
    h.daemon.as_ref().expect("daemon").vm_set().clone()
}

/// The spec of a run-time VM `name` in the harness directory, group `test`, no CID.
fn spec(h: &Harness, name: &str) -> String {
    format!(
        "name={name},socket={},groups=test",
        h.dir.path().join(format!("{name}.sock")).display()
    )
}

/// `a` and `b` exchange `n` bytes each way on a fresh connection to `port` of `b`.
fn exchange(a: &mut TestVm, b: &mut TestVm, port: u32, n: usize, seed: u64) {
    let (ida, idb) = connect_peers(a, b, port, T);
    let (up, down) = (random_bytes(n, seed), random_bytes(n, seed + 1));
    let mut ja = [Job::new(ida, up.clone(), n, seed + 2)];
    let mut jb = [Job::new(idb, down.clone(), n, seed + 3)];
    std::thread::scope(|s| {
        s.spawn(|| run(a.driver_mut(), &mut ja, T, "a"));
        s.spawn(|| run(b.driver_mut(), &mut jb, T, "b"));
    });
    assert_same_bytes(&jb[0].got, &up, "client → server");
    assert_same_bytes(&ja[0].got, &down, "server → client");
}

#[test]
fn vms_added_at_run_time_talk_while_the_running_ones_stream_undisturbed() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let set = vm_set(&h);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    std::thread::scope(|s| {
        // a and b stream 8 MiB each way for the whole time the VMs come and go.
        let streaming = s.spawn(|| exchange(&mut a, &mut b, 5000, 8 * MIB, 10));
        let c = set
            .add_spec(&spec(&h, "c"), Origin::Control)
            .expect("c added");
        let d = set
            .add_spec(&spec(&h, "d"), Origin::Control)
            .expect("d added");
        // The lowest free CIDs.
        assert_eq!((c.cid, d.cid), (5, 6));
        let (mut c, mut d) = (h.vm("c"), h.vm("d"));
        exchange(&mut c, &mut d, 6000, MIB, 20);
        set.remove("d").expect("d removed");
        streaming.join().expect("a and b streamed");
        assert!(!h.socket("d").exists(), "a removed VM's socket is gone");
    });
    // And the new VM reaches the old ones.
    let mut c = TestVm::connect(h.socket("c"), Default::default()).expect("c reconnects");
    h.wait_attached("c");
    exchange(&mut c, &mut a, 7000, 64 * 1024, 30);
    let info = set.get("c").expect("c listed");
    assert_eq!(info.origin, Origin::Control);
    assert!(info.attached);
    assert_eq!(
        set.list()
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
}

#[test]
fn removing_a_vm_resets_its_peers_and_its_name_cid_and_socket_can_be_used_again() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let set = vm_set(&h);
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    let (ida, _idb) = connect_peers(&mut a, &mut b, 5000, T);
    assert_eq!(h.gauges("a").peer_conns, 1);
    let removed_at = Instant::now();
    set.remove("b").expect("b removed");
    a.driver_mut()
        .wait_state(ida, |s| s == StreamState::Reset, T)
        .expect("a's connection with b is reset");
    assert!(
        removed_at.elapsed() < Duration::from_secs(2),
        "the RST came after {:?}",
        removed_at.elapsed()
    );
    assert_eq!(h.gauges("a").peer_conns, 0, "a's entry is freed");
    assert!(!h.socket("b").exists());
    assert!(!h.uds("b").exists());
    // b's frontend lost its device; a connect to CID 4 is refused with an RST.
    drop(b);
    let id = a.driver_mut().connect(4, 5001).expect("REQUEST queued");
    drive(&mut [&mut a], T, "the RST for a removed CID", |vms| {
        vms[0].driver().state(id).expect("state") == StreamState::Reset
    });
    assert_eq!(h.counters("a").drop_peer_unreachable, 1);
    // The same name, CID and socket again.
    let again = set
        .add_spec(&format!("{},cid=4", spec(&h, "b")), Origin::Control)
        .expect("b added again");
    assert_eq!(again.cid, 4);
    let mut b = h.vm("b");
    exchange(&mut a, &mut b, 5002, 256 * 1024, 40);
}

#[test]
fn a_request_that_clashes_with_a_running_vm_changes_nothing() {
    let h = Harness::start(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]);
    let set = vm_set(&h);
    let dir = h.dir.path().display().to_string();
    let cases = [
        (format!("name=a,socket={dir}/x.sock"), ErrorKind::NameInUse),
        (
            format!("name=x,cid=4,socket={dir}/x.sock"),
            ErrorKind::CidInUse,
        ),
        (format!("name=x,socket={dir}/a.sock"), ErrorKind::PathInUse),
        (
            format!("name=x,socket={dir}/x.sock,uds={dir}/a.vsock"),
            ErrorKind::PathInUse,
        ),
        (
            format!("name=x,cid=2,socket={dir}/x.sock"),
            ErrorKind::InvalidConfig,
        ),
        (
            format!("name=x,socket={dir}/x.sock,colour=red"),
            ErrorKind::InvalidConfig,
        ),
        (
            format!("name=x,socket={dir}/no/such/dir/x.sock"),
            ErrorKind::InvalidConfig,
        ),
        (
            format!("name=x,socket={dir}/x.sock,fastpath=on"),
            ErrorKind::InvalidConfig,
        ),
    ];
    for (spec, kind) in cases {
        let e = set
            .add_spec(&spec, Origin::Control)
            .expect_err(&format!("{spec} is refused"));
        assert_eq!(e.kind, kind, "{spec}: {e}");
        assert!(!e.message.contains('\n'), "one line: {e}");
    }
    assert_eq!(set.remove("x").expect_err("no x").kind, ErrorKind::NoSuchVm);
    assert_eq!(set.list().len(), 2);
    assert!(!h.dir.path().join("x.sock").exists());
    // The running VMs still talk.
    let (mut a, mut b) = (h.vm("a"), h.vm("b"));
    exchange(&mut a, &mut b, 5000, 64 * 1024, 50);
    assert!(wait_until(T, || h.gauges("a").peer_conns <= 1));
}
