//! Test-only device side for the driver's unit tests: a loopback switch between drivers, run in
//! its own thread directly on their rings (no vhost-user).
//!
//! Each attached driver is a port with a CID. TX packets are validated with the wire crate and
//! copied into the RX buffers of the port their `dst_cid` names (split over several RX buffers
//! when the payload does not fit one), with `src_cid` rewritten to the sender's CID. A packet
//! for an unknown CID is answered with RST. The switch only wakes up on kicks, so a driver that
//! forgets to kick makes its test time out.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sockbypass_wire::consts::{EVENT_QUEUE, HEADER_SIZE, RX_QUEUE, TX_QUEUE};
use sockbypass_wire::event::VsockEvent;
use sockbypass_wire::{parse_rx_chain, parse_tx_chain, Op, PacketHeader};
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::split_queue::poll_readable;
use crate::vsock_driver::VsockDriver;

/// What the switch saw.
#[derive(Clone, Debug, Default)]
pub(crate) struct SwitchStats {
    /// Every TX header, in order, with the sender's CID.
    pub tx_headers: Vec<(u64, PacketHeader)>,
    /// Descriptor counts of the TX chains.
    pub tx_chain_lens: Vec<usize>,
    /// TX chains the wire crate rejected.
    pub bad_chains: u64,
    /// RX buffers the wire crate rejected.
    pub bad_rx_buffers: u64,
    /// Packets delivered into RX buffers.
    pub delivered: u64,
}

struct Port {
    cid: u64,
    mem: GuestMemoryMmap<()>,
    queues: [Queue; 3],
    kicks: [EventFd; 3],
    calls: [EventFd; 3],
    pending: VecDeque<(PacketHeader, Vec<u8>)>,
    events: VecDeque<u32>,
}

impl Port {
    fn attach(d: &VsockDriver) -> Port {
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
        let dup = |fd: &EventFd| fd.try_clone().expect("dup eventfd");
        Port {
            cid: d.guest_cid(),
            mem: d.ram().memory().clone(),
            queues: [mk(0), mk(1), mk(2)],
            kicks: [
                dup(qs[0].kick_fd()),
                dup(qs[1].kick_fd()),
                dup(qs[2].kick_fd()),
            ],
            calls: [
                dup(qs[0].call_fd()),
                dup(qs[1].call_fd()),
                dup(qs[2].call_fd()),
            ],
            pending: VecDeque::new(),
            events: VecDeque::new(),
        }
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

struct Switch {
    ports: Vec<Port>,
    stats: Arc<Mutex<SwitchStats>>,
}

impl Switch {
    /// Drains every TX queue into the pending lists of the destination ports.
    fn drain_tx(&mut self) {
        for i in 0..self.ports.len() {
            let mut used = false;
            {
                let p = &mut self.ports[i];
                let _ = p.queues[TX_QUEUE].disable_notification(&p.mem);
            }
            loop {
                let popped = {
                    let p = &mut self.ports[i];
                    match p.queues[TX_QUEUE].pop_descriptor_chain(&p.mem) {
                        Some(chain) => {
                            let head = chain.head_index();
                            let descs = chain.clone().count();
                            let parsed = parse_tx_chain(chain).map(|pkt| {
                                let mut payload = vec![0u8; pkt.payload.len() as usize];
                                pkt.payload
                                    .read_bytes(&p.mem, 0, &mut payload)
                                    .expect("payload");
                                (pkt.header, payload)
                            });
                            p.queues[TX_QUEUE]
                                .add_used(&p.mem, head, 0)
                                .expect("add_used");
                            Some((descs, parsed, p.cid))
                        }
                        None => None,
                    }
                };
                let Some((descs, parsed, src)) = popped else {
                    let p = &mut self.ports[i];
                    if p.queues[TX_QUEUE]
                        .enable_notification(&p.mem)
                        .expect("enable")
                    {
                        continue;
                    }
                    break;
                };
                used = true;
                let (header, payload) = {
                    let mut st = self.stats.lock().expect("stats");
                    match parsed {
                        Ok((h, payload)) => {
                            st.tx_headers.push((src, h));
                            st.tx_chain_lens.push(descs);
                            (h, payload)
                        }
                        Err(_) => {
                            st.bad_chains += 1;
                            continue;
                        }
                    }
                };
                let mut hdr = header;
                hdr.set_src_cid(src);
                match self.ports.iter_mut().find(|q| q.cid == hdr.dst_cid()) {
                    Some(dst) => dst.pending.push_back((hdr, payload)),
                    None if hdr.op() != Some(Op::Rst) => {
                        let rst = hdr.reply(Op::Rst);
                        self.ports[i].pending.push_back((rst, Vec::new()));
                    }
                    None => {}
                }
            }
            if used {
                self.ports[i].signal(TX_QUEUE);
            }
        }
    }

    /// Delivers pending packets and events into posted buffers.
    fn deliver(&mut self) {
        for p in &mut self.ports {
            let mut used = false;
            loop {
                while let Some((hdr, payload)) = p.pending.pop_front() {
                    let Some(chain) = p.queues[RX_QUEUE].pop_descriptor_chain(&p.mem) else {
                        p.pending.push_front((hdr, payload));
                        break;
                    };
                    let head = chain.head_index();
                    let Ok(buf) = parse_rx_chain(chain) else {
                        self.stats.lock().expect("stats").bad_rx_buffers += 1;
                        p.queues[RX_QUEUE]
                            .add_used(&p.mem, head, 0)
                            .expect("add_used");
                        p.pending.push_front((hdr, payload));
                        continue;
                    };
                    let n = payload.len().min(buf.payload_capacity() as usize);
                    let mut h = hdr;
                    h.set_len(n as u32);
                    buf.write_header(&p.mem, &h).expect("header");
                    buf.payload(n as u32)
                        .and_then(|s| s.write_bytes(&p.mem, 0, &payload[..n]))
                        .expect("payload");
                    p.queues[RX_QUEUE]
                        .add_used(&p.mem, head, (HEADER_SIZE + n) as u32)
                        .expect("add_used");
                    used = true;
                    self.stats.lock().expect("stats").delivered += 1;
                    if n < payload.len() {
                        p.pending.push_front((hdr, payload[n..].to_vec()));
                    }
                }
                if p.pending.is_empty()
                    || !p.queues[RX_QUEUE]
                        .enable_notification(&p.mem)
                        .expect("enable")
                {
                    break;
                }
            }
            if used {
                p.signal(RX_QUEUE);
            }
            let mut ev_used = false;
            while let Some(id) = p.events.pop_front() {
                let Some(chain) = p.queues[EVENT_QUEUE].pop_descriptor_chain(&p.mem) else {
                    p.events.push_front(id);
                    let _ = p.queues[EVENT_QUEUE].enable_notification(&p.mem);
                    break;
                };
                let head = chain.head_index();
                let desc = chain.clone().next().expect("one descriptor");
                let ev = if id == 0 {
                    VsockEvent::transport_reset()
                } else {
                    VsockEvent::default()
                };
                p.mem
                    .write_slice(ev.as_slice(), desc.addr())
                    .expect("event");
                p.queues[EVENT_QUEUE]
                    .add_used(&p.mem, head, 4)
                    .expect("add_used");
                ev_used = true;
            }
            if ev_used {
                p.signal(EVENT_QUEUE);
            }
        }
    }

    fn step(&mut self) {
        self.drain_tx();
        self.deliver();
    }
}

enum Command {
    Event { cid: u64, id: u32 },
}

/// A running loopback switch.
pub(crate) struct LoopbackSwitch {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<SwitchStats>>,
    commands: mpsc::Sender<Command>,
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackSwitch {
    /// Attaches to the drivers' rings (started or not) and runs in a thread.
    pub fn start(drivers: &[&VsockDriver]) -> LoopbackSwitch {
        let stats = Arc::new(Mutex::new(SwitchStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Command>();
        let wake = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).expect("eventfd");
        let mut sw = Switch {
            ports: drivers.iter().map(|d| Port::attach(d)).collect(),
            stats: Arc::clone(&stats),
        };
        let thread_wake = wake.try_clone().expect("dup");
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut fds: Vec<RawFd> = sw
                .ports
                .iter()
                .flat_map(|p| p.kicks.iter().map(|k| k.as_raw_fd()))
                .collect();
            fds.push(thread_wake.as_raw_fd());
            while !thread_stop.load(Ordering::Acquire) {
                if !poll_readable(&fds, Duration::from_millis(20)).expect("poll") {
                    continue;
                }
                for p in &sw.ports {
                    for k in &p.kicks {
                        let _ = k.read();
                    }
                }
                let _ = thread_wake.read();
                while let Ok(Command::Event { cid, id }) = rx.try_recv() {
                    if let Some(p) = sw.ports.iter_mut().find(|p| p.cid == cid) {
                        p.events.push_back(id);
                    }
                }
                sw.step();
            }
        });
        LoopbackSwitch {
            stop,
            stats,
            commands: tx,
            wake,
            thread: Some(thread),
        }
    }

    /// What the switch saw so far.
    pub fn stats(&self) -> SwitchStats {
        self.stats.lock().expect("stats").clone()
    }

    /// Delivers event `id` on the event queue of the port with `cid`.
    pub fn inject_event(&self, cid: u64, id: u32) {
        self.commands
            .send(Command::Event { cid, id })
            .expect("switch alive");
        self.wake.write(1).expect("wake");
    }
}

impl Drop for LoopbackSwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
