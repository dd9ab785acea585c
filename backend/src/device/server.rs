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

use crate::seccomp::ThreadFilter;
use crate::switch::{DetachReason, Switch};

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
#[derive(Clone, Default)]
pub struct ServerControl {
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl std::fmt::Debug for ServerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerControl")
            .field("stop", &self.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl ServerControl {
    /// Asks the server to stop, and ends the current frontend connection.
    pub fn stop(&self, socket: &Path) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.shutdown();
        }
        // Wake a thread blocked in accept().
        let _ = std::os::unix::net::UnixStream::connect(socket);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Binds VM `index`'s socket now (so errors surface at start-up) and returns the listener.
pub fn bind(switch: &Switch, index: usize) -> Result<Listener, ServerError> {
    let vm = switch
        .vm(index)
        .map(|v| (v.config.name.clone(), v.config.socket.clone()));
    let (name, path) = vm.unwrap_or_default();
    crate::host::uds::remove_stale_socket(&path).map_err(|source| ServerError::NotASocket {
        vm: name.clone(),
        path: path.display().to_string(),
        source,
    })?;
    Listener::new(&path, true).map_err(|source| ServerError::Listen {
        vm: name,
        path: path.display().to_string(),
        source,
    })
}

/// Serves VM `index` on `listener` until `control` stops it: the body of the VM's server
/// thread, which first confines itself with `filter` (its vhost-user threads inherit it).
pub fn serve(
    switch: Arc<Switch>,
    index: usize,
    mut listener: Listener,
    control: ServerControl,
    filter: &ThreadFilter,
) {
    filter.confine_current_thread();
    let Some(vm) = switch.vm(index).cloned() else {
        return;
    };
    let name = vm.config.name.clone();
    while !control.stopping() {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        vm.set_memory(Some(mem.clone()));
        let Some(device) = VsockDevice::new(switch.clone(), index) else {
            return;
        };
        let mut daemon = match VhostUserDaemon::new(format!("vhu-{name}"), device, mem) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(vm = %name, error = %e, "cannot create vhost-user handler; retrying");
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
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
        switch.detach(index, DetachReason::Disconnected);
        vm.set_memory(None);
    }
}
