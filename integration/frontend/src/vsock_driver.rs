//! A minimal guest-side virtio-vsock driver over the three queues, driven by polling.
//!
//! Nothing runs in the background: the test calls [`VsockDriver::poll`] (process whatever the
//! device completed, never blocks) or [`VsockDriver::pump`] (the same, waiting up to a timeout
//! for the device to signal a call eventfd first). The blocking helpers of
//! [`crate::blocking`] loop over `pump` until a condition holds or a timeout expires.
//!
//! What it does, like Linux's `virtio_transport`:
//! - keeps RX buffers posted (header and payload in one descriptor, or in two) and refills them
//!   as they are used; keeps event buffers posted and reports `TRANSPORT_RESET`;
//! - sends packets in the [`TxLayout`] asked for and frees their buffers when the device is done;
//! - runs stream connections: REQUEST/RESPONSE, RW within the peer's credit, CREDIT_UPDATE once
//!   the application consumed enough, CREDIT_REQUEST answers, SHUTDOWN, RST; answers a REQUEST to
//!   a listening port with RESPONSE and anything else unknown with RST;
//! - records every packet the device delivered ([`RawPacket`]) for tests to inspect, and lets
//!   tests send anything ([`VsockDriver::send_raw`]) or reach the queues directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use sockbypass_wire::consts::{
    EVENT_TRANSPORT_RESET, HEADER_SIZE, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use sockbypass_wire::{Op, PacketHeader};
use vm_memory::ByteValued;

use crate::error::DriverError;
use crate::guest_memory::{GuestRam, GuestRange};
use crate::split_queue::{wait_for_calls, Buffer, SplitQueue, UsedElem};
use crate::stream::{Stream, StreamId, StreamInfo, StreamState};
use crate::tx::{self, is_no_room, read_buffers, TxLayout};

/// Gap left after the header buffer of a split RX buffer, so header and payload are not adjacent.
const RX_GAP: u64 = 64;
/// Size of an event-queue record.
const EVENT_SIZE: u32 = 4;

/// How RX buffers are laid out.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum RxLayout {
    /// Header and payload room in one write-only descriptor (Linux since 6.x).
    #[default]
    Single,
    /// A 44-byte header descriptor, then the payload descriptor (older Linux).
    Split,
}

/// Driver settings.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// RX queue size (a power of two).
    pub rx_queue_size: u16,
    /// TX queue size (a power of two).
    pub tx_queue_size: u16,
    /// Event queue size (a power of two).
    pub event_queue_size: u16,
    /// Payload bytes per RX buffer (Linux: 4096).
    pub rx_buffer_size: u32,
    /// RX buffer layout.
    pub rx_layout: RxLayout,
    /// RX buffers to post; `None` fills the queue.
    pub rx_buffers: Option<u16>,
    /// Event buffers to post; `None` fills the queue.
    pub event_buffers: Option<u16>,
    /// Receive buffer size advertised on new streams (`buf_alloc`).
    pub buf_alloc: u32,
    /// Consumed bytes not yet announced that trigger a CREDIT_UPDATE; `None` = `buf_alloc / 4`.
    pub credit_update_threshold: Option<u32>,
    /// Largest payload per RW packet sent (not capped at the spec's 64 KiB, for tests).
    pub max_payload: u32,
    /// Default TX layout.
    pub tx_layout: TxLayout,
    /// Answer a SHUTDOWN with both flags with RST and close, as Linux does.
    pub auto_rst_on_peer_shutdown: bool,
    /// Answer packets for unknown streams (other than RST) with RST, as Linux does.
    pub rst_unknown_packets: bool,
    /// How many received packets to keep for [`VsockDriver::received_raw`] (0 = none).
    pub raw_record_limit: usize,
    /// Whether recorded packets keep their payload.
    pub record_payloads: bool,
    /// First local port handed out by [`VsockDriver::connect`].
    pub first_ephemeral_port: u32,
    /// `None`: [`VsockDriver::pump`] sleeps only on call eventfds, so a device that forgets to
    /// signal makes waits time out. `Some(d)`: it also wakes up every `d` and polls.
    pub poll_interval: Option<Duration>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            rx_queue_size: 256,
            tx_queue_size: 256,
            event_queue_size: 8,
            rx_buffer_size: 4096,
            rx_layout: RxLayout::Single,
            rx_buffers: None,
            event_buffers: None,
            buf_alloc: 256 * 1024,
            credit_update_threshold: None,
            max_payload: 64 * 1024,
            tx_layout: TxLayout::Single,
            auto_rst_on_peer_shutdown: true,
            rst_unknown_packets: true,
            raw_record_limit: 4096,
            record_payloads: false,
            first_ephemeral_port: 1024,
            poll_interval: None,
        }
    }
}

/// One packet as the device delivered it on the RX queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawPacket {
    /// Arrival number (counts every RX used entry since the driver was created).
    pub seq: u64,
    /// The header (zero-padded if the device wrote less than 44 bytes).
    pub header: PacketHeader,
    /// The length the device put in the used ring.
    pub used_len: u32,
    /// The payload, if [`DriverConfig::record_payloads`] (and the packet is well-formed).
    pub payload: Vec<u8>,
    /// The used length is below 44, beyond the buffer, or shorter than `44 + header.len`.
    pub malformed: bool,
}

impl RawPacket {
    /// The op, if known.
    pub fn op(&self) -> Option<Op> {
        self.header.op()
    }
}

/// Driver-wide counters.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Packets received (every RX used entry).
    pub rx_packets: u64,
    /// RW payload bytes received.
    pub rx_bytes: u64,
    /// Packets sent, control and raw included.
    pub tx_packets: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// RX entries with a used length below 44, beyond the buffer, or short of `44 + len`.
    pub rx_malformed: u64,
    /// RX entries whose used length is not exactly `44 + len`.
    pub rx_used_len_mismatch: u64,
    /// RX used entries naming no posted buffer.
    pub rx_unknown_used: u64,
    /// Packets for another CID.
    pub rx_wrong_cid: u64,
    /// Packets with a type other than stream.
    pub rx_bad_type: u64,
    /// Packets with an unknown op.
    pub rx_unknown_op: u64,
    /// Packets for no known stream or listener.
    pub rx_unknown_stream: u64,
    /// RST packets received.
    pub rst_received: u64,
    /// RST packets sent.
    pub rst_sent: u64,
    /// Control packets that had to wait for TX room.
    pub control_backlogged: u64,
    /// Event-queue records received.
    pub events: u64,
    /// `TRANSPORT_RESET` events received.
    pub transport_resets: u64,
}

#[derive(Debug)]
struct RxBuf {
    allocs: Vec<GuestRange>,
    buffers: Vec<Buffer>,
}

type AddrKey = (u32, u64, u32);

/// The guest-side vsock driver.
#[derive(Debug)]
pub struct VsockDriver {
    ram: GuestRam,
    cfg: DriverConfig,
    guest_cid: u64,
    rx: SplitQueue,
    tx: SplitQueue,
    event: SplitQueue,
    started: bool,
    rx_posted: HashMap<u16, RxBuf>,
    tx_posted: HashMap<u16, Vec<GuestRange>>,
    event_posted: HashMap<u16, GuestRange>,
    backlog: VecDeque<PacketHeader>,
    streams: BTreeMap<StreamId, Stream>,
    by_addr: HashMap<AddrKey, StreamId>,
    local_ports: HashMap<u32, usize>,
    listeners: HashMap<u32, VecDeque<StreamId>>,
    next_stream: u64,
    next_port: u32,
    raw: VecDeque<RawPacket>,
    rx_seq: u64,
    events: Vec<u32>,
    stats: DriverStats,
    rx_refill: bool,
    kick_rx: bool,
    kick_tx: bool,
    kick_event: bool,
}

impl VsockDriver {
    /// A driver for the guest with `guest_cid`, its queues allocated in `ram`. `event_idx` says
    /// whether VIRTIO_RING_F_EVENT_IDX was negotiated. Nothing is posted until
    /// [`VsockDriver::start`].
    pub fn new(
        ram: &GuestRam,
        guest_cid: u64,
        event_idx: bool,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        let rx = SplitQueue::new(ram, cfg.rx_queue_size, event_idx)?;
        let tx = SplitQueue::new(ram, cfg.tx_queue_size, event_idx)?;
        let event = SplitQueue::new(ram, cfg.event_queue_size, event_idx)?;
        Ok(VsockDriver {
            ram: ram.clone(),
            next_port: cfg.first_ephemeral_port,
            cfg,
            guest_cid,
            rx,
            tx,
            event,
            started: false,
            rx_posted: HashMap::new(),
            tx_posted: HashMap::new(),
            event_posted: HashMap::new(),
            backlog: VecDeque::new(),
            streams: BTreeMap::new(),
            by_addr: HashMap::new(),
            local_ports: HashMap::new(),
            listeners: HashMap::new(),
            next_stream: 1,
            raw: VecDeque::new(),
            rx_seq: 0,
            events: Vec::new(),
            stats: DriverStats::default(),
            rx_refill: true,
            kick_rx: false,
            kick_tx: false,
            kick_event: false,
        })
    }

    /// Posts the RX and event buffers and kicks: call once the device knows the rings.
    pub fn start(&mut self) -> Result<(), DriverError> {
        if self.started {
            return Ok(());
        }
        let per_buf = match self.cfg.rx_layout {
            RxLayout::Single => 1,
            RxLayout::Split => 2,
        };
        let rx_count = self
            .cfg
            .rx_buffers
            .unwrap_or(self.cfg.rx_queue_size / per_buf);
        for _ in 0..rx_count {
            let buf = self.alloc_rx_buffer()?;
            self.post_rx(buf)?;
        }
        let ev_count = self.cfg.event_buffers.unwrap_or(self.cfg.event_queue_size);
        for _ in 0..ev_count {
            let range = self.ram.alloc_zeroed(u64::from(EVENT_SIZE), 4)?;
            self.post_event(range)?;
        }
        self.started = true;
        self.finish()?;
        self.arm()?;
        Ok(())
    }

    /// Posts `n` more RX buffers (in the configured size and layout) and kicks. With
    /// [`DriverConfig::rx_buffers`] `Some(0)` and [`VsockDriver::set_rx_refill`] off, this is
    /// how a test decides exactly when the device gets room.
    pub fn post_rx_buffers(&mut self, n: u16) -> Result<(), DriverError> {
        for _ in 0..n {
            let buf = self.alloc_rx_buffer()?;
            self.post_rx(buf)?;
        }
        self.finish()
    }

    /// Whether a used RX buffer goes straight back to the device (the default, as in Linux).
    /// Off, used buffers are freed, and the device gets no room until
    /// [`VsockDriver::post_rx_buffers`].
    pub fn set_rx_refill(&mut self, on: bool) {
        self.rx_refill = on;
    }

    /// RX buffers currently posted to the device.
    pub fn rx_posted(&self) -> usize {
        self.rx_posted.len()
    }

    /// Drops everything the device was given, as a device reset does: the rings are zeroed,
    /// posted buffers freed, live streams become [`StreamState::Reset`]. Listeners stay.
    /// Call [`VsockDriver::start`] again once the device knows the (same) rings.
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.rx.reset()?;
        self.tx.reset()?;
        self.event.reset()?;
        for (_, b) in self.rx_posted.drain() {
            for a in b.allocs {
                self.ram.free(a)?;
            }
        }
        for (_, allocs) in self.tx_posted.drain() {
            for a in allocs {
                self.ram.free(a)?;
            }
        }
        for (_, a) in self.event_posted.drain() {
            self.ram.free(a)?;
        }
        self.backlog.clear();
        self.reset_all_streams();
        self.started = false;
        self.kick_rx = false;
        self.kick_tx = false;
        self.kick_event = false;
        Ok(())
    }

    fn reset_all_streams(&mut self) {
        for s in self.streams.values_mut() {
            if !s.state.is_terminal() {
                s.state = StreamState::Reset;
            }
        }
        self.by_addr.clear();
        self.local_ports.clear();
    }

    /// The guest's CID (source of every packet the driver builds).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Changes the guest's CID (after a config change).
    pub fn set_guest_cid(&mut self, cid: u64) {
        self.guest_cid = cid;
    }

    /// Switches EVENT_IDX handling on all queues.
    pub fn set_event_idx(&mut self, on: bool) {
        self.rx.set_event_idx(on);
        self.tx.set_event_idx(on);
        self.event.set_event_idx(on);
    }

    /// The settings.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The queues in device order: `[rx, tx, event]`.
    pub fn queues(&self) -> [&SplitQueue; 3] {
        [&self.rx, &self.tx, &self.event]
    }

    /// The RX queue, for raw operations.
    pub fn rx_queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.rx
    }

    /// The TX queue, for raw operations (hostile chains: see [`SplitQueue`]). Chains added there
    /// directly come back used with nothing for the driver to free.
    pub fn tx_queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.tx
    }

    /// The event queue, for raw operations.
    pub fn event_queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.event
    }

    /// Counters.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Control packets waiting for TX room.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// TX chains the device has not completed yet.
    pub fn tx_in_flight(&self) -> usize {
        self.tx.num_in_flight()
    }

    // ----- polling -------------------------------------------------------------------------

    /// Processes everything the device completed, sends what waits for room, kicks and re-arms
    /// interrupts. Never blocks. Returns the number of used entries processed.
    pub fn poll(&mut self) -> Result<usize, DriverError> {
        let mut work = 0;
        loop {
            self.rx.consume_call()?;
            self.tx.consume_call()?;
            self.event.consume_call()?;
            work += self.process_used()?;
            self.flush_backlog()?;
            self.finish()?;
            if !self.arm()? {
                break;
            }
        }
        Ok(work)
    }

    /// Like [`VsockDriver::poll`], but if nothing was pending waits up to `timeout` for the
    /// device to signal a queue first. Returns the number of used entries processed.
    pub fn pump(&mut self, timeout: Duration) -> Result<usize, DriverError> {
        let n = self.poll()?;
        if n > 0 {
            return Ok(n);
        }
        let wait = match self.cfg.poll_interval {
            Some(p) => p.min(timeout),
            None => timeout,
        };
        wait_for_calls(&mut [&mut self.rx, &mut self.tx, &mut self.event], wait)?;
        self.poll()
    }

    /// Re-arms interrupts on all queues; returns whether used entries are already pending.
    fn arm(&mut self) -> Result<bool, DriverError> {
        let a = self.rx.enable_interrupts()?;
        let b = self.tx.enable_interrupts()?;
        let c = self.event.enable_interrupts()?;
        Ok(a || b || c)
    }

    /// Kicks every queue that got new chains.
    fn finish(&mut self) -> Result<(), DriverError> {
        if std::mem::take(&mut self.kick_tx) {
            self.tx.kick()?;
        }
        if std::mem::take(&mut self.kick_rx) {
            self.rx.kick()?;
        }
        if std::mem::take(&mut self.kick_event) {
            self.event.kick()?;
        }
        Ok(())
    }

    fn process_used(&mut self) -> Result<usize, DriverError> {
        let mut work = self.reclaim_tx()?;
        while let Some(used) = self.rx.pop_used()? {
            work += 1;
            self.on_rx_used(used)?;
        }
        while let Some(used) = self.event.pop_used()? {
            work += 1;
            self.on_event_used(used)?;
        }
        Ok(work)
    }

    fn reclaim_tx(&mut self) -> Result<usize, DriverError> {
        let mut n = 0;
        while let Some(used) = self.tx.pop_used()? {
            n += 1;
            let allocs = u16::try_from(used.id)
                .ok()
                .and_then(|h| self.tx_posted.remove(&h));
            for a in allocs.into_iter().flatten() {
                self.ram.free(a)?;
            }
        }
        Ok(n)
    }

    // ----- RX ------------------------------------------------------------------------------

    fn alloc_rx_buffer(&mut self) -> Result<RxBuf, DriverError> {
        let size = self.cfg.rx_buffer_size;
        let hdr = HEADER_SIZE as u32;
        match self.cfg.rx_layout {
            RxLayout::Single => {
                let total = hdr + size;
                let a = self.ram.alloc(u64::from(total), 8)?;
                Ok(RxBuf {
                    allocs: vec![a],
                    buffers: vec![Buffer::writable(a.addr, total)],
                })
            }
            RxLayout::Split => {
                let h = self.ram.alloc(u64::from(hdr) + RX_GAP, 8)?;
                let p = match self.ram.alloc(u64::from(size.max(1)), 8) {
                    Ok(p) => p,
                    Err(e) => {
                        self.ram.free(h)?;
                        return Err(e.into());
                    }
                };
                Ok(RxBuf {
                    allocs: vec![h, p],
                    buffers: vec![
                        Buffer::writable(h.addr, hdr),
                        Buffer::writable(p.addr, size),
                    ],
                })
            }
        }
    }

    fn post_rx(&mut self, buf: RxBuf) -> Result<(), DriverError> {
        match self.rx.add_chain(&buf.buffers) {
            Ok(head) => {
                self.rx_posted.insert(head, buf);
                self.kick_rx = true;
                Ok(())
            }
            Err(e) => {
                for a in buf.allocs {
                    self.ram.free(a)?;
                }
                Err(e.into())
            }
        }
    }

    fn on_rx_used(&mut self, used: UsedElem) -> Result<(), DriverError> {
        self.stats.rx_packets += 1;
        self.rx_seq += 1;
        let posted = u16::try_from(used.id)
            .ok()
            .and_then(|h| self.rx_posted.remove(&h));
        let Some(buf) = posted else {
            self.stats.rx_unknown_used += 1;
            return Ok(());
        };
        let capacity: u64 = buf.buffers.iter().map(|b| u64::from(b.len)).sum();
        let readable = u64::from(used.len).min(capacity);
        let readable = usize::try_from(readable).unwrap_or(usize::MAX);
        let bytes = read_buffers(&self.ram, &buf.buffers, readable)?;
        // The buffer goes straight back to the device, unless refilling is off.
        if self.rx_refill {
            self.post_rx(buf)?;
        } else {
            for a in buf.allocs {
                self.ram.free(a)?;
            }
        }

        let mut header = PacketHeader::default();
        let n = bytes.len().min(HEADER_SIZE);
        header.as_mut_slice()[..n].copy_from_slice(&bytes[..n]);
        let payload_len = header.len() as usize;
        let malformed = (used.len as usize) < HEADER_SIZE
            || u64::from(used.len) > capacity
            || payload_len > bytes.len().saturating_sub(HEADER_SIZE);
        if !malformed && used.len as usize != HEADER_SIZE + payload_len {
            self.stats.rx_used_len_mismatch += 1;
        }
        let payload: &[u8] = if malformed {
            self.stats.rx_malformed += 1;
            &[]
        } else {
            &bytes[HEADER_SIZE..HEADER_SIZE + payload_len]
        };
        if self.cfg.raw_record_limit > 0 {
            if self.raw.len() >= self.cfg.raw_record_limit {
                self.raw.pop_front();
            }
            self.raw.push_back(RawPacket {
                seq: self.rx_seq,
                header,
                used_len: used.len,
                payload: if self.cfg.record_payloads {
                    payload.to_vec()
                } else {
                    Vec::new()
                },
                malformed,
            });
        }
        if malformed {
            return Ok(());
        }
        self.dispatch(header, payload)
    }

    fn post_event(&mut self, range: GuestRange) -> Result<(), DriverError> {
        match self
            .event
            .add_chain(&[Buffer::writable(range.addr, EVENT_SIZE)])
        {
            Ok(head) => {
                self.event_posted.insert(head, range);
                self.kick_event = true;
                Ok(())
            }
            Err(e) => {
                self.ram.free(range)?;
                Err(e.into())
            }
        }
    }

    fn on_event_used(&mut self, used: UsedElem) -> Result<(), DriverError> {
        let posted = u16::try_from(used.id)
            .ok()
            .and_then(|h| self.event_posted.remove(&h));
        let Some(range) = posted else {
            return Ok(());
        };
        let id: u32 = self.ram.read_obj::<u32>(range.addr)?;
        let id = u32::from_le(id);
        self.ram.fill(range, 0)?;
        self.post_event(range)?;
        self.stats.events += 1;
        self.events.push(id);
        if id == EVENT_TRANSPORT_RESET {
            self.stats.transport_resets += 1;
            self.backlog.clear();
            self.reset_all_streams();
        }
        Ok(())
    }

    // ----- dispatch ------------------------------------------------------------------------

    fn credit_threshold(&self, s: &Stream) -> u32 {
        self.cfg
            .credit_update_threshold
            .unwrap_or(s.buf_alloc / 4)
            .max(1)
    }

    fn dispatch(&mut self, hdr: PacketHeader, payload: &[u8]) -> Result<(), DriverError> {
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

    // ----- TX ------------------------------------------------------------------------------

    /// Posts one packet, reclaiming completed TX chains first if there is no room.
    fn post_packet(
        &mut self,
        hdr: &PacketHeader,
        payload: &[u8],
        layout: &TxLayout,
    ) -> Result<u16, DriverError> {
        let parts: [&[u8]; 2] = [hdr.as_slice(), payload];
        let posted = match tx::post(&self.ram, &mut self.tx, &parts, layout) {
            Err(e) if is_no_room(&e) => {
                if self.reclaim_tx()? == 0 {
                    if self.tx.num_in_flight() == 0 {
                        return Err(DriverError::TooBig {
                            bytes: HEADER_SIZE + payload.len(),
                            descriptors: layout.plan(HEADER_SIZE + payload.len())?.0.len(),
                        });
                    }
                    return Err(e);
                }
                tx::post(&self.ram, &mut self.tx, &parts, layout)?
            }
            other => other?,
        };
        self.tx_posted.insert(posted.head, posted.allocs);
        self.kick_tx = true;
        self.stats.tx_packets += 1;
        self.stats.tx_bytes += payload.len() as u64;
        Ok(posted.head)
    }

    /// Sends a header-only packet now, or queues it until there is TX room.
    fn send_control(&mut self, hdr: PacketHeader) -> Result<(), DriverError> {
        if self.backlog.is_empty() {
            let layout = self.cfg.tx_layout.clone();
            match self.post_packet(&hdr, &[], &layout) {
                Ok(_) => return Ok(()),
                Err(e) if is_no_room(&e) => {}
                Err(e) => return Err(e),
            }
        }
        self.stats.control_backlogged += 1;
        self.backlog.push_back(hdr);
        Ok(())
    }

    fn flush_backlog(&mut self) -> Result<(), DriverError> {
        let layout = self.cfg.tx_layout.clone();
        while let Some(hdr) = self.backlog.front().copied() {
            match self.post_packet(&hdr, &[], &layout) {
                Ok(_) => {
                    self.backlog.pop_front();
                }
                Err(e) if is_no_room(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends `header` and `payload` exactly as given (any CIDs, ports, op, type, `len`...),
    /// outside any stream, in `layout`. Returns the head index of the chain.
    pub fn send_raw(
        &mut self,
        header: &PacketHeader,
        payload: &[u8],
        layout: &TxLayout,
    ) -> Result<u16, DriverError> {
        self.send_raw_bytes(&[header.as_slice(), payload].concat(), layout)
    }

    /// Sends arbitrary bytes as one TX chain (e.g. a truncated header). Returns the head index.
    pub fn send_raw_bytes(&mut self, bytes: &[u8], layout: &TxLayout) -> Result<u16, DriverError> {
        let head = match tx::post(&self.ram, &mut self.tx, &[bytes], layout) {
            Err(e) if is_no_room(&e) => {
                self.reclaim_tx()?;
                tx::post(&self.ram, &mut self.tx, &[bytes], layout)?
            }
            other => other?,
        };
        self.tx_posted.insert(head.head, head.allocs);
        self.stats.tx_packets += 1;
        self.kick_tx = true;
        self.finish()?;
        Ok(head.head)
    }

    /// Packets the device delivered, oldest first (at most [`DriverConfig::raw_record_limit`]).
    pub fn received_raw(&self) -> &VecDeque<RawPacket> {
        &self.raw
    }

    /// Takes the recorded packets.
    pub fn take_received_raw(&mut self) -> Vec<RawPacket> {
        self.raw.drain(..).collect()
    }

    /// Event ids received on the event queue, oldest first.
    pub fn events(&self) -> &[u32] {
        &self.events
    }

    /// Takes the received event ids.
    pub fn take_events(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.events)
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

impl Drop for VsockDriver {
    fn drop(&mut self) {
        let rx = self.rx_posted.drain().flat_map(|(_, b)| b.allocs);
        let tx = self.tx_posted.drain().flat_map(|(_, a)| a);
        let ev = self.event_posted.drain().map(|(_, a)| a);
        for a in rx.chain(tx).chain(ev).collect::<Vec<_>>() {
            let _ = self.ram.free(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device::LoopbackSwitch;
    use sockbypass_wire::consts::{OP_CREDIT_REQUEST, OP_RW};
    use std::time::Instant;

    const T: Duration = Duration::from_secs(10);
    const A: u64 = 3;
    const B: u64 = 4;

    struct Pair {
        a: VsockDriver,
        b: VsockDriver,
        sw: LoopbackSwitch,
    }

    fn pair_with(cfg_a: DriverConfig, cfg_b: DriverConfig, event_idx: bool) -> Pair {
        let ram_a = GuestRam::new(8 << 20).expect("ram a");
        let ram_b = GuestRam::new(8 << 20).expect("ram b");
        let mut a = VsockDriver::new(&ram_a, A, event_idx, cfg_a).expect("driver a");
        let mut b = VsockDriver::new(&ram_b, B, event_idx, cfg_b).expect("driver b");
        let sw = LoopbackSwitch::start(&[&a, &b]);
        a.start().expect("start a");
        b.start().expect("start b");
        Pair { a, b, sw }
    }

    fn pair() -> Pair {
        pair_with(DriverConfig::default(), DriverConfig::default(), true)
    }

    /// Pumps both drivers until `cond` holds; panics after the timeout.
    fn drive(p: &mut Pair, what: &str, mut cond: impl FnMut(&mut Pair) -> bool) {
        let deadline = Instant::now() + T;
        while !cond(p) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            p.a.pump(Duration::from_millis(2)).expect("pump a");
            p.b.pump(Duration::from_millis(2)).expect("pump b");
        }
    }

    /// Connects A to a listening port of B; returns (A's id, B's id).
    fn connect(p: &mut Pair, port: u32) -> (StreamId, StreamId) {
        p.b.listen(port).expect("listen");
        let ida = p.a.connect(B, port).expect("connect");
        let mut idb = None;
        drive(p, "the connection", |p| {
            if idb.is_none() {
                idb = p.b.accept(port).expect("accept");
            }
            idb.is_some() && p.a.state(ida).expect("state") == StreamState::Connected
        });
        (ida, idb.expect("accepted"))
    }

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    /// A sends `data` to B, B echoes it back, in two threads with the blocking helpers.
    fn echo(p: &mut Pair, ida: StreamId, idb: StreamId, data: &[u8]) {
        let (a, b) = (&mut p.a, &mut p.b);
        std::thread::scope(|s| {
            let echoer = s.spawn(move || {
                let got = b.recv_exact(idb, data.len(), T).expect("b receives");
                b.send_all(idb, &got, T).expect("b echoes");
                b.flush_tx(T).expect("b flushes");
            });
            let receiver = s.spawn(move || {
                a.send_all(ida, data, T).expect("a sends");
                a.recv_exact(ida, data.len(), T).expect("a gets the echo")
            });
            echoer.join().expect("echo thread");
            let back = receiver.join().expect("a thread");
            assert!(back == data, "echo differs");
        });
    }

    #[test]
    fn connect_send_and_echo_in_every_layout() {
        let layouts = [
            TxLayout::Single,
            TxLayout::Split { payload_descs: 1 },
            TxLayout::Split { payload_descs: 3 },
            TxLayout::Indirect { payload_descs: 2 },
        ];
        for (i, layout) in layouts.iter().enumerate() {
            for rx_layout in [RxLayout::Single, RxLayout::Split] {
                for event_idx in [true, false] {
                    let cfg = DriverConfig {
                        tx_layout: layout.clone(),
                        rx_layout,
                        max_payload: 8192,
                        ..DriverConfig::default()
                    };
                    let mut p = pair_with(cfg.clone(), cfg, event_idx);
                    let (ida, idb) = connect(&mut p, 1000 + i as u32);
                    let data = pattern(300 * 1024, i as u32);
                    echo(&mut p, ida, idb, &data);
                    let sw = p.sw.stats();
                    assert_eq!(sw.bad_chains, 0, "{layout:?}");
                    assert_eq!(sw.bad_rx_buffers, 0, "{layout:?}");
                    // Every full RW packet went out in the layout asked for.
                    let want = match layout {
                        TxLayout::Single => 1,
                        TxLayout::Split { payload_descs } => 1 + payload_descs,
                        TxLayout::Indirect { payload_descs } => 1 + payload_descs,
                        TxLayout::Custom { .. } => unreachable!(),
                    };
                    for ((_, h), n) in sw.tx_headers.iter().zip(&sw.tx_chain_lens) {
                        if h.op_raw() == OP_RW && h.len() == 8192 {
                            assert_eq!(*n, want, "{layout:?}");
                        }
                    }
                    for d in [&p.a, &p.b] {
                        let s = d.stats();
                        assert_eq!(s.rx_malformed, 0);
                        assert_eq!(s.rx_used_len_mismatch, 0);
                        assert_eq!(s.rx_unknown_stream, 0);
                    }
                    let ia = p.a.stream_info(ida).expect("info");
                    let ib = p.b.stream_info(idb).expect("info");
                    assert_eq!(ia.counters.bytes_sent, data.len() as u64);
                    assert_eq!(ia.counters.bytes_received, data.len() as u64);
                    assert_eq!(ib.counters.bytes_received, data.len() as u64);
                    assert_eq!(ia.counters.credit_violations, 0);
                    assert_eq!(ib.counters.credit_violations, 0);
                    assert_eq!(ia.counters.max_packet_received, 4096);
                }
            }
        }
    }

    #[test]
    fn sender_never_exceeds_the_peer_credit() {
        let small = DriverConfig {
            buf_alloc: 8192,
            credit_update_threshold: Some(2048),
            ..DriverConfig::default()
        };
        let mut p = pair_with(DriverConfig::default(), small, true);
        let (ida, idb) = connect(&mut p, 7);
        assert_eq!(p.a.stream_info(ida).expect("info").peer_buf_alloc, 8192);
        let data = pattern(64 * 1024, 1);
        // Exactly the advertised window goes out, then nothing until B reads.
        assert_eq!(p.a.send(ida, &data).expect("send"), 8192);
        assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 0);
        drive(&mut p, "B to buffer the window", |p| {
            p.b.buffered(idb).expect("buffered") == 8192
        });
        assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 0);
        // Reading less than the threshold announces nothing.
        let mut got = Vec::new();
        p.b.recv_max(idb, &mut got, 1000).expect("recv");
        assert_eq!(
            p.b.stream_info(idb)
                .expect("info")
                .counters
                .credit_updates_sent,
            0
        );
        // Crossing it sends a CREDIT_UPDATE that opens exactly what was consumed.
        p.b.recv_max(idb, &mut got, 2000).expect("recv");
        assert_eq!(
            p.b.stream_info(idb)
                .expect("info")
                .counters
                .credit_updates_sent,
            1
        );
        drive(&mut p, "the credit update", |p| {
            p.a.stream_info(ida).expect("info").credit == 3000
        });
        assert_eq!(p.a.send(ida, &data[8192..]).expect("send"), 3000);
        // The rest, concurrently; B checks the window was never overrun.
        let (a, b) = (&mut p.a, &mut p.b);
        let sent = 8192 + 3000;
        let rest_out = &data[sent..];
        std::thread::scope(|s| {
            s.spawn(move || a.send_all(ida, rest_out, T).expect("send rest"));
            let rest = b
                .recv_exact(idb, data.len() - got.len(), T)
                .expect("recv rest");
            got.extend_from_slice(&rest);
        });
        assert!(got == data);
        let ib = p.b.stream_info(idb).expect("info");
        assert_eq!(ib.counters.credit_violations, 0);
        // Each update opens at most the 8 KiB window again: at least 7 were needed for 64 KiB.
        assert!(ib.counters.credit_updates_sent >= 7);
        assert_eq!(ib.rx_buffered, 0);
    }

    #[test]
    fn credit_request_is_answered_with_an_update() {
        let mut p = pair();
        let (ida, idb) = connect(&mut p, 8);
        p.a.request_credit(ida).expect("request");
        drive(&mut p, "the answer", |p| {
            p.a.stream_info(ida)
                .expect("info")
                .counters
                .credit_updates_received
                == 1
        });
        let ib = p.b.stream_info(idb).expect("info");
        assert_eq!(ib.counters.credit_requests_received, 1);
        assert_eq!(ib.counters.credit_updates_sent, 1);
        assert!(p
            .sw
            .stats()
            .tx_headers
            .iter()
            .any(|(src, h)| *src == A && h.op_raw() == OP_CREDIT_REQUEST));
    }

    #[test]
    fn refused_connections_end_in_rst() {
        let mut p = pair();
        // B is not listening: B answers RST.
        let id = p.a.connect(B, 9).expect("connect");
        drive(&mut p, "the refusal", |p| {
            p.a.state(id).expect("state") == StreamState::Reset
        });
        assert_eq!(p.b.stats().rst_sent, 1);
        assert_eq!(p.a.stats().rst_received, 1);
        // Closing a stream that is still connecting resets it.
        let id = p.a.connect(B, 9).expect("connect");
        p.a.close(id).expect("close");
        assert_eq!(p.a.state(id).expect("state"), StreamState::Closed);
        assert_eq!(p.a.stats().rst_sent, 1);
        // Nobody has CID 77: the switch answers RST; connect_blocking reports it.
        let (a, b) = (&mut p.a, &mut p.b);
        let err = a.connect_blocking(77, 1, T).expect_err("refused");
        assert!(matches!(err, DriverError::Refused { cid: 77, port: 1 }));
        assert_eq!(b.stats().rx_packets, 1);
    }

    #[test]
    fn close_and_shutdown_sequences() {
        // Linux-like B: a full SHUTDOWN is answered with RST.
        let mut p = pair();
        let (ida, idb) = connect(&mut p, 10);
        p.a.send_all(ida, b"last words", T).expect("send");
        p.a.close(ida).expect("close");
        assert_eq!(p.a.state(ida).expect("state"), StreamState::Closing);
        drive(&mut p, "the close", |p| {
            p.a.state(ida).expect("state") == StreamState::Closed
        });
        let ib = p.b.stream_info(idb).expect("info");
        assert_eq!(ib.state, StreamState::Closed);
        assert_eq!(ib.peer_shutdown, SHUTDOWN_BOTH);
        // Data that arrived before the close is still readable.
        assert_eq!(p.b.recv_to_end(idb, T).expect("rest"), b"last words");
        assert!(matches!(
            p.a.send(ida, b"x"),
            Err(DriverError::BadState { .. })
        ));

        // Without auto-RST: half-close, data the other way, then an explicit reset.
        let no_rst = DriverConfig {
            auto_rst_on_peer_shutdown: false,
            ..DriverConfig::default()
        };
        let mut p = pair_with(DriverConfig::default(), no_rst, true);
        let (ida, idb) = connect(&mut p, 11);
        p.a.send_all(ida, b"request", T).expect("send");
        p.a.shutdown(ida, SHUTDOWN_SEND).expect("shutdown");
        let mut got = Vec::new();
        drive(&mut p, "the half close", |p| {
            p.b.recv(idb, &mut got).expect("recv");
            p.b.state(idb).expect("state") == StreamState::PeerShutdown(SHUTDOWN_SEND)
        });
        p.b.recv(idb, &mut got).expect("recv");
        assert_eq!(got, b"request");
        assert_eq!(p.b.recv_to_end(idb, T).expect("end"), b"");
        p.b.send_all(idb, b"reply", T).expect("reply");
        drive(&mut p, "the reply", |p| p.a.buffered(ida).expect("n") == 5);
        p.a.close(ida).expect("close");
        drive(&mut p, "B to see the full shutdown", |p| {
            p.b.stream_info(idb).expect("info").peer_shutdown == SHUTDOWN_BOTH
        });
        assert_eq!(p.a.state(ida).expect("state"), StreamState::Closing);
        p.b.reset_stream(idb).expect("rst");
        drive(&mut p, "A to finish closing", |p| {
            p.a.state(ida).expect("state") == StreamState::Closed
        });
        assert_eq!(p.b.state(idb).expect("state"), StreamState::Closed);
    }

    #[test]
    fn packets_for_unknown_streams_get_rst_and_raw_packets_are_recorded() {
        let cfg = DriverConfig {
            record_payloads: true,
            ..DriverConfig::default()
        };
        let mut p = pair_with(DriverConfig::default(), cfg, true);
        // An RW for no connection, with the header cut over two descriptors.
        let mut hdr = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
        hdr.set_len(3).set_credit(100, 0);
        p.a.send_raw(
            &hdr,
            b"abc",
            &TxLayout::Custom {
                sizes: vec![20, 24, 3],
                indirect: false,
            },
        )
        .expect("raw");
        drive(&mut p, "the RST", |p| {
            p.a.received_raw().iter().any(|r| r.op() == Some(Op::Rst))
        });
        let rst =
            p.a.wait_for_packet(|r| r.op() == Some(Op::Rst), T)
                .expect("RST back");
        assert_eq!(rst.header.src_port(), 6000);
        assert_eq!(rst.header.dst_port(), 5000);
        assert_eq!(rst.used_len, HEADER_SIZE as u32);
        let seen = p.b.received_raw().front().cloned().expect("recorded");
        assert_eq!(seen.header, hdr);
        assert_eq!(seen.payload, b"abc");
        assert!(!seen.malformed);
        assert_eq!(p.b.stats().rx_unknown_stream, 1);
        // An unknown op, and a chain shorter than its header's len: the device rejects both.
        let mut bad = PacketHeader::stream(Op::Rw, A, 5000, B, 6000);
        bad.set_op_raw(99);
        p.a.send_raw(&bad, &[], &TxLayout::Single).expect("raw");
        let mut liar = PacketHeader::stream(Op::Rw, A, 1, B, 2);
        liar.set_len(100);
        p.a.send_raw(&liar, b"short", &TxLayout::Single)
            .expect("raw");
        p.a.flush_tx(T).expect("flush");
        assert_eq!(p.sw.stats().bad_chains, 2);
        assert_eq!(p.b.stats().rst_sent, 1);
        assert_eq!(p.b.take_received_raw().len(), 1);
        assert!(p.b.received_raw().is_empty());
    }

    #[test]
    fn transport_reset_event_resets_every_stream() {
        let mut p = pair();
        let (ida, _) = connect(&mut p, 12);
        p.sw.inject_event(A, EVENT_TRANSPORT_RESET);
        let events = p.a.wait_for_events(T).expect("event");
        assert_eq!(events, vec![EVENT_TRANSPORT_RESET]);
        assert_eq!(p.a.state(ida).expect("state"), StreamState::Reset);
        assert_eq!(p.a.stats().transport_resets, 1);
        // The event buffer was reposted: a second event arrives too.
        p.sw.inject_event(A, EVENT_TRANSPORT_RESET);
        assert_eq!(p.a.wait_for_events(T).expect("event").len(), 1);
        // Listeners survive; new connections work.
        let (ida, idb) = connect(&mut p, 13);
        echo(&mut p, ida, idb, b"still alive");
    }

    #[test]
    fn pump_times_out_quietly_and_memory_is_returned() {
        let ram = GuestRam::new(4 << 20).expect("ram");
        {
            let mut d = VsockDriver::new(&ram, A, true, DriverConfig::default()).expect("driver");
            d.start().expect("start");
            assert!(ram.allocated_bytes() > 256 * 4096);
            let t = Instant::now();
            assert_eq!(d.pump(Duration::from_millis(30)).expect("pump"), 0);
            assert!(t.elapsed() >= Duration::from_millis(30));
            let id = d.connect(B, 1).expect("connect");
            let err = d
                .wait_state(id, StreamState::is_established, Duration::from_millis(20))
                .expect_err("nobody answers");
            assert!(matches!(err, DriverError::Timeout { .. }));
            // The REQUEST is still in the TX queue, its buffer allocated.
            assert_eq!(d.tx_in_flight(), 1);
            d.reset().expect("reset");
            assert_eq!(d.tx_in_flight(), 0);
            assert_eq!(d.state(id).expect("state"), StreamState::Reset);
        }
        assert_eq!(ram.allocated_bytes(), 0);
    }

    #[test]
    fn rx_buffers_are_posted_on_demand_when_refill_is_off() {
        let none = DriverConfig {
            rx_buffers: Some(0),
            ..DriverConfig::default()
        };
        let mut p = pair_with(DriverConfig::default(), none, true);
        assert_eq!(p.b.rx_posted(), 0);
        p.b.set_rx_refill(false);
        p.b.post_rx_buffers(2).expect("post");
        assert_eq!(p.b.rx_posted(), 2);
        // The REQUEST uses one buffer, which is not given back.
        let (_, idb) = connect(&mut p, 30);
        assert_eq!(p.b.rx_posted(), 1);
        assert!(p.b.state(idb).expect("state").is_established());
        // Refill on again: used buffers go back.
        p.b.set_rx_refill(true);
        p.a.request_credit(p.a.stream_ids()[0])
            .expect("credit request");
        drive(&mut p, "the credit request", |p| {
            p.b.stats().rx_packets == 2
        });
        assert_eq!(p.b.rx_posted(), 1);
    }

    #[test]
    fn ports_and_listeners() {
        let mut p = pair();
        p.b.listen(20).expect("listen");
        assert!(matches!(p.b.listen(20), Err(DriverError::PortInUse(20))));
        assert!(matches!(p.b.accept(21), Err(DriverError::NotListening(21))));
        let id1 = p.a.connect_from(5555, B, 20).expect("connect");
        assert!(matches!(
            p.a.connect_from(5555, B, 20),
            Err(DriverError::PortInUse(5555))
        ));
        let id2 = p.a.connect(B, 20).expect("ephemeral");
        let info = p.a.stream_info(id2).expect("info");
        assert_eq!(info.local_port, 1024);
        drive(&mut p, "both connections", |p| {
            p.a.state(id1).expect("s").is_established()
                && p.a.state(id2).expect("s").is_established()
        });
        let first = p.b.accept(20).expect("accept").expect("one");
        assert_eq!(p.b.stream_info(first).expect("info").peer_port, 5555);
        assert!(p.b.accept(20).expect("accept").is_some());
        assert!(p.b.accept(20).expect("accept").is_none());
        p.b.unlisten(20).expect("unlisten");
        p.a.forget(id1).expect("forget");
        assert!(matches!(p.a.state(id1), Err(DriverError::UnknownStream(_))));
    }
}
