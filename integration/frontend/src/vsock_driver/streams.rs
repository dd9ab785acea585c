//! The stream state machine of [`VsockDriver`] (SPEC.md §3): each packet the device delivered
//! is dispatched to its stream or listener, and the streams' API (connect, listen, accept,
//! send within the peer's credit, receive, credit updates, shutdown, close, reset).

use std::collections::VecDeque;

use sockbypass_wire::consts::{SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use sockbypass_wire::{Op, PacketHeader};

use super::{AddrKey, VsockDriver};
use crate::error::DriverError;
use crate::stream::{Stream, StreamId, StreamInfo, StreamState};
use crate::tx::{is_no_room, TxLayout};

impl VsockDriver {
    fn credit_threshold(&self, s: &Stream) -> u32 {
        self.cfg
            .credit_update_threshold
            .unwrap_or(s.buf_alloc / 4)
            .max(1)
    }

    pub(super) fn dispatch(
        &mut self,
        hdr: PacketHeader,
        payload: &[u8],
    ) -> Result<(), DriverError> {
        if hdr.dst_cid() != self.guest_cid {
            self.stats.rx_wrong_cid += 1;
            return Ok(());
        }
        if hdr.type_() != TYPE_STREAM {
            self.stats.rx_bad_type += 1;
            return Ok(());
        }
        let Some(op) = hdr.op() else {
            self.stats.rx_unknown_op += 1;
            return Ok(());
        };
        if op == Op::Rst {
            self.stats.rst_received += 1;
        }
        if op == Op::Rw {
            self.stats.rx_bytes += payload.len() as u64;
        }
        let key = (hdr.dst_port(), hdr.src_cid(), hdr.src_port());
        if let Some(&id) = self.by_addr.get(&key) {
            return self.on_stream_packet(id, op, &hdr, payload);
        }
        if op == Op::Request && self.listeners.contains_key(&hdr.dst_port()) {
            let id = self.new_stream(
                hdr.dst_port(),
                hdr.src_cid(),
                hdr.src_port(),
                StreamState::Connected,
            );
            let cid = self.guest_cid;
            let reply = match self.streams.get_mut(&id) {
                Some(s) => {
                    s.update_peer_credit(&hdr);
                    s.header(Op::Response, cid)
                }
                None => return Ok(()),
            };
            if let Some(q) = self.listeners.get_mut(&hdr.dst_port()) {
                q.push_back(id);
            }
            return self.send_control(reply);
        }
        self.stats.rx_unknown_stream += 1;
        if op != Op::Rst && self.cfg.rst_unknown_packets {
            self.stats.rst_sent += 1;
            self.send_control(hdr.reply(Op::Rst))?;
        }
        Ok(())
    }

    fn on_stream_packet(
        &mut self,
        id: StreamId,
        op: Op,
        hdr: &PacketHeader,
        payload: &[u8],
    ) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let auto_rst = self.cfg.auto_rst_on_peer_shutdown;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.update_peer_credit(hdr);
        let mut reply = None;
        let mut unbind = false;
        match (s.state, op) {
            (StreamState::Connecting, Op::Response) => s.state = StreamState::Connected,
            (_, Op::Rst) => {
                s.state = if s.state == StreamState::Closing {
                    StreamState::Closed
                } else {
                    StreamState::Reset
                };
                unbind = true;
            }
            (StreamState::Connecting, _) => s.counters.unexpected_packets += 1,
            (_, Op::Rw) => s.receive(payload),
            (_, Op::CreditUpdate) => s.counters.credit_updates_received += 1,
            (_, Op::CreditRequest) => {
                s.counters.credit_requests_received += 1;
                s.counters.credit_updates_sent += 1;
                reply = Some(s.header(Op::CreditUpdate, cid));
            }
            (state, Op::Shutdown) => {
                s.peer_shutdown |= hdr.flags() & SHUTDOWN_BOTH;
                if matches!(state, StreamState::Connected | StreamState::PeerShutdown(_)) {
                    s.state = StreamState::PeerShutdown(s.peer_shutdown);
                }
                if s.peer_shutdown == SHUTDOWN_BOTH && auto_rst {
                    reply = Some(s.header(Op::Rst, cid));
                    s.state = StreamState::Closed;
                    unbind = true;
                }
            }
            (_, Op::Request | Op::Response) => s.counters.unexpected_packets += 1,
        }
        let key = (s.local_port, s.peer_cid, s.peer_port);
        if unbind {
            self.unbind(key);
        }
        if let Some(r) = reply {
            if r.op() == Some(Op::Rst) {
                self.stats.rst_sent += 1;
            }
            self.send_control(r)?;
        }
        Ok(())
    }

    // ----- streams -------------------------------------------------------------------------

    fn new_stream(
        &mut self,
        local_port: u32,
        peer_cid: u64,
        peer_port: u32,
        state: StreamState,
    ) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        let s = Stream::new(
            id,
            local_port,
            peer_cid,
            peer_port,
            state,
            self.cfg.buf_alloc,
        );
        self.streams.insert(id, s);
        self.by_addr.insert((local_port, peer_cid, peer_port), id);
        *self.local_ports.entry(local_port).or_insert(0) += 1;
        id
    }

    fn unbind(&mut self, key: AddrKey) {
        if self.by_addr.remove(&key).is_some() {
            if let Some(n) = self.local_ports.get_mut(&key.0) {
                *n -= 1;
                if *n == 0 {
                    self.local_ports.remove(&key.0);
                }
            }
        }
    }

    fn stream(&self, id: StreamId) -> Result<&Stream, DriverError> {
        self.streams.get(&id).ok_or(DriverError::UnknownStream(id))
    }

    fn stream_mut(&mut self, id: StreamId) -> Result<&mut Stream, DriverError> {
        self.streams
            .get_mut(&id)
            .ok_or(DriverError::UnknownStream(id))
    }

    fn alloc_port(&mut self) -> Result<u32, DriverError> {
        for _ in 0..=u32::from(u16::MAX) {
            let p = self.next_port;
            self.next_port = p.checked_add(1).unwrap_or(self.cfg.first_ephemeral_port);
            if !self.listeners.contains_key(&p) && !self.local_ports.contains_key(&p) {
                return Ok(p);
            }
        }
        Err(DriverError::NoPort)
    }

    /// Opens a stream to `dst_cid:dst_port` from a fresh local port: sends REQUEST and returns
    /// at once (state [`StreamState::Connecting`]). See also `connect_blocking`.
    pub fn connect(&mut self, dst_cid: u64, dst_port: u32) -> Result<StreamId, DriverError> {
        let port = self.alloc_port()?;
        self.connect_from(port, dst_cid, dst_port)
    }

    /// Like [`VsockDriver::connect`] from the given local port.
    pub fn connect_from(
        &mut self,
        local_port: u32,
        dst_cid: u64,
        dst_port: u32,
    ) -> Result<StreamId, DriverError> {
        if self.by_addr.contains_key(&(local_port, dst_cid, dst_port)) {
            return Err(DriverError::PortInUse(local_port));
        }
        let id = self.new_stream(local_port, dst_cid, dst_port, StreamState::Connecting);
        let cid = self.guest_cid;
        let hdr = self.stream_mut(id)?.header(Op::Request, cid);
        self.send_control(hdr)?;
        self.finish()?;
        Ok(id)
    }

    /// Accepts connections to `port` from now on (each REQUEST is answered with RESPONSE).
    pub fn listen(&mut self, port: u32) -> Result<(), DriverError> {
        if self.listeners.contains_key(&port) {
            return Err(DriverError::PortInUse(port));
        }
        self.listeners.insert(port, VecDeque::new());
        Ok(())
    }

    /// Stops listening on `port`; connections not yet accepted stay open.
    pub fn unlisten(&mut self, port: u32) -> Result<(), DriverError> {
        self.listeners
            .remove(&port)
            .map(|_| ())
            .ok_or(DriverError::NotListening(port))
    }

    /// The oldest connection to `port` not yet accepted, if any. Does not poll.
    pub fn accept(&mut self, port: u32) -> Result<Option<StreamId>, DriverError> {
        let q = self
            .listeners
            .get_mut(&port)
            .ok_or(DriverError::NotListening(port))?;
        Ok(q.pop_front())
    }

    /// Sends as much of `data` as the peer's credit, the TX queue and guest memory allow now, in
    /// packets of at most [`DriverConfig::max_payload`] bytes with the default layout. Returns
    /// the bytes sent (0 when out of credit or room).
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> Result<usize, DriverError> {
        let layout = self.cfg.tx_layout.clone();
        self.send_with_layout(id, data, &layout)
    }

    /// Like [`VsockDriver::send`] with the given layout.
    pub fn send_with_layout(
        &mut self,
        id: StreamId,
        data: &[u8],
        layout: &TxLayout,
    ) -> Result<usize, DriverError> {
        let s = self.stream(id)?;
        let writable = match s.state {
            StreamState::Connected => true,
            StreamState::PeerShutdown(f) => f & SHUTDOWN_RCV == 0,
            _ => false,
        };
        if !writable || s.local_shutdown & SHUTDOWN_SEND != 0 {
            return Err(DriverError::BadState {
                id,
                state: s.state,
                op: "send",
            });
        }
        self.reclaim_tx()?;
        self.flush_backlog()?;
        let mut sent = 0usize;
        if self.backlog.is_empty() {
            let cid = self.guest_cid;
            let max = self.cfg.max_payload.max(1) as usize;
            while sent < data.len() {
                let credit = self.stream(id)?.credit() as usize;
                let n = (data.len() - sent).min(credit).min(max);
                if n == 0 {
                    break;
                }
                let s = self.stream_mut(id)?;
                let last_fwd = s.last_fwd_cnt_sent;
                let mut hdr = s.header(Op::Rw, cid);
                // n <= max_payload, which is a u32.
                hdr.set_len(n as u32);
                match self.post_packet(&hdr, &data[sent..sent + n], layout) {
                    Ok(_) => {}
                    Err(e) if is_no_room(&e) => {
                        // Not sent: the peer was not told the new fwd_cnt.
                        self.stream_mut(id)?.last_fwd_cnt_sent = last_fwd;
                        break;
                    }
                    Err(e) => return Err(e),
                }
                self.stream_mut(id)?.note_sent(n as u32);
                sent += n;
            }
        }
        self.finish()?;
        Ok(sent)
    }

    /// Moves every buffered byte of stream `id` into `out`; returns how many. Sends a
    /// CREDIT_UPDATE if enough was consumed since the peer last heard.
    pub fn recv(&mut self, id: StreamId, out: &mut Vec<u8>) -> Result<usize, DriverError> {
        self.recv_max(id, out, usize::MAX)
    }

    /// Like [`VsockDriver::recv`], taking at most `max` bytes.
    pub fn recv_max(
        &mut self,
        id: StreamId,
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<usize, DriverError> {
        let n = self.stream_mut(id)?.consume(out, max);
        if n > 0 {
            let s = self.stream(id)?;
            let due = s.state.is_established() && s.credit_update_due(self.credit_threshold(s));
            if due {
                self.send_credit_update(id)?;
            }
        }
        Ok(n)
    }

    fn send_credit_update(&mut self, id: StreamId) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let s = self.stream_mut(id)?;
        s.counters.credit_updates_sent += 1;
        let hdr = s.header(Op::CreditUpdate, cid);
        self.send_control(hdr)?;
        self.finish()
    }

    /// Sends a CREDIT_UPDATE for stream `id` now.
    pub fn credit_update(&mut self, id: StreamId) -> Result<(), DriverError> {
        self.send_credit_update(id)
    }

    /// Sends a CREDIT_REQUEST for stream `id`.
    pub fn request_credit(&mut self, id: StreamId) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let s = self.stream_mut(id)?;
        s.counters.credit_requests_sent += 1;
        let hdr = s.header(Op::CreditRequest, cid);
        self.send_control(hdr)?;
        self.finish()
    }

    /// Changes the receive buffer size advertised for stream `id` and announces it.
    pub fn set_buf_alloc(&mut self, id: StreamId, buf_alloc: u32) -> Result<(), DriverError> {
        self.stream_mut(id)?.set_buf_alloc(buf_alloc);
        self.send_credit_update(id)
    }

    /// Sends SHUTDOWN with `flags` ([`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    pub fn shutdown(&mut self, id: StreamId, flags: u32) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let s = self.stream_mut(id)?;
        if !s.state.is_established() {
            return Err(DriverError::BadState {
                id,
                state: s.state,
                op: "shut down",
            });
        }
        s.local_shutdown |= flags & SHUTDOWN_BOTH;
        let mut hdr = s.header(Op::Shutdown, cid);
        hdr.set_flags(flags);
        self.send_control(hdr)?;
        self.finish()
    }

    /// Closes like Linux `close()`: SHUTDOWN with both flags, then [`StreamState::Closing`] until
    /// the peer's RST makes it [`StreamState::Closed`]. A stream still connecting is reset
    /// instead. No-op on a finished stream.
    pub fn close(&mut self, id: StreamId) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let s = self.stream_mut(id)?;
        if s.state.is_terminal() || s.state == StreamState::Closing {
            return Ok(());
        }
        if s.state == StreamState::Connecting {
            return self.reset_stream(id);
        }
        s.local_shutdown = SHUTDOWN_BOTH;
        s.state = StreamState::Closing;
        let mut hdr = s.header(Op::Shutdown, cid);
        hdr.set_flags(SHUTDOWN_BOTH);
        self.send_control(hdr)?;
        self.finish()
    }

    /// Sends RST and closes the stream at once. No-op on a finished stream.
    pub fn reset_stream(&mut self, id: StreamId) -> Result<(), DriverError> {
        let cid = self.guest_cid;
        let s = self.stream_mut(id)?;
        if s.state.is_terminal() {
            return Ok(());
        }
        s.state = StreamState::Closed;
        let key = (s.local_port, s.peer_cid, s.peer_port);
        let hdr = s.header(Op::Rst, cid);
        self.unbind(key);
        self.stats.rst_sent += 1;
        self.send_control(hdr)?;
        self.finish()
    }

    /// Forgets stream `id` entirely (its counters too). A live stream is not told: later
    /// packets for it count as unknown.
    pub fn forget(&mut self, id: StreamId) -> Result<(), DriverError> {
        let s = self
            .streams
            .remove(&id)
            .ok_or(DriverError::UnknownStream(id))?;
        let key = (s.local_port, s.peer_cid, s.peer_port);
        if self.by_addr.get(&key) == Some(&id) {
            self.unbind(key);
        }
        Ok(())
    }

    /// The state of stream `id`.
    pub fn state(&self, id: StreamId) -> Result<StreamState, DriverError> {
        Ok(self.stream(id)?.state)
    }

    /// A snapshot of stream `id`.
    pub fn stream_info(&self, id: StreamId) -> Result<StreamInfo, DriverError> {
        Ok(self.stream(id)?.info())
    }

    /// Every stream the driver remembers.
    pub fn stream_ids(&self) -> Vec<StreamId> {
        self.streams.keys().copied().collect()
    }

    /// Bytes received on stream `id` and not consumed yet.
    pub fn buffered(&self, id: StreamId) -> Result<usize, DriverError> {
        Ok(self.stream(id)?.rx.len())
    }
}
