//! Random hostile ring states, for `hostile_guest.rs`.
//!
//! [`RingAttacker`] takes one random step at a time on a guest's rings, as a guest (or its
//! frontend) that lies about everything would:
//! - batches of hostile chains ([`ChainMaker`]);
//! - heads published again while the device may still hold them;
//! - available indexes jumped far ahead or rewound, on any queue;
//! - scribbles over the used rings (which only the device writes) and over the available rings'
//!   flags and `used_event`;
//! - chains whose buffers are the rings themselves (the device reads a TX ring as a packet, or
//!   writes an RX packet over the guest's own rings);
//! - descriptor tables rewritten by another thread while the device reads them;
//! - a TX queue reconfigured mid-walk (SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR on a
//!   running ring);
//! - device resets.
//!
//! After a step that leaves the guest's driver out of step with its rings (a broken queue, a
//! reconfiguration), the caller resets the guest ([`RingAttacker::recover`]) and goes on.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sockbypass_frontend::split_queue::DESC_F_WRITE;
use sockbypass_frontend::{RawDescriptor, SplitQueue, TestVm};
use sockbypass_wire::consts::{EVENT_QUEUE, RX_QUEUE, TX_QUEUE};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::GuestAddress;

use crate::hostile_chains::ChainMaker;

/// The kinds of step, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A batch of hostile chains.
    Chains,
    /// Heads published again.
    Republish,
    /// An available index far ahead.
    JumpAvail,
    /// An available index moved back.
    RewindAvail,
    /// Random bytes over a used ring.
    ScribbleUsed,
    /// Random available-ring flags and `used_event`.
    ScribbleAvail,
    /// A chain whose buffer is the guest's own rings.
    IntoRings,
    /// A descriptor table rewritten while the device reads it.
    MutatingTable,
    /// A running TX queue reconfigured.
    Reconfigure,
    /// A device reset.
    Reset,
}

/// Every kind, with its weight in the random choice.
const STEPS: [(Step, u32); 10] = [
    (Step::Chains, 40),
    (Step::Republish, 12),
    (Step::JumpAvail, 4),
    (Step::RewindAvail, 4),
    (Step::ScribbleUsed, 8),
    (Step::ScribbleAvail, 8),
    (Step::IntoRings, 8),
    (Step::MutatingTable, 6),
    (Step::Reconfigure, 3),
    (Step::Reset, 2),
];

/// TX descriptors reserved for hostile chains; the rest stay for the guest's driver.
const POOL: usize = 128;
/// Chains per batch at most.
const BATCH: usize = 32;
/// How long another thread rewrites the descriptor table in a [`Step::MutatingTable`] step.
const MUTATION_WINDOW: Duration = Duration::from_millis(3);

/// Takes random hostile steps on one guest's rings.
pub struct RingAttacker {
    rng: StdRng,
    maker: ChainMaker,
    pool: Vec<u16>,
    /// Steps taken, by kind (in the order of [`STEPS`]).
    pub taken: [u64; STEPS.len()],
    /// The last step left the guest's driver out of step with its rings: reset it.
    pub needs_reset: bool,
}

impl RingAttacker {
    /// An attacker on `x`, aiming at `peers` and `ports`, never at `avoid_port`.
    pub fn new(x: &mut TestVm, seed: u64, peers: &[u64], ports: &[u32], avoid_port: u32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let maker = ChainMaker::new(
            x.ram(),
            StdRng::seed_from_u64(rng.gen()),
            x.guest_cid(),
            peers,
            ports,
            avoid_port,
            BATCH,
        );
        let pool = reserve_pool(x);
        RingAttacker {
            rng,
            maker,
            pool,
            taken: [0; STEPS.len()],
            needs_reset: false,
        }
    }

    /// Takes one random step; returns its kind.
    pub fn step(&mut self, x: &mut TestVm) -> Step {
        let total: u32 = STEPS.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.gen_range(0..total);
        let (index, kind) = STEPS
            .iter()
            .enumerate()
            .find_map(|(i, (k, w))| {
                if pick < *w {
                    Some((i, *k))
                } else {
                    pick -= w;
                    None
                }
            })
            .expect("weights cover the range");
        self.taken[index] += 1;
        match kind {
            Step::Chains => self.chains(x),
            Step::Republish => self.republish(x),
            Step::JumpAvail => {
                let q = self.any_queue(x);
                let jump = q.size().wrapping_add(self.rng.gen_range(1..=u16::MAX / 2));
                let _ = q.set_avail_idx(q.next_avail().wrapping_add(jump));
                let _ = q.notify();
            }
            Step::RewindAvail => {
                let q = self.any_queue(x);
                let back = self.rng.gen_range(1..=q.size());
                let _ = q.set_avail_idx(q.next_avail().wrapping_sub(back));
                let _ = q.notify();
            }
            Step::ScribbleUsed => {
                let which = self.rng.gen_range(0..3);
                let layout = x.driver().queues()[which].layout();
                let len = 4 + 8 * u64::from(layout.size);
                let at = layout.used_ring.0 + self.rng.gen_range(0..len);
                let bytes: [u8; 4] = self.rng.gen();
                let _ = x.ram().write(GuestAddress(at), &bytes);
            }
            Step::ScribbleAvail => {
                let (flags, event) = (self.rng.gen(), self.rng.gen());
                let q = self.any_queue(x);
                let _ = q.set_avail_flags(flags);
                let _ = q.set_used_event(event);
                let _ = q.notify();
            }
            Step::IntoRings => self.chain_over_rings(x),
            Step::MutatingTable => self.mutating_table(x),
            Step::Reconfigure => {
                self.reconfigure(x);
                self.needs_reset = true;
            }
            Step::Reset => self.needs_reset = true,
        }
        // The driver takes what came back (RSTs from the peers' traps, returned chains); it
        // may find garbage there, which is the point.
        let _ = x.driver_mut().poll();
        kind
    }

    /// Resets the guest's device (as a guest driver reload does) and reserves a fresh pool.
    /// A frontend that the backend dropped reconnects instead.
    pub fn recover(&mut self, x: &mut TestVm) {
        if x.guest_reset().is_err() {
            x.reconnect().expect("x reconnects");
        }
        self.pool = reserve_pool(x);
        self.needs_reset = false;
    }

    /// The counts of each step kind, for the report.
    pub fn report(&self) -> String {
        STEPS
            .iter()
            .zip(self.taken)
            .map(|((k, _), n)| format!("{k:?} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn any_queue<'a>(&mut self, x: &'a mut TestVm) -> &'a mut SplitQueue {
        let d = x.driver_mut();
        match self.rng.gen_range(0..3) {
            RX_QUEUE => d.rx_queue_mut(),
            TX_QUEUE => d.tx_queue_mut(),
            _ => d.event_queue_mut(),
        }
    }

    fn chains(&mut self, x: &mut TestVm) {
        let n = self.rng.gen_range(1..=BATCH);
        let q = x.driver_mut().tx_queue_mut();
        self.maker.publish_batch(q, &self.pool, n);
        let _ = q.notify();
    }

    fn republish(&mut self, x: &mut TestVm) {
        let n = self.rng.gen_range(1..=8);
        let q = x.driver_mut().tx_queue_mut();
        for _ in 0..n {
            let head = self.pool[self.rng.gen_range(0..self.pool.len())];
            let _ = q.publish_head(head);
        }
        let _ = q.notify();
    }

    /// A TX chain that reads the guest's rings as a packet, or an RX buffer (already posted)
    /// redirected so that the device writes a packet over them.
    fn chain_over_rings(&mut self, x: &mut TestVm) {
        let which = self.rng.gen_range(0..3);
        let layout = x.driver().queues()[which].layout();
        let start = layout.desc_table.0;
        let end = layout.used_ring.0 + 6 + 8 * u64::from(layout.size);
        let addr = self.rng.gen_range(start..end);
        let len = self
            .rng
            .gen_range(1..=u32::try_from(end - start).unwrap_or(u32::MAX));
        if self.rng.gen_bool(0.5) {
            let head = self.pool[self.rng.gen_range(0..self.pool.len())];
            let q = x.driver_mut().tx_queue_mut();
            let desc = RawDescriptor {
                addr,
                len,
                flags: 0,
                next: 0,
            };
            if q.write_descriptor(head, desc).is_ok() {
                let _ = q.publish_head(head);
                let _ = q.notify();
            }
        } else {
            let q = x.driver_mut().rx_queue_mut();
            let index = self.rng.gen_range(0..q.size());
            let desc = RawDescriptor {
                addr,
                len,
                flags: DESC_F_WRITE,
                next: 0,
            };
            let _ = q.write_descriptor(index, desc);
        }
    }

    /// Publishes a batch while another thread rewrites the pool's descriptors with random
    /// bytes, so that the device reads a table that changes under it.
    fn mutating_table(&mut self, x: &mut TestVm) {
        let ram = x.ram().clone();
        let table = x.driver().queues()[TX_QUEUE].layout().desc_table.0;
        let pool = self.pool.clone();
        let seed = self.rng.gen();
        let writer = std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            let end = Instant::now() + MUTATION_WINDOW;
            while Instant::now() < end {
                let d = pool[rng.gen_range(0..pool.len())];
                let bytes: [u8; 16] = rng.gen();
                let _ = ram.write(GuestAddress(table + 16 * u64::from(d)), &bytes);
            }
        });
        self.chains(x);
        writer.join().expect("the table writer");
    }

    /// SET_VRING_NUM (a smaller power of two, or the same), SET_VRING_BASE (random) and
    /// SET_VRING_ADDR on the running TX queue, then a kick. (Not SET_VRING_KICK: on a started
    /// ring vhost-user-backend 0.24 would keep the old fd's epoll entry, and the double wake-up
    /// of one kick ends that VM's vring worker, a frontend-only fault no guest can cause.)
    fn reconfigure(&mut self, x: &mut TestVm) {
        let q = x.driver().queues()[TX_QUEUE];
        let layout = q.layout();
        let size = (layout.size >> self.rng.gen_range(0..3)).max(1);
        let Ok(kick) = q.kick_fd().try_clone() else {
            return;
        };
        let ram = x.ram();
        let addrs = (
            ram.host_address(layout.desc_table),
            ram.host_address(layout.avail_ring),
            ram.host_address(layout.used_ring),
        );
        let (Ok(desc), Ok(avail), Ok(used)) = addrs else {
            return;
        };
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: desc,
            used_ring_addr: used,
            avail_ring_addr: avail,
            log_addr: None,
        };
        let base = self.rng.gen();
        if let Ok(frontend) = x.frontend_mut() {
            let raw = frontend.raw();
            let _ = raw.set_vring_num(TX_QUEUE, size);
            let _ = raw.set_vring_base(TX_QUEUE, base);
            let _ = raw.set_vring_addr(TX_QUEUE, &config);
        }
        let _ = kick.write(1);
    }
}

/// Takes [`POOL`] descriptors of `x`'s TX queue out of its driver's hands.
fn reserve_pool(x: &mut TestVm) -> Vec<u16> {
    x.driver_mut()
        .tx_queue_mut()
        .reserve_descriptors(POOL)
        .expect("descriptor pool")
}

/// The queues a step may pick, by index (for the compiler: EVENT_QUEUE is the third).
const _: () = assert!(EVENT_QUEUE == 2 && RX_QUEUE == 0 && TX_QUEUE == 1);
