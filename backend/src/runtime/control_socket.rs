//! The control socket (`--control PATH`, SPEC.md §14): a Unix stream socket of mode 0600 on
//! which the daemon's own user sends one JSON request per line and reads one JSON reply per
//! line. Its thread also carries out reloads asked for by `SIGHUP`.
//!
//! Bounds: at most [`MAX_CLIENTS`] connections at once (one more is told so and closed); a
//! request line is at most [`MAX_LINE_BYTES`] (a longer one is answered with `bad_request` and
//! its connection closed); a reply that cannot be written within [`WRITE_TIMEOUT`] closes its
//! connection. Requests are carried out one at a time, in order.
//!
//! The thread has a seccomp filter of its own ([`ThreadFilter::confine_control_thread`]): the
//! daemon's allowlist, plus binding sockets for VMs added at run time and reading the
//! configuration file on a reload. Only the daemon's own user can reach it (mode 0600), and
//! nothing a guest sends reaches it.
//!
//! [`ThreadFilter::confine_control_thread`]: crate::seccomp::ThreadFilter::confine_control_thread

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use sockbypass_ctl::protocol::{
    Answer, ControlError, ErrorKind, Origin, Reply, Request, MAX_LINE_BYTES,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vm_set::VmSet;
use crate::failure::Failure;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// How long writing one reply may take before its connection is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

const STOP: u64 = 0;
const RELOAD: u64 = 1;
const LISTENER: u64 = 2;
/// Connection tokens start here.
const FIRST_CLIENT: u64 = 3;

/// Errors opening the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlSocketError {
    /// The socket could not be bound.
    #[error("cannot listen on control socket {}", .path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread's event loop could not be set up.
    #[error("cannot set up the control thread")]
    Setup(#[source] std::io::Error),
}

/// The control thread. Stopping it (or dropping it) removes the socket.
#[derive(Debug)]
pub struct ControlSocket {
    stop: EventFd,
    reload: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
    path: Option<PathBuf>,
}

/// One client connection and what it sent that is not a whole line yet.
struct Client {
    stream: UnixStream,
    pending: Vec<u8>,
    /// After an overlong line: the reply is sent and the write side shut; what the client
    /// still sends is read and dropped (at most [`DISCARD_LIMIT`] bytes) until it closes, so
    /// that closing does not reset the connection before the client read the reply.
    discarded: Option<usize>,
}

/// What a connection in [`Client::discarded`] may still send before it is closed.
const DISCARD_LIMIT: usize = 1 << 20;

/// Binds `path` with mode 0600: bound under a temporary name, restricted, then renamed into
/// place, so that no one else can connect in between.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    crate::host::uds::remove_stale_socket(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl ControlSocket {
    /// Starts the control thread over `vms`, listening on `path` if given (without it, the
    /// thread only carries out reloads).
    pub fn start(
        vms: Arc<VmSet>,
        path: Option<&Path>,
        failure: Arc<Failure>,
    ) -> Result<ControlSocket, ControlSocketError> {
        let listener = path
            .map(|p| {
                bind_private(p).map_err(|source| ControlSocketError::Bind {
                    path: p.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let stop = EventFd::new(EFD_NONBLOCK).map_err(ControlSocketError::Setup)?;
        let reload = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ControlSocketError::Setup)?);
        let epoll = Epoll::new().map_err(ControlSocketError::Setup)?;
        let watch = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        watch(stop.as_raw_fd(), STOP).map_err(ControlSocketError::Setup)?;
        watch(reload.as_raw_fd(), RELOAD).map_err(ControlSocketError::Setup)?;
        if let Some(l) = &listener {
            watch(l.as_raw_fd(), LISTENER).map_err(ControlSocketError::Setup)?;
        }
        let filter = vms.filter().clone();
        let mut server = Server {
            vms,
            epoll,
            listener,
            reload: reload.clone(),
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
        };
        let thread = std::thread::Builder::new()
            .name("sb-control".into())
            .spawn(move || {
                filter.confine_control_thread();
                failure.guard("sb-control", || server.run());
            })
            .map_err(ControlSocketError::Setup)?;
        if let Some(p) = path {
            tracing::info!(path = %p.display(), "control socket listening");
        }
        Ok(ControlSocket {
            stop,
            reload,
            thread: Some(thread),
            path: path.map(Path::to_owned),
        })
    }

    /// Asks the thread to reload the configuration (what `SIGHUP` does).
    pub fn request_reload(&self) {
        let _ = self.reload.write(1);
    }

    /// Stops the thread and removes the socket.
    pub fn stop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Server {
    vms: Arc<VmSet>,
    epoll: Epoll,
    listener: Option<UnixListener>,
    reload: Arc<EventFd>,
    clients: HashMap<u64, Client>,
    next_token: u64,
}

impl Server {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "control thread: waiting failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    STOP => return,
                    RELOAD => {
                        let _ = self.reload.read();
                        match self.vms.reload() {
                            Ok(report) => tracing::info!(?report, "reload done"),
                            Err(e) => {
                                tracing::error!(error = %e, "reload failed; nothing more changed")
                            }
                        }
                    }
                    LISTENER => self.accept_all(),
                    token => self.on_readable(token),
                }
            }
        }
    }

    /// Accepts every queued connection.
    fn accept_all(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    return;
                }
            };
            let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
            if self.clients.len() >= MAX_CLIENTS {
                let mut s = stream;
                let err = ControlError::new(
                    ErrorKind::Exhausted,
                    format!("the control socket serves {MAX_CLIENTS} connections already"),
                );
                let _ = write_reply(&mut s, &Reply::Error(err));
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let added = self.epoll.ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, token),
            );
            if let Err(e) = added {
                tracing::warn!(error = %e, "control socket: cannot watch a connection");
                continue;
            }
            self.clients.insert(
                token,
                Client {
                    stream,
                    pending: Vec::new(),
                    discarded: None,
                },
            );
        }
    }

    /// Reads what client `token` sent and answers every whole line; closes it on EOF, an error
    /// or an overlong line.
    fn on_readable(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let keep = match client.stream.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => match &mut client.discarded {
                Some(total) => {
                    *total += n;
                    *total < DISCARD_LIMIT
                }
                None => {
                    client.pending.extend_from_slice(&buf[..n]);
                    self.answer_lines(token)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => true,
            Err(_) => false,
        };
        if !keep {
            if let Some(c) = self.clients.remove(&token) {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
        }
    }

    /// Answers every whole line client `token` sent; returns whether to keep the connection.
    fn answer_lines(&mut self, token: u64) -> bool {
        loop {
            let Some(client) = self.clients.get_mut(&token) else {
                return false;
            };
            let end = client.pending.iter().position(|&b| b == b'\n');
            if end.unwrap_or(client.pending.len()) >= MAX_LINE_BYTES {
                return refuse_overlong(client);
            }
            let Some(end) = end else {
                return true;
            };
            let line: Vec<u8> = client.pending.drain(..=end).collect();
            let reply = handle(&self.vms, &line[..end]);
            let Some(client) = self.clients.get_mut(&token) else {
                return false;
            };
            if write_reply(&mut client.stream, &reply).is_err() {
                return false;
            }
        }
    }
}

/// Answers an overlong line, shuts the connection's write side and drops what it sends from
/// now on; returns whether to keep watching it.
fn refuse_overlong(client: &mut Client) -> bool {
    let err = ControlError::new(
        ErrorKind::BadRequest,
        format!("request line longer than {MAX_LINE_BYTES} bytes"),
    );
    let written = write_reply(&mut client.stream, &Reply::Error(err));
    client.pending = Vec::new();
    client.discarded = Some(0);
    written.is_ok() && client.stream.shutdown(std::net::Shutdown::Write).is_ok()
}

/// Carries out one request line.
pub(super) fn handle(vms: &VmSet, line: &[u8]) -> Reply {
    let request: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Reply::Error(ControlError::new(
                ErrorKind::BadRequest,
                format!("not a request: {e}"),
            ))
        }
    };
    let answer = match request {
        Request::VmAdd { spec } => vms
            .add_spec(&spec, Origin::Control)
            .and_then(|config| vms.get(&config.name))
            .map(Answer::Added),
        Request::VmRemove { name } => vms.remove(&name).map(|()| Answer::Removed(name)),
        Request::VmList {} => Ok(Answer::Vms(vms.list())),
        Request::VmGet { name } => vms.get(&name).map(Answer::Vm),
        Request::Stats {} => Ok(Answer::Stats(vms.stats())),
        Request::Reload {} => vms.reload().map(Answer::Reloaded),
    };
    match answer {
        Ok(a) => Reply::Ok(a),
        Err(e) => {
            tracing::info!(error = %e, "control request refused");
            Reply::Error(e)
        }
    }
}

/// Writes `reply` as one line.
fn write_reply(stream: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    text.push(b'\n');
    stream.write_all(&text)
}
