//! Test-only device side for the driver's unit tests: one driver's three rings, served by the
//! test itself, in its own thread of control (no background thread, no vhost-user).
//!
//! It is no switch: nothing is routed, rewritten, split or answered. The test takes what the
//! driver sent ([`RawDevice::take_tx`]: each TX chain's header, payload and descriptor count, or
//! that the wire crate rejected it) and writes what the driver is to receive, one packet per RX
//! buffer ([`RawDevice::deliver`]) or one event ([`RawDevice::event`]). Streams between two
//! drivers are tested through the real `sockbypassd` (`tests/driver_streams.rs`).

use sockbypass_wire::consts::{EVENT_QUEUE, HEADER_SIZE, RX_QUEUE, TX_QUEUE};
use sockbypass_wire::event::VsockEvent;
use sockbypass_wire::{parse_rx_chain, parse_tx_chain, PacketHeader};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::vsock_driver::VsockDriver;

/// One TX chain as the device took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The header.
    pub header: PacketHeader,
    /// The payload (`header.len()` bytes).
    pub payload: Vec<u8>,
    /// Descriptors in the chain (an indirect table's descriptors counted, not the table's).
    pub descs: usize,
}

/// The device side of one driver's rings.
pub(crate) struct RawDevice {
    mem: GuestMemoryMmap<()>,
    queues: [Queue; 3],
    calls: [EventFd; 3],
}

impl RawDevice {
    /// Takes over the rings of `d` (started or not), as a backend does after SET_VRING_*.
    pub fn attach(d: &VsockDriver) -> RawDevice {
        let qs = d.queues();
        let mk = |i: usize| {
            let l = qs[i].layout();
            let mut q = Queue::new(l.size).expect("queue");
            q.set_size(l.size);
            q.try_set_desc_table_address(l.desc_table).expect("desc");
            q.try_set_avail_ring_address(l.avail_ring).expect("avail");
            q.try_set_used_ring_address(l.used_ring).expect("used");
            q.set_event_idx(qs[i].event_idx());
            q.set_ready(true);
            q
        };
        let dup = |i: usize| qs[i].call_fd().try_clone().expect("dup eventfd");
        RawDevice {
            mem: d.ram().memory().clone(),
            queues: [mk(0), mk(1), mk(2)],
            calls: [dup(0), dup(1), dup(2)],
        }
    }

    /// Takes every TX chain the driver published, in order, and returns each to it (used
    /// length 0): `Err(())` for a chain the wire crate rejects.
    pub fn take_tx(&mut self) -> Vec<Result<Sent, ()>> {
        let mut out = Vec::new();
        let q = &mut self.queues[TX_QUEUE];
        while let Some(chain) = q.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descs = chain.clone().count();
            let parsed = parse_tx_chain(chain).map_err(|_| ()).map(|pkt| {
                let mut payload = vec![0u8; pkt.payload.len() as usize];
                pkt.payload
                    .read_bytes(&self.mem, 0, &mut payload)
                    .expect("payload");
                Sent {
                    header: pkt.header,
                    payload,
                    descs,
                }
            });
            q.add_used(&self.mem, head, 0).expect("add_used");
            out.push(parsed);
        }
        if !out.is_empty() {
            self.signal(TX_QUEUE);
        }
        out
    }

    /// Writes `header` and `payload` into the next RX buffer the driver posted, as it is (the
    /// payload must fit the buffer), and returns the used length. Panics when no buffer is
    /// posted: the test asks for a delivery the driver has no room for.
    pub fn deliver(&mut self, header: &PacketHeader, payload: &[u8]) -> u32 {
        let q = &mut self.queues[RX_QUEUE];
        let chain = q
            .pop_descriptor_chain(&self.mem)
            .expect("an RX buffer posted");
        let head = chain.head_index();
        let buf = parse_rx_chain(chain).expect("a well-formed RX buffer");
        let n = u32::try_from(payload.len()).expect("a payload under 4 GiB");
        assert!(n <= buf.payload_capacity(), "the payload fits the buffer");
        buf.write_header(&self.mem, header).expect("header");
        buf.payload(n)
            .and_then(|s| s.write_bytes(&self.mem, 0, payload))
            .expect("payload");
        let used = HEADER_SIZE as u32 + n;
        q.add_used(&self.mem, head, used).expect("add_used");
        self.signal(RX_QUEUE);
        used
    }

    /// Writes event `id` (0 is `TRANSPORT_RESET`) into the next event buffer the driver posted.
    pub fn event(&mut self, id: u32) {
        let q = &mut self.queues[EVENT_QUEUE];
        let chain = q
            .pop_descriptor_chain(&self.mem)
            .expect("an event buffer posted");
        let head = chain.head_index();
        let desc = chain.clone().next().expect("one descriptor");
        let ev = if id == 0 {
            VsockEvent::transport_reset()
        } else {
            VsockEvent::default()
        };
        self.mem
            .write_slice(ev.as_slice(), desc.addr())
            .expect("event");
        q.add_used(&self.mem, head, 4).expect("add_used");
        self.signal(EVENT_QUEUE);
    }

    fn signal(&mut self, q: usize) {
        if self.queues[q]
            .needs_notification(&self.mem)
            .expect("needs_notification")
        {
            self.calls[q].write(1).expect("call");
        }
    }
}
