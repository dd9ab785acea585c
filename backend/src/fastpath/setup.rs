//! Setting a fast-path connection up (SPEC.md §13.6): `CONNECT` is checked against the same
//! rules as a vsock connection (policy, limits), then the windows, the listener and the slots;
//! the listener gets `INCOMING`, and its `ACCEPT` or `REJECT` answers the initiator.

use std::sync::atomic::Ordering;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason};

use super::conn::{Conn, End, Phase};
use super::service::{pair_key, ProtocolError, Service, MAX_WAITING};

/// Where a new connection's two sides go.
struct Plan {
    peer: usize,
    listener: u64,
    placement: Placement,
    /// (window, slot) of the initiator and of the listener.
    slots: [(usize, u32); 2],
}

impl Service {
    /// `CONNECT` from control connection `token`: `INCOMING` to the listener, or `REFUSED`.
    pub(super) fn on_connect(&mut self, token: u64, m: &ControlMsg) {
        let Some(c) = self.controls.get(&token) else {
            return;
        };
        let vm = c.vm;
        let plan = if c.waiting >= MAX_WAITING {
            Err(Reason::ConnLimit)
        } else {
            self.plan(vm, m)
        };
        match plan {
            Ok(plan) => self.offer(token, vm, m, &plan),
            Err(reason) => self.send_refused(token, vm, m.req, reason),
        }
    }

    fn plan(&mut self, vm: usize, m: &ControlMsg) -> Result<Plan, Reason> {
        let peer = *self.by_cid.get(&m.peer_cid).ok_or(Reason::PeerGone)?;
        let (me, them) = (&self.vms[vm], &self.vms[peer]);
        me.policy
            .may_connect(&them.policy, m.peer_port)
            .map_err(|_| Reason::Policy)?;
        let per_peer = self.opened_by.get(&(vm, peer)).copied().unwrap_or(0);
        if me.conns >= me.max_conns
            || them.conns >= them.max_conns
            || (vm != peer && per_peer >= them.per_peer)
        {
            return Err(Reason::ConnLimit);
        }
        let (Some(my_window), Some(their_window)) = (me.window, them.window) else {
            return Err(Reason::NoWindow);
        };
        let listener = *self
            .listeners
            .get(&(peer, m.peer_port))
            .ok_or(Reason::NoListener)?;
        if self.offered.get(&(peer, m.peer_port)).copied().unwrap_or(0) >= MAX_WAITING {
            return Err(Reason::ConnLimit);
        }
        // `CONNECT` may ask for one placement (`code`); 0 lets the daemon choose, direct first.
        let wanted = m.placement();
        let pair = self.pairs.get(&pair_key(vm, peer)).copied();
        if wanted == Some(Placement::Direct) && (pair.is_none() || vm == peer) {
            return Err(Reason::NoWindow);
        }
        if let Some(w) = pair.filter(|_| vm != peer && wanted != Some(Placement::HostCopied)) {
            if let Some(slot) = self.pools[w].take() {
                return Ok(Plan {
                    peer,
                    listener,
                    placement: Placement::Direct,
                    slots: [(w, slot), (w, slot)],
                });
            }
            if wanted == Some(Placement::Direct) {
                return Err(Reason::WindowFull);
            }
        }
        let mine = self.pools[my_window].take().ok_or(Reason::WindowFull)?;
        let Some(theirs) = self.pools[their_window].take() else {
            self.pools[my_window].give_back(mine);
            return Err(Reason::WindowFull);
        };
        Ok(Plan {
            peer,
            listener,
            placement: Placement::HostCopied,
            slots: [(my_window, mine), (their_window, theirs)],
        })
    }

    fn offer(&mut self, token: u64, vm: usize, m: &ControlMsg, plan: &Plan) {
        let id = self.new_conn_id();
        for &(w, slot) in &plan.slots {
            for ring in 0..2 {
                if let Some(r) = self.windows[w].ring(slot, ring) {
                    r.zero();
                    r.set_generation(id);
                }
            }
        }
        let [(w0, s0), (w1, s1)] = plan.slots;
        let conn = Conn {
            id,
            placement: plan.placement,
            phase: Phase::Offered {
                req: m.req,
                initiator: token,
            },
            ends: [
                End::new(vm, token, w0, s0, m.port),
                End::new(plan.peer, plan.listener, w1, s1, m.peer_port),
            ],
        };
        self.conns.insert(id, conn);
        self.count_conn(vm, plan.peer, true);
        *self.offered.entry((plan.peer, m.peer_port)).or_insert(0) += 1;
        if let Some(c) = self.controls.get_mut(&token) {
            c.waiting += 1;
        }
        let mut inc = ControlMsg::new(Op::Incoming);
        inc.code = plan.placement.raw();
        inc.conn = id;
        inc.slot = s1;
        inc.peer_cid = self.vms[vm].cid;
        inc.port = m.peer_port;
        inc.peer_port = m.port;
        self.send(plan.listener, &inc);
    }

    /// Counts a connection between `a` (initiator) and `b` in, or out.
    pub(super) fn count_conn(&mut self, a: usize, b: usize, add: bool) {
        let step = |n: &mut usize| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(&mut self.vms[a].conns);
        if a != b {
            step(&mut self.vms[b].conns);
            let by = self.opened_by.entry((a, b)).or_insert(0);
            step(by);
            if *by == 0 {
                self.opened_by.remove(&(a, b));
            }
        }
    }

    /// A connection leaves the offered phase: its waiting counts go down.
    pub(super) fn settle_offer(&mut self, conn: u32) -> Option<u32> {
        let c = self.conns.get_mut(&conn)?;
        let Phase::Offered { req, initiator } = c.phase else {
            return None;
        };
        c.phase = Phase::Open;
        let key = (c.ends[1].vm, c.ends[1].port);
        if let Some(n) = self.offered.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.offered.remove(&key);
            }
        }
        if let Some(ctl) = self.controls.get_mut(&initiator) {
            ctl.waiting = ctl.waiting.saturating_sub(1);
        }
        Some(req)
    }

    pub(super) fn on_accept(&mut self, token: u64, conn: u32) -> Result<(), ProtocolError> {
        if self.side(token, conn)? != Some(1) {
            // Gone already, or the initiator's own connection: the latter is an error.
            return match self.conns.get(&conn) {
                Some(_) => Err(ProtocolError::NotYours(conn)),
                None => Ok(()),
            };
        }
        let Some(req) = self.settle_offer(conn) else {
            return Ok(()); // accepted twice: nothing to do
        };
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (a, b) = (&c.ends[0], &c.ends[1]);
        let mut ok = ControlMsg::new(Op::Connected);
        ok.req = req;
        ok.code = c.placement.raw();
        ok.conn = conn;
        ok.slot = a.slot;
        ok.peer_cid = self.vms[b.vm].cid;
        ok.port = a.port;
        ok.peer_port = b.port;
        let (initiator, placement) = (a.ctrl, c.placement);
        for end in &c.ends {
            self.vms[end.vm]
                .counters
                .fastpath_conns
                .fetch_add(1, Ordering::Relaxed);
        }
        if placement == Placement::HostCopied {
            self.copied.push(conn);
        }
        match initiator {
            Some(t) => self.send(t, &ok),
            None => self.reset_side(conn, 1, Reason::PeerGone),
        }
        Ok(())
    }

    pub(super) fn on_reject(&mut self, token: u64, conn: u32) -> Result<(), ProtocolError> {
        if self.side(token, conn)? != Some(1) {
            return match self.conns.get(&conn) {
                Some(_) => Err(ProtocolError::NotYours(conn)),
                None => Ok(()),
            };
        }
        self.end_side(conn, 1);
        self.reset_side(conn, 0, Reason::Rejected);
        Ok(())
    }
}
