//! Serving one VM's vhost-user socket, for as long as the daemon runs.
//!
//! QEMU (or cloud-hypervisor) connects as the client. When it disconnects, the VM is detached
//! (its connections end), and the socket is served again for the next frontend, so a QEMU
//! restart or a `reconnect=1` chardev finds the daemon waiting. Other VMs never notice.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use std::os::fd::AsRawFd;

use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::ThreadFilter;

use super::backend::{DetachReason, VsockBackend};
use super::vsock_device::RESUME_EVENT;
use super::VsockDevice;

/// Errors setting up a VM's vhost-user socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created.
    #[error("VM `{vm}`: cannot listen on vhost-user socket {path}")]
    Listen {
        /// VM name.
        vm: String,
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The socket path exists and is not a socket.
    #[error("VM `{vm}`: {path} exists and is not a socket")]
    NotASocket {
        /// VM name.
        vm: String,
        /// Socket path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Lets the daemon stop a VM's server thread.
#[derive(Clone)]
pub struct ServerControl {
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    /// Written by [`ServerControl::stop`]: the server thread waits for a frontend on this and
    /// the listener together, so stopping needs nothing from the file system (the socket's
    /// path may be gone).
    wake: Arc<EventFd>,
}

impl std::fmt::Debug for ServerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerControl")
            .field("stop", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl ServerControl {
    /// A control for a server that runs.
    pub fn new() -> std::io::Result<Self> {
        Ok(ServerControl {
            stop: Arc::new(AtomicBool::new(false)),
            current: Arc::new(Mutex::new(None)),
            wake: Arc::new(EventFd::new(EFD_NONBLOCK)?),
        })
    }

    /// Asks the server to stop, and ends the current frontend connection.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = current {
            h.shutdown();
        }
        // Wake a thread waiting for a frontend. A full counter still wakes it.
        let _ = self.wake.write(1);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Binds the vhost-user socket `path` of VM `name` now (so errors surface at start-up) and
/// returns the listener.
pub fn bind(name: &str, path: &Path) -> Result<Listener, ServerError> {
    crate::host::uds::remove_stale_socket(path).map_err(|source| ServerError::NotASocket {
        vm: name.to_owned(),
        path: path.display().to_string(),
        source,
    })?;
    Listener::new(path, true).map_err(|source| ServerError::Listen {
        vm: name.to_owned(),
        path: path.display().to_string(),
        source,
    })
}

/// Lets the connection's vring worker hear the VM's resume eventfd, so that work handed back
/// by a bounded walk ([`VsockBackend::resume_fd`]) is picked up again.
fn watch_resume<B: VsockBackend + Clone>(
    daemon: &VhostUserDaemon<VsockDevice<B>>,
    backend: &B,
    name: &str,
) {
    let Some(handler) = daemon.get_epoll_handlers().into_iter().next() else {
        return;
    };
    let fd = backend.resume_fd().as_raw_fd();
    if let Err(e) = handler.register_listener(fd, EventSet::IN, RESUME_EVENT as u64) {
        tracing::error!(vm = %name, error = %e, "cannot watch the resume eventfd: work left by a bounded walk waits for the next kick");
    }
}

/// Waits until a frontend connects to `listener` (`true`) or `control` is stopped (`false`).
/// The accept that follows does not block: the connection is already queued.
fn wait_for_frontend(listener: &Listener, control: &ServerControl, name: &str) -> bool {
    loop {
        if control.stopping() {
            return false;
        }
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: control.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call, and both
        // descriptors stay open (the caller owns the listener, `control` the eventfd).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                tracing::warn!(vm = %name, error = %e, "waiting for a frontend failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            return true;
        }
        if fds[0].revents != 0 {
            tracing::warn!(vm = %name, revents = fds[0].revents, "vhost-user listener failed; retrying");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Serves VM `name` (whose packets `backend` moves) on `listener` until `control` stops it: the
/// body of the VM's server thread, which first confines itself with `filter` (its vhost-user
/// threads inherit it).
pub fn serve<B: VsockBackend + Clone>(
    backend: B,
    name: &str,
    mut listener: Listener,
    control: ServerControl,
    filter: &ThreadFilter,
) {
    filter.confine_current_thread();
    let name = name.to_owned();
    while !control.stopping() {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        backend.set_memory(Some(mem.clone()));
        let device = VsockDevice::new(backend.clone());
        let mut daemon = match VhostUserDaemon::new(format!("vhu-{name}"), device, mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "cannot create vhost-user handler; retrying");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if !wait_for_frontend(&listener, &control, &name) {
            break;
        }
        if let Err(e) = daemon.start(&mut listener) {
            if !control.stopping() {
                tracing::warn!(vm = %name, error = %e, "vhost-user accept failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        if control.stopping() {
            daemon.request_shutdown();
            let _ = daemon.wait();
            break;
        }
        *control.current.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
        tracing::info!(vm = %name, "frontend connected");
        // A new frontend starts clean, even if the last one's guest broke a queue.
        backend.lift_quarantine();
        watch_resume(&daemon, &backend, &name);
        match daemon.wait() {
            Ok(()) => tracing::info!(vm = %name, "frontend disconnected"),
            Err(e) => tracing::info!(vm = %name, error = %e, "frontend connection ended"),
        }
        control
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        // Dropping the daemon ends its vring workers before the VM is detached, so no kick of
        // the old connection can reach the switch afterwards.
        drop(daemon);
        backend.detach(DetachReason::Disconnected);
        backend.set_memory(None);
    }
}
