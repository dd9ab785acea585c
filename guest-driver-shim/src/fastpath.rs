//! [`FastPath`]: the windows of this VM and one control channel; connects, listens, accepts,
//! and gives [`FastStream`]s whose rings it picks from the placement (SPEC.md §13.4).
//!
//! Host-copied: this VM's own window, the slot the daemon names, ring 0 TX and ring 1 RX.
//! Direct: the pair window whose two CIDs are this VM's and the peer's; ring 0 is produced by
//! the lower CID, so this side's TX ring is 0 if its own CID (from its own window) is the
//! lower one, else 1.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason, CONTROL_PORT};
use sockbypass_wire::fastpath::layout::WindowKind;
use socket2::Socket;

use crate::connection::{vsock_connect, Connection};
use crate::control::{ControlChannel, ControlChannelError, Transport};
use crate::error::{ConnectError, OpenError};
use crate::ring::{RingRx, RingTx};
use crate::session::Session;
use crate::stream::{FastStream, SpinBudget, StreamInfo};
use crate::window::Window;

/// The host's CID.
pub const HOST_CID: u32 = 2;

/// An incoming connection not yet accepted or rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    msg: ControlMsg,
}

impl Incoming {
    /// The connection id.
    pub fn conn(&self) -> u32 {
        self.msg.conn
    }
    /// The connecting VM's CID.
    pub fn peer_cid(&self) -> u64 {
        self.msg.peer_cid
    }
    /// The listening port.
    pub fn port(&self) -> u32 {
        self.msg.port
    }
    /// The connecting side's port.
    pub fn peer_port(&self) -> u32 {
        self.msg.peer_port
    }
    /// Where its rings are.
    pub fn placement(&self) -> Option<Placement> {
        self.msg.placement()
    }
}

/// This process's fast path: its windows and its control channel.
#[derive(Debug)]
pub struct FastPath<T: Transport = Socket> {
    session: Arc<Session<T>>,
    own: Arc<Window>,
    pairs: Vec<Arc<Window>>,
    spin: SpinBudget,
    /// The placement `CONNECT` asks for (`None`: the daemon chooses).
    placement: Option<Placement>,
}

impl FastPath<Socket> {
    /// Finds and maps the windows ([`Window::discover`]) and opens the control channel
    /// (AF_VSOCK to CID 2, port [`CONTROL_PORT`]).
    pub fn open() -> Result<FastPath<Socket>, OpenError> {
        let windows = Window::discover().map_err(OpenError::Windows)?;
        let sock =
            vsock_connect(HOST_CID, CONTROL_PORT).map_err(|source| OpenError::ControlConnect {
                port: CONTROL_PORT,
                source,
            })?;
        FastPath::new(windows, sock)
    }

    /// A connection to `peer_cid`:`peer_port`: fast if the daemon sets one up, a plain
    /// AF_VSOCK stream if it refuses with a reason that falls back (§13.6), an error for a
    /// hard refusal (`ECONNREFUSED`).
    pub fn connect(&self, peer_cid: u32, peer_port: u32) -> Result<Connection, ConnectError> {
        match self.connect_fast(peer_cid, peer_port) {
            Ok(s) => Ok(Connection::Fast(Box::new(s))),
            Err(ConnectError::Fallback(_)) => vsock_connect(peer_cid, peer_port)
                .map(Connection::Vsock)
                .map_err(ConnectError::Vsock),
            Err(e) => Err(e),
        }
    }
}

impl<T: Transport> FastPath<T> {
    /// Uses `windows` (exactly one own window, any pair windows) and does the control
    /// handshake on `transport`.
    pub fn new(windows: Vec<Window>, transport: T) -> Result<FastPath<T>, OpenError> {
        let (own, pairs): (Vec<_>, Vec<_>) = windows
            .into_iter()
            .map(Arc::new)
            .partition(|w| w.kind() == WindowKind::Own);
        let own = match <[Arc<Window>; 1]>::try_from(own) {
            Ok([w]) => w,
            Err(v) if v.is_empty() => return Err(OpenError::NoOwnWindow),
            Err(v) => return Err(OpenError::SeveralOwnWindows(v.len())),
        };
        let ch = ControlChannel::handshake(transport).map_err(OpenError::Handshake)?;
        Ok(FastPath {
            session: Arc::new(Session::new(ch)),
            own,
            pairs,
            spin: SpinBudget::default(),
            placement: None,
        })
    }

    /// This VM's CID (from its own window).
    pub fn own_cid(&self) -> u64 {
        self.own.cid()
    }

    /// This VM's own window.
    pub fn own_window(&self) -> &Arc<Window> {
        &self.own
    }

    /// The pair windows.
    pub fn pair_windows(&self) -> &[Arc<Window>] {
        &self.pairs
    }

    /// Reads and dispatches the daemon messages that are there, without blocking (call it
    /// when [`as_raw_fd`](AsRawFd::as_raw_fd) is readable, before
    /// [`FastStream::poll_ready`]). Nothing happens while another thread waits in a blocking
    /// call: that thread dispatches.
    pub fn dispatch(&self) -> Result<(), ControlChannelError> {
        self.session.pump()
    }

    /// The spin budget new streams get.
    pub fn set_spin_budget(&mut self, spin: SpinBudget) {
        self.spin = spin;
    }

    /// Asks the daemon for one placement in later connects (`None`, the default: the daemon
    /// chooses, direct when the peer is this VM's pair). A placement it cannot give is refused
    /// with a fallback reason (SPEC.md §13.6).
    pub fn set_placement(&mut self, placement: Option<Placement>) {
        self.placement = placement;
    }

    /// A fast-path connection to `peer_cid`:`peer_port` (`CONNECT` carries port 0: this side
    /// has no port of its own; the daemon passes it on as it is).
    pub fn connect_fast(
        &self,
        peer_cid: u32,
        peer_port: u32,
    ) -> Result<FastStream<T>, ConnectError> {
        let peer_cid = u64::from(peer_cid);
        let answer = self.session.connect(ControlMsg {
            peer_cid,
            peer_port,
            code: self.placement.map_or(0, Placement::raw),
            ..ControlMsg::new(Op::Connect)
        })?;
        match answer.op {
            Op::Connected => self.stream(&answer, peer_cid),
            _ => {
                let reason = answer.reason().unwrap_or(Reason::Protocol);
                Err(if reason.falls_back_to_vsock() {
                    ConnectError::Fallback(reason)
                } else {
                    ConnectError::Refused(reason)
                })
            }
        }
    }

    /// Accepts fast-path connections on `port` (`LISTEN`).
    pub fn listen(&self, port: u32) -> Result<(), ConnectError> {
        match self.session.listen(port, true)? {
            None => Ok(()),
            Some(reason) => Err(ConnectError::Refused(reason)),
        }
    }

    /// Stops that (`UNLISTEN`); `INCOMING`s for it that arrive later are rejected.
    pub fn unlisten(&self, port: u32) -> Result<(), ControlChannelError> {
        self.session.listen(port, false).map(|_| ())
    }

    /// The next incoming connection on any listening port (blocking).
    pub fn next_incoming(&self) -> Result<Incoming, ControlChannelError> {
        Ok(Incoming {
            msg: self.session.next_incoming()?,
        })
    }

    /// The next incoming connection if one is there (non-blocking).
    pub fn try_next_incoming(&self) -> Result<Option<Incoming>, ControlChannelError> {
        Ok(self
            .session
            .try_next_incoming()?
            .map(|msg| Incoming { msg }))
    }

    /// Takes `inc` (`ACCEPT`).
    pub fn accept_incoming(&self, inc: Incoming) -> Result<FastStream<T>, ConnectError> {
        let stream = self.stream(&inc.msg, inc.msg.peer_cid)?;
        self.session.send(&ControlMsg {
            conn: inc.msg.conn,
            ..ControlMsg::new(Op::Accept)
        })?;
        Ok(stream)
    }

    /// Refuses `inc` (`REJECT`; the connecting side gets `REFUSED`, reason 6).
    pub fn reject(&self, inc: Incoming) -> Result<(), ControlChannelError> {
        self.session.forget(inc.msg.conn);
        self.session.send(&ControlMsg {
            conn: inc.msg.conn,
            ..ControlMsg::new(Op::Reject)
        })
    }

    /// The next incoming connection, accepted (blocking).
    pub fn accept(&self) -> Result<FastStream<T>, ConnectError> {
        let inc = self.next_incoming()?;
        self.accept_incoming(inc)
    }

    /// An incoming connection, accepted, if one is there (non-blocking).
    pub fn try_accept(&self) -> Result<Option<FastStream<T>>, ConnectError> {
        match self.try_next_incoming()? {
            Some(inc) => self.accept_incoming(inc).map(Some),
            None => Ok(None),
        }
    }

    /// The stream of a `CONNECTED` or `INCOMING`; if its rings cannot be found the
    /// connection is given back (`CLOSE`, or `REJECT` for an incoming one).
    fn stream(&self, msg: &ControlMsg, peer_cid: u64) -> Result<FastStream<T>, ConnectError> {
        match self.rings(msg, peer_cid) {
            Ok((window, info, tx, rx)) => Ok(FastStream::new(
                Arc::clone(&self.session),
                window,
                info,
                tx,
                rx,
                self.spin,
            )),
            Err(e) => {
                let op = if msg.op == Op::Incoming {
                    Op::Reject
                } else {
                    Op::Close
                };
                self.session.forget(msg.conn);
                // Best effort: the error says what went wrong.
                let _ = self.session.send(&ControlMsg {
                    conn: msg.conn,
                    ..ControlMsg::new(op)
                });
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn rings(
        &self,
        msg: &ControlMsg,
        peer_cid: u64,
    ) -> Result<(Arc<Window>, StreamInfo, RingTx, RingRx), ConnectError> {
        // CONNECTED and INCOMING decode only with a placement.
        let placement = msg.placement().ok_or_else(|| {
            ConnectError::Control(ControlChannelError::unexpected(msg, "no placement"))
        })?;
        let own_cid = self.own.cid();
        let (window, tx_ring) = match placement {
            Placement::HostCopied => (Arc::clone(&self.own), 0u8),
            Placement::Direct => {
                let (lo, hi) = (own_cid.min(peer_cid), own_cid.max(peer_cid));
                let w = self
                    .pairs
                    .iter()
                    .find(|w| w.cid() == lo && w.peer_cid() == hi && lo != hi)
                    .ok_or(ConnectError::NoPairWindow { peer_cid })?;
                (Arc::clone(w), if own_cid < peer_cid { 0 } else { 1 })
            }
        };
        let rx_ring = 1 - tx_ring;
        let tx =
            RingTx::new(Arc::clone(&window), msg.slot, tx_ring).map_err(ConnectError::BadSlot)?;
        let rx =
            RingRx::new(Arc::clone(&window), msg.slot, rx_ring).map_err(ConnectError::BadSlot)?;
        let info = StreamInfo {
            conn: msg.conn,
            slot: msg.slot,
            placement,
            tx_ring,
            rx_ring,
            peer_cid,
            port: msg.port,
            peer_port: msg.peer_port,
        };
        Ok((window, info, tx, rx))
    }
}

impl<T: Transport> AsRawFd for FastPath<T> {
    /// The control socket: readable when a daemon message is pending (for `poll`/`epoll`;
    /// call [`FastStream::poll_ready`] on the streams, or a non-blocking read, to dispatch).
    fn as_raw_fd(&self) -> RawFd {
        self.session.fd()
    }
}
