//! A raw fast-path control client for tests (SPEC.md §13.7): 32-byte messages on the socket a
//! [`crate::guest_bridge::GuestBridge`] opened, each read with a deadline, so that a test can
//! send anything, including what a well-behaved library never would.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason, MSG_LEN};

/// How long [`RawControl::expect`] waits for a message.
pub const WAIT: Duration = Duration::from_secs(10);

/// One control connection, driven by hand.
#[derive(Debug)]
pub struct RawControl {
    socket: UnixStream,
    next_req: u32,
}

impl RawControl {
    /// Takes `socket` and says `HELLO`, expecting `WELCOME`.
    pub fn hello(socket: UnixStream) -> RawControl {
        let mut c = RawControl::raw(socket);
        c.send(&ControlMsg::new(Op::Hello));
        let w = c.expect();
        assert_eq!(w.op, Op::Welcome, "HELLO is answered with WELCOME: {w:?}");
        c
    }

    /// Takes `socket` without a handshake.
    pub fn raw(socket: UnixStream) -> RawControl {
        socket.set_read_timeout(Some(WAIT)).expect("timeout");
        RawControl {
            socket,
            next_req: 1,
        }
    }

    /// Sends `msg`.
    pub fn send(&mut self, msg: &ControlMsg) {
        self.send_bytes(&msg.encode());
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).expect("control write");
    }

    /// Sends `msg`; `false` if the connection is already gone (the daemon may close it first).
    pub fn try_send(&mut self, msg: &ControlMsg) -> bool {
        self.socket.write_all(&msg.encode()).is_ok()
    }

    /// The next message; panics after [`WAIT`] or if the connection ends.
    pub fn expect(&mut self) -> ControlMsg {
        self.receive()
            .unwrap_or_else(|e| panic!("no control message: {e}"))
    }

    /// The next message, or why there is none (`"closed"`, a timeout, a decode error).
    pub fn receive(&mut self) -> Result<ControlMsg, String> {
        let mut b = [0u8; MSG_LEN];
        match self.socket.read_exact(&mut b) {
            Ok(()) => ControlMsg::decode(&b).map_err(|e| e.to_string()),
            // A socket closed with this side's bytes unread reports a reset, not an end.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                Err("closed".into())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether the daemon closed the connection within [`WAIT`] (messages before the end are
    /// skipped).
    pub fn closed_by_daemon(&mut self) -> bool {
        loop {
            match self.receive() {
                Ok(_) => {}
                Err(e) => return e == "closed",
            }
        }
    }

    /// Whether nothing arrives within `quiet`.
    pub fn silent_for(&mut self, quiet: Duration) -> bool {
        self.next_within(quiet).is_none()
    }

    /// The next message if one arrives within `quiet` (none: silence; panics if the daemon
    /// closed the connection).
    pub fn next_within(&mut self, quiet: Duration) -> Option<ControlMsg> {
        self.socket.set_read_timeout(Some(quiet)).expect("timeout");
        let got = self.receive();
        self.socket.set_read_timeout(Some(WAIT)).expect("timeout");
        match got {
            Ok(m) => Some(m),
            Err(e) => {
                assert_ne!(e, "closed", "the daemon closed the control connection");
                None
            }
        }
    }

    /// `LISTEN` on `port`; expects `LISTENING` with code 0.
    pub fn listen(&mut self, port: u32) {
        let req = self.listen_unsynced(port);
        let m = self.expect();
        assert_eq!(
            (m.op, m.req, m.port, m.code),
            (Op::Listening, req, port, 0),
            "LISTEN {port}: {m:?}"
        );
    }

    /// `LISTEN` on `port` without waiting for the answer; returns the request number.
    pub fn listen_unsynced(&mut self, port: u32) -> u32 {
        let req = self.next_req;
        self.next_req += 1;
        let mut m = ControlMsg::new(Op::Listen);
        m.req = req;
        m.port = port;
        self.send(&m);
        req
    }

    /// `CONNECT` from `port` to `cid`:`peer_port`; returns the request number.
    pub fn connect(&mut self, port: u32, cid: u64, peer_port: u32) -> u32 {
        self.connect_asking(port, cid, peer_port, None)
    }

    /// `CONNECT` asking for a placement (`None`: the daemon chooses).
    pub fn connect_asking(
        &mut self,
        port: u32,
        cid: u64,
        peer_port: u32,
        placement: Option<Placement>,
    ) -> u32 {
        let req = self.next_req;
        self.next_req += 1;
        let mut m = ControlMsg::new(Op::Connect);
        m.code = placement.map_or(0, Placement::raw);
        m.req = req;
        m.port = port;
        m.peer_cid = cid;
        m.peer_port = peer_port;
        self.send(&m);
        req
    }

    /// A message about connection `conn`.
    pub fn about(&mut self, op: Op, conn: u32) {
        let mut m = ControlMsg::new(op);
        m.conn = conn;
        self.send(&m);
    }

    /// `CONNECT` and expect `REFUSED` for `reason`.
    pub fn connect_refused(&mut self, cid: u64, peer_port: u32, reason: Reason) {
        let req = self.connect(1000, cid, peer_port);
        let m = self.expect();
        assert_eq!(
            (m.op, m.req, m.reason()),
            (Op::Refused, req, Some(reason)),
            "CONNECT to {cid}:{peer_port}: {m:?}"
        );
    }
}

/// Sets up a connection from `a` to the listener `b` (listening on `port`, at CID `b_cid`):
/// `CONNECT`, `INCOMING`, `ACCEPT`, `CONNECTED`. Returns (the initiator's answer, the
/// listener's `INCOMING`).
pub fn open_conn(
    a: &mut RawControl,
    b: &mut RawControl,
    b_cid: u64,
    port: u32,
    placement: Placement,
) -> (ControlMsg, ControlMsg) {
    let req = a.connect(40_000 + port, b_cid, port);
    let inc = b.expect();
    assert_eq!(
        (inc.op, inc.placement(), inc.port),
        (Op::Incoming, Some(placement), port),
        "INCOMING: {inc:?}"
    );
    b.about(Op::Accept, inc.conn);
    let ok = a.expect();
    assert_eq!(
        (ok.op, ok.req, ok.conn, ok.placement()),
        (Op::Connected, req, inc.conn, Some(placement)),
        "CONNECTED: {ok:?}"
    );
    (ok, inc)
}
