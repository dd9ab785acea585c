//! One stream between a guest and a host program, over a Unix socket.
//!
//! Protocol primer (SPEC.md §6): the guest side speaks virtio-vsock; the host side is a plain
//! Unix stream. Bytes from the guest go straight from guest memory into the socket; what the
//! socket does not take at once waits in a buffer no larger than the credit the device granted
//! (`buf_alloc`), so a guest can never make the daemon hold more than that. Bytes from the host
//! are read from the socket straight into the guest's RX buffer, never more than the guest's
//! credit allows.
//!
//! A connection is freed on RST from either side, when both directions are shut down, when the
//! host socket fails, or when the VM goes away.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use sockbypass_wire::consts::{SHUTDOWN_RCV, SHUTDOWN_SEND};

use crate::credit::{LocalCredit, PeerCredit};

/// Receive buffer the device advertises to guests for a host connection, when the VM's host
/// buffer budget has room for it.
pub const HOST_BUF_ALLOC: u32 = 256 * 1024;
/// The smallest receive buffer a host connection is opened with; with less left in the VM's
/// budget, the connection is refused.
pub const MIN_HOST_BUF_ALLOC: u32 = 4096;

/// Identifies a host connection within one VM: (guest port, host port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The port on the guest's side.
    pub guest_port: u32,
    /// The port on the host's side (CID 2).
    pub host_port: u32,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A host program sent `CONNECT`; the device sent (or will send) REQUEST and awaits
    /// RESPONSE until the deadline.
    AwaitingGuest {
        /// When to give up.
        deadline: Instant,
    },
    /// Data flows.
    Established,
}

/// Control packets the connection owes the guest, sent as RX buffers allow.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Owed {
    /// REQUEST for a host-started connection.
    pub request: bool,
    /// RESPONSE for a guest-started connection.
    pub response: bool,
    /// CREDIT_UPDATE (freed space, or the guest asked).
    pub credit_update: bool,
    /// SHUTDOWN flags not yet sent.
    pub shutdown: u32,
}

/// One guest↔host stream.
#[derive(Debug)]
pub struct HostConn {
    /// The host side.
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u64,
    /// Where the connection stands.
    pub state: ConnState,
    /// Credit for data to the guest.
    pub peer: PeerCredit,
    /// Credit for data from the guest.
    pub local: LocalCredit,
    /// Guest bytes the host socket has not taken yet (at most `local.buf_alloc`; its capacity,
    /// reserved once, is that too).
    pub to_host: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent.
    pub guest_shutdown: u32,
    /// SHUTDOWN flags the device sent to the guest.
    pub shutdown_sent: u32,
    /// The host socket may have bytes to read.
    pub host_readable: bool,
    /// The host program closed its writing side.
    pub host_eof: bool,
    /// The write side of `stream` was shut down.
    pub host_write_closed: bool,
    /// Control packets owed to the guest.
    pub owed: Owed,
    /// Whether the connection is in the endpoint's active list.
    pub in_active: bool,
    /// When the guest shut down both directions while data still waited for the host.
    pub closing_since: Option<Instant>,
}

/// What became of a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Keep it.
    Keep,
    /// Free it and tell the guest with an RST.
    Reset,
    /// Free it without telling the guest (it sent the RST, or is gone).
    Drop,
}

impl HostConn {
    /// A connection in `state` over `stream`, granting the guest `buf_alloc` bytes of buffer.
    pub fn new(stream: UnixStream, token: u64, state: ConnState, buf_alloc: u32) -> Self {
        HostConn {
            stream,
            token,
            state,
            peer: PeerCredit::default(),
            local: LocalCredit::new(buf_alloc),
            to_host: VecDeque::new(),
            guest_shutdown: 0,
            shutdown_sent: 0,
            host_readable: true,
            host_eof: false,
            host_write_closed: false,
            owed: Owed::default(),
            in_active: false,
            closing_since: None,
        }
    }

    /// Whether the connection has something for the guest right now.
    pub fn has_work_for_guest(&self) -> bool {
        self.owed.request
            || self.owed.response
            || self.owed.credit_update
            || self.owed.shutdown != 0
            || self.wants_to_read_host()
    }

    /// Whether the device should read from the host socket for the guest now.
    pub fn wants_to_read_host(&self) -> bool {
        self.state == ConnState::Established
            && self.host_readable
            && !self.host_eof
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && self.peer.available() > 0
    }

    /// Writes as much of the buffered guest data to the host as the socket takes.
    /// Returns the bytes written.
    pub fn flush_to_host(&mut self) -> io::Result<u32> {
        let mut written = 0u32;
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    self.to_host.drain(..n);
                    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
                    self.local.forwarded(n32);
                    written = written.saturating_add(n32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.local.update_due() {
            self.owed.credit_update = true;
        }
        Ok(written)
    }

    /// Applies the guest's SHUTDOWN flags where the host side allows it now.
    /// Returns what should happen to the connection.
    pub fn apply_guest_shutdown(&mut self) -> Fate {
        if self.guest_shutdown & SHUTDOWN_SEND != 0
            && self.to_host.is_empty()
            && !self.host_write_closed
        {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.host_write_closed = true;
        }
        let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
        if self.guest_shutdown & both == both {
            if self.to_host.is_empty() {
                return Fate::Reset;
            }
            self.closing_since.get_or_insert_with(Instant::now);
        }
        Fate::Keep
    }

    /// Notes that the host closed its side: the guest is owed SHUTDOWN(SEND).
    pub fn host_closed_writing(&mut self) {
        self.host_eof = true;
        if self.shutdown_sent & SHUTDOWN_SEND == 0 {
            self.owed.shutdown |= SHUTDOWN_SEND;
        }
    }
}
