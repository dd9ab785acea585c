//! The fast path's control messages (SPEC.md §13.7): 32 bytes each, both ways, on a vsock
//! stream from a guest process to the host's port [`CONTROL_PORT`]. Decoding is strict: an
//! unknown op, another version, or a `code` that does not fit the op is an error, and the
//! daemon closes the control connection on it.

/// The host port (CID 2) of the control channel.
pub const CONTROL_PORT: u32 = 0x5342_5000;
/// Bytes per message.
pub const MSG_LEN: usize = 32;
/// The protocol version.
pub const PROTOCOL_VERSION: u8 = 1;

macro_rules! raw_enum {
    ($(#[$m:meta])* $name:ident: $ty:ty { $($(#[$vm:meta])* $v:ident = $raw:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// The value on the wire.
            pub fn raw(self) -> $ty {
                match self { $($name::$v => $raw,)* }
            }

            /// The variant of a wire value.
            pub fn from_raw(raw: $ty) -> Option<$name> {
                match raw { $($raw => Some($name::$v),)* _ => None }
            }

            /// Every variant, in wire-value order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
        }
    };
}

raw_enum!(
    /// What a message says.
    Op: u16 {
        /// Guest: the protocol version it speaks.
        Hello = 0x01,
        /// Guest: accept fast-path connections on `port`.
        Listen = 0x02,
        /// Guest: stop accepting on `port`.
        Unlisten = 0x03,
        /// Guest: open a connection from `port` to `peer_cid`:`peer_port`.
        Connect = 0x04,
        /// Guest: take the incoming connection `conn`.
        Accept = 0x05,
        /// Guest: refuse the incoming connection `conn`.
        Reject = 0x06,
        /// Guest: `conn` has data or space for a side that may sleep.
        Kick = 0x07,
        /// Guest: this side is done with `conn`.
        Close = 0x08,
        /// Guest: the other side broke the ring of `conn` (reason in `code`).
        Abort = 0x09,
        /// Daemon: answer to `Hello`.
        Welcome = 0x81,
        /// Daemon: `Connect` `req` succeeded (placement in `code`).
        Connected = 0x82,
        /// Daemon: `Connect` `req` refused (reason in `code`).
        Refused = 0x83,
        /// Daemon: a connection for a listening port (placement in `code`).
        Incoming = 0x84,
        /// Daemon: something moved on `conn`.
        Wake = 0x85,
        /// Daemon: the other side closed `conn`.
        Closed = 0x86,
        /// Daemon: `conn` is gone (reason in `code`).
        Reset = 0x87,
        /// Daemon: answer to `Listen` `req`: `code` 0 when listening, else a reason.
        Listening = 0x88,
    }
);

raw_enum!(
    /// Where a connection's rings are (SPEC.md §13.4).
    Placement: u8 {
        /// Each end in its own VM's window; the daemon copies.
        HostCopied = 1,
        /// One slot of the pair's window; the guests share the rings.
        Direct = 2,
    }
);

raw_enum!(
    /// Why a connection was refused or reset.
    Reason: u8 {
        /// The policy (groups, ports) forbids it.
        Policy = 1,
        /// A connection limit.
        ConnLimit = 2,
        /// One of the VMs has no window.
        NoWindow = 3,
        /// Nobody listens on the port with the fast path.
        NoListener = 4,
        /// No free slot.
        WindowFull = 5,
        /// The listener refused it.
        Rejected = 6,
        /// The other VM went away.
        PeerGone = 7,
        /// A ring's indices were out of range.
        BrokenRing = 8,
        /// A control-channel protocol error.
        Protocol = 9,
        /// Another control connection of the VM listens on the port.
        PortInUse = 10,
    }
);

impl Op {
    /// Whether guests send it (the daemon sends the others).
    pub fn from_guest(self) -> bool {
        self.raw() < 0x80
    }

    fn code_is(self) -> CodeKind {
        match self {
            Op::Connected | Op::Incoming => CodeKind::Placement,
            Op::Connect => CodeKind::ZeroOrPlacement,
            Op::Refused | Op::Reset | Op::Abort => CodeKind::Reason,
            Op::Listening => CodeKind::ZeroOrReason,
            _ => CodeKind::Zero,
        }
    }
}

impl Reason {
    /// Whether a library refused with this falls back to a plain vsock connection (the
    /// connection would be allowed; only the fast path is not available).
    pub fn falls_back_to_vsock(self) -> bool {
        matches!(
            self,
            Reason::NoWindow | Reason::NoListener | Reason::WindowFull
        )
    }
}

enum CodeKind {
    Zero,
    Placement,
    Reason,
    ZeroOrReason,
    ZeroOrPlacement,
}

/// A message that cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// An op this version does not have.
    #[error("unknown control op {0:#06x}")]
    UnknownOp(u16),
    /// Another protocol version.
    #[error("control message version {0}: this code speaks version {PROTOCOL_VERSION}")]
    BadVersion(u8),
    /// A `code` that does not fit the op.
    #[error("control op {op:?} with code {code}")]
    BadCode {
        /// The op.
        op: Op,
        /// Its code.
        code: u8,
    },
}

/// One control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMsg {
    /// What it says.
    pub op: Op,
    /// A placement, a reason or 0, as the op says.
    pub code: u8,
    /// The guest's request number (echoed in the answer).
    pub req: u32,
    /// The connection id.
    pub conn: u32,
    /// The slot in the window the placement names.
    pub slot: u32,
    /// The other VM's CID.
    pub peer_cid: u64,
    /// This side's port.
    pub port: u32,
    /// The other side's port.
    pub peer_port: u32,
}

impl ControlMsg {
    /// A message `op` with every other field 0.
    pub fn new(op: Op) -> ControlMsg {
        ControlMsg {
            op,
            code: 0,
            req: 0,
            conn: 0,
            slot: 0,
            peer_cid: 0,
            port: 0,
            peer_port: 0,
        }
    }

    /// The placement of a `Connected` or `Incoming`, or the one a `Connect` asks for.
    pub fn placement(&self) -> Option<Placement> {
        matches!(
            self.op.code_is(),
            CodeKind::Placement | CodeKind::ZeroOrPlacement
        )
        .then(|| Placement::from_raw(self.code))
        .flatten()
    }

    /// The reason of a `Refused`, `Reset` or `Abort`.
    pub fn reason(&self) -> Option<Reason> {
        matches!(self.op.code_is(), CodeKind::Reason | CodeKind::ZeroOrReason)
            .then(|| Reason::from_raw(self.code))
            .flatten()
    }

    /// The message's bytes.
    pub fn encode(&self) -> [u8; MSG_LEN] {
        let mut b = [0u8; MSG_LEN];
        b[0..2].copy_from_slice(&self.op.raw().to_le_bytes());
        b[2] = PROTOCOL_VERSION;
        b[3] = self.code;
        b[4..8].copy_from_slice(&self.req.to_le_bytes());
        b[8..12].copy_from_slice(&self.conn.to_le_bytes());
        b[12..16].copy_from_slice(&self.slot.to_le_bytes());
        b[16..24].copy_from_slice(&self.peer_cid.to_le_bytes());
        b[24..28].copy_from_slice(&self.port.to_le_bytes());
        b[28..32].copy_from_slice(&self.peer_port.to_le_bytes());
        b
    }

    /// Reads and checks a message.
    pub fn decode(b: &[u8; MSG_LEN]) -> Result<ControlMsg, ControlError> {
        let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let raw_op = u16::from_le_bytes([b[0], b[1]]);
        let op = Op::from_raw(raw_op).ok_or(ControlError::UnknownOp(raw_op))?;
        if b[2] != PROTOCOL_VERSION {
            return Err(ControlError::BadVersion(b[2]));
        }
        let code = b[3];
        let fits = match op.code_is() {
            CodeKind::Zero => code == 0,
            CodeKind::Placement => Placement::from_raw(code).is_some(),
            CodeKind::Reason => Reason::from_raw(code).is_some(),
            CodeKind::ZeroOrReason => code == 0 || Reason::from_raw(code).is_some(),
            CodeKind::ZeroOrPlacement => code == 0 || Placement::from_raw(code).is_some(),
        };
        if !fits {
            return Err(ControlError::BadCode { op, code });
        }
        let mut cid = [0u8; 8];
        cid.copy_from_slice(&b[16..24]);
        Ok(ControlMsg {
            op,
            code,
            req: le32(4),
            conn: le32(8),
            slot: le32(12),
            peer_cid: u64::from_le_bytes(cid),
            port: le32(24),
            peer_port: le32(28),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips_with_its_fields() {
        for (i, op) in Op::ALL.iter().copied().enumerate() {
            let i = i as u32;
            let code = match op.code_is() {
                CodeKind::Zero => 0,
                CodeKind::Placement => Placement::Direct.raw(),
                CodeKind::Reason | CodeKind::ZeroOrReason => Reason::WindowFull.raw(),
                CodeKind::ZeroOrPlacement => Placement::HostCopied.raw(),
            };
            let m = ControlMsg {
                op,
                code,
                req: 0x0102_0304 + i,
                conn: 7 + i,
                slot: 123,
                peer_cid: 0x1_0000_0004,
                port: 5000,
                peer_port: 0xFFFF_FFFF,
            };
            let b = m.encode();
            assert_eq!(ControlMsg::decode(&b), Ok(m), "{op:?}");
            assert_eq!(op.from_guest(), (b[0] & 0x80) == 0);
        }
        let refused = ControlMsg {
            code: Reason::WindowFull.raw(),
            ..ControlMsg::new(Op::Refused)
        };
        assert_eq!(refused.reason(), Some(Reason::WindowFull));
        assert_eq!(refused.placement(), None);
        assert!(Reason::WindowFull.falls_back_to_vsock());
        assert!(!Reason::Policy.falls_back_to_vsock());
    }

    #[test]
    fn unknown_ops_versions_and_codes_are_refused() {
        let good = ControlMsg::new(Op::Kick).encode();
        let mut b = good;
        b[0] = 0x7f;
        assert_eq!(ControlMsg::decode(&b), Err(ControlError::UnknownOp(0x7f)));
        let mut b = good;
        b[2] = 2;
        assert_eq!(ControlMsg::decode(&b), Err(ControlError::BadVersion(2)));
        let mut b = good;
        b[3] = 1;
        assert_eq!(
            ControlMsg::decode(&b),
            Err(ControlError::BadCode {
                op: Op::Kick,
                code: 1
            })
        );
        let mut b = ControlMsg::new(Op::Connected).encode();
        b[3] = 3;
        assert!(matches!(
            ControlMsg::decode(&b),
            Err(ControlError::BadCode { .. })
        ));
        let mut b = ControlMsg::new(Op::Reset).encode();
        b[3] = 0;
        assert!(matches!(
            ControlMsg::decode(&b),
            Err(ControlError::BadCode { .. })
        ));
    }
}
