//! The epoll instance that watches every host-side socket of every VM, and its token layout.
//!
//! A token is `vm_index << 48 | id`: id 0 is the VM's `uds` listener, other ids are connections
//! and half-open `CONNECT` handshakes, numbered per VM and never reused while the daemon runs.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Token id of a VM's `uds` listener.
pub const LISTENER_ID: u64 = 0;
const ID_BITS: u32 = 48;

/// Builds a token.
pub fn token(vm_index: usize, id: u64) -> u64 {
    ((vm_index as u64) << ID_BITS) | (id & ((1 << ID_BITS) - 1))
}

/// Splits a token into (VM index, id).
pub fn split_token(token: u64) -> (usize, u64) {
    let vm = usize::try_from(token >> ID_BITS).unwrap_or(usize::MAX);
    (vm, token & ((1 << ID_BITS) - 1))
}

/// A shared handle to the host-side epoll instance.
#[derive(Debug, Clone)]
pub struct HostPoller {
    epoll: Arc<Epoll>,
}

impl HostPoller {
    /// A new epoll instance.
    pub fn new() -> io::Result<Self> {
        Ok(HostPoller {
            epoll: Arc::new(Epoll::new()?),
        })
    }

    /// Watches `fd` for input (and hang-ups) under `token`.
    pub fn watch_readable(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.add(fd.as_raw_fd(), EventSet::IN | EventSet::READ_HANG_UP, token)
    }

    /// Watches a connection for input and output, edge-triggered, under `token`.
    pub fn watch_stream(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        self.add(
            fd.as_raw_fd(),
            EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
            token,
        )
    }

    fn add(&self, fd: RawFd, events: EventSet, token: u64) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`. Errors are ignored: the fd is about to be closed anyway.
    pub fn forget(&self, fd: &impl AsRawFd) {
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd.as_raw_fd(),
            EpollEvent::default(),
        );
    }

    /// Waits up to `timeout_ms` for events.
    pub fn wait(&self, timeout_ms: i32, events: &mut [EpollEvent]) -> io::Result<usize> {
        self.epoll.wait(timeout_ms, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(split_token(token(0, LISTENER_ID)), (0, 0));
        assert_eq!(split_token(token(7, 12345)), (7, 12345));
        assert_eq!(
            split_token(token(65535, (1 << 48) - 1)),
            (65535, (1 << 48) - 1)
        );
    }
}
