//! End to end with real guests (issue 4): Debian kernels under QEMU, attached to `sockbypassd`
//! through `vhost-user-vsock-pci`, using stock `AF_VSOCK` in the guests (`sbtool`). Covers
//! SPEC.md §4 (routing), §4.2 (delivery), §6 (host endpoints), §7 (policy) and §8.3 (a VM that
//! dies, and its replacement on the same socket).
//!
//! These tests boot VMs, so `cargo test` skips them (`#[ignore]`); `ci/e2e.sh` builds the
//! guest image and runs them with `--ignored`. A test that cannot run (no guest image, no
//! QEMU) fails with `CI=true`, and elsewhere is skipped with the reason.
//! Under TCG (no working KVM) a boot takes seconds and every figure is slow; no timing is
//! asserted except that a refused connect fails at once rather than hanging.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{
    accept_within, cannot_run, harness_config, test_poll_config, wait_until, Harness, VmSpec,
};
use serde_json::Value;
use sockbypass_guests::accel::{self, Accel};
use sockbypass_guests::image::GuestImage;
use sockbypass_guests::qemu::{qemu_version, GuestSpec, QemuGuest};
use sockbypass_guests::results::results_of;
use sockbypass_guests::sbtool::wait_for_server;
use sockbypassd::config::PairConfig;

const BOOT: Duration = Duration::from_secs(180);
const RUN: Duration = Duration::from_secs(300);
const PORT: u32 = 5000;
/// Fast-path windows in these tests: 124 slots, enough for `many 64`.
const FASTPATH_SIZE: u64 = 16 << 20;

struct Setup {
    h: Harness,
    image: GuestImage,
    accel: Accel,
}

/// The daemon, the guest image and the accelerator; `None` (after printing why) when the
/// image or QEMU is missing outside CI.
fn setup(vms: &[VmSpec]) -> Option<Setup> {
    setup_with_pairs(vms, &[])
}

/// Like [`setup`], with fast-path pairs (SPEC.md §13.1).
fn setup_with_pairs(vms: &[VmSpec], pairs: &[[&str; 2]]) -> Option<Setup> {
    let image = match GuestImage::ensure() {
        Ok(image) => image,
        Err(e) => {
            return cannot_run(&format!(
                "the guest image could not be built (integration/guest/build-image.sh): {e}"
            ))
        }
    };
    match qemu_version() {
        Ok(version) => eprintln!("QEMU: {version}"),
        Err(e) => return cannot_run(&format!("QEMU cannot run: {e}")),
    }
    let cache = image.kernel.parent().expect("cache dir").to_path_buf();
    let (accel, why) = accel::choose(&image, &cache).expect("accelerator");
    eprintln!("accelerator: {why}");
    let (mut config, dir) = harness_config(vms, test_poll_config());
    config.pairs = pairs
        .iter()
        .map(|[a, b]| PairConfig {
            vms: [(*a).into(), (*b).into()],
            size: FASTPATH_SIZE,
        })
        .collect();
    Some(Setup {
        h: Harness::start_config((config, dir)),
        image,
        accel,
    })
}

impl Setup {
    fn boot(&self, name: &str, command: &str) -> QemuGuest {
        self.boot_with_windows(name, command, Vec::new())
    }

    /// Boots `name` with `windows` as its `ivshmem-plain` devices (SPEC.md §13.1).
    fn boot_with_windows(&self, name: &str, command: &str, windows: Vec<PathBuf>) -> QemuGuest {
        let spec = GuestSpec {
            name: name.into(),
            memory_mib: 256,
            vsock_socket: Some(self.h.socket(name)),
            nic: None,
            windows,
            command: command.into(),
            serial_log: self.h.dir.path().join(format!("{name}.serial.log")),
        };
        let mut g = QemuGuest::spawn(&spec, &self.image, self.accel, None).expect("QEMU starts");
        let t = g.wait_ready(BOOT).expect("guest boots");
        eprintln!("{name}: booted in {t:.1?}");
        g
    }

    fn log_dir(&self) -> &Path {
        self.h.dir.path()
    }
}

fn only(log: &str, mode: &str) -> Value {
    let mut r = results_of(log, mode);
    assert_eq!(r.len(), 1, "one `{mode}` result in:\n{log}");
    r.remove(0)
}

fn serve() -> String {
    format!("sbtool serve --vsock-port {PORT}")
}

#[test]
#[ignore = "boots QEMU guests: run by ci/test.sh with --ignored"]
fn stock_af_vsock_between_guests_to_the_host_and_across_groups() {
    let Some(s) = setup(&[
        VmSpec::new("a", 3),
        VmSpec::new("b", 4),
        VmSpec::new("c", 5).groups(&["other"]),
    ]) else {
        return;
    };
    // A host echo server where guests reach CID 2 port 6000.
    let listener = s.h.host_listener("b", 6000);
    let echo = std::thread::spawn(move || {
        // b connects once both guests booted and its other checks ran, all within its run.
        let mut c = accept_within(&listener, 2 * BOOT + RUN, "the host echo program");
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + RUN;
        loop {
            assert!(
                Instant::now() < deadline,
                "the guest's echo stream did not end"
            );
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let _a = s.boot("a", &serve());
    let mut b = s.boot(
        "b",
        &format!(
            "{}sbtool verify vsock:3:{PORT} --bytes 8388608; \
             sbtool many vsock:3:{PORT} --conns 64 --bytes 65536; \
             sbtool verify vsock:2:6000 --bytes 1048576",
            wait_for_server(&format!("vsock:3:{PORT}"))
        ),
    );
    let (status, log) = b.wait_exit(RUN).expect("b's checks finish");
    let verify = results_of(&log, "verify");
    assert_eq!(verify.len(), 2, "two verify results:\n{log}");
    assert_eq!(
        verify[0]["ok"], true,
        "8 MiB guest→guest echo: {}",
        verify[0]
    );
    assert_eq!(verify[0]["bytes"], 8_388_608);
    assert_eq!(verify[1]["ok"], true, "guest→host echo: {}", verify[1]);
    let many = only(&log, "many");
    assert_eq!(many["ok"], true, "64 connections: {many}");
    assert_eq!(many["conns"], 64);
    assert_eq!(status, 0, "b's script succeeded:\n{log}");
    echo.join().expect("echo thread");
    let kb = s.h.counters("b");
    // 8 MiB of verify and 64 × 64 KiB of many went from b to a through the switch.
    assert!(
        kb.fwd_bytes >= 8_388_608 + 64 * 65_536,
        "b's bytes went through the switch: {kb:?}"
    );

    // c is in another group: its connect to a fails at once, with an RST.
    let mut c = s.boot("c", &format!("sbtool connect vsock:3:{PORT}"));
    let (_, log) = c.wait_exit(RUN).expect("c's connect returns");
    let r = only(&log, "connect");
    assert_eq!(r["ok"], false, "{r}");
    let errno = r["errno"].as_i64().unwrap_or(0);
    assert!(
        errno == i64::from(libc::ECONNRESET) || errno == i64::from(libc::ECONNREFUSED),
        "refused with ECONNRESET or ECONNREFUSED: {r}"
    );
    let ms = r["elapsed_ms"].as_f64().unwrap_or(f64::MAX);
    assert!(ms < 2000.0, "failed at once, not after a timeout: {r}");
    assert!(s.h.counters("c").drop_policy >= 1, "the switch refused it");
    eprintln!("logs in {}", s.log_dir().display());
}

#[test]
#[ignore = "boots QEMU guests: run by ci/test.sh with --ignored"]
fn a_guest_killed_mid_stream_and_a_new_vm_on_the_same_socket() {
    let Some(s) = setup(&[VmSpec::new("a", 3), VmSpec::new("b", 4)]) else {
        return;
    };
    let mut a = s.boot("a", &serve());
    let addr = format!("vsock:3:{PORT}");
    let mut b = s.boot(
        "b",
        &format!(
            "{wait}sbtool bulk {addr} --seconds 120; \
             {wait}sbtool verify {addr} --bytes 1048576",
            wait = wait_for_server(&addr)
        ),
    );
    // Kill a once b's stream is flowing.
    assert!(
        wait_until(BOOT, || s.h.counters("a").rx_bytes > 1 << 20),
        "b's stream reached a"
    );
    a.kill();
    assert!(
        wait_until(Duration::from_secs(10), || !s.h.is_attached("a")),
        "a detached"
    );
    let log = b
        .wait_for("b's bulk to fail", Duration::from_secs(60), |l| {
            !results_of(l, "bulk").is_empty()
        })
        .expect("b's stream ends, it does not hang");
    let bulk = only(&log, "bulk");
    assert_eq!(bulk["ok"], false, "the stream failed: {bulk}");
    let errno = bulk["errno"].as_i64().unwrap_or(0);
    assert!(
        errno == i64::from(libc::ECONNRESET) || errno == i64::from(libc::EPIPE),
        "with ECONNRESET (or EPIPE on a write after the RST): {bulk}"
    );

    // A new VM on the same socket serves b again.
    let _a2 = s.boot("a", &serve());
    let (status, log) = b.wait_exit(RUN).expect("b's second check finishes");
    let verify = only(&log, "verify");
    assert_eq!(verify["ok"], true, "{verify}");
    assert_eq!(status, 0, "{log}");
}

/// A VM with a fast-path window.
fn fast(name: &'static str, cid: u64) -> VmSpec {
    VmSpec::new(name, cid).fastpath(FASTPATH_SIZE)
}

/// b's fast-path checks against a's `serve --fastpath`: rtt, bulk, verify 8 MiB and many 64.
fn fastpath_checks() -> String {
    let addr = format!("vsock:3:{PORT}");
    format!(
        "{wait}sbtool rtt {addr} --count 200 --fastpath; \
         sbtool bulk {addr} --seconds 3 --fastpath; \
         sbtool verify {addr} --bytes 8388608 --fastpath; \
         sbtool many {addr} --conns 64 --bytes 65536 --fastpath",
        wait = wait_for_server(&addr)
    )
}

/// Checks b's four results: each ok and each over `path`.
fn assert_fastpath_results(log: &str, path: &str) {
    for mode in ["rtt", "bulk", "verify", "many"] {
        let r = only(log, mode);
        assert_eq!(r["ok"], true, "{mode} over the fast path: {r}");
        let got = if mode == "many" {
            r["paths"][path].as_u64() == Some(64)
        } else {
            r["path"] == path
        };
        assert!(got, "{mode} went over {path}: {r}");
    }
    assert_eq!(only(log, "verify")["bytes"], 8_388_608);
}

/// Boots a (the server, `windows("a")`) and b, which runs [`fastpath_checks`] and then a
/// 120 s bulk stream to be cut by [`kill_mid_stream`]; checks b's four results over `path`
/// and that its data did not cross as vsock packets, and returns both guests.
fn fastpath_pair_run(
    s: &Setup,
    windows: impl Fn(&str) -> Vec<PathBuf>,
    path: &str,
) -> (QemuGuest, QemuGuest) {
    let a = s.boot_with_windows(
        "a",
        &format!("sbtool serve --vsock-port {PORT} --fastpath"),
        windows("a"),
    );
    let addr = format!("vsock:3:{PORT}");
    let mut b = s.boot_with_windows(
        "b",
        &format!(
            "{}; sbtool bulk {addr} --seconds 120 --fastpath",
            fastpath_checks()
        ),
        windows("b"),
    );
    let log = b
        .wait_for("b's four checks", RUN, |l| {
            !results_of(l, "many").is_empty()
        })
        .expect("b's checks finish");
    assert_fastpath_results(&log, path);
    // Not as vsock packets: b's switch-forwarded bytes are the control channel and the
    // wait-for-server connects only.
    let kb = s.h.counters("b");
    assert!(
        kb.fwd_bytes < 1 << 20,
        "b's data did not cross as vsock RW packets: {kb:?}"
    );
    (a, b)
}

/// Kills `a` while `b`'s last command, a 120 s bulk stream over the fast path, runs: b's
/// connection fails cleanly with ECONNRESET (or EPIPE), it does not hang.
fn kill_mid_stream(a: &mut QemuGuest, b: &mut QemuGuest) {
    std::thread::sleep(Duration::from_secs(5));
    a.kill();
    let log = b
        .wait_for("b's bulk to fail", Duration::from_secs(60), |l| {
            results_of(l, "bulk").len() == 2
        })
        .expect("b's stream ends, it does not hang");
    let bulk = &results_of(&log, "bulk")[1];
    assert_eq!(bulk["ok"], false, "the stream failed: {bulk}");
    let errno = bulk["errno"].as_i64().unwrap_or(0);
    assert!(
        errno == i64::from(libc::ECONNRESET) || errno == i64::from(libc::EPIPE),
        "with ECONNRESET (or EPIPE): {bulk}"
    );
}

#[test]
#[ignore = "boots QEMU guests: run by ci/test.sh with --ignored"]
fn fastpath_host_copied_between_guests_and_a_guest_without_window_on_plain_vsock() {
    let Some(s) = setup(&[fast("a", 3), fast("b", 4), VmSpec::new("c", 5)]) else {
        return;
    };
    let (mut a, mut b) = fastpath_pair_run(&s, |vm| vec![s.h.window(vm)], "fastpath_host_copied");
    let (fa, fb) = (s.h.fastpath_counters("a"), s.h.fastpath_counters("b"));
    // verify's 8 MiB and many's 64 × 64 KiB went b → a through the rings, and back.
    let least = 8_388_608 + 64 * 65_536;
    assert!(
        fb.fastpath_tx_bytes >= least && fa.fastpath_rx_bytes >= least,
        "{fb:?} {fa:?}"
    );
    assert!(
        fa.fastpath_tx_bytes >= least,
        "the echoes came back through the rings: {fa:?}"
    );
    // c has no window: plain AF_VSOCK to the same server still works.
    let mut c = s.boot(
        "c",
        &format!("sbtool verify vsock:3:{PORT} --bytes 1048576"),
    );
    let (status, log) = c.wait_exit(RUN).expect("c's check finishes");
    let v = only(&log, "verify");
    assert_eq!(
        (v["ok"].as_bool(), v["path"].as_str()),
        (Some(true), Some("vsock")),
        "{v}"
    );
    assert_eq!(status, 0, "{log}");
    kill_mid_stream(&mut a, &mut b);
    eprintln!("logs in {}", s.log_dir().display());
}

#[test]
#[ignore = "boots QEMU guests: run by ci/test.sh with --ignored"]
fn fastpath_direct_pair_and_a_killed_peer_fails_the_stream() {
    let Some(s) = setup_with_pairs(&[fast("a", 3), fast("b", 4)], &[["a", "b"]]) else {
        return;
    };
    let pair = s.h.dir.path().join("a+b.window");
    let windows = |vm: &str| vec![s.h.window(vm), pair.clone()];
    let (mut a, mut b) = fastpath_pair_run(&s, windows, "fastpath_direct");
    let (fa, fb) = (s.h.fastpath_counters("a"), s.h.fastpath_counters("b"));
    assert_eq!(
        fa.fastpath_tx_bytes + fb.fastpath_tx_bytes,
        0,
        "the host copied nothing"
    );
    assert!(fb.fastpath_conns >= 66, "{fb:?}");
    kill_mid_stream(&mut a, &mut b);
    eprintln!("logs in {}", s.log_dir().display());
}
