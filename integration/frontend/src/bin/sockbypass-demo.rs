//! `sockbypass-demo`: starts `sockbypassd` in-process with three VMs, plays them with the test
//! frontend, and shows both host-endpoint directions and VM-to-VM switching working (one
//! stream between two VMs in a group, one refused connect across groups), printing each step.
//!
//! This is what `integration/bench.sh` runs until the VM-to-VM benchmark exists.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sockbypass_frontend::{TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypassd::config::{DaemonConfig, VmConfig};

const T: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    sockbypassd::logging::init(Some("warn"));
    // Removed on every exit path, errors included.
    let work = tempfile::Builder::new()
        .prefix("sockbypass-demo-")
        .tempdir()?;
    let dir = work.path().to_path_buf();
    let socket = dir.join("vm3.sock");
    let uds = dir.join("vm3.vsock");
    let vm_config = |name: &str, cid: u64, group: &str| VmConfig {
        uds: (cid == 3).then(|| uds.clone()),
        groups: vec![group.into()],
        ..VmConfig::new(name, cid, dir.join(format!("{name}.sock")))
    };
    let config = DaemonConfig::with_vms(vec![
        vm_config("vm3", 3, "demo"),
        vm_config("vm4", 4, "demo"),
        vm_config("vm5", 5, "other"),
    ]);
    config.validate()?;
    let daemon = sockbypassd::daemon::start(config)?;
    println!(
        "[1] sockbypassd serving vm3 (CID 3, group demo) on {}, vm4 (CID 4, group demo), vm5 (CID 5, group other)",
        socket.display()
    );

    let mut vm = TestVm::connect(&socket, VmOptions::default())?;
    println!(
        "[2] test frontend attached: features negotiated, guest_cid={} read via GET_CONFIG",
        vm.guest_cid()
    );

    // Guest -> host: a host echo server listens on <uds>_5000.
    let mut echo_path = uds.clone().into_os_string();
    echo_path.push("_5000");
    let listener = UnixListener::bind(&echo_path)?;
    let echo = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 65536];
        let mut total = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            s.write_all(&buf[..n])?;
            total += n;
        }
    });
    println!(
        "[3] host echo server listening on {}",
        std::path::Path::new(&echo_path).display()
    );
    let id = vm.driver_mut().connect_blocking(HOST_CID, 5000, T)?;
    println!("[4] guest connected to CID 2 port 5000 (REQUEST -> RESPONSE)");
    let msg = b"hello from the guest";
    vm.driver_mut().send_all(id, msg, T)?;
    let back = vm.driver_mut().recv_exact(id, msg.len(), T)?;
    println!(
        "[5] guest sent {:?}, host echoed {:?}",
        String::from_utf8_lossy(msg),
        String::from_utf8_lossy(&back)
    );
    let payload: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    let mut back = Vec::with_capacity(payload.len());
    // The client is one thread: read each chunk's echo before sending more.
    for chunk in payload.chunks(64 * 1024) {
        vm.driver_mut().send_all(id, chunk, T)?;
        back.extend(vm.driver_mut().recv_exact(id, chunk.len(), T)?);
    }
    let secs = start.elapsed().as_secs_f64();
    if back != payload {
        return Err("echoed megabyte differs".into());
    }
    println!(
        "[6] 1 MiB echoed byte-exact in {:.1} ms (through the test frontend; not a benchmark)",
        secs * 1e3
    );
    vm.driver_mut().close_blocking(id, T)?;
    let echoed = echo.join().map_err(|_| "echo thread panicked")??;
    println!("[7] guest closed; host saw {echoed} bytes and end of stream");

    // Host -> guest: CONNECT <port> on the VM's uds.
    vm.driver_mut().listen(6000)?;
    let mut host = UnixStream::connect(&uds)?;
    host.set_read_timeout(Some(T))?;
    host.write_all(b"CONNECT 6000\n")?;
    let gid = vm.driver_mut().accept_blocking(6000, T)?;
    let mut ok = [0u8; 32];
    let n = host.read(&mut ok)?;
    println!(
        "[8] host wrote `CONNECT 6000`, guest accepted, host read {:?}",
        String::from_utf8_lossy(&ok[..n]).trim_end()
    );
    host.write_all(b"hello from the host")?;
    let got = vm.driver_mut().recv_exact(gid, 19, T)?;
    println!("[9] guest received {:?}", String::from_utf8_lossy(&got));

    // An unknown port is refused with an RST.
    let rid = vm.driver_mut().connect(HOST_CID, 7777)?;
    let st = vm.driver_mut().wait_state(rid, |s| s.is_terminal(), T)?;
    println!("[10] connect to CID 2 port 7777 (no listener): {st:?}");

    peer_demo(&mut vm, &dir)?;

    let switch = daemon.switch();
    for name in ["vm3", "vm4", "vm5"] {
        let c = switch.counters(name).ok_or("no counters")?;
        println!(
            "[14] {name} counters: tx_packets={} rx_packets={} fwd_bytes={} rx_split={} rst_sent={} drop_policy={} malformed={}",
            c.tx_packets,
            c.rx_packets,
            c.fwd_bytes,
            c.rx_split,
            c.rst_sent,
            c.drop_policy,
            c.malformed_total()
        );
    }
    daemon.shutdown();
    println!(
        "done: the device works; integration/bench.sh runs the benchmark against virtio-net with real guests"
    );
    Ok(())
}

/// VM-to-VM: vm3 streams 16 MiB to vm4 (same group), and is refused by vm5 (another group).
fn peer_demo(vm3: &mut TestVm, dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut vm4 = TestVm::connect(dir.join("vm4.sock"), VmOptions::default())?;
    let mut vm5 = TestVm::connect(dir.join("vm5.sock"), VmOptions::default())?;
    vm4.driver_mut().listen(7000)?;
    vm5.driver_mut().listen(7000)?;
    let data: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let start = Instant::now();
    let (sent, got) = std::thread::scope(|s| {
        let sender = s.spawn(|| -> Result<(), sockbypass_frontend::DriverError> {
            let d = vm3.driver_mut();
            let id = d.connect_blocking(4, 7000, T)?;
            d.send_all(id, &data, T)?;
            d.close_blocking(id, T)?;
            Ok(())
        });
        let receiver = s.spawn(|| -> Result<Vec<u8>, sockbypass_frontend::DriverError> {
            let d = vm4.driver_mut();
            let id = d.accept_blocking(7000, T)?;
            d.recv_exact(id, data.len(), T)
        });
        (sender.join(), receiver.join())
    });
    sent.map_err(|_| "sender panicked")??;
    let got = got.map_err(|_| "receiver panicked")??;
    if got != data {
        return Err("VM-to-VM stream differs".into());
    }
    println!(
        "[11] vm3 -> vm4: 16 MiB through the switch, byte-exact, in {:.0} ms (64 KiB packets split over vm4's 4 KiB RX buffers; the test frontend is the bottleneck, not a benchmark)",
        start.elapsed().as_secs_f64() * 1e3
    );
    let rid = vm3.driver_mut().connect(5, 7000)?;
    let started = Instant::now();
    let st = vm3.driver_mut().wait_state(rid, |s| s.is_terminal(), T)?;
    println!(
        "[12] vm3 -> vm5 (group other): {st:?} after {:.1} ms, refused by policy",
        started.elapsed().as_secs_f64() * 1e3
    );
    vm5.driver_mut().pump(Duration::from_millis(10))?;
    println!(
        "[13] vm5 saw {} connection attempts (policy stops them in the switch)",
        vm5.driver_mut().accept(7000)?.map_or(0, |_| 1)
    );
    Ok(())
}
