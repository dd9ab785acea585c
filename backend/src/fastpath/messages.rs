//! What the daemon does with each guest message (SPEC.md §13.7): the handshake, listening, and
//! the messages about a running connection (`KICK`, `CLOSE`, `ABORT`). Setting connections up
//! is in [`super::setup`], ending them in [`super::teardown`].

use std::sync::atomic::Ordering;

use sockbypass_wire::fastpath::control::{ControlMsg, Op, Placement, Reason, PROTOCOL_VERSION};

use super::service::{ProtocolError, Service, MAX_LISTENS};

impl Service {
    /// Acts on one message from control connection `token`.
    pub(super) fn on_message(&mut self, token: u64, m: &ControlMsg) -> Result<(), ProtocolError> {
        let Some(c) = self.controls.get_mut(&token) else {
            return Ok(());
        };
        tracing::trace!(token, msg = ?m, "fast-path control message");
        if !m.op.from_guest() {
            return Err(ProtocolError::DaemonOp(m.op));
        }
        if c.hello != (m.op != Op::Hello) {
            return Err(ProtocolError::OutOfTurn(m.op));
        }
        match m.op {
            Op::Hello => {
                c.hello = true;
                let mut w = ControlMsg::new(Op::Welcome);
                w.req = m.req;
                w.port = u32::from(PROTOCOL_VERSION);
                self.send(token, &w);
                Ok(())
            }
            Op::Listen => {
                let mut answer = ControlMsg::new(Op::Listening);
                answer.req = m.req;
                answer.port = m.port;
                answer.code = self.on_listen(token, m.port).map_or(0, Reason::raw);
                self.send(token, &answer);
                Ok(())
            }
            Op::Unlisten => {
                let vm = c.vm;
                c.listens.retain(|p| *p != m.port);
                if self.listeners.get(&(vm, m.port)) == Some(&token) {
                    self.listeners.remove(&(vm, m.port));
                }
                Ok(())
            }
            Op::Connect => {
                self.on_connect(token, m);
                Ok(())
            }
            Op::Accept => self.on_accept(token, m.conn),
            Op::Reject => self.on_reject(token, m.conn),
            Op::Kick => self.on_kick(token, m.conn),
            Op::Close => self.on_close(token, m.conn),
            Op::Abort => self.on_abort(token, m.conn),
            // `from_guest` let only guest ops through.
            _ => Err(ProtocolError::DaemonOp(m.op)),
        }
    }

    /// Takes `LISTEN` on `port`; a refusal's reason (`None`: listening).
    fn on_listen(&mut self, token: u64, port: u32) -> Option<Reason> {
        let c = self.controls.get_mut(&token)?;
        match self.listeners.get(&(c.vm, port)) {
            Some(t) if *t == token => return None,
            Some(_) => return Some(Reason::PortInUse),
            None => {}
        }
        if c.listens.len() >= MAX_LISTENS {
            return Some(Reason::ConnLimit);
        }
        c.listens.push(port);
        self.listeners.insert((c.vm, port), token);
        None
    }

    /// The side of connection `conn` that `token` owns: `Ok(None)` for a connection that no
    /// longer exists (a message that crossed its end), an error for someone else's.
    pub(super) fn side(&self, token: u64, conn: u32) -> Result<Option<usize>, ProtocolError> {
        match self.conns.get(&conn) {
            None => Ok(None),
            Some(c) => c
                .side_of(token)
                .map(Some)
                .ok_or(ProtocolError::NotYours(conn)),
        }
    }

    fn on_kick(&mut self, token: u64, conn: u32) -> Result<(), ProtocolError> {
        let Some(side) = self.side(token, conn)? else {
            return Ok(());
        };
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let vm = c.ends[side].vm;
        self.vms[vm]
            .counters
            .fastpath_kicks
            .fetch_add(1, Ordering::Relaxed);
        // Host-copied: the copier runs after this message anyway. Direct: the other guest may
        // sleep on the ring this side just moved.
        if c.placement == Placement::Direct {
            if let Some(other) = c.ends[1 - side].ctrl {
                let other_vm = c.ends[1 - side].vm;
                self.wake(other, other_vm, conn);
            }
        }
        Ok(())
    }

    /// Sends `WAKE` for `conn` to `token`, counted on `vm` (before it is written, so a guest
    /// that got it sees it counted). Not queued, and not counted, while a `WAKE` for `conn`
    /// still waits for the socket: that one covers this.
    pub(super) fn wake(&mut self, token: u64, vm: usize, conn: u32) {
        let mut m = ControlMsg::new(Op::Wake);
        m.conn = conn;
        if self.is_waiting(token, &m) {
            return;
        }
        if let Some(v) = self.vms.get(vm) {
            v.counters.fastpath_wakes.fetch_add(1, Ordering::Relaxed);
        }
        self.send(token, &m);
    }

    fn on_abort(&mut self, token: u64, conn: u32) -> Result<(), ProtocolError> {
        let Some(side) = self.side(token, conn)? else {
            return Ok(());
        };
        if let Some(c) = self.conns.get(&conn) {
            for end in &c.ends {
                self.vms[end.vm]
                    .counters
                    .fastpath_aborts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.reset_side(conn, 1 - side, Reason::BrokenRing);
        self.reset_side(conn, side, Reason::BrokenRing);
        Ok(())
    }
}
