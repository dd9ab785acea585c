//! The fast-path service (SPEC.md §13) driven by arbitrary control messages and arbitrary
//! writes into its windows, between which the service reads its control connections and runs
//! its copier. Two VMs, A (CID 3) and B (CID 4), each with a 1 MiB own window, and a pair
//! window, so both placements occur; each VM has two control connections.
//!
//! Checked: nothing panics; everything the daemon sends decodes; after the steps, closing
//! every control connection frees every slot of every window (no connection or slot leaks,
//! whatever the guests wrote), which a last round of connections proves by filling the windows.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use sockbypass_wire::fastpath::control::{ControlMsg, Op, MSG_LEN};
use sockbypass_wire::fastpath::layout::{ring_control, Geometry, RING_SIZE};
use sockbypassd::config::{DaemonConfig, PairConfig, VmConfig};
use sockbypassd::fastpath::intake::NewControl;
use sockbypassd::fastpath::{pair_window_path, window_path, Service, Window};

const MIB: u64 = 1 << 20;
/// Control connections: A's two, then B's two. Their tokens in the service are 2..=5.
const CONTROLS: usize = 4;

/// A message field, leaning to values that reach deep: the other VM's CID, a shared port.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Cid {
    A,
    B,
    Raw(u64),
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// A well-formed message (op taken mod the guest ops), on control connection `on % 4`.
    Msg {
        on: u8,
        op: u8,
        code: u8,
        req: u32,
        conn: u8,
        peer: Cid,
        port: u8,
    },
    /// 32 raw bytes.
    Raw { on: u8, bytes: [u8; MSG_LEN] },
    /// A ring field of a slot of a window, set to `value` (4- or 8-byte fields).
    Field {
        window: u8,
        slot: u8,
        ring: u8,
        field: u8,
        value: u64,
    },
    /// Any 8 bytes anywhere in a window (header included).
    Scribble { window: u8, at: u32, value: u64 },
    /// A guest producing `len` bytes into a ring the sane way (head moves by `len`).
    Produce {
        window: u8,
        slot: u8,
        ring: u8,
        len: u16,
    },
    /// The service's turn: read every control connection, copy, flush.
    Turn,
    /// A control connection closes (it is reopened by the next message on it).
    Close { on: u8 },
}

/// One fuzz input.
#[derive(Arbitrary, Debug, Clone)]
pub struct Input {
    pub steps: Vec<Step>,
}

struct Rig {
    service: Service,
    windows: Arc<[Window]>,
    guests: Vec<Option<UnixStream>>,
    tokens: Vec<u64>,
    next_token: u64,
    _dir: tempfile::TempDir,
}

fn config(dir: &std::path::Path) -> DaemonConfig {
    let vm = |name: &str, cid| VmConfig {
        fastpath_size: Some(MIB),
        max_conns: 16,
        max_conns_per_peer: Some(16),
        groups: vec!["g".into()],
        ..VmConfig::new(name, cid, dir.join(format!("{name}.sock")))
    };
    let mut c = DaemonConfig::with_vms(vec![vm("a", 3), vm("b", 4)]);
    c.pairs.push(PairConfig {
        vms: ["a".into(), "b".into()],
        size: MIB,
    });
    c
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = config(dir.path());
        let a = &config.vms[0].socket;
        let windows: Arc<[Window]> = vec![
            Window::create_own(&window_path(a, "a"), MIB, 3).expect("window a"),
            Window::create_own(&window_path(a, "b"), MIB, 4).expect("window b"),
            Window::create_pair(&pair_window_path(a, "a", "b"), MIB, 3, 4).expect("pair"),
        ]
        .into();
        let epoll = vmm_sys_util::epoll::Epoll::new().expect("epoll");
        let service = Service::new(&config, windows.clone(), epoll);
        let mut rig = Rig {
            service,
            windows,
            guests: (0..CONTROLS).map(|_| None).collect(),
            tokens: vec![0; CONTROLS],
            next_token: 2,
            _dir: dir,
        };
        for i in 0..CONTROLS {
            rig.open(i);
        }
        rig
    }

    fn open(&mut self, i: usize) {
        let (guest, daemon) = UnixStream::pair().expect("socket pair");
        guest.set_nonblocking(true).expect("non-blocking");
        self.service.add_control(NewControl {
            vm: i / 2,
            guest_port: 1000 + i as u32,
            stream: daemon,
        });
        self.tokens[i] = self.next_token;
        self.next_token += 1;
        self.guests[i] = Some(guest);
        self.send(i, &ControlMsg::new(Op::Hello).encode());
    }

    fn send(&mut self, i: usize, bytes: &[u8]) {
        if self.guests[i].is_none() {
            self.open(i);
        }
        if let Some(g) = &mut self.guests[i] {
            // A full socket is a guest that sends too much: dropping bytes is its loss.
            let _ = g.write(bytes);
        }
    }

    /// The service's turn; returns what it sent.
    fn turn(&mut self) -> Vec<(usize, ControlMsg)> {
        for t in self.tokens.clone() {
            self.service.on_readable(t);
        }
        self.service.reap();
        self.service.copy_pass();
        self.service.reap();
        self.service.flush_all();
        self.service.reap();
        self.drain()
    }

    /// Reads what the daemon sent; every message decodes. Returns them with their connection.
    fn drain(&mut self) -> Vec<(usize, ControlMsg)> {
        let mut got = Vec::new();
        for (i, g) in self.guests.iter_mut().enumerate() {
            let Some(s) = g else { continue };
            let mut b = [0u8; MSG_LEN];
            // The daemon writes each message whole into a stream socket, so a read takes
            // whole messages; anything else ends this drain.
            while let Ok(MSG_LEN) = s.read(&mut b) {
                let m = ControlMsg::decode(&b).expect("the daemon sends only valid messages");
                assert!(!m.op.from_guest(), "the daemon sends daemon messages");
                got.push((i, m));
            }
        }
        got
    }

    fn write_window(&self, window: u8, at: u64, bytes: &[u8]) {
        let w = &self.windows[usize::from(window) % self.windows.len()];
        let path = w.path();
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            use std::os::unix::fs::FileExt;
            let _ = f.write_all_at(bytes, at % (MIB - 8));
        }
    }

    fn step(&mut self, step: &Step) {
        let g = Geometry::new(MIB).expect("1 MiB");
        match *step {
            Step::Msg {
                on,
                op,
                code,
                req,
                conn,
                peer,
                port,
            } => {
                let guest_ops: Vec<Op> =
                    Op::ALL.iter().copied().filter(|o| o.from_guest()).collect();
                let op = guest_ops[usize::from(op) % guest_ops.len()];
                let mut m = ControlMsg::new(op);
                m.code = if op == Op::Abort { 1 + code % 10 } else { 0 };
                m.req = req;
                m.conn = u32::from(conn % 16);
                m.peer_cid = match peer {
                    Cid::A => 3,
                    Cid::B => 4,
                    Cid::Raw(c) => c,
                };
                m.port = u32::from(port % 4);
                m.peer_port = u32::from(port % 4);
                self.send(usize::from(on) % CONTROLS, &m.encode());
            }
            Step::Raw { on, bytes } => self.send(usize::from(on) % CONTROLS, &bytes),
            Step::Field {
                window,
                slot,
                ring,
                field,
                value,
            } => {
                let fields = [
                    (ring_control::HEAD, 8),
                    (ring_control::CLOSED, 4),
                    (ring_control::PRODUCER_SLEEPING, 4),
                    (ring_control::TAIL, 8),
                    (ring_control::CONSUMER_SLEEPING, 4),
                    (ring_control::GENERATION, 4),
                ];
                let (off, len) = fields[usize::from(field) % fields.len()];
                if let Some(ctl) = g.ring_control(u32::from(slot) % g.slots(), ring % 2) {
                    self.write_window(window, ctl + off, &value.to_le_bytes()[..len]);
                }
            }
            Step::Scribble { window, at, value } => {
                self.write_window(window, u64::from(at), &value.to_le_bytes());
            }
            Step::Produce {
                window,
                slot,
                ring,
                len,
            } => {
                let slot = u32::from(slot) % g.slots();
                if let Some(ctl) = g.ring_control(slot, ring % 2) {
                    let w = &self.windows[usize::from(window) % self.windows.len()];
                    let mut head = [0u8; 8];
                    if let Ok(f) = std::fs::File::open(w.path()) {
                        use std::os::unix::fs::FileExt;
                        let _ = f.read_exact_at(&mut head, ctl + ring_control::HEAD);
                    }
                    let head = u64::from_le_bytes(head).wrapping_add(u64::from(len) % RING_SIZE);
                    self.write_window(window, ctl + ring_control::HEAD, &head.to_le_bytes());
                }
            }
            Step::Turn => {
                self.turn();
            }
            Step::Close { on } => {
                self.guests[usize::from(on) % CONTROLS] = None;
            }
        }
    }
}

/// Closes every control connection, opens them again, and fills the windows: B listens on
/// port 9 and A connects until no slot is left. Returns the connections B was offered.
fn close_all_then_fill(rig: &mut Rig) -> usize {
    for g in &mut rig.guests {
        *g = None;
    }
    rig.turn();
    for i in 0..CONTROLS {
        rig.open(i);
    }
    let mut listen = ControlMsg::new(Op::Listen);
    listen.req = 1;
    listen.port = 9;
    rig.send(2, &listen.encode());
    rig.turn();
    let slots = Geometry::new(MIB).expect("1 MiB").slots();
    let mut offered = 0;
    for req in 0..(2 * slots + 1) {
        let mut c = ControlMsg::new(Op::Connect);
        c.req = req;
        c.peer_cid = 4;
        c.peer_port = 9;
        rig.send(0, &c.encode());
        for (i, m) in rig.turn() {
            if i == 2 && m.op == Op::Incoming {
                offered += 1;
                // Every other one is accepted: open and offered connections both hold slots.
                if m.conn % 2 == 0 {
                    let mut a = ControlMsg::new(Op::Accept);
                    a.conn = m.conn;
                    rig.send(2, &a.encode());
                }
            }
        }
    }
    offered
}

/// Runs `input`, then checks twice that once every control connection closed, every slot is
/// free again: the pair window's slots go to direct connections, then A's and B's own
/// windows' to host-copied ones, all of them (`max_conns` and `max_conns_per_peer` are 16).
pub fn run(input: &Input) {
    let mut rig = Rig::new();
    for step in input.steps.iter().take(512) {
        rig.step(step);
    }
    rig.turn();
    let all = 2 * Geometry::new(MIB).expect("1 MiB").slots() as usize;
    for round in 0..2 {
        assert_eq!(
            close_all_then_fill(&mut rig),
            all,
            "round {round}: after every control connection closed, every slot is free again"
        );
    }
}
