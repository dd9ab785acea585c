//! One fast-path connection as the daemon keeps it (SPEC.md §13.4, §13.8): its placement, its
//! two ends (0: the side that sent `CONNECT`, 1: the listener), and, for a host-copied
//! connection, the daemon's private copy of the indices it writes.

use sockbypass_wire::fastpath::control::Placement;
use sockbypass_wire::fastpath::layout::RING_SIZE;
use sockbypass_wire::fastpath::ring::{Consumer, Producer};
use sockbypass_wire::fastpath::wake_gate::WakeGate;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `INCOMING` sent to the listener; waiting for `ACCEPT` or `REJECT`. `req` is the
    /// initiator's request number, echoed in the answer.
    Offered {
        /// The initiator's `CONNECT` request number.
        req: u32,
        /// The initiator's control connection, whose count of waiting `CONNECT`s this is in.
        initiator: u64,
    },
    /// Both sides have it.
    Open,
}

/// One side of a connection.
#[derive(Debug)]
pub struct End {
    /// The VM (switch index).
    pub vm: usize,
    /// The control connection (token) that owns this side; `None` once it let go.
    pub ctrl: Option<u64>,
    /// The window index and slot of this side's rings.
    pub window: usize,
    /// The slot.
    pub slot: u32,
    /// The port this side uses.
    pub port: u32,
    /// Host-copied: the daemon consumes this side's TX ring (ring 0).
    pub tx: Consumer,
    /// Host-copied: the daemon produces into this side's RX ring (ring 1).
    pub rx: Producer,
    /// This side sent `CLOSE`: its TX ring ends once drained, whether or not it set `closed`.
    pub close_requested: bool,
    /// This side's TX ring ended (`closed` seen, everything copied) and the other side's RX
    /// ring was closed in turn.
    pub tx_ended: bool,
    /// `CLOSED` was sent to this side.
    pub closed_sent: bool,
    /// `WAKE`s for data in this side's RX ring: none again until the guest moves its `tail`
    /// or clears its flag (§13.5).
    pub rx_woken: WakeGate,
    /// `WAKE`s for space in this side's TX ring (keyed on its `head`).
    pub tx_woken: WakeGate,
}

impl End {
    /// A side in `window`'s `slot`, owned by control connection `ctrl`.
    pub fn new(vm: usize, ctrl: u64, window: usize, slot: u32, port: u32) -> End {
        End {
            vm,
            ctrl: Some(ctrl),
            window,
            slot,
            port,
            tx: Consumer::new(RING_SIZE),
            rx: Producer::new(RING_SIZE),
            close_requested: false,
            tx_ended: false,
            closed_sent: false,
            rx_woken: WakeGate::default(),
            tx_woken: WakeGate::default(),
        }
    }

    /// Whether this side let go (`CLOSE`, `RESET` sent, or its control connection closed).
    pub fn let_go(&self) -> bool {
        self.ctrl.is_none()
    }
}

/// A fast-path connection.
#[derive(Debug)]
pub struct Conn {
    /// Its id, also the `generation` of its slots.
    pub id: u32,
    /// Host-copied or direct.
    pub placement: Placement,
    /// Where it is in its life.
    pub phase: Phase,
    /// 0: the initiator, 1: the listener.
    pub ends: [End; 2],
}

impl Conn {
    /// The side owned by control connection `ctrl`, if any.
    pub fn side_of(&self, ctrl: u64) -> Option<usize> {
        self.ends.iter().position(|e| e.ctrl == Some(ctrl))
    }

    /// Whether both sides let go: the slots may be returned.
    pub fn finished(&self) -> bool {
        self.ends.iter().all(End::let_go)
    }
}
