//! One simulated guest: guest RAM, the test frontend's virtio-vsock driver on it, and the
//! device side of its three queues as the vhost-user layer would hand them to the switch.
//!
//! Besides the driver's normal work, the guest can act against its rings (see
//! [`crate::scenario::RingOp`]). It keeps [`MARK`] out of every byte those actions write, so
//! that nothing hostile can ever carry the well-behaved stream's port (which holds that byte):
//! a hostile packet can hurt the stream only through the switch, never by forging it.

use sockbypass_frontend::{
    Buffer, DriverConfig, GuestRam, GuestRange, RawDescriptor, RxLayout, TxLayout, VsockDriver,
};
use sockbypassd::switch::{AtomicMem, Vring};
use vhost_user_backend::VringT;
use vm_memory::{GuestAddress, GuestMemoryAtomic};

use crate::scenario::{Addr, Buf, Layout, Len, Next, RingOp, Setup};

/// A byte no hostile action writes; the stream's port at A holds it.
pub const MARK: u8 = 0xB5;
/// Guest RAM per guest.
pub const RAM_SIZE: usize = 8 << 20;
/// TX descriptors reserved for raw ring operations.
pub const RESERVED: usize = 4;
/// Indirect tables in the table area, and entries per table.
pub const TABLES: u64 = 4;
/// See [`TABLES`].
pub const TABLE_LEN: u64 = 16;
/// Bytes of the scratch area.
pub const SCRATCH: u64 = 4096;
/// Descriptor flag: the buffer is an indirect table.
const F_INDIRECT: u16 = 4;

/// `MARK` replaced in every byte of `b`.
pub fn clean(b: &mut [u8]) {
    for x in b {
        if *x == MARK {
            *x = MARK ^ 1;
        }
    }
}

/// `v` with [`MARK`] removed from its little-endian bytes.
pub fn clean_u16(v: u16) -> u16 {
    let mut b = v.to_le_bytes();
    clean(&mut b);
    u16::from_le_bytes(b)
}

/// See [`clean_u16`].
pub fn clean_u32(v: u32) -> u32 {
    let mut b = v.to_le_bytes();
    clean(&mut b);
    u32::from_le_bytes(b)
}

/// See [`clean_u16`].
pub fn clean_u64(v: u64) -> u64 {
    let mut b = v.to_le_bytes();
    clean(&mut b);
    u64::from_le_bytes(b)
}

/// A [`Layout`] as the driver takes it.
pub fn tx_layout(l: &Layout) -> TxLayout {
    match l {
        Layout::Single => TxLayout::Single,
        Layout::Split(n) => TxLayout::Split {
            payload_descs: 1 + usize::from(n % 4),
        },
        Layout::Indirect(n) => TxLayout::Indirect {
            payload_descs: 1 + usize::from(n % 4),
        },
        Layout::Custom(sizes, indirect) => TxLayout::Custom {
            sizes: if sizes.is_empty() {
                vec![0]
            } else {
                sizes.iter().take(8).map(|&s| u32::from(s)).collect()
            },
            indirect: *indirect,
        },
    }
}

/// One guest.
pub struct Guest {
    /// Its CID.
    pub cid: u64,
    /// Guest RAM (kept for the driver's lifetime).
    pub ram: GuestRam,
    /// The driver.
    pub driver: VsockDriver,
    /// Guest memory as the switch sees it.
    pub mem: AtomicMem,
    /// RX, TX and event vrings, device side.
    pub vrings: Vec<Vring>,
    scratch: GuestRange,
    tables: GuestRange,
    reserved: Vec<u16>,
    /// The guest did something to its own rings that can lose, repeat or stall its own packets
    /// (a jumped index, RX heads it cannot track): its stream is no longer expected to arrive.
    pub broken: bool,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guest")
            .field("cid", &self.cid)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Guest {
    /// A guest with CID `cid` whose driver uses `setup`'s sizes; `receiver` gets the stream's
    /// `buf_alloc`, the other one the stream's TX layout.
    pub fn new(cid: u64, setup: &Setup, receiver: bool) -> Guest {
        let ram = GuestRam::new(RAM_SIZE).expect("guest RAM (memfd)");
        let mut cfg = DriverConfig {
            rx_queue_size: 8 << (setup.rx_size % 3),
            tx_queue_size: 16 << (setup.tx_size % 3),
            event_queue_size: 4,
            rx_buffer_size: 16 + u32::from(setup.rx_buffer % 4081),
            rx_layout: if setup.rx_split {
                RxLayout::Split
            } else {
                RxLayout::Single
            },
            max_payload: 16 + u32::from(setup.max_payload % 65521),
            raw_record_limit: 0,
            first_ephemeral_port: 2000,
            ..DriverConfig::default()
        };
        if receiver {
            cfg.buf_alloc = 64 + u32::from(setup.buf_alloc);
        } else {
            cfg.tx_layout = tx_layout(&setup.tx_layout.into());
        }
        let mut driver =
            VsockDriver::new(&ram, cid, setup.event_idx, cfg).expect("driver in fresh RAM");
        let mem = GuestMemoryAtomic::new(ram.memory().clone());
        let vrings = driver
            .queues()
            .iter()
            .map(|q| {
                let l = q.layout();
                let v = Vring::new(mem.clone(), l.size).expect("vring");
                v.set_queue_size(l.size);
                v.set_queue_info(l.desc_table.0, l.avail_ring.0, l.used_ring.0)
                    .expect("ring addresses inside guest RAM");
                v.set_queue_event_idx(setup.event_idx);
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        driver
            .start()
            .expect("driver posts its RX and event buffers");
        let scratch = ram.alloc_zeroed(SCRATCH, 16).expect("scratch area");
        let tables = ram
            .alloc_zeroed(TABLES * TABLE_LEN * 16, 16)
            .expect("table area");
        let reserved = driver
            .tx_queue_mut()
            .reserve_descriptors(RESERVED)
            .expect("a fresh TX queue has free descriptors");
        Guest {
            cid,
            ram,
            driver,
            mem,
            vrings,
            scratch,
            tables,
            reserved,
            broken: false,
        }
    }

    /// The guest address `a` names.
    pub fn resolve(&self, a: Addr) -> u64 {
        match a {
            Addr::Scratch(off) => self.scratch.addr.0 + u64::from(off) % SCRATCH,
            Addr::TxRing(off) => {
                let l = self.driver.queues()[1].layout();
                let len = l.used_ring.0 + 6 + 8 * u64::from(l.size) - l.desc_table.0;
                l.desc_table.0 + u64::from(off) % len
            }
            Addr::Table(k) => self.table_addr(k),
            Addr::Outside(off) => RAM_SIZE as u64 + u64::from(off),
            Addr::Top(n) => u64::MAX - u64::from(n),
        }
    }

    fn table_addr(&self, k: u8) -> u64 {
        self.tables.addr.0 + (u64::from(k) % TABLES) * TABLE_LEN * 16
    }

    /// Publishes a chain of hostile buffers (through an indirect table if `indirect`), taking
    /// free descriptors like any chain. Skipped when the ring has no room.
    pub fn hostile_chain(&mut self, bufs: &[Buf], indirect: bool) {
        if bufs.is_empty() {
            return;
        }
        let list: Vec<Buffer> = bufs
            .iter()
            .take(80)
            .map(|b| Buffer {
                addr: GuestAddress(clean_u64(self.resolve(b.addr))),
                len: clean_u32(b.len.get()),
                write_only: b.write,
            })
            .collect();
        let q = self.driver.tx_queue_mut();
        let _ = if indirect {
            q.add_indirect_chain(&list)
        } else {
            q.add_chain(&list)
        };
        let _ = q.kick();
    }

    /// Carries out a raw ring operation. `unpopped` is how many published TX heads the device
    /// has not taken yet: a head is published only while fewer than [`RESERVED`] wait, so that
    /// the available ring never holds more heads than it has slots (that would be a jumped
    /// index, which [`RingOp::JumpAvail`] does on purpose).
    pub fn ring_op(&mut self, op: &RingOp, unpopped: u16) {
        let reserved = self.reserved.clone();
        let size = self.driver.queues()[1].size();
        match op {
            RingOp::Desc {
                slot,
                addr,
                len,
                flags,
                next,
            } => {
                let index = reserved[usize::from(*slot) % reserved.len()];
                let next = match next {
                    Next::Reserved(n) => reserved[usize::from(*n) % reserved.len()],
                    Next::Past(n) => size.saturating_add(n % (u16::MAX - size)),
                };
                // Only the table area holds indirect tables: an indirect flag elsewhere would let
                // scratch bytes name any buffer, the stream's too.
                let flags = match addr {
                    Addr::Table(_) => clean_u16(*flags) | F_INDIRECT,
                    _ => clean_u16(*flags) & !F_INDIRECT,
                };
                let d = RawDescriptor {
                    addr: clean_u64(self.resolve(*addr)),
                    len: clean_u32(match (addr, len) {
                        (Addr::Table(_), Len::Small(n)) => 16 * u32::from(n % 17),
                        _ => len.get(),
                    }),
                    flags,
                    next: clean_u16(next),
                };
                let _ = self.driver.tx_queue_mut().write_descriptor(index, d);
            }
            RingOp::TableEntry {
                table,
                entry,
                addr,
                len,
                flags,
                next,
            } => {
                let addr = match addr {
                    Addr::Table(k) => Addr::Scratch(u16::from(*k)),
                    a => *a,
                };
                let mut bytes = Vec::with_capacity(16);
                bytes.extend_from_slice(&self.resolve(addr).to_le_bytes());
                bytes.extend_from_slice(&len.get().to_le_bytes());
                // An indirect flag here makes a nested table, which virtio-queue refuses.
                bytes.extend_from_slice(&flags.to_le_bytes());
                bytes.extend_from_slice(&next.to_le_bytes());
                clean(&mut bytes);
                let at = self.table_addr(*table) + (u64::from(*entry) % TABLE_LEN) * 16;
                let _ = self.ram.write(GuestAddress(at), &bytes);
            }
            RingOp::PublishReserved(slot) => {
                if usize::from(unpopped) < reserved.len() {
                    let head = reserved[usize::from(*slot) % reserved.len()];
                    let q = self.driver.tx_queue_mut();
                    let _ = q.publish_head(head);
                    let _ = q.kick();
                }
            }
            RingOp::PublishPast(n) => {
                if usize::from(unpopped) < reserved.len() {
                    let head = clean_u16(size.saturating_add(n % (u16::MAX - size)));
                    let q = self.driver.tx_queue_mut();
                    let _ = q.publish_head(head.max(size));
                    let _ = q.kick();
                }
            }
            RingOp::Scratch(off, data) => {
                let off = u64::from(*off) % SCRATCH;
                let n = data.len().min((SCRATCH - off) as usize);
                let mut bytes = data[..n].to_vec();
                clean(&mut bytes);
                let _ = self
                    .ram
                    .write(GuestAddress(self.scratch.addr.0 + off), &bytes);
            }
            RingOp::AvailFlags(f) => {
                let _ = self.driver.tx_queue_mut().set_avail_flags(clean_u16(*f));
            }
            RingOp::UsedEvent(e) => {
                let _ = self.driver.tx_queue_mut().set_used_event(clean_u16(*e));
            }
            RingOp::JumpAvail(by) => {
                self.broken = true;
                let q = self.driver.tx_queue_mut();
                let idx = q
                    .next_avail()
                    .wrapping_add(size)
                    .wrapping_add(1 + by % 1024);
                let _ = q.set_avail_idx(clean_u16(idx));
                let _ = q.notify();
            }
            RingOp::RewindAvail(by) => {
                self.broken = true;
                let q = self.driver.tx_queue_mut();
                let idx = q.next_avail().wrapping_sub(1 + u16::from(*by));
                let _ = q.set_avail_idx(clean_u16(idx));
                let _ = q.notify();
            }
            RingOp::RxPublishPast(n) => {
                self.broken = true;
                let q = self.driver.rx_queue_mut();
                let rx_size = q.size();
                let head = clean_u16(rx_size.saturating_add(n % (u16::MAX - rx_size)));
                let _ = q.publish_head(head.max(rx_size));
                let _ = q.kick();
            }
        }
    }
}
