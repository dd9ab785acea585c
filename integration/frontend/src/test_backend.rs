//! Test-only vhost-user backend (built on `vhost-user-backend`) for the frontend's unit tests.
//!
//! It records what the frontend negotiated and where the rings are, completes every TX chain,
//! and runs a tiny echo service on the host CID: REQUEST → RESPONSE, RW → the same bytes back,
//! SHUTDOWN → RST, CREDIT_REQUEST → CREDIT_UPDATE. It ignores the guest's credit (tests send
//! less than the guest's buffer).
//!
//! It is a recorder of the vhost-user conversation, not a switch: one guest, no routing, no
//! credit, no connection table. The frontend's tests need what only a recorder shows (the
//! features and protocol features acked, every TX header as sent, that a backend reattached to
//! kept rings sees only new packets), which the real `sockbypassd` does not expose; everything
//! a switch does is tested against the real daemon (`tests/driver_streams.rs` and the device
//! tests).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use sockbypass_wire::config_space::VsockConfigSpace;
use sockbypass_wire::consts::{
    HEADER_SIZE, HOST_CID, NUM_QUEUES, OFFERED_FEATURES, RX_QUEUE, TX_QUEUE,
};
use sockbypass_wire::{parse_rx_chain, parse_tx_chain, Op, PacketHeader};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

const ECHO_BUF_ALLOC: u32 = 1 << 20;

/// Where the backend found one vring.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct VringInfo {
    pub size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// What the backend saw so far.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub acked_features: u64,
    pub event_idx: bool,
    pub regions: Vec<(u64, u64)>,
    pub vrings: [Option<VringInfo>; NUM_QUEUES],
    pub kicks: [u64; NUM_QUEUES],
    pub tx_headers: Vec<PacketHeader>,
    pub bad_chains: u64,
}

#[derive(Default)]
struct State {
    snap: Snapshot,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap<()>>>,
    /// Echo connections: (guest port, host port) → bytes consumed.
    conns: HashMap<(u32, u32), u32>,
    pending: VecDeque<(PacketHeader, Vec<u8>)>,
}

/// The backend.
pub(crate) struct TestBackend {
    pub guest_cid: u64,
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    state: Mutex<State>,
}

fn other<E: std::fmt::Debug>(e: E) -> io::Error {
    io::Error::other(format!("{e:?}"))
}

impl TestBackend {
    pub fn new(guest_cid: u64) -> Self {
        TestBackend {
            guest_cid,
            features: OFFERED_FEATURES,
            protocol: VhostUserProtocolFeatures::CONFIG,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        self.lock().snap.clone()
    }

    fn echo(&self, st: &mut State, hdr: &PacketHeader, payload: Vec<u8>) {
        if hdr.dst_cid() != HOST_CID && hdr.op() == Some(Op::Rst) {
            return;
        }
        let key = (hdr.src_port(), hdr.dst_port());
        let op = hdr.op();
        let mut reply = |op: Op, fwd: u32, data: Vec<u8>| {
            let mut r = hdr.reply(op);
            r.set_credit(ECHO_BUF_ALLOC, fwd);
            r.set_len(u32::try_from(data.len()).unwrap_or(0));
            st.pending.push_back((r, data));
        };
        let conn = if hdr.dst_cid() == HOST_CID {
            st.conns.get(&key).copied()
        } else {
            None
        };
        match (op, conn) {
            (Some(Op::Request), _) if hdr.dst_cid() == HOST_CID => {
                st.conns.insert(key, 0);
                reply(Op::Response, 0, Vec::new());
            }
            (Some(Op::Rw), Some(fwd)) => {
                let fwd = fwd.wrapping_add(hdr.len());
                st.conns.insert(key, fwd);
                reply(Op::Rw, fwd, payload);
            }
            (Some(Op::CreditRequest), Some(fwd)) => reply(Op::CreditUpdate, fwd, Vec::new()),
            (Some(Op::Shutdown), Some(fwd)) => {
                st.conns.remove(&key);
                reply(Op::Rst, fwd, Vec::new());
            }
            (Some(Op::Rst), _) => {
                st.conns.remove(&key);
            }
            (Some(Op::CreditUpdate), Some(_)) => {}
            _ => reply(Op::Rst, 0, Vec::new()),
        }
    }

    fn process(&self, vrings: &[VringRwLock]) -> io::Result<()> {
        let mut st = self.lock();
        for (i, v) in vrings.iter().enumerate().take(NUM_QUEUES) {
            let g = v.get_ref();
            let q = g.get_queue();
            if q.ready() {
                st.snap.vrings[i] = Some(VringInfo {
                    size: q.size(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                });
            }
        }
        let Some(atomic) = st.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mem: &GuestMemoryMmap<()> = &mem;

        let tx = &vrings[TX_QUEUE];
        let mut tx_used = false;
        loop {
            tx.disable_notification().map_err(other)?;
            loop {
                let chain = tx.get_mut().get_queue_mut().pop_descriptor_chain(mem);
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                match parse_tx_chain(chain) {
                    Ok(pkt) => {
                        let mut payload = vec![0u8; pkt.payload.len() as usize];
                        pkt.payload
                            .read_bytes(mem, 0, &mut payload)
                            .map_err(other)?;
                        st.snap.tx_headers.push(pkt.header);
                        self.echo(&mut st, &pkt.header, payload);
                    }
                    Err(_) => st.snap.bad_chains += 1,
                }
                tx.add_used(head, 0).map_err(other)?;
                tx_used = true;
            }
            if !tx.enable_notification().map_err(other)? {
                break;
            }
        }
        if tx_used && tx.needs_notification().map_err(other)? {
            tx.signal_used_queue()?;
        }

        let rx = &vrings[RX_QUEUE];
        let mut rx_used = false;
        loop {
            while let Some((hdr, payload)) = st.pending.pop_front() {
                let chain = rx.get_mut().get_queue_mut().pop_descriptor_chain(mem);
                let Some(chain) = chain else {
                    st.pending.push_front((hdr, payload));
                    break;
                };
                let head = chain.head_index();
                let Ok(buf) = parse_rx_chain(chain) else {
                    st.snap.bad_chains += 1;
                    rx.add_used(head, 0).map_err(other)?;
                    st.pending.push_front((hdr, payload));
                    continue;
                };
                // Split payloads that do not fit one buffer, as a real device must.
                let n = payload.len().min(buf.payload_capacity() as usize);
                let mut h = hdr;
                h.set_len(n as u32);
                buf.write_header(mem, &h).map_err(other)?;
                buf.payload(n as u32)
                    .and_then(|p| p.write_bytes(mem, 0, &payload[..n]))
                    .map_err(other)?;
                rx.add_used(head, (HEADER_SIZE + n) as u32).map_err(other)?;
                rx_used = true;
                if n < payload.len() {
                    st.pending.push_front((hdr, payload[n..].to_vec()));
                }
            }
            if st.pending.is_empty() || !rx.enable_notification().map_err(other)? {
                break;
            }
        }
        if rx_used && rx.needs_notification().map_err(other)? {
            rx.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackend for TestBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        self.lock().snap.acked_features = features;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().snap.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        VsockConfigSpace {
            guest_cid: self.guest_cid,
        }
        .read(offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> io::Result<()> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let mut st = self.lock();
        st.snap.regions = mem
            .memory()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect();
        st.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Lets the daemon stop its worker thread when the connection ends.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        {
            let mut state = self.lock();
            if let Some(k) = state.snap.kicks.get_mut(usize::from(device_event)) {
                *k += 1;
            }
        }
        self.process(vrings)
    }
}

/// A [`TestBackend`] served on a socket path by a `VhostUserDaemon` in its own thread.
pub(crate) struct TestDaemon {
    _dir: Option<tempfile::TempDir>,
    path: PathBuf,
    backend: Arc<TestBackend>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl TestDaemon {
    /// Serves one connection; the thread ends when the frontend disconnects.
    pub fn spawn(backend: TestBackend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vhost.sock");
        let mut d = Self::spawn_at(backend, &path);
        d._dir = Some(dir);
        d
    }

    /// Serves one connection at `path`.
    pub fn spawn_at(backend: TestBackend, path: &Path) -> Self {
        let path = path.to_path_buf();
        let backend = Arc::new(backend);
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::<()>::new());
        let mut daemon =
            VhostUserDaemon::new("test-backend".into(), Arc::clone(&backend), mem).expect("daemon");
        let p = path.clone();
        let thread = std::thread::spawn(move || daemon.serve(&p).map_err(|e| e.to_string()));
        TestDaemon {
            _dir: None,
            path,
            backend,
            thread: Some(thread),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backend(&self) -> &TestBackend {
        &self.backend
    }

    /// Waits for the serving thread (it ends when the frontend disconnects).
    pub fn join(mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| "backend thread panicked".to_string())?,
            None => Ok(()),
        }
    }
}
