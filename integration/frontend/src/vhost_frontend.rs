//! The vhost-user frontend: what QEMU does on the socket of a `vhost-user-vsock` device.
//!
//! The order follows QEMU:
//! - [`VhostFrontend::connect`] (device realize): GET_FEATURES, GET_PROTOCOL_FEATURES,
//!   SET_PROTOCOL_FEATURES, SET_OWNER. The caller then reads the config space
//!   ([`VhostFrontend::guest_cid`], GET_CONFIG).
//! - [`VhostFrontend::start`] (the guest driver sets DRIVER_OK): SET_FEATURES, SET_MEM_TABLE, and
//!   for each queue SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_KICK,
//!   SET_VRING_CALL; then SET_VRING_ENABLE 1 on every queue.
//! - [`VhostFrontend::stop`] (device reset): SET_VRING_ENABLE 0 and GET_VRING_BASE per queue.
//! - dropping the frontend, or [`VhostFrontend::disconnect`], closes the socket (QEMU died).
//!
//! When the backend offers REPLY_ACK it is negotiated and every request waits for the backend's
//! answer, so when a call returns the backend has processed the request.
//! [`VhostFrontend::raw`] gives the underlying `vhost::vhost_user::Frontend` for requests this
//! type does not wrap (hostile tests).

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use sockbypass_wire::config_space::CONFIG_SPACE_SIZE;
use sockbypass_wire::consts::{
    F_RING_EVENT_IDX, F_VERSION_1, F_VHOST_USER_PROTOCOL_FEATURES, NUM_QUEUES,
};

use crate::error::FrontendError;
use crate::guest_memory::GuestRam;
use crate::split_queue::{QueueLayout, SplitQueue};

/// The virtio features acked by default: VERSION_1, EVENT_IDX, PROTOCOL_FEATURES.
pub const DEFAULT_FEATURES: u64 =
    (1 << F_VERSION_1) | (1 << F_RING_EVENT_IDX) | (1 << F_VHOST_USER_PROTOCOL_FEATURES);

/// What to negotiate.
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// Virtio features to ack; only those the backend offers are acked.
    pub features: u64,
    /// Virtio features the backend must offer (connect fails otherwise).
    pub required_features: u64,
    /// Protocol features wanted; only those offered are acked.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Protocol features the backend must offer.
    pub required_protocol_features: VhostUserProtocolFeatures,
    /// How long to retry connecting while the socket does not exist or refuses.
    pub connect_timeout: Duration,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            features: DEFAULT_FEATURES,
            required_features: (1 << F_VERSION_1) | (1 << F_VHOST_USER_PROTOCOL_FEATURES),
            protocol_features: VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK,
            required_protocol_features: VhostUserProtocolFeatures::CONFIG,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The eventfds of one started vring, as the frontend handed them to the backend.
#[derive(Debug)]
pub struct VringNotifiers {
    /// Written by the driver to notify the device.
    pub kick: EventFd,
    /// Written by the device to interrupt the driver.
    pub call: EventFd,
}

/// A vhost-user frontend connection for one vsock device.
pub struct VhostFrontend {
    inner: Frontend,
    ram: GuestRam,
    offered_features: u64,
    features: u64,
    offered_protocol: VhostUserProtocolFeatures,
    acked_protocol: VhostUserProtocolFeatures,
    vrings: Vec<Option<VringNotifiers>>,
}

impl fmt::Debug for VhostFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostFrontend")
            .field(
                "offered_features",
                &format_args!("{:#x}", self.offered_features),
            )
            .field("features", &format_args!("{:#x}", self.features))
            .field("offered_protocol", &self.offered_protocol)
            .field("acked_protocol", &self.acked_protocol)
            .field("vrings", &self.vrings)
            .finish_non_exhaustive()
    }
}

fn req(request: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Request { request, source }
}

/// Connects to a Unix socket, retrying while it does not exist yet or refuses connections.
pub fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream, FrontendError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) => {
                let retry = matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                );
                if !retry || Instant::now() >= deadline {
                    return Err(FrontendError::Connect {
                        path: path.to_path_buf(),
                        timeout,
                        source: e,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl VhostFrontend {
    /// Connects to the backend at `path` (retrying up to `options.connect_timeout`) and
    /// negotiates: GET_FEATURES, GET/SET_PROTOCOL_FEATURES, SET_OWNER.
    pub fn connect(
        path: impl AsRef<Path>,
        ram: &GuestRam,
        options: &FrontendOptions,
    ) -> Result<Self, FrontendError> {
        let sock = connect_socket(path.as_ref(), options.connect_timeout)?;
        Self::from_stream(sock, ram, options)
    }

    /// Like [`VhostFrontend::connect`] over an already connected socket.
    pub fn from_stream(
        sock: UnixStream,
        ram: &GuestRam,
        options: &FrontendOptions,
    ) -> Result<Self, FrontendError> {
        let mut inner = Frontend::from_stream(sock, NUM_QUEUES as u64);
        let offered = inner.get_features().map_err(req("GET_FEATURES"))?;
        let missing = options.required_features & !offered;
        if missing != 0 {
            return Err(FrontendError::MissingFeature { missing, offered });
        }
        let mut offered_protocol = VhostUserProtocolFeatures::empty();
        let mut acked_protocol = VhostUserProtocolFeatures::empty();
        if offered & (1 << F_VHOST_USER_PROTOCOL_FEATURES) != 0 {
            offered_protocol = inner
                .get_protocol_features()
                .map_err(req("GET_PROTOCOL_FEATURES"))?;
            acked_protocol = options.protocol_features & offered_protocol;
            inner
                .set_protocol_features(acked_protocol)
                .map_err(req("SET_PROTOCOL_FEATURES"))?;
            if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                inner.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let missing = options.required_protocol_features - offered_protocol;
        if !missing.is_empty() {
            return Err(FrontendError::MissingProtocolFeature {
                missing: missing.bits(),
                offered: offered_protocol.bits(),
            });
        }
        inner.set_owner().map_err(req("SET_OWNER"))?;
        Ok(VhostFrontend {
            inner,
            ram: ram.clone(),
            offered_features: offered,
            features: options.features & offered,
            offered_protocol,
            acked_protocol,
            vrings: (0..NUM_QUEUES).map(|_| None).collect(),
        })
    }

    /// The virtio features the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// The virtio features acked (sent with SET_FEATURES by [`VhostFrontend::start`]).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether EVENT_IDX is part of the acked features.
    pub fn event_idx(&self) -> bool {
        self.features & (1 << F_RING_EVENT_IDX) != 0
    }

    /// The protocol features acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.acked_protocol
    }

    /// Sends SET_FEATURES with exactly `features` now (even bits the backend did not offer)
    /// and uses them from then on.
    pub fn set_features(&mut self, features: u64) -> Result<(), FrontendError> {
        self.inner
            .set_features(features)
            .map_err(req("SET_FEATURES"))?;
        self.features = features;
        Ok(())
    }

    /// Reads `size` bytes of the config space at `offset` (GET_CONFIG).
    pub fn read_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>, FrontendError> {
        let buf = vec![0u8; size as usize];
        let (_, payload) = self
            .inner
            .get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(req("GET_CONFIG"))?;
        Ok(payload)
    }

    /// The guest CID from the config space (`le64 guest_cid`).
    pub fn guest_cid(&mut self) -> Result<u64, FrontendError> {
        let bytes = self.read_config(0, CONFIG_SPACE_SIZE as u32)?;
        let arr: [u8; CONFIG_SPACE_SIZE] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| FrontendError::BadConfig {
                    expected: CONFIG_SPACE_SIZE,
                    got: bytes.len(),
                })?;
        Ok(u64::from_le_bytes(arr))
    }

    /// Sends SET_MEM_TABLE with every region of guest RAM (the memfd and its offsets).
    pub fn set_mem_table(&mut self) -> Result<(), FrontendError> {
        let regions = self
            .ram
            .memory()
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(req("SET_MEM_TABLE"))?;
        self.inner
            .set_mem_table(&regions)
            .map_err(req("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Starts the device as QEMU does when the guest driver is ready: SET_FEATURES,
    /// SET_MEM_TABLE, [`VhostFrontend::setup_vring`] for each queue (`queues[i]` is queue `i`),
    /// then SET_VRING_ENABLE 1 on each.
    pub fn start(&mut self, queues: &[&SplitQueue]) -> Result<(), FrontendError> {
        self.start_at(queues, &[0; NUM_QUEUES])
    }

    /// Like [`VhostFrontend::start`], but SET_VRING_BASE gives queue `i` the base `bases[i]`
    /// (missing entries are 0). QEMU does this when it reattaches rings the guest driver kept
    /// using, e.g. after the backend restarted: the base is each queue's used index.
    pub fn start_at(&mut self, queues: &[&SplitQueue], bases: &[u16]) -> Result<(), FrontendError> {
        if queues.len() > NUM_QUEUES {
            return Err(FrontendError::BadQueue(queues.len() - 1));
        }
        self.set_features(self.features)?;
        self.set_mem_table()?;
        for (i, q) in queues.iter().enumerate() {
            let base = bases.get(i).copied().unwrap_or(0);
            self.setup_vring_at(i, &q.layout(), q.kick_fd(), q.call_fd(), base)?;
        }
        // Without PROTOCOL_FEATURES the backend enables rings on its own (and refuses
        // SET_VRING_ENABLE), as QEMU knows.
        if self.protocol_features_acked() {
            for i in 0..queues.len() {
                self.enable_vring(i, true)?;
            }
        }
        Ok(())
    }

    fn protocol_features_acked(&self) -> bool {
        self.features & (1 << F_VHOST_USER_PROTOCOL_FEATURES) != 0
    }

    /// Gives the backend one vring: SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR (addresses
    /// in this process, as QEMU sends them), SET_VRING_KICK, SET_VRING_CALL. The frontend keeps
    /// duplicates of the two eventfds.
    pub fn setup_vring(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), FrontendError> {
        self.setup_vring_at(index, layout, kick, call, 0)
    }

    /// Like [`VhostFrontend::setup_vring`] with SET_VRING_BASE `base`.
    pub fn setup_vring_at(
        &mut self,
        index: usize,
        layout: &QueueLayout,
        kick: &EventFd,
        call: &EventFd,
        base: u16,
    ) -> Result<(), FrontendError> {
        if index >= NUM_QUEUES {
            return Err(FrontendError::BadQueue(index));
        }
        self.inner
            .set_vring_num(index, layout.size)
            .map_err(req("SET_VRING_NUM"))?;
        self.inner
            .set_vring_base(index, base)
            .map_err(req("SET_VRING_BASE"))?;
        let config = VringConfigData {
            queue_max_size: layout.size,
            queue_size: layout.size,
            flags: 0,
            desc_table_addr: self.ram.host_address(layout.desc_table)?,
            used_ring_addr: self.ram.host_address(layout.used_ring)?,
            avail_ring_addr: self.ram.host_address(layout.avail_ring)?,
            log_addr: None,
        };
        self.inner
            .set_vring_addr(index, &config)
            .map_err(req("SET_VRING_ADDR"))?;
        let kick = kick.try_clone().map_err(FrontendError::EventFd)?;
        let call = call.try_clone().map_err(FrontendError::EventFd)?;
        self.inner
            .set_vring_kick(index, &kick)
            .map_err(req("SET_VRING_KICK"))?;
        self.inner
            .set_vring_call(index, &call)
            .map_err(req("SET_VRING_CALL"))?;
        self.vrings[index] = Some(VringNotifiers { kick, call });
        Ok(())
    }

    /// SET_VRING_ENABLE.
    pub fn enable_vring(&mut self, index: usize, enable: bool) -> Result<(), FrontendError> {
        if index >= NUM_QUEUES {
            return Err(FrontendError::BadQueue(index));
        }
        self.inner
            .set_vring_enable(index, enable)
            .map_err(req("SET_VRING_ENABLE"))
    }

    /// Stops one vring: SET_VRING_ENABLE 0 (when PROTOCOL_FEATURES is acked), then
    /// GET_VRING_BASE, which returns the backend's next available index.
    pub fn stop_vring(&mut self, index: usize) -> Result<u32, FrontendError> {
        if index >= NUM_QUEUES {
            return Err(FrontendError::BadQueue(index));
        }
        if self.protocol_features_acked() {
            self.enable_vring(index, false)?;
        }
        let base = self
            .inner
            .get_vring_base(index)
            .map_err(req("GET_VRING_BASE"))?;
        self.vrings[index] = None;
        Ok(base)
    }

    /// Stops every vring (device reset); returns the GET_VRING_BASE values by queue index.
    pub fn stop(&mut self) -> Result<Vec<u32>, FrontendError> {
        (0..NUM_QUEUES).map(|i| self.stop_vring(i)).collect()
    }

    /// The eventfds handed to the backend for queue `index`, while it is set up.
    pub fn notifiers(&self, index: usize) -> Option<&VringNotifiers> {
        self.vrings.get(index).and_then(Option::as_ref)
    }

    /// The underlying vhost-user frontend, for any request (even invalid ones).
    pub fn raw(&mut self) -> &mut Frontend {
        &mut self.inner
    }

    /// Closes the socket, as when QEMU dies.
    pub fn disconnect(self) {
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_queue::Buffer;
    use crate::test_backend::{TestBackend, TestDaemon};
    use sockbypass_wire::consts::{OFFERED_FEATURES, RX_QUEUE, TX_QUEUE};

    fn queues(ram: &GuestRam, event_idx: bool) -> Vec<SplitQueue> {
        (0..3)
            .map(|_| SplitQueue::new(ram, 64, event_idx).expect("queue"))
            .collect()
    }

    #[test]
    fn negotiates_like_qemu_and_reads_the_cid() {
        let daemon = TestDaemon::spawn(TestBackend::new(42));
        let ram = GuestRam::new(1 << 20).expect("ram");
        let mut fe = VhostFrontend::connect(daemon.path(), &ram, &FrontendOptions::default())
            .expect("connect");
        assert_eq!(fe.offered_features(), OFFERED_FEATURES);
        assert_eq!(fe.features(), DEFAULT_FEATURES);
        assert!(fe.event_idx());
        assert!(fe
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK));
        assert_eq!(fe.guest_cid().expect("cid"), 42);
        assert_eq!(fe.read_config(4, 4).expect("upper half"), vec![0, 0, 0, 0]);

        let qs = queues(&ram, fe.event_idx());
        let refs: Vec<&SplitQueue> = qs.iter().collect();
        fe.start(&refs).expect("start");
        // A kick on each queue makes the backend look at its vrings.
        for q in &qs {
            q.kick_fd().write(1).expect("kick");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let st = loop {
            let st = daemon.backend().snapshot();
            let seen = st.vrings.iter().all(Option::is_some) && st.kicks.iter().all(|&k| k >= 1);
            if seen || Instant::now() > deadline {
                break st;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(st.kicks.iter().all(|&k| k >= 1));
        assert_eq!(st.acked_features, DEFAULT_FEATURES);
        assert_eq!(st.regions, vec![(0, 1 << 20)]);
        assert!(st.event_idx);
        for (i, q) in qs.iter().enumerate() {
            assert!(fe.notifiers(i).is_some());
            let vring = st.vrings[i].expect("vring state");
            // The backend translated our addresses back to guest-physical ones.
            assert_eq!(vring.desc_table, q.layout().desc_table.0);
            assert_eq!(vring.avail_ring, q.layout().avail_ring.0);
            assert_eq!(vring.used_ring, q.layout().used_ring.0);
            assert_eq!(vring.size, 64);
        }
        fe.disconnect();
        daemon.join().expect("the backend saw a clean disconnect");
    }

    #[test]
    fn kicks_reach_the_backend_and_get_vring_base_reports_progress() {
        let daemon = TestDaemon::spawn(TestBackend::new(3));
        let ram = GuestRam::new(1 << 20).expect("ram");
        let mut fe = VhostFrontend::connect(daemon.path(), &ram, &FrontendOptions::default())
            .expect("connect");
        let mut qs = queues(&ram, fe.event_idx());
        {
            let refs: Vec<&SplitQueue> = qs.iter().collect();
            fe.start(&refs).expect("start");
        }
        // Three chains on TX: the test backend consumes them (as garbage) and completes them.
        let buf = ram.alloc_zeroed(64, 8).expect("buf");
        let tx = &mut qs[TX_QUEUE];
        for _ in 0..3 {
            tx.add_chain(&[Buffer::readable(buf.addr, 64)])
                .expect("add");
        }
        assert!(tx.kick().expect("kick"));
        let mut done = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while done < 3 && Instant::now() < deadline {
            tx.wait_call(Duration::from_millis(100)).expect("wait");
            while tx.pop_used().expect("pop").is_some() {
                done += 1;
            }
        }
        assert_eq!(done, 3);
        let bases = fe.stop().expect("stop");
        assert_eq!(bases[TX_QUEUE], 3);
        assert_eq!(bases[RX_QUEUE], 0);
        assert!(fe.notifiers(TX_QUEUE).is_none());
    }

    #[test]
    fn missing_required_protocol_feature_fails() {
        let mut backend = TestBackend::new(3);
        backend.protocol = VhostUserProtocolFeatures::empty();
        let daemon = TestDaemon::spawn(backend);
        let ram = GuestRam::new(1 << 20).expect("ram");
        let err = VhostFrontend::connect(daemon.path(), &ram, &FrontendOptions::default())
            .expect_err("CONFIG is required");
        assert!(matches!(err, FrontendError::MissingProtocolFeature { .. }));
    }

    #[test]
    fn connect_gives_up_after_the_timeout() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("nobody-listens");
        let ram = GuestRam::new(1 << 20).expect("ram");
        let options = FrontendOptions {
            connect_timeout: Duration::from_millis(50),
            ..FrontendOptions::default()
        };
        let t = Instant::now();
        let err = VhostFrontend::connect(&path, &ram, &options).expect_err("no socket");
        assert!(matches!(err, FrontendError::Connect { .. }));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
