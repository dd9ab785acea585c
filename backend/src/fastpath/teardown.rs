//! Ending fast-path connections (SPEC.md §13.8): a side lets go (`CLOSE`, a `RESET` or
//! `REFUSED` sent to it, or its control connection gone); once both sides have, the slots'
//! ring controls are zeroed and the slots returned, so that no slot is reused while a guest
//! may still write into it as its own.

use std::sync::atomic::Ordering;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason};

use super::conn::Phase;
use super::service::{ProtocolError, Service};
use crate::warn_limited;

impl Service {
    /// Side `side` of `conn` lets go; the connection is freed once both have.
    pub(super) fn end_side(&mut self, conn: u32, side: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.ends[side].ctrl = None;
        if c.finished() {
            self.free(conn);
        }
    }

    /// Tells side `side` of `conn` that the connection is gone (`REFUSED` to an initiator
    /// still waiting for its answer, else `RESET`), and lets that side go.
    pub(super) fn reset_side(&mut self, conn: u32, side: usize, reason: Reason) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let end = &c.ends[side];
        if let Some(token) = end.ctrl {
            match c.phase {
                Phase::Offered { req, .. } if side == 0 => {
                    let vm = end.vm;
                    self.send_refused(token, vm, req, reason);
                }
                _ => self.send_reset(token, conn, reason),
            }
        }
        self.end_side(conn, side);
    }

    /// Both sides are done: counts, slots and the copier's list forget the connection.
    fn free(&mut self, conn: u32) {
        self.settle_offer(conn);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.count_conn(c.ends[0].vm, c.ends[1].vm, false);
        for end in &c.ends {
            for ring in 0..2 {
                if let Some(r) = self.windows[end.window].ring(end.slot, ring) {
                    r.zero();
                }
            }
            self.pools[end.window].give_back(end.slot);
        }
        self.copied.retain(|id| *id != conn);
    }

    /// `CLOSE` from `token`: that side is done with `conn`. The other side hears of it: a
    /// direct pair's at once (`CLOSED`); a host-copied one's once this side's TX ring is
    /// drained into its RX ring and closed there (the copier sends `CLOSED` then).
    pub(super) fn on_close(&mut self, token: u64, conn: u32) -> Result<(), ProtocolError> {
        let Some(side) = self.side(token, conn)? else {
            return Ok(());
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        if matches!(c.phase, Phase::Offered { .. }) {
            self.end_side(conn, side);
            self.reset_side(conn, 1 - side, Reason::PeerGone);
            return Ok(());
        }
        c.ends[side].close_requested = true;
        // Direct: the ring is shared, tell the other side now. Host-copied: once this side's
        // TX ring is drained (the copier tells it then, or now if that happened already).
        let now = c.placement == Placement::Direct || c.ends[side].tx_ended;
        let other = &mut c.ends[1 - side];
        if now && !other.closed_sent {
            other.closed_sent = true;
            if let Some(t) = other.ctrl {
                let mut m = ControlMsg::new(Op::Closed);
                m.conn = conn;
                self.send(t, &m);
            }
        }
        self.end_side(conn, side);
        Ok(())
    }

    /// A host-copied connection's ring was broken by `vm`: both sides are reset (§13.9).
    pub(super) fn broken_ring(&mut self, conn: u32, vm: usize) {
        if let Some(v) = self.vms.get(vm) {
            v.counters.fastpath_bad_ring.fetch_add(1, Ordering::Relaxed);
            warn_limited!(self.warn, vm = %v.name, conn, "broken fast-path ring; connection reset");
        }
        self.reset_side(conn, 0, Reason::BrokenRing);
        self.reset_side(conn, 1, Reason::BrokenRing);
    }

    /// Closes control connection `token` (`why`: the protocol error, if any): its listening
    /// ports go, and every connection it owned is reset on the other side (§13.8).
    pub(super) fn close_control(&mut self, token: u64, why: Option<String>) {
        let Some(c) = self.controls.remove(&token) else {
            return;
        };
        self.forget_fd(&c);
        let vm = c.vm;
        if let Some(v) = self.vms.get_mut(vm) {
            v.controls = v.controls.saturating_sub(1);
            if let Some(why) = &why {
                v.counters
                    .fastpath_control_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn_limited!(self.warn, vm = %v.name, error = %why, "fast-path control connection closed");
            }
        }
        for port in &c.listens {
            if self.listeners.get(&(vm, *port)) == Some(&token) {
                self.listeners.remove(&(vm, *port));
            }
        }
        let owned: Vec<(u32, usize)> = self
            .conns
            .values()
            .filter_map(|conn| conn.side_of(token).map(|side| (conn.id, side)))
            .collect();
        for (conn, side) in owned {
            self.end_side(conn, side);
            self.reset_side(conn, 1 - side, Reason::PeerGone);
        }
    }
}
