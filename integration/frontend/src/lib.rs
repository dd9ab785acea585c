//! Test frontend for `sockbypassd`: plays QEMU (the vhost-user frontend) and the guest (a minimal
//! virtio-vsock driver), so the daemon can be exercised with no VM. The device tests
//! (`integration/device-tests`) and the microbenchmark (`integration/benchmarks`) drive
//! `sockbypassd` with it.
//!
//! | module | job |
//! |---|---|
//! | [`guest_memory`] | guest RAM in a memfd ([`GuestRam`]) and an allocator for guest buffers |
//! | [`split_queue`] | the driver side of a split virtqueue ([`SplitQueue`]), normal and hostile operations |
//! | [`vhost_frontend`] | the vhost-user conversation QEMU has with the backend ([`VhostFrontend`]) |
//! | [`stream`] | stream ids, states, credit accounting and counters ([`StreamId`], [`StreamState`]) |
//! | [`tx`] | how a TX packet is cut into descriptors ([`TxLayout`]) |
//! | [`vsock_driver`] | the guest driver ([`VsockDriver`]): queue plumbing, stream state machine, raw packets |
//! | [`blocking`] | blocking helpers with timeouts on the driver (`connect_blocking`, `recv_exact`...) |
//! | [`error`] | one error enum per module |
//!
//! [`TestVm`] puts the three together: guest RAM, a frontend connected to the daemon's socket,
//! and a started driver.
//!
//! Its own tests: the unit tests beside each module (the driver's against a device the test
//! plays, `test_device`; the vhost-user conversation against a recording backend,
//! `test_backend`), and `tests/driver_streams.rs`, two drivers through the real `sockbypassd`.
//!
//! ```no_run
//! use std::time::Duration;
//! use sockbypass_frontend::{TestVm, VmOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = Duration::from_secs(5);
//! let mut a = TestVm::connect("/run/sockbypass/vm3.sock", VmOptions::default())?;
//! let mut b = TestVm::connect("/run/sockbypass/vm4.sock", VmOptions::default())?;
//! b.driver_mut().listen(1234)?;
//! let conn = a.driver_mut().connect(b.guest_cid(), 1234)?;
//! let peer = b.driver_mut().accept_blocking(1234, t)?;
//! a.driver_mut().wait_state(conn, |s| s.is_established(), t)?;
//! a.driver_mut().send_all(conn, b"hello", t)?;
//! assert_eq!(b.driver_mut().recv_exact(peer, 5, t)?, b"hello");
//! # Ok(())
//! # }
//! ```

// This crate plays the guest on purpose, including a hostile one: it writes ring fields and
// lengths of any width the tests ask for, so narrowing casts are intended here.
#![allow(clippy::cast_possible_truncation)]
#![warn(missing_docs)]

pub mod blocking;
pub mod error;
pub mod guest_memory;
pub mod split_queue;
pub mod stream;
pub mod tx;
pub mod vhost_frontend;
pub mod vsock_driver;

#[cfg(test)]
mod test_backend;
#[cfg(test)]
mod test_device;

use std::path::{Path, PathBuf};

pub use error::{DriverError, FrontendError, MemoryError, QueueError, VmError};
pub use guest_memory::{GuestRam, GuestRange, DEFAULT_MEMORY_SIZE};
pub use split_queue::{Buffer, QueueLayout, RawDescriptor, SplitQueue, UsedElem};
pub use stream::{StreamCounters, StreamId, StreamInfo, StreamState};
pub use tx::TxLayout;
pub use vhost_frontend::{FrontendOptions, VhostFrontend, DEFAULT_FEATURES};
pub use vsock_driver::{DriverConfig, DriverStats, RawPacket, RxLayout, VsockDriver};

/// Everything needed to bring up a [`TestVm`].
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// Guest RAM size in bytes (a multiple of 4 KiB).
    pub memory_size: usize,
    /// vhost-user negotiation.
    pub frontend: FrontendOptions,
    /// The guest driver.
    pub driver: DriverConfig,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            memory_size: DEFAULT_MEMORY_SIZE,
            frontend: FrontendOptions::default(),
            driver: DriverConfig::default(),
        }
    }
}

/// A VM without a VM: guest RAM, the vhost-user frontend connected to the backend, and a
/// started guest driver.
#[derive(Debug)]
pub struct TestVm {
    ram: GuestRam,
    frontend: Option<VhostFrontend>,
    driver: VsockDriver,
    guest_cid: u64,
    socket_path: PathBuf,
    options: VmOptions,
}

impl TestVm {
    /// Connects to the backend at `socket_path` (retrying while it is not there yet), negotiates,
    /// reads the guest CID from the config space, starts the device and the driver.
    pub fn connect(socket_path: impl AsRef<Path>, options: VmOptions) -> Result<TestVm, VmError> {
        let ram = GuestRam::new(options.memory_size)?;
        let (frontend, guest_cid) = Self::open(socket_path.as_ref(), &ram, &options)?;
        let driver = VsockDriver::new(
            &ram,
            guest_cid,
            frontend.event_idx(),
            options.driver.clone(),
        )?;
        let mut vm = TestVm {
            ram,
            frontend: Some(frontend),
            driver,
            guest_cid,
            socket_path: socket_path.as_ref().to_path_buf(),
            options,
        };
        vm.start_device()?;
        Ok(vm)
    }

    fn open(
        path: &Path,
        ram: &GuestRam,
        options: &VmOptions,
    ) -> Result<(VhostFrontend, u64), VmError> {
        let mut frontend = VhostFrontend::connect(path, ram, &options.frontend)?;
        let cid = frontend.guest_cid()?;
        Ok((frontend, cid))
    }

    fn start_device(&mut self) -> Result<(), VmError> {
        let frontend = self.frontend.as_mut().ok_or(VmError::Disconnected)?;
        frontend.start(&self.driver.queues())?;
        self.driver.start()?;
        Ok(())
    }

    /// The CID read from the config space at connect time (or at the last refresh).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The guest driver.
    pub fn driver(&self) -> &VsockDriver {
        &self.driver
    }

    /// The guest driver, mutably.
    pub fn driver_mut(&mut self) -> &mut VsockDriver {
        &mut self.driver
    }

    /// The vhost-user frontend, unless disconnected.
    pub fn frontend_mut(&mut self) -> Result<&mut VhostFrontend, VmError> {
        self.frontend.as_mut().ok_or(VmError::Disconnected)
    }

    /// Guest RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Whether the vhost-user socket is open.
    pub fn is_connected(&self) -> bool {
        self.frontend.is_some()
    }

    /// What QEMU does when the guest resets the device: GET_VRING_BASE on every queue (stopping
    /// the rings), then the rings are rebuilt from scratch (zeroed, indices 0, all streams
    /// reset) and handed to the backend again, and the driver restarts. Returns the
    /// GET_VRING_BASE values by queue index.
    pub fn guest_reset(&mut self) -> Result<Vec<u32>, VmError> {
        let frontend = self.frontend.as_mut().ok_or(VmError::Disconnected)?;
        let bases = frontend.stop()?;
        self.driver.reset()?;
        self.start_device()?;
        Ok(bases)
    }

    /// Closes the vhost-user socket, as when QEMU dies. The driver keeps its state; its queues
    /// simply stop moving.
    pub fn disconnect(&mut self) {
        if let Some(f) = self.frontend.take() {
            f.disconnect();
        }
    }

    /// Connects to the same socket again (as QEMU does with `reconnect=`), negotiates from
    /// scratch and restarts the driver on fresh rings (all streams reset).
    pub fn reconnect(&mut self) -> Result<(), VmError> {
        self.disconnect();
        let (frontend, cid) = Self::open(&self.socket_path, &self.ram, &self.options)?;
        self.driver.reset()?;
        self.driver.set_event_idx(frontend.event_idx());
        self.driver.set_guest_cid(cid);
        self.guest_cid = cid;
        self.frontend = Some(frontend);
        self.start_device()
    }

    /// Connects to the same socket again and hands the backend the rings the driver kept using,
    /// as QEMU does after the backend restarted: SET_VRING_BASE is each queue's current used
    /// index, and the driver is not reset (its streams, buffers and ring indices stay). The
    /// backend is expected to answer with a TRANSPORT_RESET event. Returns the bases sent.
    pub fn reconnect_keep_rings(&mut self) -> Result<Vec<u16>, VmError> {
        self.disconnect();
        let (mut frontend, cid) = Self::open(&self.socket_path, &self.ram, &self.options)?;
        let bases = self
            .driver
            .queues()
            .iter()
            .map(|q| q.used_idx())
            .collect::<Result<Vec<u16>, _>>()
            .map_err(DriverError::from)?;
        frontend.start_at(&self.driver.queues(), &bases)?;
        self.driver.set_event_idx(frontend.event_idx());
        self.driver.set_guest_cid(cid);
        self.guest_cid = cid;
        self.frontend = Some(frontend);
        // QEMU's host notifiers start signalled, so the backend looks at every ring at once
        // (and sees what the driver published while it was away).
        self.driver
            .rx_queue_mut()
            .notify()
            .map_err(DriverError::from)?;
        self.driver
            .tx_queue_mut()
            .notify()
            .map_err(DriverError::from)?;
        self.driver
            .event_queue_mut()
            .notify()
            .map_err(DriverError::from)?;
        Ok(bases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{TestBackend, TestDaemon};
    use sockbypass_wire::consts::{HOST_CID, OP_RW, RX_QUEUE, TX_QUEUE};
    use sockbypass_wire::{Op, PacketHeader};
    use std::time::Duration;

    const T: Duration = Duration::from_secs(5);

    fn options() -> VmOptions {
        VmOptions {
            memory_size: 4 << 20,
            ..VmOptions::default()
        }
    }

    fn echo_round_trip(vm: &mut TestVm, port: u32, data: &[u8]) {
        let d = vm.driver_mut();
        let id = d.connect_blocking(HOST_CID, port, T).expect("connect");
        d.send_all(id, data, T).expect("send");
        let back = d.recv_exact(id, data.len(), T).expect("echo");
        assert_eq!(back, data);
        assert_eq!(d.close_blocking(id, T).expect("close"), StreamState::Closed);
    }

    #[test]
    fn test_vm_talks_to_a_vhost_user_backend() {
        let daemon = TestDaemon::spawn(TestBackend::new(7));
        let mut vm = TestVm::connect(daemon.path(), options()).expect("vm");
        assert_eq!(vm.guest_cid(), 7);
        assert_eq!(vm.driver().guest_cid(), 7);
        // 100 KiB: several 64 KiB TX packets, echoed back split over 4 KiB RX buffers.
        let data: Vec<u8> = (0..100 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
        echo_round_trip(&mut vm, 5000, &data);
        let st = daemon.backend().snapshot();
        assert!(st
            .tx_headers
            .iter()
            .all(|h| h.src_cid() == 7 && h.dst_cid() == HOST_CID));
        assert!(st
            .tx_headers
            .iter()
            .any(|h| h.op_raw() == OP_RW && h.len() == 64 * 1024));
        assert_eq!(st.bad_chains, 0);
        let stats = vm.driver().stats();
        assert_eq!(stats.rx_malformed, 0);
        assert_eq!(stats.rx_used_len_mismatch, 0);
        // A CID nobody serves: the backend answers RST.
        let err = vm
            .driver_mut()
            .connect_blocking(5, 1, T)
            .expect_err("nothing at cid 5");
        assert!(matches!(err, DriverError::Refused { cid: 5, port: 1 }));
        vm.disconnect();
        assert!(!vm.is_connected());
        assert!(matches!(vm.guest_reset(), Err(VmError::Disconnected)));
        daemon.join().expect("clean disconnect");
    }

    #[test]
    fn guest_reset_reports_ring_progress_and_starts_over() {
        let daemon = TestDaemon::spawn(TestBackend::new(9));
        let mut vm = TestVm::connect(daemon.path(), options()).expect("vm");
        let id = vm
            .driver_mut()
            .connect_blocking(HOST_CID, 80, T)
            .expect("connect");
        vm.driver_mut().send_all(id, b"abc", T).expect("send");
        vm.driver_mut().recv_exact(id, 3, T).expect("echo");
        vm.driver_mut().flush_tx(T).expect("flush");
        let tx_sent = vm.driver().queues()[TX_QUEUE].next_avail();
        let bases = vm.guest_reset().expect("reset");
        // REQUEST + RW went out; RESPONSE + RW came back on two RX buffers.
        assert_eq!(bases, vec![2, u32::from(tx_sent), 0]);
        assert_eq!(vm.driver().state(id).expect("state"), StreamState::Reset);
        assert_eq!(vm.driver().queues()[TX_QUEUE].next_avail(), 0);
        echo_round_trip(&mut vm, 81, b"after reset");
    }

    #[test]
    fn reconnect_starts_a_new_session() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vm.sock");
        let daemon = TestDaemon::spawn_at(TestBackend::new(11), &path);
        let mut vm = TestVm::connect(&path, options()).expect("vm");
        echo_round_trip(&mut vm, 1, b"one");
        vm.disconnect();
        daemon.join().expect("clean disconnect");
        // The test daemon serves one connection; bring up another on the same path.
        let daemon2 = TestDaemon::spawn_at(TestBackend::new(12), &path);
        vm.reconnect().expect("reconnect");
        assert_eq!(vm.guest_cid(), 12);
        echo_round_trip(&mut vm, 2, b"two");
        drop(vm);
        daemon2.join().expect("clean disconnect");
    }

    #[test]
    fn reconnect_keep_rings_hands_over_the_used_indices() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vm.sock");
        let daemon = TestDaemon::spawn_at(TestBackend::new(11), &path);
        let mut vm = TestVm::connect(&path, options()).expect("vm");
        echo_round_trip(&mut vm, 1, b"one");
        vm.driver_mut().flush_tx(T).expect("flush");
        let (rx_used, tx_used) = (
            vm.driver().queues()[RX_QUEUE].last_used(),
            vm.driver().queues()[TX_QUEUE].last_used(),
        );
        vm.disconnect();
        daemon.join().expect("clean disconnect");
        let daemon2 = TestDaemon::spawn_at(TestBackend::new(11), &path);
        let bases = vm.reconnect_keep_rings().expect("reconnect");
        assert_eq!(bases, vec![rx_used, tx_used, 0]);
        assert!(rx_used > 0 && tx_used > 0);
        // The driver goes on where it was: the new backend sees only new packets.
        echo_round_trip(&mut vm, 2, b"two");
        let st = daemon2.backend().snapshot();
        let first = st.tx_headers.first().expect("a packet");
        assert_eq!((first.op(), first.dst_port()), (Some(Op::Request), 2));
        drop(vm);
        daemon2.join().expect("clean disconnect");
    }

    #[test]
    fn rings_run_without_protocol_features_acked() {
        let daemon = TestDaemon::spawn(TestBackend::new(15));
        let mut opts = options();
        // No PROTOCOL_FEATURES in SET_FEATURES: no SET_VRING_ENABLE, the backend enables the
        // rings itself. (Protocol features are still negotiated, since they are offered.)
        opts.frontend.features = DEFAULT_FEATURES & !(1 << 30);
        let mut vm = TestVm::connect(daemon.path(), opts).expect("vm");
        assert_eq!(
            daemon.backend().snapshot().acked_features,
            1 << 32 | 1 << 29
        );
        echo_round_trip(&mut vm, 3, b"no enable messages");
        vm.guest_reset().expect("reset");
        echo_round_trip(&mut vm, 4, b"again");
    }

    #[test]
    fn raw_packets_reach_the_backend_as_sent() {
        let daemon = TestDaemon::spawn(TestBackend::new(13));
        let mut vm = TestVm::connect(daemon.path(), options()).expect("vm");
        let mut hdr = PacketHeader::stream(Op::Request, 99, 4000, HOST_CID, 4001);
        hdr.set_credit(1, 2);
        vm.driver_mut()
            .send_raw(&hdr, &[], &TxLayout::Split { payload_descs: 1 })
            .expect("raw");
        vm.driver_mut().flush_tx(T).expect("flush");
        let st = daemon.backend().snapshot();
        assert_eq!(st.tx_headers.last(), Some(&hdr));
    }
}
