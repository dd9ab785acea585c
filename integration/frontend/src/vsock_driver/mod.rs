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
//!
//! | module | job |
//! |---|---|
//! | this file | [`DriverConfig`], [`DriverStats`], the driver's state, start, reset, accessors |
//! | `queues` | virtqueue plumbing: polling, RX and event buffers, TX chains, kicks |
//! | `streams` | the stream state machine: dispatch of delivered packets, the streams' API |
//! | `raw` | raw packets: recorded deliveries ([`RawPacket`]) and packets sent as written |
//! | `tests` | the driver against a loopback device |

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use sockbypass_wire::PacketHeader;

use crate::error::DriverError;
use crate::guest_memory::{GuestRam, GuestRange};
use crate::split_queue::{Buffer, SplitQueue};
use crate::stream::{Stream, StreamId, StreamState};
use crate::tx::TxLayout;

mod queues;
mod raw;
mod streams;
#[cfg(test)]
mod tests;

pub use raw::RawPacket;

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
