//! `sockbypass-demo`: starts `sockbypassd` in-process with one VM, plays that VM with the test
//! frontend, and shows both host-endpoint directions working, printing each step.
//!
//! This is what `integration/bench.sh` runs until the VM-to-VM benchmark exists.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sockbypass_integration::{TestVm, VmOptions};
use sockbypass_wire::consts::HOST_CID;
use sockbypassd::config::{DaemonConfig, VmConfig, DEFAULT_MAX_CONNS};

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
    let dir = std::env::temp_dir().join(format!("sockbypass-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("vm3.sock");
    let uds = dir.join("vm3.vsock");
    let config = DaemonConfig {
        vms: vec![VmConfig {
            name: "vm3".into(),
            cid: 3,
            socket: socket.clone(),
            uds: Some(uds.clone()),
            groups: vec!["demo".into()],
            ports: None,
            max_conns: DEFAULT_MAX_CONNS,
        }],
        log_level: None,
    };
    config.validate()?;
    let daemon = sockbypassd::daemon::start(config)?;
    println!(
        "[1] sockbypassd serving VM vm3 (CID 3) on {}",
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

    let c = daemon
        .switch()
        .counters("vm3")
        .ok_or("no counters for vm3")?;
    println!(
        "[11] device counters: tx_packets={} rx_packets={} tx_bytes={} rx_bytes={} rst_sent={} malformed={}",
        c.tx_packets,
        c.rx_packets,
        c.tx_bytes,
        c.rx_bytes,
        c.rst_sent,
        c.malformed_total()
    );
    daemon.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "done: the device works; VM-to-VM switching and the benchmark against virtio-net come next"
    );
    Ok(())
}
