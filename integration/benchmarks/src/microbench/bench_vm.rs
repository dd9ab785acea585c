//! A guest driver cut down for measurement: every buffer and descriptor is set up once, so
//! sending and receiving a packet allocates nothing and costs a few guest-memory stores.
//!
//! Each TX and RX chain is a single descriptor (header and payload together, as Linux 6.x posts
//! RX buffers). Descriptor `h` always points at buffer `h`; a packet is sent by writing its
//! header into the buffer, the descriptor's length, and publishing head `h`.

use std::path::Path;

use sockbypass_wire::consts::{HEADER_LEN, HEADER_SIZE, MAX_PAYLOAD};
use sockbypass_wire::PacketHeader;
use vm_memory::{Address, GuestAddress};

use crate::error::MicrobenchError;
use sockbypass_frontend::split_queue::{RawDescriptor, SplitQueue, DESC_F_WRITE};
use sockbypass_frontend::vhost_frontend::{FrontendOptions, VhostFrontend};
use sockbypass_frontend::GuestRam;

/// Descriptors per queue (RX and TX), as Linux uses.
pub const RING_SIZE: u16 = 256;
/// Bytes of each buffer: a header and the largest payload.
const BUFFER_LEN: u32 = HEADER_LEN + MAX_PAYLOAD;
/// Guest RAM per VM: 2 × 256 buffers of 64 KiB + 44, the rings, and slack.
const MEMORY_SIZE: usize = 48 << 20;

/// One packet taken off the RX queue: its header and the descriptor it came in.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// The header the device wrote.
    pub header: PacketHeader,
    /// The chain head, to read the payload and to repost it.
    pub head: u16,
    /// The used length the device reported.
    pub used_len: u32,
}

/// A VM seen from its driver: guest RAM, the vhost-user connection and three queues with
/// fixed buffers.
pub struct BenchVm {
    ram: GuestRam,
    _frontend: VhostFrontend,
    cid: u64,
    rx: SplitQueue,
    tx: SplitQueue,
    _event: SplitQueue,
    rx_buffers: Vec<GuestAddress>,
    tx_buffers: Vec<GuestAddress>,
    tx_free: Vec<u16>,
    rx_interrupts: bool,
}

impl std::fmt::Debug for BenchVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchVm")
            .field("cid", &self.cid)
            .field("tx_free", &self.tx_free.len())
            .finish_non_exhaustive()
    }
}

impl BenchVm {
    /// Connects to the daemon's socket for one VM, starts the device, and posts every RX
    /// buffer. `rx_interrupts`: whether the driver asks to be interrupted for RX (a guest that
    /// would sleep) or not (a guest that polls).
    pub fn connect(socket: &Path, rx_interrupts: bool) -> Result<BenchVm, MicrobenchError> {
        let ram = GuestRam::new(MEMORY_SIZE)?;
        let mut frontend = VhostFrontend::connect(socket, &ram, &FrontendOptions::default())?;
        let cid = frontend.guest_cid()?;
        let event_idx = frontend.event_idx();
        let mut rx = SplitQueue::new(&ram, RING_SIZE, event_idx)?;
        let mut tx = SplitQueue::new(&ram, RING_SIZE, event_idx)?;
        let event = SplitQueue::new(&ram, 8, event_idx)?;
        let rx_buffers = fixed_chains(&ram, &mut rx, DESC_F_WRITE)?;
        let tx_buffers = fixed_chains(&ram, &mut tx, 0)?;
        // The device never interrupts for TX completions: the sender reaps them when it sends.
        tx.set_used_event(0x8000)?;
        tx.set_avail_flags(sockbypass_frontend::split_queue::AVAIL_F_NO_INTERRUPT)?;
        if rx_interrupts {
            rx.enable_interrupts()?;
        } else {
            rx.set_used_event(0x8000)?;
            rx.set_avail_flags(sockbypass_frontend::split_queue::AVAIL_F_NO_INTERRUPT)?;
        }
        frontend.start(&[&rx, &tx, &event])?;
        for head in 0..RING_SIZE {
            rx.publish_head(head)?;
        }
        rx.kick()?;
        Ok(BenchVm {
            ram,
            _frontend: frontend,
            cid,
            rx,
            tx,
            _event: event,
            rx_buffers,
            tx_buffers,
            tx_free: (0..RING_SIZE).rev().collect(),
            rx_interrupts,
        })
    }

    /// The CID the daemon gave this VM.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Guest RAM, to fill or check payloads.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// Where TX buffer `head`'s payload starts.
    pub fn tx_payload(&self, head: u16) -> GuestAddress {
        self.tx_buffers[usize::from(head)].unchecked_add(HEADER_LEN.into())
    }

    /// Where RX buffer `head`'s payload starts.
    pub fn rx_payload(&self, head: u16) -> GuestAddress {
        self.rx_buffers[usize::from(head)].unchecked_add(HEADER_LEN.into())
    }

    /// Takes back TX chains the device has used.
    pub fn reap_tx(&mut self) -> Result<usize, MicrobenchError> {
        let mut n = 0;
        while let Some(used) = self.tx.pop_used()? {
            let head = u16::try_from(used.id).map_err(|_| MicrobenchError::BadHead(used.id))?;
            if usize::from(head) >= self.tx_buffers.len() {
                return Err(MicrobenchError::BadHead(used.id));
            }
            self.tx_free.push(head);
            n += 1;
        }
        Ok(n)
    }

    /// The next free TX buffer, to write a payload into before [`BenchVm::send`]; `None` when
    /// every chain is with the device.
    pub fn next_tx_head(&self) -> Option<u16> {
        self.tx_free.last().copied()
    }

    /// Sends `header` (its `len` says how much of the buffer's payload goes) in the buffer
    /// [`BenchVm::next_tx_head`] named. Does not kick: see [`BenchVm::kick_tx`].
    pub fn send(&mut self, header: &PacketHeader) -> Result<u16, MicrobenchError> {
        let head = self.tx_free.pop().ok_or(MicrobenchError::TxFull)?;
        let len = header.len();
        if len > MAX_PAYLOAD {
            return Err(MicrobenchError::Oversized(len));
        }
        let buf = self.tx_buffers[usize::from(head)];
        self.ram.write_obj(buf, *header)?;
        self.tx.write_descriptor(
            head,
            RawDescriptor {
                addr: buf.0,
                len: HEADER_LEN + len,
                flags: 0,
                next: 0,
            },
        )?;
        self.tx.publish_head(head)?;
        Ok(head)
    }

    /// Kicks the TX queue if the device asked for it; returns whether it did.
    pub fn kick_tx(&mut self) -> Result<bool, MicrobenchError> {
        Ok(self.tx.kick()?)
    }

    /// Whether the device has put RX packets in the used ring that were not taken yet.
    pub fn rx_pending(&self) -> Result<bool, MicrobenchError> {
        Ok(self.rx.has_used()?)
    }

    /// The RX used index, to spin on cheaply.
    pub fn rx_used_idx(&self) -> Result<u16, MicrobenchError> {
        Ok(self.rx.used_idx()?)
    }

    /// The RX index this driver has consumed up to.
    pub fn rx_last_used(&self) -> u16 {
        self.rx.last_used()
    }

    /// Takes the next received packet, if any. Its buffer stays with the driver until
    /// [`BenchVm::repost_rx`].
    pub fn recv(&mut self) -> Result<Option<Received>, MicrobenchError> {
        let Some(used) = self.rx.pop_used()? else {
            return Ok(None);
        };
        let head = u16::try_from(used.id).map_err(|_| MicrobenchError::BadHead(used.id))?;
        let buf = *self
            .rx_buffers
            .get(usize::from(head))
            .ok_or(MicrobenchError::BadHead(used.id))?;
        if (used.len as usize) < HEADER_SIZE {
            return Err(MicrobenchError::ShortPacket(used.len));
        }
        let header: PacketHeader = self.ram.read_obj(buf)?;
        Ok(Some(Received {
            header,
            head,
            used_len: used.len,
        }))
    }

    /// Gives RX buffer `head` back to the device. Does not kick: see [`BenchVm::kick_rx`].
    pub fn repost_rx(&mut self, head: u16) -> Result<(), MicrobenchError> {
        self.rx.publish_head(head)?;
        Ok(())
    }

    /// How many times this driver has kicked its RX queue.
    pub fn rx_kicks(&self) -> u64 {
        self.rx.stats().kicks
    }

    /// Kicks the RX queue if the device asked for it (it waits for buffers).
    pub fn kick_rx(&mut self) -> Result<bool, MicrobenchError> {
        Ok(self.rx.kick()?)
    }

    /// Asks again for an RX interrupt at the next used entry (EVENT_IDX moves `used_event`
    /// along), if this VM wants RX interrupts at all; says whether packets are already there.
    pub fn rearm_rx(&mut self) -> Result<bool, MicrobenchError> {
        if self.rx_interrupts {
            Ok(self.rx.enable_interrupts()?)
        } else {
            self.rx_pending()
        }
    }

    /// Waits up to `timeout` for an RX interrupt; returns whether one came.
    pub fn wait_rx_interrupt(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<bool, MicrobenchError> {
        Ok(self.rx.wait_call(timeout)?)
    }
}

/// Allocates one buffer per descriptor of `queue` and writes descriptor `h` to point at
/// buffer `h` with `flags`; the descriptors are reserved, so the queue's own bookkeeping
/// leaves them alone.
fn fixed_chains(
    ram: &GuestRam,
    queue: &mut SplitQueue,
    flags: u16,
) -> Result<Vec<GuestAddress>, MicrobenchError> {
    let heads = queue.reserve_descriptors(usize::from(queue.size()))?;
    let mut buffers = vec![GuestAddress(0); heads.len()];
    for head in heads {
        let range = ram.alloc_zeroed(u64::from(BUFFER_LEN), 64)?;
        queue.write_descriptor(
            head,
            RawDescriptor {
                addr: range.addr.0,
                len: BUFFER_LEN,
                flags,
                next: 0,
            },
        )?;
        buffers[usize::from(head)] = range.addr;
    }
    Ok(buffers)
}
