//! A test VM's streams to the host's fast-path control port (SPEC.md §13.7), offered as Unix
//! sockets: a thread owns the [`TestVm`] and pumps its driver, copying bytes both ways between
//! each vsock stream and one end of a socket pair. The test (or the guest library) speaks the
//! control protocol on the other end exactly as a guest process does on its AF_VSOCK socket.
//! Dropping the bridge drops the VM, as if it vanished.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sockbypass_frontend::{StreamId, StreamState, TestVm};
use sockbypass_wire::consts::{HOST_CID, SHUTDOWN_SEND};
use sockbypass_wire::fastpath::control::CONTROL_PORT;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PUMP: Duration = Duration::from_micros(200);
/// Bytes from the daemon a link holds for its socket at most.
const SOCKET_BUFFER: usize = 64 * 1024;

type Opened = Result<UnixStream, String>;

/// One vsock stream and its socket.
struct Link {
    id: StreamId,
    socket: UnixStream,
    /// Bytes from the socket the driver has not taken yet.
    to_vsock: Vec<u8>,
    /// Bytes from the vsock stream the socket has not taken yet.
    to_socket: Vec<u8>,
    /// The socket ended: close the vsock stream once `to_vsock` is sent.
    socket_ended: bool,
}

/// The bridge of one test VM.
#[derive(Debug)]
pub struct GuestBridge {
    open: Sender<Sender<Opened>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GuestBridge {
    /// Starts pumping `vm`.
    pub fn start(vm: TestVm) -> GuestBridge {
        let (open, requests) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || run(vm, &requests, &flag));
        GuestBridge {
            open,
            stop,
            thread: Some(thread),
        }
    }

    /// Opens a vsock stream to CID 2's control port; `Err` when the daemon refused it (RST).
    pub fn open_control(&self) -> Result<UnixStream, String> {
        let (tx, rx) = mpsc::channel();
        self.open
            .send(tx)
            .map_err(|_| "bridge stopped".to_string())?;
        rx.recv_timeout(CONNECT_TIMEOUT * 2)
            .map_err(|_| "bridge did not answer".to_string())?
    }
}

impl Drop for GuestBridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut vm: TestVm, requests: &Receiver<Sender<Opened>>, stop: &AtomicBool) {
    let mut links: Vec<Link> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        while let Ok(reply) = requests.try_recv() {
            let _ = reply.send(open(&mut vm, &mut links));
        }
        if vm.driver_mut().pump(PUMP).is_err() {
            return;
        }
        links.retain_mut(|link| shuttle(&mut vm, link));
    }
}

fn open(vm: &mut TestVm, links: &mut Vec<Link>) -> Opened {
    let id = vm
        .driver_mut()
        .connect_blocking(HOST_CID, CONTROL_PORT, CONNECT_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    ours.set_nonblocking(true).map_err(|e| e.to_string())?;
    links.push(Link {
        id,
        socket: ours,
        to_vsock: Vec::new(),
        to_socket: Vec::new(),
        socket_ended: false,
    });
    Ok(theirs)
}

/// Moves what it can both ways; `false` once the link is over (either side closed).
fn shuttle(vm: &mut TestVm, link: &mut Link) -> bool {
    let d = vm.driver_mut();
    let Ok(state) = d.state(link.id) else {
        return false;
    };
    if state.is_terminal() {
        return false; // dropping the socket tells the test
    }
    let peer_done = matches!(state, StreamState::PeerShutdown(f) if f & SHUTDOWN_SEND != 0);
    // Bounded like a guest's socket buffer: what the test does not read backs up into the
    // stream's credit and then into the daemon, as it does from a real guest.
    let room = SOCKET_BUFFER.saturating_sub(link.to_socket.len());
    if room > 0 && d.recv_max(link.id, &mut link.to_socket, room).is_err() {
        return false;
    }
    while !link.to_socket.is_empty() {
        match link.socket.write(&link.to_socket) {
            Ok(n) => {
                link.to_socket.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return close(vm, link),
        }
    }
    if peer_done && link.to_socket.is_empty() {
        return close(vm, link); // the daemon closed its end: so does the socket
    }
    let mut buf = [0u8; 4096];
    while !link.socket_ended {
        match link.socket.read(&mut buf) {
            Ok(0) => link.socket_ended = true,
            Ok(n) => link.to_vsock.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => return close(vm, link),
        }
    }
    if !link.to_vsock.is_empty() {
        match vm.driver_mut().send(link.id, &link.to_vsock) {
            Ok(n) => {
                link.to_vsock.drain(..n);
            }
            Err(_) => return false,
        }
    }
    if link.socket_ended && link.to_vsock.is_empty() {
        return close(vm, link);
    }
    true
}

fn close(vm: &mut TestVm, link: &Link) -> bool {
    let _ = vm.driver_mut().close(link.id);
    false
}
